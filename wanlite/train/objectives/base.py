"""What every objective shares: the interface the training loop calls, the loss with its logged parts, the held-out
velocity report, and the sampling record of a student that samples on its own schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.flow import cosine, rel_mse
from ...formats.records import Sampling
from ..inputs import Noising

BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)  # sigma buckets of the validation report


class Objective:
    """The interface the training loop calls; one subclass per objective (see `objectives.OBJECTIVES`).

    `loss(student, batch, keys)` runs once per micro-batch and returns the loss to back-propagate and its logged
    parts; `validate(student)` measures the held-out set that `prepare_validation` fixed; `prepare(acc)` lets an
    objective bring models and optimisers of its own under accelerate (saved in every checkpoint)."""

    name = ""
    needs_teacher = True  # False: everything comes from a teacher-target cache

    def __init__(self, cfg, teacher, student, block_map: list[int], kept_channels, source, device):
        self.cfg, self.teacher, self.block_map, self.device = cfg, teacher, block_map, device
        self.kept_channels = None if kept_channels is None else torch.as_tensor(kept_channels).to(device)
        self.raw_student = student  # unwrapped (for hooks); the loop passes the prepared one to `loss`
        self.source = source
        self.noising = Noising.of(cfg)

    def data(self, source, run, acc):
        """The training data this objective iterates (e.g. the teacher's ODE, solved once). Default: `source`."""
        return source

    def prepare(self, acc) -> None:
        """Bring extra models / optimisers under accelerate (so checkpoints hold them). Default: none."""

    def loss(self, student, batch: dict, keys: list[int]) -> LossParts:
        raise NotImplementedError

    def prepare_validation(self, indices: list[int]) -> None:
        raise NotImplementedError

    def validate(self, student) -> dict:
        raise NotImplementedError

    def sampling(self):
        """How the trained student samples (a `Sampling` record), or None: like the teacher."""
        return None


@dataclass
class LossParts:
    """The loss and its unweighted components (tensors, so they can be reduced across processes)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def velocity_report(v_student: torch.Tensor, v_teacher: torch.Tensor, sigma: torch.Tensor) -> dict:
    """Relative MSE ‖v_s − v_t‖² / ‖v_t‖² and cosine on held-out inputs, overall and per sigma bucket."""
    report = {"rel_mse": rel_mse(v_student, v_teacher), "cosine": cosine(v_student, v_teacher)}
    sigma = sigma.float().reshape(-1).cpu()
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        inside = ((sigma >= lo) & ((sigma < hi) if hi < 1 else (sigma <= hi))).to(v_student.device)
        if inside.any():
            report[f"rel_mse@{lo:.2f}-{hi:.2f}"] = rel_mse(v_student[inside], v_teacher[inside])
            report[f"cosine@{lo:.2f}-{hi:.2f}"] = cosine(v_student[inside], v_teacher[inside])
    return report


def student_sampling(cfg, objective: str) -> Sampling:
    """The sampling record of a student trained by `objective`: its own steps and schedule, cfg 1, the teacher's
    guidance baked in."""
    return Sampling(
        steps=cfg.student_steps,
        guidance=1.0,
        shift=cfg.shift if cfg.student_shift is None else cfg.student_shift,
        solver=cfg.student_solver,
        sigmas=cfg.student_sigmas,
        objective=objective,
        trained_guidance=cfg.guidance,
    )
