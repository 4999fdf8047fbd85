"""Quantized exports of a 1.3B-shape Wan (random bf16 weights, official keys): fp8_e4m3fn, fp8_scaled and GGUF.

Each export runs in a fresh process: load_wan(bf16 file) then save_wan(quant=...), which streams one tensor at a
time. Reported per format: wall time, peak RSS net of the process's RSS after imports relative to the loaded model
(target <= 1.15x: the model plus one tensor's output), bytes per parameter, and the round-trip weight error
(relative L2 per quantized tensor: worst and mean) read back through wanlite's dequantizing reader.
Usage: python bench/quant.py [--blocks 30] [--formats fp8_scaled Q8_0 ...] [--keep DIR]
(--blocks 30 is Wan2.1-1.3B; fewer blocks for a quick run: the per-tensor figures do not depend on the depth.)
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
import accelerate, diffusers, gguf  # imported before the baseline: the export is what is measured
from diffusers import WanTransformer3DModel
from safetensors import safe_open
from wanlite.formats import load_wan, save_wan
from wanlite.formats.load import quantized_view
src, out, quant = sys.argv[1:4]
def rss(field="VmHWM:"):  # per-process high-water mark
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
base = rss("VmRSS:"); t0 = time.perf_counter()
model = load_wan(src)  # bf16, zero-copy views of the file
size = sum(p.numel() * p.element_size() for p in model.parameters())
export = save_wan(model, out, quant=quant)
seconds, peak = time.perf_counter() - t0, rss()
del model
entries, _, info = quantized_view(export.path)
errors = []
with safe_open(src, framework="pt") as f:
    for name in info.quantized:
        ref = f.get_tensor(name).float()
        got = entries[name].read(torch.float32)
        errors.append(float((got - ref).norm() / ref.norm()))
print(json.dumps(dict(seconds=seconds, peak=peak, base=base, model_bytes=size, file_bytes=export.path.stat().st_size,
                      params=info.params, worst=max(errors), mean=sum(errors) / len(errors), quantized=len(errors))))
"""


def write_model(folder: Path, blocks: int) -> Path:
    """A random bf16 Wan of Wan2.1-1.3B's shape in one official-key file, written one tensor at a time."""
    import torch

    from wanlite.formats.comfy import _expected_shapes
    from wanlite.formats.io import write_safetensors
    from wanlite.formats.spec import WanSpec

    spec = WanSpec("t2v", 1536, 8960, 12, blocks, 16, 16)
    shapes = _expected_shapes(spec)  # official names and shapes, as ComfyUI builds the model
    path = folder / f"wan_1.3b_shape_{blocks}blocks_bf16.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        plan = [(k, torch.bfloat16, tuple(s)) for k, s in shapes.items()]
        write_safetensors(path, plan, ((torch.randn(s, generator=g) * 0.02).bfloat16() for _, _, s in plan), {})
    return path


def main():
    from wanlite.formats.quant import QUANTS

    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=30, help="transformer blocks (30 = Wan2.1-1.3B)")
    parser.add_argument("--formats", nargs="*", default=list(QUANTS), choices=list(QUANTS))
    parser.add_argument("--keep", help="write the files here (the source is reused when present)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="wanlite-bench-quant-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = write_model(folder, args.blocks)
    print(f"source {src.name}: {src.stat().st_size / 1e9:.2f} GB ({time.perf_counter() - t0:.0f}s)")
    print(
        f"{'format':<11} {'s':>6} {'net peak/model':>15} {'file GB':>8} {'bytes/param':>12} "
        f"{'worst err':>10} {'mean err':>9}"
    )
    failures, summary = [], []
    for quant in args.formats:
        out = folder / quant
        cmd = [sys.executable, "-c", CHILD, str(src), str(out), quant]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{quant} failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = (r["peak"] - r["base"]) / r["model_bytes"]
        per_param = r["file_bytes"] / r["params"]
        print(f"{quant:<11} {r['seconds']:6.1f} {ratio:15.3f} {per_param:12.3f} {r['worst']:10.2%} {r['mean']:9.2%}")
        summary.append(f"{quant} {ratio:.2f}x {per_param:.2f}B/param err {r['worst']:.1%}")
        if ratio > 1.15:
            failures.append(f"{quant} peak {ratio:.2f}x > 1.15x")
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
    print(
        f"SUMMARY quant ({args.blocks} blocks): net peak RSS / loaded model, bytes/param, worst weight error: "
        + " | ".join(summary)
        + f" | target <= 1.15x -> {verdict}"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
