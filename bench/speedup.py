"""Does pruning buy the speed its FLOPs promise? Forward latency of 75%-depth, 50%-depth and 50%-width students
of a Wan2.1-1.3B-width teacher (dim 1536, 12 heads x 128, ffn 8960; depth scaled down so it runs on a CPU),
next to the FLOP ratio. Target: measured speedup >= 85% of the FLOP ratio.

Latencies are medians of repeats interleaved across all models (teacher, s1, s2, s3, teacher, ...), so load
from other processes hits every model alike. When a target is missed the script says where the time goes:
the fixed (non-block) share of time vs of FLOPs, and the ops whose time share grows in the student.

    .venv/bin/python bench/speedup.py [--blocks 4] [--frames 2 --height 32 --width 32] [--repeats 5] [--threads 1]
    python bench/speedup.py --device cuda --dtype bfloat16 --blocks 30 --frames 21 --height 60 --width 104

On a CPU shared with other jobs use --threads 1: with more intra-op threads than free cores, OpenMP threads
wait on each other, small (elementwise) ops slow down by orders of magnitude, and the narrower student --
whose time is mostly such ops -- looks far slower than its FLOPs say.
"""

from __future__ import annotations

import argparse
import sys
import time

import _shape  # bench/_shape.py: the options and context the 1.3B-shape benchmarks share
import torch

from wanlite.compress import Recipe, build_student
from wanlite.core.flow import wan_forward
from wanlite.evaluate.cost import count_flops, time_interleaved
from wanlite.formats.spec import WanSpec
from wanlite.testing import random_wan


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _shape.add_options(ap, blocks=4, frames=2, height=32, width=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per model (median)")
    ap.add_argument("--target", type=float, default=0.85, help="required speedup / FLOP ratio")
    return ap.parse_args()


def op_profile(model, inputs, top: int = 8) -> dict[str, float]:
    """Share of self time per op in one forward: CPU time of aten ops, or GPU time of kernels on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    cuda = inputs["x"].is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        wan_forward(model, **inputs)
    if cuda:
        rows = [(e.key[:60], e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(t for _, t in rows) or 1
    return {k: t / total for k, t in sorted(rows, key=lambda r: -r[1])[:top]}


def main() -> int:
    args = parse()
    device, dtype = _shape.setup(args)
    t0 = time.perf_counter()
    spec = WanSpec(dim=1536, num_heads=12, ffn_dim=8960, num_layers=args.blocks)
    teacher = random_wan(spec, seed=0)
    recipes = {
        f"depth 75% ({round(args.blocks * 0.75)} blocks)": Recipe(num_blocks=round(args.blocks * 0.75)),
        f"depth 50% ({args.blocks // 2} blocks)": Recipe(num_blocks=args.blocks // 2),
        "width 50% (6 heads, ffn 4480)": Recipe(num_heads=6, ffn_dim=4480, width_selection="magnitude"),
    }
    students = {name: build_student(teacher, r)[0].eval().to(device, dtype) for name, r in recipes.items()}
    teacher = teacher.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    context = _shape.text_context(args.text_tokens, g)
    inputs = dict(
        x=torch.randn(1, 16, args.frames, args.height, args.width, generator=g).to(device, dtype),
        sigma=0.5,
        context=context.to(device, dtype),
    )
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    models = {"teacher": teacher, **students}
    flops = {n: count_flops(m, inputs) for n, m in models.items()}

    def forward(m):
        def fn():
            with torch.no_grad():
                wan_forward(m, **inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return fn

    secs = dict(zip(models, time_interleaved([forward(m) for m in models.values()], args.repeats, warmup=1)))

    where = _shape.where(device)
    print(
        f"teacher: {spec} | input {tokens} tokens, {args.text_tokens} text tokens | {where}, {args.dtype} "
        f"| median of {args.repeats} interleaved repeats"
    )
    print(f"{'model':<32}{'params':>9}{'GFLOP':>9}{'ms':>10}{'FLOP ratio':>12}{'speedup':>9}{'of FLOP':>9}")
    missed = []
    for name, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        fr, sp = flops["teacher"] / flops[name], secs["teacher"] / secs[name]
        print(
            f"{name:<32}{params / 1e6:>8.1f}M{flops[name] / 1e9:>9.1f}{secs[name] * 1e3:>10.0f}{fr:>11.2f}x"
            f"{sp:>8.2f}x{sp / fr:>8.0%}"
        )
        if name != "teacher" and sp / fr < args.target:
            missed.append(name)

    # Where the time goes: a linear fit t(N blocks) = fixed + N * per_block over the depth students.
    depth = [(args.blocks, secs["teacher"], flops["teacher"])] + [
        (len(students[n].blocks), secs[n], flops[n]) for n in students if n.startswith("depth")
    ]
    if len({d[0] for d in depth}) >= 2:
        n = torch.tensor([d[0] for d in depth], dtype=torch.float64)
        a = torch.stack([torch.ones_like(n), n], 1)
        fixed_t, block_t = torch.linalg.lstsq(
            a, torch.tensor([d[1] for d in depth], dtype=torch.float64)[:, None]
        ).solution[:, 0]
        fixed_f, block_f = torch.linalg.lstsq(
            a, torch.tensor([d[2] for d in depth], dtype=torch.float64)[:, None]
        ).solution[:, 0]
        print(
            f"per block: {block_t * 1e3:.0f} ms, {block_f / 1e9:.1f} GFLOP; outside the blocks (embeddings, head): "
            f"{fixed_t * 1e3:.0f} ms = {fixed_t / secs['teacher']:.0%} of the teacher's time for "
            f"{fixed_f / flops['teacher']:.0%} of its FLOPs"
        )
    for name in missed:
        prof_t, prof_s = op_profile(teacher, inputs), op_profile(models[name], inputs)
        print(f"where the time goes, {name} (share of self CPU time, teacher -> student):")
        for op in list(dict.fromkeys(list(prof_s) + list(prof_t)))[:10]:
            print(f"  {op:<40}{prof_t.get(op, 0):>7.1%} -> {prof_s.get(op, 0):>6.1%}")
    worst = min((secs["teacher"] / secs[n]) / (flops["teacher"] / flops[n]) for n in students)
    status = "OK" if not missed else f"MISSED ({', '.join(missed)})"
    print(
        f"SPEEDUP {status}: "
        + ", ".join(
            f"{n.split(' (')[0]} {secs['teacher'] / secs[n]:.2f}x of {flops['teacher'] / flops[n]:.2f}x FLOPs"
            for n in students
        )
        + f"; worst {worst:.0%} of the FLOP ratio (target {args.target:.0%}); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
