"""Benchmark: calibrate a 1.3B-shape Wan teacher and build a 50%-depth, 50%-width student on this CPU.

Prints time and peak RSS of each step next to the teacher's own forward time and weight size, then ONE
summary line; exits 1 when peak RSS while building exceeds the target
(RSS before the teacher existed + 1.15 x (teacher + student + one teacher block)).

    .venv/bin/python bench/init.py [--layers 30] [--tokens 256] [--sigmas 0.3 0.7]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import psutil
import torch


class PeakRSS:
    """Samples this process's resident memory every 5 ms; `peak` since the last reset."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def reset(self) -> int:
        self.peak = self.proc.memory_info().rss
        return self.peak

    def stop(self):
        self._stop.set()


def nbytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30, help="teacher blocks (the 1.3B release has 30)")
    ap.add_argument("--tokens", type=int, default=256, choices=(64, 256, 1024), help="latent tokens per sample")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.7], help="calibration noise levels")
    ap.add_argument("--skip-blocks", action="store_true", help="also measure output change per skipped block")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    from diffusers import WanTransformer3DModel

    from wanlite.compress import Recipe, build_student, calibrate
    from wanlite.formats.spec import WanSpec

    gib = 2**30
    mem = PeakRSS()
    base = mem.reset()
    spec = WanSpec(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=args.layers)
    t = time.perf_counter()
    teacher = WanTransformer3DModel(**spec.to_diffusers_config()).eval()
    t_create = time.perf_counter() - t
    side = int((args.tokens * 4) ** 0.5)  # tokens = (H/2)(W/2) at one latent frame
    g = torch.Generator().manual_seed(0)
    context = torch.zeros(1, 512, 4096)
    context[:, :16] = torch.randn(1, 16, 4096, generator=g)
    batch = {"latents": torch.randn(1, 16, 1, side, side, generator=g), "context": context}
    t = time.perf_counter()
    teacher(hidden_states=batch["latents"], timestep=torch.tensor([500.0]), encoder_hidden_states=context)
    t_forward = time.perf_counter() - t
    teacher_bytes = nbytes(teacher)
    block_bytes = nbytes(teacher.blocks[0])
    print(
        f"teacher: {spec}; weights {teacher_bytes / gib:.2f} GiB fp32; created in {t_create:.1f} s; "
        f"forward at {args.tokens} tokens {t_forward:.1f} s"
    )

    mem.reset()
    t = time.perf_counter()
    cal = calibrate(teacher, batch, sigmas=args.sigmas, skip_blocks=args.skip_blocks, use_cache=False)
    t_cal = time.perf_counter() - t
    peak_cal = mem.peak
    print(
        f"calibrate: 1 sample x {len(args.sigmas)} sigmas{' + skip scores' if args.skip_blocks else ''}: "
        f"{t_cal:.1f} s ({t_cal / t_forward:.1f} teacher forwards), peak RSS {peak_cal / gib:.2f} GiB"
    )

    recipe = Recipe.from_fractions(spec, depth=0.5, width=0.5, blocks="importance")
    before = mem.reset()
    t = time.perf_counter()
    student, pruning = build_student(teacher, recipe, cal)
    t_build = time.perf_counter() - t
    peak_build = mem.peak
    student_bytes = nbytes(student)
    t = time.perf_counter()
    student(hidden_states=batch["latents"], timestep=torch.tensor([500.0]), encoder_hidden_states=context)
    t_student = time.perf_counter() - t
    mem.stop()
    target = base + 1.15 * (teacher_bytes + student_bytes + block_bytes)
    print(f"build: {pruning}")
    print(
        f"build: {t_build:.1f} s; RSS before {before / gib:.2f} GiB, peak {peak_build / gib:.2f} GiB "
        f"(process start {base / gib:.2f} GiB + teacher {teacher_bytes / gib:.2f} + student {student_bytes / gib:.2f} "
        f"+ block {block_bytes / gib:.2f} GiB, x1.15 -> target {target / gib:.2f} GiB)"
    )
    print(f"student forward at {args.tokens} tokens: {t_student:.2f} s ({t_forward / t_student:.1f}x faster)")
    ok = peak_build <= target
    print(
        f"SUMMARY {'PASS' if ok else 'FAIL'}: {args.layers}-layer 1.3B-shape teacher ({teacher_bytes / gib:.2f} GiB, "
        f"forward {t_forward:.1f} s) -> calibrate {t_cal:.1f} s, build {t_build:.1f} s, peak RSS build "
        f"{peak_build / gib:.2f} GiB <= target {target / gib:.2f} GiB; student {student_bytes / gib:.2f} GiB, "
        f"forward {t_student:.2f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
