"""`DistillConfig`: everything a distillation run needs, typed and commented, saved as `run_dir/config.yaml` so
that resuming takes one flag. Unknown keys and wrong types are errors (`dataclasses.replace` underneath)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError
from .inputs import SIGMA_SAMPLING

OBJECTIVE_NAMES = ("velocity", "guided", "trajectory", "dmd")  # train/objectives/, one module each


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run needs; saved as `run_dir/config.yaml`, so resuming takes one flag."""

    run_dir: str = "runs/distill"  # everything the run writes lives here
    teacher: str = ""  # teacher directory/file (any Wan layout); unused when distill(teacher=model)
    student: str = ""  # a student to (continue to) train; empty = build one from `recipe`
    recipe: dict | None = None  # wanlite.prune.Recipe fields, used when `student` is empty
    block_map: tuple[int, ...] | None = None  # teacher block of each student block; None = from the recipe
    objective: str = "velocity"  # what the student learns: velocity | guided | trajectory | dmd (train.objectives)
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
    sigma_sampling: str = "uniform"  # uniform | logit_normal (before the shift) | student (guided: its k sigmas)
    uncond_fraction: float = 0.1  # share of samples that see the negative (empty-prompt) context
    w_out: float = 1.0  # weight of MSE(v_student, v_teacher)
    w_feat: float = 0.0  # weight of the summed feature MSE at mapped blocks
    w_task: float = 0.0  # weight of MSE(v_student, eps - x0) (real latents only)
    guidance: float = 5.0  # guided | trajectory | dmd: the teacher's CFG scale, baked into a student that samples at 1
    student_steps: int = 4  # guided | trajectory | dmd: the student's sampling steps k
    student_sigmas: tuple[float, ...] | None = None  # the student's exact schedule, 1 ... 0 (k + 1); None = shifted
    student_shift: float | None = None  # the shift of the student's schedule; None = `shift`
    student_solver: str = "euler"  # euler (ODE step) | lcm (x0 + fresh noise, DMD's own rule): how it samples
    teacher_substeps: int = 5  # trajectory: teacher UniPC steps per student step when solving the teacher's ODE
    w_final: float = 0.0  # trajectory: weight of MSE(the student's k-step sample, the teacher's sample)
    fake_steps: int = 5  # dmd: fake-score updates per generator update (two time scales)
    fake_lr: float | None = None  # dmd: the fake score's learning rate; None = lr
    fake_init: str = "teacher"  # dmd: the fake score starts as a copy of the teacher | student (less memory)
    log_every: int = 10  # steps between metric lines
    val_every: int = 100  # steps between validations; 0 = only at start and end
    checkpoint_every: int = 500  # steps between checkpoints; 0 = only at the end; -1 = never (benchmarks)
    keep_checkpoints: int = 2  # most recent full checkpoints kept (each: student params x 12 bytes, x 16 with EMA)
    snapshot_weights: bool = False  # also snapshots/step-N.safetensors at each checkpoint: weights only (x 4 bytes)
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
            if isinstance(value, str) and float in get_args(hints[f.name]) + (hints[f.name],):
                value = _number(value)  # YAML reads 1e-4 (no dot) as a string
                object.__setattr__(self, f.name, value)
            if not _is_type(value, hints[f.name]):
                raise ConfigError(
                    f"DistillConfig.{f.name}={value!r} ({type(value).__name__}); expected "
                    f"{_type_name(hints[f.name])}. Fix the value in the config."
                )
        if self.objective not in OBJECTIVE_NAMES:
            raise ConfigError(
                f"DistillConfig.objective={self.objective!r} is not known; expected one of {list(OBJECTIVE_NAMES)}."
            )
        if self.sigma_sampling not in SIGMA_SAMPLING or (
            self.sigma_sampling == "student" and self.objective != "guided"
        ):
            raise ConfigError(
                f"DistillConfig.sigma_sampling={self.sigma_sampling!r} with objective {self.objective!r}; expected "
                f"one of {list(SIGMA_SAMPLING)} ('student', the k sigmas the student samples at, is for guided)."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"DistillConfig.lr={self.lr!r}: the learning rate must be a positive number.")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(
                f"steps, batch_size and grad_accum must be >= 1 "
                f"(got {self.steps}, {self.batch_size}, {self.grad_accum})."
            )

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
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the run config ({err.strerror}). Fix: check the path.") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"{path}: not a YAML run config ({str(err).splitlines()[0]}). Fix: correct the YAML "
                "(one `field: value` per line; DistillConfig documents the fields)."
            ) from None
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


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # not a number: the type check names the field


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
