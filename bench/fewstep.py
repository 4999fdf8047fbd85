"""Does a few-step, guidance-free, half-depth student buy per video what its forwards x FLOPs promise?

Wall time of one whole video (every sampler step, both CFG passes, the scheduler) for a Wan2.1-1.3B-shape teacher
(dim 1536, 12 heads x 128, ffn 8960; random weights, depth scaled down so it runs on a CPU) at Wan's defaults
(UniPC, 50 steps, cfg 5 = 100 forwards) next to a 50%-depth student at 4 Euler steps, cfg 1 (4 forwards), on the
same noise and context. Target: measured wall ratio >= 85% of the forwards x FLOPs ratio.

Timing pairs one teacher video with as many student videos as take the same forwards, back to back; the wall ratio is
the median over pairs, so load from other processes on a shared machine hits both sides of a pair alike.

    .venv/bin/python bench/fewstep.py [--blocks 2] [--frames 1 --height 16 --width 32] [--repeats 3] [--threads 1]
    python bench/fewstep.py --device cuda --dtype bfloat16 --blocks 30 --frames 21 --height 60 --width 104  # 480p x 81
"""

from __future__ import annotations

import argparse
import sys
import time

import _shape  # bench/_shape.py: the options and context the 1.3B-shape benchmarks share
import torch

from wanlite.compress import Recipe, build_student
from wanlite.evaluate.cost import count_flops, time_interleaved
from wanlite.evaluate.sampling import sample
from wanlite.formats.records import Sampling, shifted_schedule
from wanlite.formats.spec import WanSpec
from wanlite.testing import random_wan


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _shape.add_options(ap, blocks=2, frames=1, height=16, width=32)
    ap.add_argument("--teacher-steps", type=int, default=50, help="teacher UniPC steps (Wan's default 50)")
    ap.add_argument("--guidance", type=float, default=5.0, help="teacher CFG scale (Wan2.1 T2V: 5)")
    ap.add_argument("--student-steps", type=int, default=4, help="student Euler steps at cfg 1")
    ap.add_argument("--repeats", type=int, default=3, help="timed (teacher video, student videos) pairs (median)")
    ap.add_argument("--target", type=float, default=0.85, help="required wall ratio / (forwards x FLOPs) ratio")
    return ap.parse_args()


def main() -> int:
    args = parse()
    device, dtype = _shape.setup(args)
    t0 = time.perf_counter()
    spec = WanSpec(dim=1536, num_heads=12, ffn_dim=8960, num_layers=args.blocks)
    teacher = random_wan(spec, seed=0)
    student = build_student(teacher, Recipe(num_blocks=args.blocks // 2))[0].eval()
    if dtype != torch.float32:  # diffusers warns on any dtype cast through .to(); skip the no-op one
        teacher, student = teacher.to(dtype=dtype), student.to(dtype=dtype)
    teacher, student = teacher.eval().to(device), student.to(device)
    how = {
        "teacher": Sampling(steps=args.teacher_steps, guidance=args.guidance, shift=5.0, solver="unipc"),
        "student": Sampling(
            steps=args.student_steps, guidance=1.0, shift=5.0, solver="euler",
            sigmas=shifted_schedule(args.student_steps, 5.0),
        ),
    }  # fmt: skip
    g = torch.Generator().manual_seed(0)
    context = _shape.text_context(args.text_tokens, g)
    context, negative = context.to(device, dtype), torch.zeros_like(context).to(device, dtype)
    noise = torch.randn(1, 16, args.frames, args.height, args.width, generator=g).to(device, dtype)
    models = {"teacher": teacher, "student": student}
    flops = {n: count_flops(m, dict(x=noise, sigma=0.5, context=context)) for n, m in models.items()}
    per_video = {n: flops[n] * how[n].forwards for n in models}

    def video(name):
        def fn():
            with torch.no_grad():
                sample(models[name], noise, context, negative, sampling=how[name])
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return fn

    # Paired blocks of equal length: one teacher video, then as many student videos as fit its forwards; the wall
    # ratio of each pair, median over pairs. Load from other processes then hits both sides of a pair alike.
    per_block = max(1, how["teacher"].forwards // how["student"].forwards)
    pairs = []
    for _ in range(args.repeats):
        t = time_interleaved([video("teacher")], 1, warmup=0)[0]
        s = time_interleaved([video("student")], per_block, warmup=0, stat=lambda ts: sum(ts) / len(ts))[0]
        pairs.append((t, s))
    ratios = sorted(t / s for t, s in pairs)
    secs = {
        "teacher": sorted(t for t, _ in pairs)[len(pairs) // 2],
        "student": sorted(s for _, s in pairs)[len(pairs) // 2],
    }
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    where = _shape.where(device)
    print(
        f"teacher: {spec} | {tokens} tokens, {args.text_tokens} text tokens | {where}, {args.dtype} "
        f"| median of {args.repeats} paired blocks (1 teacher video : {per_block} student videos)"
    )
    print(f"{'model':<10}{'samples':<36}{'forwards':>9}{'GFLOP/fwd':>11}{'GFLOP/video':>13}{'s/video':>10}")
    for n in models:
        print(
            f"{n:<10}{str(how[n])[:35]:<36}{how[n].forwards:>9}{flops[n] / 1e9:>11.1f}"
            f"{per_video[n] / 1e9:>13.0f}{secs[n]:>10.2f}"
        )
    flop_ratio, wall_ratio = per_video["teacher"] / per_video["student"], ratios[len(ratios) // 2]
    ok = wall_ratio / flop_ratio >= args.target
    print(
        f"SUMMARY fewstep {'OK' if ok else 'MISSED'}: per video the student costs {flop_ratio:.1f}x fewer "
        f"forwards x FLOPs ({how['teacher'].forwards} vs {how['student'].forwards} forwards, "
        f"{flops['teacher'] / flops['student']:.2f}x per forward) and runs {wall_ratio:.1f}x faster = "
        f"{wall_ratio / flop_ratio:.0%} of the FLOP ratio (target {args.target:.0%}); {time.perf_counter() - t0:.0f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
