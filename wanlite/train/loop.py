"""Distil a Wan teacher into a student: one accelerate training loop, from a laptop CPU to many GPUs.

    from wanlite.train import DistillConfig, distill
    result = distill(DistillConfig(run_dir="runs/a", steps=2000), teacher=teacher, student=student)

or `wanlite distill --config run.yaml [--resume]` (`accelerate launch -m wanlite.train --config ...` on many
GPUs). accelerate owns devices, precision, DDP / FSDP and `save_state`; the objective (`train.objectives`) owns
the loss and the held-out measure; `train.rundir` and `train.checkpoints` own what is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.display import progress
from ..errors import ConfigError, NonFiniteLossError
from . import data as wdata
from .checkpoints import latest_checkpoint, save_checkpoint, set_aside, step_of
from .config import DistillConfig
from .models import resolve_models
from .objectives import OBJECTIVES
from .optim import make_optimizer, place, resolve_dtype
from .rundir import RunDir


@dataclass
class DistillResult:
    """What a run produced: its directory, final losses, the validation history and the exported student."""

    run_dir: Path
    steps: int
    losses: dict  # last logged loss components
    validation: list  # validation records over the run (step, rel_mse, cosine, per-bucket)
    student_path: Path | None
    student: Any = field(default=None, repr=False)
    started_at: int = 0  # the step this call started from: > 0 when it resumed a run

    @property
    def what_happened(self) -> str:
        """'trained 20 steps', 'resumed at step 10 and trained 10 more' or 'nothing to do: ...'."""
        if self.started_at >= self.steps:
            return f"nothing to do: all {self.steps} steps were already done"
        if self.started_at:
            return f"resumed at step {self.started_at} and trained {self.steps - self.started_at} more"
        return f"trained {self.steps} steps"

    def __repr__(self) -> str:
        skip = ("step", "lr", "step_time", "samples", "grad_norm")
        parts = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items() if k not in skip)
        val = ""
        if self.validation:
            first, last = self.validation[0], self.validation[-1]
            val = f"; val rel_mse {first['rel_mse']:.3f} -> {last['rel_mse']:.3f}"
            val += "".join(f", {k} {last[k]:.3f}" for k in ("cosine", "final_rel_mse") if k in last)
        return (
            f"DistillResult({self.steps} steps in {self.run_dir} ({self.what_happened}): {parts}{val}; "
            f"student at {self.student_path})"
        )

    def metrics(self) -> list[dict]:
        """Every line of the run's metrics.jsonl."""
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]

    def plot(self):
        """Training loss components and held-out velocity error over steps."""
        from ..evaluate.curves import metrics_figure

        return metrics_figure(self.metrics())


class Window:
    """Loss parts averaged over the steps between two metric lines."""

    def __init__(self):
        self.sums, self.steps, self.seconds = {}, 0, 0.0

    def add(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight

    def tick(self, seconds: float) -> None:
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds

    def flush(self, step: int, **extra) -> dict:
        n = max(self.steps, 1)
        record = {
            "step": step,
            **{k: v / n for k, v in self.sums.items()},
            "step_time": self.seconds / n,
            **{k: v for k, v in extra.items() if v is not None},
        }
        self.__init__()
        return record


# ------------------------------------------------------------------ the loop
def train(
    acc, cfg: DistillConfig, objective, student, optimizer, scheduler, ema, batches, start: int, run: RunDir, log
) -> dict:
    """Optimiser steps start..cfg.steps, top to bottom: data, loss, backward, clip, step, log, validate, save."""
    micro = batches.iterate(start * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    bar = progress(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="distill",
        disable=not (cfg.progress and acc.is_main_process) or start >= cfg.steps,  # a finished run: no empty bar
    )
    window, record = Window(), {}
    for step in bar:
        t0, done = time.perf_counter(), step + 1
        for m in range(cfg.grad_accum):  # forward and backward, accumulated over micro-batches
            k, batch = next(micro)
            with acc.no_sync(student) if m < cfg.grad_accum - 1 else contextlib.nullcontext():
                loss = objective.loss(student, batch, batches.keys(k))
                window.add(finite_parts(acc, loss.parts, done, k, run, log), 1 / cfg.grad_accum)
                acc.backward(loss.total / cfg.grad_accum)
        grad_norm = clip_gradients(acc, cfg, student, done, k, run, log)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(acc.unwrap_model(student).parameters())
        window.tick(time.perf_counter() - t0)
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = window.flush(
                done,
                lr=scheduler.get_last_lr()[0],
                grad_norm=grad_norm,
                samples=done * batches.global_batch * cfg.grad_accum,
            )
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
        if (cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps:
            log({"step": done, **validate(acc, objective, student, ema)})
        if cfg.checkpoint_every >= 0 and (
            (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps
        ):
            if not weights_finite(acc, student):  # never checkpoint weights an update has already broken
                stop_non_finite(run, done + 1, 0, ["weights"], {"weights": float("nan")}, log)
            save_checkpoint(acc, run.path, done, ema, cfg.keep_checkpoints)
            if cfg.snapshot_weights:  # the disk-light history: the latest full checkpoint + weights per checkpoint
                snapshot = run.path / "snapshots" / f"step-{done:07d}.safetensors"
                export_student(
                    acc, student, snapshot, "comfyui", {"step": done, "snapshot_of": "training weights"}, "fp32"
                )
    return record


def finite_parts(acc, parts: dict, step: int, micro: int, run: RunDir, log) -> dict[str, float]:
    """The loss parts averaged over processes (all ranks agree); stop before the update if one is not finite."""
    names = list(parts)
    values = dict(zip(names, acc.reduce(torch.stack([parts[n].detach() for n in names]), "mean").tolist()))
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    bad = [n for n in bad if n != "loss"] or bad  # name the term, not only the sum it spoils
    if bad:
        stop_non_finite(run, step, micro, bad, values, log)
    return values


def clip_gradients(acc, cfg: DistillConfig, student, step: int, micro: int, run: RunDir, log) -> float | None:
    if cfg.max_grad_norm <= 0:
        return None
    grad_norm = float(acc.clip_grad_norm_(student.parameters(), cfg.max_grad_norm))
    if not math.isfinite(grad_norm) and acc.mixed_precision != "fp16":  # fp16: the grad scaler handles it
        stop_non_finite(run, step, micro, ["grad_norm"], {"grad_norm": grad_norm}, log)
    return grad_norm


def weights_finite(acc, student) -> bool:
    """Every process's (shard of the) student weights are finite."""
    bad = sum(int(not torch.isfinite(getattr(p, "_local_tensor", p).detach()).all()) for p in student.parameters())
    return acc.reduce(torch.tensor(float(bad), device=acc.device), "sum").item() == 0


def stop_non_finite(run: RunDir, step: int, micro: int, bad: list[str], values: dict, log):
    """Stop before the bad update. The checkpoint of step-1 holds the weights that produced the non-finite
    value: it is set aside (checkpoints/diverged-step-…), so resuming starts from before the divergence."""
    suspect = latest_checkpoint(run.path)
    checkpoint = latest_checkpoint(run.path, before=step - 1)
    log({"step": step, "event": "non-finite", "components": bad, **{k: str(v) for k, v in values.items()}})
    aside = ""
    if suspect is not None and step_of(suspect) >= step - 1:
        if int(os.environ.get("RANK", "0")) == 0:
            set_aside(suspect)
        aside = f" ({suspect.name} holds the weights that produced it: moved to diverged-{suspect.name})"
    where = (
        f"the last checkpoint from before the divergence is {checkpoint}{aside}"
        if checkpoint
        else f"no checkpoint from before the divergence exists{aside}"
    )
    then = "then resume with --resume" if checkpoint else "then start again in a new run_dir"
    if bad == ["weights"]:
        what = f"the weights became non-finite in the update of step {step - 1}; they were not checkpointed"
    else:
        what = (
            f"loss became non-finite at step {step} (micro-batch {micro}) in {', '.join(bad)} "
            f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); the update was not applied"
        )
    raise NonFiniteLossError(
        f"{what}, and {where}. Fix: lower lr or raise warmup_steps, check that micro-batch's data, {then}.",
        step,
        bad,
        checkpoint,
    )


def validate(acc, objective, student, ema) -> dict:
    """The objective's held-out measure, with the EMA weights when EMA is on."""
    raw = acc.unwrap_model(student)
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
    with acc.autocast():
        report = objective.validate(student)
    if ema is not None:
        ema.restore(raw.parameters())
    return {f"val/{k}": v for k, v in report.items()}


# ------------------------------------------------------------------ a run, from config to exported student
def distill(
    config: DistillConfig | str | Path | None = None,
    *,
    teacher=None,
    student=None,
    data=None,
    block_map: list[int] | None = None,
    kept_channels=None,
    resume: bool = False,
    on_log=None,
    **overrides,
) -> DistillResult:
    """Train `student` from `teacher` (objects, or paths in the config) with the config's objective.

    The block map and kept channels come from `student.pruning` (pass them only to override). `on_log(record)`
    sees every metrics line as it is written (e.g. `LivePlot()`). `resume=True` continues from the run
    directory's newest checkpoint (or starts fresh when it has none); without it, a run directory that already
    holds a run is an error, never overwritten."""
    if not isinstance(config, DistillConfig):
        config = DistillConfig.from_yaml(config) if config else DistillConfig()
    cfg = config.replace(**overrides)
    run = RunDir(cfg.run_dir, resume, cfg.objective, config=cfg)  # locked until this run ends
    try:
        return _run(cfg, run, teacher, student, data, block_map, kept_channels, on_log)
    finally:
        run.close()


def _run(cfg, run: RunDir, teacher, student, data, block_map, kept_channels, on_log) -> DistillResult:
    acc = make_accelerator(cfg, run.path)
    source = wdata.open_source(
        data if data is not None else cfg.data, n=cfg.synthetic_samples, latent_shape=cfg.latent_shape, seed=cfg.seed
    )
    train_idx, val_idx = wdata.split(len(source), cfg.val_samples, cfg.seed)
    teacher, student, block_map, kept_channels = resolve_models(
        cfg, teacher, student, source, val_idx, block_map, kept_channels
    )
    objective = OBJECTIVES[cfg.objective](cfg, teacher, student, block_map, kept_channels, source, acc.device)
    objective.teacher = prepare_teacher(acc, cfg, teacher) if objective.needs_teacher else None
    student, optimizer, scheduler, ema = prepare_student(acc, cfg, student)
    objective.prepare(acc)
    source = objective.data(source, run.path, acc)  # e.g. the teacher's ODE, solved once
    batches = wdata.Batches(
        source, train_idx, cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes, cfg.num_workers
    )
    objective.prepare_validation(val_idx)
    start = run.begin(acc, cfg, getattr(objective.raw_student, "pruning", None), ema, scheduler)
    log = run.logger(acc, on_log)
    if start and acc.is_main_process:
        what = "already at step {} of {}: nothing to train" if start >= cfg.steps else "resuming at step {} of {}"
        print(f"{run.path}: {what.format(start, cfg.steps)}", flush=True)
        if hasattr(on_log, "history"):  # a LivePlot draws the run so far at once
            on_log.history(run.records())
    acc.init_trackers(
        "wanlite-distill", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    )
    try:
        if start == 0:
            log({"step": 0, **validate(acc, objective, student, ema)})
        last = train(acc, cfg, objective, student, optimizer, scheduler, ema, batches, start, run, log)
        final, path = finish(acc, cfg, run, student, ema, objective, last, data)
    finally:
        acc.end_training()  # closes trackers and, under a launcher, the process group: keep it last
    records = run.records() if acc.is_main_process else []
    last = last or next((r for r in reversed(records) if "loss" in r), {})  # a finished run: its last losses
    validation = run.validation() if acc.is_main_process else []
    return DistillResult(run.path, cfg.steps, last, validation, path, final, started_at=start)


def make_accelerator(cfg: DistillConfig, run: Path):
    from accelerate import Accelerator
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import DistributedType, ProjectConfiguration

    available = {str(a) for a in get_available_trackers()}
    missing = [t for t in cfg.trackers if t not in available]
    if missing:  # accelerate would drop them silently
        raise ConfigError(
            f"trackers {missing} are not installed here; available: {sorted(available)}. "
            f"Fix: pip install {' '.join(missing)}, or remove them (metrics.jsonl is always written)."
        )
    on_gpu = torch.cuda.is_available()
    mixed = ("bf16" if on_gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = Accelerator(
        mixed_precision=mixed,
        cpu=not on_gpu,
        log_with=list(cfg.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
    )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        warnings.warn(
            f"FSDP was asked for, but accelerate runs {acc.distributed_type} here (it enables FSDP only on GPU-like "
            "devices): every process holds the whole student and teacher.",
            stacklevel=2,
        )
    return acc


def prepare_teacher(acc, cfg: DistillConfig, teacher):
    """The frozen teacher: no gradients, inference mode, bf16 on a GPU (sharded under FSDP)."""
    from accelerate.utils import DistributedType

    if teacher is None:
        raise ConfigError(
            "no teacher: pass distill(teacher=model) or set `teacher` in the config (a target cache "
            "as `data` is the only way to train without one)."
        )
    teacher.requires_grad_(False).eval()
    sharded = acc.distributed_type == DistributedType.FSDP and acc.is_fsdp2
    dtype = resolve_dtype(cfg.teacher_dtype, torch.cuda.is_available())
    if sharded:  # fully_shard moves each block to the device as it shards it: never a whole copy there
        return shard_frozen(acc, place(teacher, None, dtype))
    return place(teacher, acc.device, dtype)


def shard_frozen(acc, model):
    """FSDP2: shard a frozen model (the teacher) block by block over the processes. Not through accelerate:
    `prepare_model(evaluation_mode=True)` would keep a whole copy on every process and add the teacher to the
    models it checkpoints, where `save_state` pairs the student's optimiser with it (KeyError at the first
    checkpoint)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def prepare_student(acc, cfg: DistillConfig, student):
    """(student, optimiser, lr scheduler, EMA or None), prepared by accelerate; the student trains in fp32."""
    from accelerate.utils import DistributedType
    from diffusers.optimization import get_scheduler

    if cfg.ema_decay > 0 and acc.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "ema_decay > 0 under FSDP: diffusers' EMAModel keeps a full unsharded copy per process. "
            "Fix: set ema_decay: 0 for FSDP runs (or use DDP when the student fits one GPU)."
        )
    student = place(student, None, torch.float32).train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = make_optimizer(
        cfg.optimizer, student.parameters(), cfg.lr, cfg.weight_decay, **(cfg.optimizer_args or {})
    )
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * acc.num_processes,
        num_training_steps=cfg.steps * acc.num_processes,
    )  # accelerate steps it once per process
    prepared, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    ema = None
    if cfg.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(acc.unwrap_model(prepared).parameters(), decay=cfg.ema_decay)
    return prepared, optimizer, scheduler, ema


def finish(acc, cfg: DistillConfig, run: RunDir, student, ema, objective, last: dict, data) -> tuple[Any, Path | None]:
    """The trained student (EMA weights when on), exported to run_dir/student with its provenance."""
    final = acc.unwrap_model(student)
    if ema is not None:
        ema.copy_to(final.parameters())
    if objective.sampling() is not None:  # a student that samples on its own schedule carries it
        final.sampling = objective.sampling()
    if not cfg.export:
        return final, None
    records = run.records() if acc.is_main_process else []
    validation = [r for r in records if "val/rel_mse" in r]
    started = getattr(final, "provenance", None) or {}  # a WanLiteStudent knows how it was made
    meta = getattr(objective.source, "meta", None) or {}
    teacher_name = (
        cfg.teacher
        or started.get("teacher")
        or meta.get("teacher")
        or (f"targets {objective.source.path}" if not objective.needs_teacher else "in-memory model")
    )
    provenance = {
        "teacher": teacher_name,
        "recipe": cfg.recipe or started.get("recipe"),
        "objective": cfg.objective,
        "steps": cfg.steps,
        "data": str(cfg.data if data is None else data),
        "final_metrics": validation[-1] if validation else {},
        "final_losses": last,
        "distill_config": cfg.to_dict(),
    }
    return final, export_student(acc, student, run.path / "student", cfg.export_layout, provenance, cfg.export_dtype)


def export_student(acc, student, out: Path, layout: str, provenance: dict, dtype: str | None = None) -> Path:
    """Write the trained student through `save_wan` (full weights gathered under FSDP), records included."""
    from accelerate.utils import DistributedType

    from ..formats import save_wan

    model = acc.unwrap_model(student)
    if acc.distributed_type == DistributedType.FSDP:  # gather the shards into a full copy on the main process
        state = acc.get_state_dict(student)
        if acc.is_main_process:
            full = type(model).from_config(model.config)
            full.load_state_dict({k: v.float() for k, v in state.items()})
            full.pruning, full.sampling = getattr(model, "pruning", None), getattr(model, "sampling", None)
            model = full
    if acc.is_main_process:
        out = Path(save_wan(model, out, layout=layout, dtype=dtype, provenance=provenance, overwrite=True))
    acc.wait_for_everyone()
    return out
