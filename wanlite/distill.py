"""Distil a Wan teacher into a student: one accelerate training loop, from a laptop CPU to many GPUs.

    from wanlite.distill import DistillConfig, distill
    result = distill(DistillConfig(run_dir="runs/a", steps=2000), teacher=teacher, student=student,
                     block_map=pruning.kept_blocks, kept_channels=pruning.kept_channels)

or `accelerate launch -m wanlite.distill --config run.yaml [--resume]`. accelerate owns devices, precision,
DDP / FSDP and `save_state`; this module owns the objective (see `losses.py`), checkpoints and the run directory:
`config.yaml`, `metrics.jsonl`, `checkpoints/step-#######/`, `student/`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch
import yaml

from . import data as wdata
from .errors import DestinationExistsError, WanliteError
from .losses import FeatureCapture, Objective, distill_loss, forward, model_inputs, sample_draws, velocity_report


class ConfigError(WanliteError):
    """A distillation config has an unknown key or a value of the wrong type."""


class NonFiniteLossError(WanliteError):
    """The loss became NaN or infinite; the run stopped before the bad update and kept its last good checkpoint."""

    def __init__(self, message: str, step: int, components: list[str], checkpoint: Path | None):
        super().__init__(message)
        self.step, self.components, self.checkpoint = step, components, checkpoint


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run needs; saved as `run_dir/config.yaml`, so resuming takes one flag."""

    run_dir: str = "runs/distill"  # everything the run writes lives here
    teacher: str = ""  # teacher directory/file (any Wan layout); unused when distill(teacher=model)
    student: str = ""  # a student to (continue to) train; empty = build one from `recipe`
    recipe: dict | None = None  # wanlite.prune.Recipe fields, used when `student` is empty
    block_map: tuple[int, ...] | None = None  # teacher block of each student block; None = from the recipe
    data: str = "synthetic"  # a wanlite data cache (latents | trajectory | targets) or "synthetic"
    latent_shape: tuple[int, ...] = (16, 1, 8, 8)  # synthetic data: [C, F, H, W]
    synthetic_samples: int = 256  # synthetic data: number of samples
    val_samples: int = 8  # held out (seeded) from the data for validation
    steps: int = 1000  # optimiser steps
    batch_size: int = 1  # samples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step (global batch = batch_size * processes * grad_accum)
    lr: float = 1e-5  # peak learning rate
    optimizer: str = "adamw"  # adamw | adam | sgd | adafactor | adamw8bit | "module:Class"
    optimizer_args: dict | None = None  # extra optimiser keyword arguments (betas, eps, momentum...)
    weight_decay: float = 0.0  # decoupled weight decay
    lr_scheduler: str = "constant_with_warmup"  # any diffusers get_scheduler name (cosine, linear, ...)
    warmup_steps: int = 0  # linear warmup, in optimiser steps
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    ema_decay: float = 0.0  # EMA of the student weights (exported when on); 0 = off
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    teacher_dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    gradient_checkpointing: bool = False  # recompute student blocks in backward (less memory, ~30% slower)
    shift: float = 5.0  # Wan's sigma shift for training sigmas
    sigma_sampling: str = "uniform"  # uniform | logit_normal (before the shift)
    uncond_fraction: float = 0.1  # share of samples that see the negative (empty-prompt) context
    w_out: float = 1.0  # weight of MSE(v_student, v_teacher)
    w_feat: float = 0.0  # weight of the summed feature MSE at mapped blocks
    w_task: float = 0.0  # weight of MSE(v_student, eps - x0) (real latents only)
    log_every: int = 10  # steps between metric lines
    val_every: int = 100  # steps between validations; 0 = only at start and end
    checkpoint_every: int = 500  # steps between checkpoints; 0 = only at the end; -1 = never (benchmarks)
    keep_checkpoints: int = 2  # most recent checkpoints kept
    trackers: tuple[str, ...] = ()  # accelerate trackers, e.g. ["tensorboard"]
    seed: int = 0  # data order, noise and the validation split
    num_workers: int = 0  # DataLoader workers
    export: bool = True  # save the final student to run_dir/student
    export_layout: str = "wan"  # wan | comfyui | diffusers
    export_dtype: str | None = None  # None keeps fp32 (comfyui layout: bf16); or bf16 | fp16 | fp32
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            if not _is_type(value, hints[f.name]):
                raise ConfigError(f"DistillConfig.{f.name}={value!r} ({type(value).__name__}); expected "
                                  f"{_type_name(hints[f.name])}. Fix the value in the config.")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(f"steps, batch_size and grad_accum must be >= 1 (got {self.steps}, {self.batch_size}, {self.grad_accum}).")

    @property
    def objective(self) -> Objective:
        return Objective(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Objective)})

    def replace(self, **changes) -> "DistillConfig":
        """A copy with some fields changed; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"DistillConfig has no field(s) {unknown}; fields: {sorted(names)}.")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "DistillConfig":
        return cls().replace(**values)

    @classmethod
    def from_yaml(cls, path) -> "DistillConfig":
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of DistillConfig fields, found {type(values).__name__}.")
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_yaml(self, path) -> Path:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return Path(path)


def _is_type(value, hint) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin is not None and type(None) in args:  # X | None
        return value is None or any(_is_type(value, a) for a in args if a is not type(None))
    if origin is tuple:
        return isinstance(value, tuple) and all(_is_type(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclass
class DistillResult:
    """What a run produced: its directory, final losses, the validation history and the exported student."""

    run_dir: Path
    steps: int
    losses: dict  # last logged loss components
    validation: list  # validation records over the run (step, rel_err, cosine, per-bucket)
    student_path: Path | None
    student: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items() if k in ("loss", "out", "feat", "task"))
        val = ""
        if self.validation:
            first, last = self.validation[0], self.validation[-1]
            val = f"; val rel_err {first['rel_err']:.3f} -> {last['rel_err']:.3f}, cosine {last['cosine']:.3f}"
        return f"DistillResult({self.steps} steps in {self.run_dir}: {parts}{val}; student at {self.student_path})"

    def metrics(self) -> list[dict]:
        """Every line of the run's metrics.jsonl."""
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]

    def plot(self):
        """Training loss components and held-out velocity error over steps."""
        return metrics_figure(self.metrics())


def metrics_figure(rows: list[dict]):
    """Loss terms and held-out velocity error (overall and per sigma bucket) of metrics.jsonl rows: a Figure
    outside pyplot, so a notebook shows it once and no display is needed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.5))
    a, b = fig.subplots(1, 2)
    for key in ("loss", "out", "feat", "task"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            a.plot(*zip(*pts), label=key)
    a.set(yscale="log", xlabel="step", title="training loss")
    if a.lines:
        a.legend()
    for key in [k for k in (rows[-1] if rows else {}) if k.startswith("val/rel_err")] or ["val/rel_err"]:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            b.plot(*zip(*pts), label=key[4:])
    b.set(xlabel="step", title="held-out relative velocity error")
    if b.lines:
        b.legend(fontsize=7)
    fig.tight_layout()
    return fig


class LivePlot:
    """Pass as `distill(..., on_log=LivePlot())`: the loss and validation figure redraws in place in a notebook
    while the run goes. Silent headless (papermill, nbval, CI), where `result.plot()` shows the same curves."""

    def __init__(self, every: int = 20):
        self.rows, self.every, self.handle = [], every, None
        self.live = not (os.environ.get("WANLITE_HEADLESS") or os.environ.get("CI"))

    def __call__(self, record: dict) -> None:
        self.rows.append(record)
        if not self.live or ("val/rel_err" not in record and record["step"] % self.every):
            return
        from IPython.display import display

        figure = metrics_figure(self.rows)
        if self.handle is None:
            self.handle = display(figure, display_id=True)
        else:
            self.handle.update(figure)


# ------------------------------------------------------------------ the loop
def _train_loop(acc, cfg: DistillConfig, teacher, student, optimizer, scheduler, ema, batches, val,
                block_map, kept_channels, start: int, run: Path, log) -> dict:
    """Optimiser steps start..cfg.steps: data, teacher, student, loss, backward, clip, step, log, validate, save."""
    if os.environ.get("WANLITE_HEADLESS") or os.environ.get("CI"):  # papermill, nbval, CI: a text bar
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    objective = cfg.objective
    raw = acc.unwrap_model(student)
    teacher_dtype = None if teacher is None else next(teacher.parameters()).dtype
    feat_blocks = list(block_map) if objective.w_feat > 0 else []
    micro = batches.iterate(start * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="distill",
               disable=not (cfg.progress and acc.is_main_process))
    record, window, steps_in_window, time_in_window = {}, {}, 0, 0.0
    for step in bar:
        t0 = time.perf_counter()
        for m in range(cfg.grad_accum):
            k, batch = next(micro)
            inputs = model_inputs(batch, batches.keys(k), cfg.seed, objective, acc.device)
            if "v_teacher" in batch:  # teacher-target cache: no teacher forward
                v_teacher = batch["v_teacher"].to(acc.device).float()
                teacher_feats = {b: batch[f"feat.{b}"].to(acc.device) for b in feat_blocks}
            else:
                with torch.inference_mode(), FeatureCapture(teacher, feat_blocks) as cap:
                    v_teacher = forward(teacher, inputs, teacher_dtype)
                v_teacher = v_teacher.float().clone()  # a normal tensor, usable by autograd
                teacher_feats = {b: f.clone() for b, f in cap.features.items()}
            last_micro = m == cfg.grad_accum - 1
            with (contextlib.nullcontext() if last_micro else acc.no_sync(student)):
                with FeatureCapture(raw, range(len(block_map)) if feat_blocks else []) as cap_s:
                    v_student = forward(student, inputs)
                loss = distill_loss(v_student, v_teacher, objective, cap_s.features, teacher_feats, block_map,
                                    kept_channels, inputs["task"])
                names = list(loss.parts)
                parts = acc.reduce(torch.stack([loss.parts[n].detach() for n in names]), "mean")  # all ranks agree
                bad = [n for n, v in zip(names, parts.tolist()) if not math.isfinite(v)]
                if bad:
                    _stop_non_finite(acc, run, step + 1, k, bad, dict(zip(names, parts.tolist())), log)
                acc.backward(loss.total / cfg.grad_accum)
            for n, v in zip(names, parts.tolist()):
                window[n] = window.get(n, 0.0) + v / cfg.grad_accum
        grad_norm = acc.clip_grad_norm_(student.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        if grad_norm is not None and not math.isfinite(float(grad_norm)) and acc.mixed_precision != "fp16":
            # (fp16: the grad scaler skips the step and lowers its scale; that is its normal work)
            _stop_non_finite(acc, run, step + 1, k, ["grad_norm"], {"grad_norm": float(grad_norm)}, log)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(raw.parameters())
        done, steps_in_window, time_in_window = step + 1, steps_in_window + 1, time_in_window + time.perf_counter() - t0
        if done % cfg.log_every == 0 or done == cfg.steps:
            n = steps_in_window
            record = {"step": done, "loss": sum(getattr(objective, f"w_{k2}") * v / n for k2, v in window.items()),
                      **{k2: v / n for k2, v in window.items()}, "lr": scheduler.get_last_lr()[0],
                      "step_time": time_in_window / n, "samples": done * batches.global_batch * cfg.grad_accum}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            window, steps_in_window, time_in_window = {}, 0, 0.0
        if (cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps:
            log({"step": done, **{f"val/{k2}": v for k2, v in _validate(acc, student, ema, val).items()}})
        if cfg.checkpoint_every >= 0 and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
            save_checkpoint(acc, run, done, ema, cfg.keep_checkpoints)
    return record


def _stop_non_finite(acc, run: Path, step: int, micro: int, bad: list[str], values: dict, log):
    checkpoint = latest_checkpoint(run)
    log({"step": step, "event": "non-finite", "components": bad, **{k: str(v) for k, v in values.items()}})
    where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved yet"
    raise NonFiniteLossError(
        f"loss became non-finite at step {step} (micro-batch {micro}) in {', '.join(bad)} "
        f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); the update was not applied and {where}. "
        "Fix: lower lr or raise warmup_steps, check that micro-batch's data, then resume with --resume.",
        step, bad, checkpoint)


@torch.no_grad()
def _validate(acc, student, ema, val: dict) -> dict:
    """Relative velocity error and cosine on the fixed held-out batch (EMA weights when EMA is on)."""
    raw = acc.unwrap_model(student)
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
    with acc.autocast():
        v = torch.cat([forward(student, chunk).float() for chunk in val["chunks"]])
    if ema is not None:
        ema.restore(raw.parameters())
    return velocity_report(v, val["v_teacher"], val["sigma"])


def _calibration_batch(source, indices) -> dict:
    """The held-out samples in wanlite.calibrate's vocabulary (clean latents, or a given noisy state)."""
    batch = wdata.fixed_batch(source, indices)
    if "latents" in batch:
        return {"latents": batch["latents"], "context": batch["context"]}
    return {"hidden_states": batch["noisy"], "timestep": batch["sigma"] * 1000, "context": batch["context"]}


def _validation_batch(acc, cfg, source, indices, teacher, chunk: int) -> dict:
    """Held-out inputs with fixed noise, sigmas spread evenly over (0, 1), the conditional context, and
    the teacher's velocities for them (computed once)."""
    batch = wdata.fixed_batch(source, indices)
    keys = [-(i + 1) for i in range(len(indices))]  # a draw range training never uses
    inputs = model_inputs(batch, keys, cfg.seed, dataclasses.replace(cfg.objective, uncond_fraction=0.0), acc.device)
    if "latents" in batch:
        x0 = batch["latents"].to(acc.device).float()
        eps, _, _ = sample_draws(keys, cfg.seed, tuple(x0.shape[1:]), acc.device)
        sigma = (torch.arange(len(keys), device=acc.device) + 0.5) / len(keys)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        inputs.update(noisy=(1 - s) * x0 + s * eps, sigma=sigma)
    inputs.pop("task")
    chunks = [{k: v[i:i + chunk] for k, v in inputs.items()} for i in range(0, len(keys), chunk)]
    if "v_teacher" in batch:
        v_teacher = batch["v_teacher"].to(acc.device).float()
    else:
        dtype = next(teacher.parameters()).dtype
        with torch.inference_mode():
            v_teacher = torch.cat([forward(teacher, c, dtype).float() for c in chunks]).clone()
    return {"chunks": chunks, "v_teacher": v_teacher, "sigma": inputs["sigma"]}


# ------------------------------------------------------------------ checkpoints
def latest_checkpoint(run) -> Path | None:
    """The newest complete checkpoint of a run directory (a half-written one is never picked)."""
    done = sorted((Path(run) / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def save_checkpoint(acc, run: Path, step: int, ema, keep: int) -> Path:
    """accelerate `save_state` into a temp dir, then an atomic rename: a kill mid-save loses nothing."""
    final = run / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        progress = {"step": step}
        if ema is not None:
            from safetensors.torch import save_file

            state = ema.state_dict()
            save_file({str(i): t.contiguous() for i, t in enumerate(state.pop("shadow_params"))}, str(tmp / "ema.safetensors"))
            progress["ema"] = state
        (tmp / "progress.json").write_text(json.dumps(progress))
        tmp.replace(final)
        for old in sorted((run / "checkpoints").glob("step-*"))[:-max(keep, 1)]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def load_checkpoint(acc, checkpoint: Path, ema) -> int:
    """Restore model, optimiser, scheduler, RNG (accelerate) and EMA; return the step to continue from."""
    acc.load_state(str(checkpoint))
    progress = json.loads((checkpoint / "progress.json").read_text())
    if ema is not None:
        from safetensors.torch import load_file

        shadow = load_file(str(checkpoint / "ema.safetensors"))
        ema.load_state_dict({**progress["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
    return int(progress["step"])


# ------------------------------------------------------------------ setup
def _dtype(name: str, on_gpu: bool) -> torch.dtype:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    if name not in table:
        raise ConfigError(f"teacher_dtype={name!r}; expected auto | bf16 | fp16 | fp32.")
    return table[name]


def place(model, device, dtype: torch.dtype):
    """Move `model` to `device` and cast it to `dtype`, keeping the modules diffusers keeps in fp32 (rope,
    time embedder, modulation tables, norms) in fp32, as `from_pretrained(torch_dtype=...)` does."""
    if device is not None:
        model = model.to(device)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        want = torch.float32 if dtype != torch.float32 and keep & set(name.split(".")) else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    return model


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, **kwargs):
    """An optimiser by name: adamw | adam | sgd | adafactor | adamw8bit (bitsandbytes) | "package.module:Class"."""
    import importlib

    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
             "adafactor": getattr(torch.optim, "Adafactor", None)}
    if name.lower() == "adamw8bit":
        cls = importlib.import_module("bitsandbytes.optim").AdamW8bit
    elif ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    elif table.get(name.lower()) is not None:
        cls = table[name.lower()]
    else:
        raise ConfigError(f"optimizer={name!r} is not known; expected one of {sorted(table)}, adamw8bit, or 'module:Class'.")
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)


def _models(cfg: DistillConfig, teacher, student, block_map, kept_channels, need_teacher: bool, calib_batch):
    """Teacher and student from objects or paths; the block map and kept channels from the recipe's Pruning."""
    pruning = None
    if teacher is None and cfg.teacher and (need_teacher or not (student is not None or cfg.student)):
        from .formats import load_wan

        teacher = load_wan(cfg.teacher)
    if student is None and cfg.student:
        from .formats import load_wan

        student = load_wan(cfg.student)
    elif student is None:
        if cfg.recipe is None or teacher is None:
            raise ConfigError("no student: pass distill(student=model), or set `student` (a path) or `recipe` "
                              "(wanlite.prune.Recipe fields) together with `teacher` in the config.")
        from .formats import spec_of
        from .prune import Recipe, build_student

        recipe, tspec = Recipe.from_dict(cfg.recipe), spec_of(teacher)
        sspec = recipe.student_spec(tspec)
        calibration = None
        if recipe.blocks == "importance" or (recipe.width_selection == "importance"
                                             and (sspec.dim, sspec.ffn_dim) != (tspec.dim, tspec.ffn_dim)):
            from .calibrate import calibrate

            calibration = calibrate(teacher, calib_batch, seed=cfg.seed)  # on the held-out samples
        student, pruning = build_student(teacher, recipe, calibration)
        block_map = block_map if block_map is not None else pruning.kept_blocks
        kept_channels = kept_channels if kept_channels is not None else pruning.kept_channels
    if block_map is None:
        block_map = cfg.block_map
    depth = len(student.blocks)
    if block_map is None and teacher is not None and len(teacher.blocks) == depth:
        block_map = list(range(depth))
    if block_map is None and cfg.w_feat > 0:
        raise ConfigError(f"w_feat={cfg.w_feat} needs block_map (the teacher block of each of the {depth} student blocks).")
    block_map = list(block_map or [])
    if block_map and (len(block_map) != depth or (teacher is not None and max(block_map) >= len(teacher.blocks))):
        raise ConfigError(f"block_map={block_map} must give one teacher block (< {len(teacher.blocks) if teacher else '?'}) "
                          f"for each of the {depth} student blocks.")
    if kept_channels is not None:
        kept_channels = torch.as_tensor(kept_channels, dtype=torch.long)
    return teacher, student, block_map, kept_channels, pruning


def distill(config: DistillConfig | str | Path | None = None, *, teacher=None, student=None, data=None,
            block_map: list[int] | None = None, kept_channels: torch.Tensor | None = None, resume: bool = False,
            on_log=None, **overrides) -> DistillResult:
    """Train `student` to match `teacher` (objects, or paths in the config); see the module docstring.

    `on_log(record)` sees every metrics line as it is written (e.g. `LivePlot()` for a live figure).
    `resume=True` continues from the run directory's newest checkpoint (or starts fresh when it has none);
    without it, a run directory that already holds checkpoints is an error, never overwritten."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration
    from diffusers.optimization import get_scheduler

    cfg = config if isinstance(config, DistillConfig) else (DistillConfig.from_yaml(config) if config else DistillConfig())
    cfg = cfg.replace(**overrides)
    run = Path(cfg.run_dir)
    checkpoint = latest_checkpoint(run)
    if (checkpoint is not None or (run / "config.yaml").exists()) and not resume:
        raise DestinationExistsError(f"{run} already holds a run ({checkpoint.name if checkpoint else 'no checkpoint'});"
                                     " pass resume=True (--resume) to continue it, or choose a new run_dir.")
    from accelerate.tracking import get_available_trackers

    missing = [t for t in cfg.trackers if t not in {str(a) for a in get_available_trackers()}]
    if missing:  # accelerate would drop them silently
        raise ConfigError(f"trackers {missing} are not installed here; available: "
                          f"{sorted(str(a) for a in get_available_trackers())}. Fix: pip install {' '.join(missing)}, "
                          "or remove them (metrics.jsonl is always written).")
    on_gpu = torch.cuda.is_available()
    mixed = ("bf16" if on_gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = Accelerator(mixed_precision=mixed, cpu=not on_gpu, log_with=list(cfg.trackers) or None,
                      project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    source = wdata.open_source(data if data is not None else cfg.data, n=cfg.synthetic_samples,
                               latent_shape=cfg.latent_shape, seed=cfg.seed)
    targets = getattr(source, "kind", "") == "targets"
    train_idx, val_idx = wdata.split(len(source), cfg.val_samples, cfg.seed)
    teacher, student, block_map, kept_channels, pruning = _models(
        cfg, teacher, student, block_map, kept_channels, need_teacher=not targets,
        calib_batch=_calibration_batch(source, val_idx))
    if targets:
        stored = set(source.meta.get("feature_blocks", []))
        if cfg.w_feat > 0 and not set(block_map) <= stored:
            raise ConfigError(f"the target cache {source.path} stores features of teacher blocks {sorted(stored)}; "
                              f"block_map {block_map} needs {sorted(set(block_map) - stored)} too. Rebuild the cache "
                              "with write_teacher_targets(feature_blocks=...) or set w_feat=0.")
        teacher = None  # the cache replaces it
    elif teacher is None:
        raise ConfigError("no teacher: pass distill(teacher=model) or set `teacher` in the config (a target cache "
                          "as `data` is the only way to train without one).")
    else:
        teacher.requires_grad_(False).eval()
        if acc.distributed_type == DistributedType.FSDP:
            teacher = acc.prepare_model(teacher, evaluation_mode=True)
        else:
            teacher = place(teacher, acc.device, _dtype(cfg.teacher_dtype, on_gpu))
    if cfg.ema_decay > 0 and acc.distributed_type == DistributedType.FSDP:
        raise ConfigError("ema_decay > 0 under FSDP: diffusers' EMAModel keeps a full unsharded copy per process. "
                          "Fix: set ema_decay: 0 for FSDP runs (or use DDP when the student fits one GPU).")
    student = place(student, None, torch.float32).train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = make_optimizer(cfg.optimizer, student.parameters(), cfg.lr, cfg.weight_decay, **(cfg.optimizer_args or {}))
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps * acc.num_processes,
                              num_training_steps=cfg.steps * acc.num_processes)  # accelerate steps it once per process
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    ema = None
    if cfg.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(acc.unwrap_model(student).parameters(), decay=cfg.ema_decay)
    batches = wdata.Batches(source, train_idx, cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes,
                            cfg.num_workers)
    val = _validation_batch(acc, cfg, source, val_idx, teacher, chunk=max(cfg.batch_size, 1))

    run.mkdir(parents=True, exist_ok=True)
    if pruning is not None and acc.is_main_process:  # every kept index, for the record (too long for metadata)
        (run / "pruning.json").write_text(pruning.to_json())
    start = load_checkpoint(acc, checkpoint, ema) if checkpoint is not None else 0
    metrics = run / "metrics.jsonl"
    if acc.is_main_process:
        cfg.to_yaml(run / "config.yaml")  # what this run does, resumed ones included
        if start == 0:
            metrics.write_text("")
        else:  # drop what a killed run logged after its last checkpoint
            kept = [l for l in metrics.read_text().splitlines() if l and json.loads(l)["step"] <= start]
            metrics.write_text("".join(l + "\n" for l in kept))
    acc.init_trackers("wanlite-distill", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})

    def log(record: dict) -> None:
        if acc.is_main_process:
            with metrics.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=record["step"])
            if on_log is not None:
                on_log(record)

    if start == 0:
        log({"step": 0, **{f"val/{k}": v for k, v in _validate(acc, student, ema, val).items()}})
    try:
        last = _train_loop(acc, cfg, teacher, student, optimizer, scheduler, ema, batches, val, block_map,
                           kept_channels, start, run, log)
        rows = [json.loads(l) for l in metrics.read_text().splitlines() if l] if acc.is_main_process else []
        validation = [{k[4:]: v for k, v in r.items() if k.startswith("val/")} | {"step": r["step"]}
                      for r in rows if "val/rel_err" in r]
        final = acc.unwrap_model(student)
        if ema is not None:
            ema.copy_to(final.parameters())
        path = None
        if cfg.export:
            started = getattr(final, "provenance", None) or {}  # a WanLiteStudent knows how it was pruned
            teacher_name = cfg.teacher or started.get("teacher") or (
                source.meta.get("teacher") or f"targets {source.path}" if targets else f"{type(teacher).__name__} object")
            provenance = {"teacher": teacher_name, "recipe": cfg.recipe or started.get("recipe"),
                          "pruning": pruning.to_dict() if pruning is not None else started.get("pruning"),
                          "kept_blocks": list(block_map) if block_map is not None else started.get("kept_blocks"),
                          "steps": cfg.steps, "data": str(cfg.data if data is None else data),
                          "final_metrics": validation[-1] if validation else {}, "final_losses": last,
                          "distill_config": cfg.to_dict()}
            path = export_student(acc, student, run / "student", cfg.export_layout, provenance, cfg.export_dtype)
    finally:
        acc.end_training()  # closes trackers and, under a launcher, the process group: keep it last
    return DistillResult(run, cfg.steps, last, validation, path, final)


def export_student(acc, student, out: Path, layout: str, provenance: dict, dtype: str | None = None) -> Path:
    """Write the trained student through wanlite.formats.save_wan (full weights gathered under FSDP)."""
    from accelerate.utils import DistributedType

    model = acc.unwrap_model(student)
    if acc.distributed_type == DistributedType.FSDP:  # gather the shards into a full copy on the main process
        state = acc.get_state_dict(student)
        if acc.is_main_process:
            model = type(model).from_config(model.config)
            model.load_state_dict({k: v.float() for k, v in state.items()})
    if acc.is_main_process:
        from .formats import save_wan

        out = Path(save_wan(model, out, layout=layout, dtype=dtype, provenance=provenance, overwrite=True))
    acc.wait_for_everyone()
    return out


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    """`python -m wanlite.distill --config run.yaml [--resume] [--set key=value ...]` (works under accelerate launch)."""
    parser = argparse.ArgumentParser(prog="wanlite distill", description="Distil a Wan teacher into a student.")
    parser.add_argument("--config", required=True, help="a DistillConfig YAML (a run directory's config.yaml resumes it)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (YAML value)")
    args = parser.parse_args(argv)
    try:
        cfg = DistillConfig.from_yaml(args.config)
        changes = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-4.")
            changes[key] = yaml.safe_load(value)
        print(distill(cfg.replace(**changes), resume=args.resume))
    except WanliteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
