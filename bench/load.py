"""Loading a 1.3B-shape Wan file: wanlite's load_wan vs diffusers' from_single_file vs construct+load_state_dict.

Each load runs in a fresh process and touches every weight (a model ready to run); each loader runs twice,
interleaved with the others, and the faster run counts (the first reader of a file pays the page cache). Peak RSS
is reported raw and net of the process's RSS after imports (what the load itself costs). Targets: same-dtype loads
no slower and no larger than diffusers' and <= 1.15x the file size (net); dtype-converting loads <= 1.15x the
loaded model (net).
Usage: python bench/load.py [--layers 30] [--keep DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file
import wanlite
from wanlite.formats import load_wan, parse_dtype
how, file, config_dir, dtype = sys.argv[1:5]
dtype = parse_dtype(dtype)
def rss(field="VmHWM:"):  # per-process high-water mark (ru_maxrss would include the forking parent)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
base = rss("VmRSS:"); t0 = time.perf_counter()
if how == "load_wan":
    model = load_wan(file, torch_dtype=dtype)
elif how == "diffusers":
    model = WanTransformer3DModel.from_single_file(file, config=config_dir, torch_dtype=dtype)
else:  # construct, then load_state_dict
    from wanlite.formats import keys
    cfg = WanTransformer3DModel.load_config(config_dir)
    model = WanTransformer3DModel.from_config(cfg).to(dtype)
    model.load_state_dict(keys.to_diffusers(load_file(file)))
total = sum(float(p.sum(dtype=torch.float32)) for p in model.parameters())  # touch every weight
seconds = time.perf_counter() - t0
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(seconds=seconds, peak=rss(), base=base, model_bytes=size)))
"""


def write_files(folder: Path, layers: int):
    import torch
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    from wanlite.formats import keys
    from wanlite.formats.spec import WanSpec

    spec = WanSpec("t2v", 1536, 8960, 12, layers, 16, 16)
    with init_empty_weights():
        meta = WanTransformer3DModel(**spec.to_diffusers_config())
    shapes = {keys.official_name(n): p.shape for n, p in meta.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    files = {}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        state = {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}
        files[name] = folder / f"wan_1.3b_{name}.safetensors"
        save_file(state, str(files[name]), metadata={"format": "pt"})
        del state
    cfg = {"_class_name": "WanTransformer3DModel", **spec.to_diffusers_config()}
    (folder / "config").mkdir(exist_ok=True)
    (folder / "config" / "config.json").write_text(json.dumps(cfg))
    return files, folder / "config", spec


def measure(how, file, config_dir, dtype):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(file), str(config_dir), dtype], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{how} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--keep", help="write the files here (reused when present)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="wanlite-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files, config_dir, spec = write_files(folder, args.layers)
    print(
        f"wrote {spec} files in {time.perf_counter() - t0:.0f}s: "
        + ", ".join(f"{k} {f.stat().st_size / 1e9:.2f} GB" for k, f in files.items())
    )
    cases = [
        ("bf16", "bf16", ["load_wan", "diffusers", "construct"]),
        ("fp32", "fp32", ["load_wan", "diffusers"]),
        ("bf16", "fp32", ["load_wan", "diffusers"]),
        ("fp32", "bf16", ["load_wan", "diffusers"]),
    ]
    failures, summary = [], []
    print(f"{'file':>5} -> {'model':<5} {'loader':<10} {'s':>6} {'peak GB':>8} {'net GB':>7} {'net/ref':>8}")
    for file_dtype, model_dtype, loaders in cases:
        size = files[file_dtype].stat().st_size
        # twice each, interleaved (A B A B): the first reader of a file pays the page cache; keep the faster run
        results = {}
        for _ in range(2):
            for how in loaders:
                r = measure(how, files[file_dtype], config_dir, model_dtype)
                if how not in results or r["seconds"] < results[how]["seconds"]:
                    results[how] = r
        for how, r in results.items():
            ref = size if file_dtype == model_dtype else r["model_bytes"]
            r["ratio"] = (r["peak"] - r["base"]) / ref
            print(
                f"{file_dtype:>5} -> {model_dtype:<5} {how:<10} {r['seconds']:6.1f} {r['peak'] / 1e9:8.2f} "
                f"{(r['peak'] - r['base']) / 1e9:7.2f} {r['ratio']:8.2f}"
            )
        ours, theirs = results["load_wan"], results["diffusers"]
        label = f"{file_dtype}->{model_dtype}"
        summary.append(
            f"{label} {ours['ratio']:.2f}x (diffusers {theirs['ratio']:.2f}x, "
            f"time {ours['seconds'] / theirs['seconds']:.2f}x)"
        )
        if ours["ratio"] > 1.15:
            failures.append(f"{label} peak {ours['ratio']:.2f}x > 1.15x")
        if file_dtype == model_dtype and (
            ours["peak"] > theirs["peak"] * 1.02 or ours["seconds"] > theirs["seconds"] * 1.10
        ):
            failures.append(f"{label} not as lean/fast as diffusers")
    verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
    print(
        f"SUMMARY load ({args.layers} layers): net peak RSS / reference: "
        + " | ".join(summary)
        + f" | target <= 1.15x and no worse than diffusers -> {verdict}"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
