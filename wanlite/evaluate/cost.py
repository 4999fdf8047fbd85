"""What a model costs to run: parameters, weight bytes, forward latency, FLOPs, peak memory.

Latencies are medians of repeats interleaved between the models (a, b, a, b, ...), so load from other
processes on a shared machine hits both alike; speedups are ratios of those medians, never raw times.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.flow import wan_forward


@contextlib.contextmanager
def _quiet_fd2():
    """Send file descriptor 2 to /dev/null: kineto prints `USDT ... profiler_start/stop` there from C++ at every
    profiler start and stop, whatever KINETO_LOG_LEVEL says once it is initialised, and a notebook shows it in red."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_tensor_peak(fn) -> int | None:
    """Peak bytes of tensors alive at once during `fn()` that `fn` allocated, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():  # only around start and stop: whatever `fn` itself writes to stderr still shows
        prof.start()
    try:
        fn()
    finally:
        with _quiet_fd2():
            prof.stop()
    try:
        events = sorted(
            (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
        )
    except AttributeError:  # a torch without kineto memory events
        return None
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory(fn, device: torch.device) -> int | None:
    """Bytes of memory `fn()` needs above what was allocated before it (activations and workspaces, not the
    weights): the CUDA allocator's peak on a GPU, the profiler's peak of live tensor bytes on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_tensor_peak(fn)


def count_flops(model, inputs: dict) -> int:
    """FLOPs of one forward on `wan_forward` inputs (x, sigma, context), counted by torch's FlopCounterMode
    (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        wan_forward(model, **inputs)
    return int(counter.get_total_flops())


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Sequence, repeats: int = 5, warmup: int = 1, stat=None) -> list[float]:
    """Median (or `stat` of the list) seconds of each callable, run in turn (a, b, a, b, ...) so load drift on
    a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [stat(t) if stat else sorted(t)[len(t) // 2] for t in times]


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class ModelCost:
    """What one model costs on the comparison's input."""

    params: int  # parameters
    weight_bytes: int  # bytes of the parameters in their dtype
    forward_s: float  # median seconds of one forward
    forward_min_s: float  # best of the repeats: least disturbed by other processes
    flops: int | None  # FLOPs of one forward
    peak_bytes: int | None  # memory one forward needs above the resident weights
    sample_s: float | None = None  # seconds of one warm video: a full sampling run at the model's own settings
    forwards: int | None = None  # transformer forwards per video (steps, twice with CFG)

    @property
    def flops_per_video(self) -> int | None:
        return None if self.flops is None or self.forwards is None else self.flops * self.forwards


@dataclass
class Cost:
    teacher: ModelCost
    student: ModelCost
    tokens: int  # transformer tokens of the measured input
    device: str  # where it ran
    repeats: int = 0  # timed forwards per model

    @property
    def speedup(self) -> float:
        """Ratio of median forward latencies, teacher / student."""
        return self.teacher.forward_s / self.student.forward_s

    @property
    def speedup_best(self) -> float:
        """Ratio of best-of-repeats latencies: on a busy machine the steadier estimate of the intrinsic speedup."""
        return self.teacher.forward_min_s / self.student.forward_min_s

    @property
    def sample_speedup(self) -> float | None:
        """Wall time per video, teacher / student, each at its own sampling settings."""
        t, s = self.teacher.sample_s, self.student.sample_s
        return None if not t or not s else t / s

    @property
    def video_flops_ratio(self) -> float | None:
        """Forwards × FLOPs per video, teacher / student: what the student saves per video."""
        t, s = self.teacher.flops_per_video, self.student.flops_per_video
        return None if not t or not s else t / s


def measure_cost(teacher, student, inputs: dict, repeats: int = 5, warmup: int = 1, flops: bool = True) -> Cost:
    """Params, bytes, forward latency (median and best of interleaved repeats), FLOPs and peak memory of both
    models on `inputs` (`wan_forward`'s x, sigma, context)."""
    device = next(teacher.parameters()).device

    def run(model):
        def fn():
            with torch.no_grad():
                wan_forward(model, **inputs)
            _sync(device)

        return fn

    fns = [run(teacher), run(student)]
    runs = time_interleaved(fns, repeats, warmup, stat=list)
    costs = []
    for model, fn, secs in zip((teacher, student), fns, runs):
        costs.append(
            ModelCost(
                params=sum(p.numel() for p in model.parameters()),
                weight_bytes=weight_bytes(model),
                forward_s=sorted(secs)[len(secs) // 2],
                forward_min_s=min(secs),
                flops=count_flops(model, inputs) if flops else None,
                peak_bytes=peak_memory(fn, device),
            )
        )
    hs, p = inputs["x"].shape, teacher.config.patch_size
    tokens = (hs[2] // p[0]) * (hs[3] // p[1]) * (hs[4] // p[2])
    return Cost(costs[0], costs[1], tokens, str(device), repeats)


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes; bytes use 'B')."""
    if n is None:
        return "n/a"
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def cost_rows(cost: Cost) -> list[tuple[str, str, str, str]]:
    """(what, teacher, student, teacher/student) rows for tables."""
    t, s = cost.teacher, cost.student

    def ratio(a, b):
        return "n/a" if not a or not b else f"{a / b:.2f}x"

    rows = [
        ("params", human(t.params), human(s.params), ratio(t.params, s.params)),
        ("weights", human(t.weight_bytes, "B"), human(s.weight_bytes, "B"), ratio(t.weight_bytes, s.weight_bytes)),
        ("FLOPs / forward", human(t.flops), human(s.flops), ratio(t.flops, s.flops)),
        (
            f"forward, median ({cost.tokens} tokens)",
            f"{t.forward_s * 1e3:.1f} ms",
            f"{s.forward_s * 1e3:.1f} ms",
            ratio(t.forward_s, s.forward_s),
        ),
        (
            f"forward, best of {cost.repeats}",
            f"{t.forward_min_s * 1e3:.1f} ms",
            f"{s.forward_min_s * 1e3:.1f} ms",
            ratio(t.forward_min_s, s.forward_min_s),
        ),
        (
            "peak memory / forward",
            human(t.peak_bytes, "B"),
            human(s.peak_bytes, "B"),
            ratio(t.peak_bytes, s.peak_bytes),
        ),
    ]
    if t.forwards and s.forwards:
        rows += [
            ("forwards / video", str(t.forwards), str(s.forwards), ratio(t.forwards, s.forwards)),
            (
                "FLOPs / video",
                human(t.flops_per_video),
                human(s.flops_per_video),
                ratio(t.flops_per_video, s.flops_per_video),
            ),
        ]
    if t.sample_s and s.sample_s:
        rows.append(("wall / video", f"{t.sample_s:.3f} s", f"{s.sample_s:.3f} s", ratio(t.sample_s, s.sample_s)))
    return rows
