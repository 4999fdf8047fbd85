"""`trajectory`: few-step distillation on the teacher's ODE. The student gets a fixed schedule of k steps
σ_0 = 1 > σ_1 > … > σ_k = 0 (Wan's shifted one by default); the teacher's guided ODE, solved from the same noise
with many UniPC steps (`teacher_substeps` per student step), gives its states x(σ_i) once (an "ode" cache in the
run directory, or given as `data`). The student's Euler step from x(σ_i) must land on the teacher's x(σ_{i+1}):

    x(σ_i) + (σ_{i+1} − σ_i)·v_s = x(σ_{i+1})   ⇔   v_s = (x(σ_{i+1}) − x(σ_i)) / (σ_{i+1} − σ_i)

so the loss is the MSE between the student's velocity and that secant velocity (the landing error over the
step size², which weighs every step alike), plus optionally `w_final` · MSE(the student's own k-step sample, the
teacher's sample): the rollout, where a student's errors compound. Cheap, data-free, deterministic; it samples
with ComfyUI's `euler` on exactly its schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.flow import euler_step, rel_mse, wan_forward
from ...errors import ConfigError
from ...formats.records import check_schedule, shifted_schedule
from ..caches import write_ode
from ..data import CachedSource, fixed_batch
from ..inputs import keyed
from .base import LossParts, Objective, student_sampling


def student_schedule(cfg) -> tuple[float, ...]:
    """The student's sigmas: the config's exact ones, or Wan's shifted schedule of `student_steps` steps."""
    if cfg.student_steps < 1:
        raise ConfigError(f"student_steps={cfg.student_steps}: a student needs at least one step (k >= 1).")
    if cfg.student_sigmas is not None:
        return check_schedule(cfg.student_sigmas, cfg.student_steps, "student_sigmas")
    return shifted_schedule(cfg.student_steps, cfg.shift if cfg.student_shift is None else cfg.student_shift)


class Trajectory(Objective):
    """Match the teacher's ODE at the student's k steps (see the module docstring)."""

    name = "trajectory"

    def __init__(self, cfg, teacher, student, block_map, kept_channels, source, device):
        super().__init__(cfg, teacher, student, block_map, kept_channels, source, device)
        if cfg.w_feat > 0 or cfg.w_task > 0:
            raise ConfigError(
                "w_feat and w_task belong to the velocity and guided objectives; the trajectory "
                "objective learns the teacher's steps. Fix: set w_feat: 0 and w_task: 0."
            )
        if cfg.student_solver != "euler":
            raise ConfigError(
                f"student_solver={cfg.student_solver!r}: a trajectory student learns Euler steps onto "
                "the teacher's ODE, so it samples with euler. Fix: student_solver: euler (or use dmd)."
            )
        self.sigmas = torch.tensor(student_schedule(cfg))
        self.needs_teacher = getattr(source, "kind", "") != "ode"
        if not self.needs_teacher:
            self._check_cache(source)

    def _check_cache(self, source) -> None:
        meta = source.meta
        if [round(s, 6) for s in meta.get("sigmas", [])] != [round(float(s), 6) for s in self.sigmas]:
            raise ConfigError(
                f"the ode cache {source.path} holds the teacher at sigmas {meta.get('sigmas')}; this "
                f"student's schedule is {self.sigmas.tolist()}. Fix: rebuild it, or match student_steps."
            )
        if meta.get("guidance") != self.cfg.guidance:
            raise ConfigError(
                f"the ode cache {source.path} was solved at guidance {meta.get('guidance')}; the config "
                f"says {self.cfg.guidance}. Fix: rebuild it, or set guidance: {meta.get('guidance')}."
            )

    def data(self, source, run: Path, acc):
        """The teacher's ODE states for every sample, solved once into run/ode (reused by a resumed run)."""
        if not self.needs_teacher:
            return source
        out = run / "ode"
        with acc.main_process_first():
            if not (out / "manifest.json").is_file():
                write_ode(
                    self.teacher,
                    source,
                    out,
                    self.sigmas.tolist(),
                    self.cfg.guidance,
                    self._shift(),
                    self.cfg.teacher_substeps,
                    self.cfg.seed,
                    batch_size=max(self.cfg.batch_size, 16),
                    latent_shape=self.cfg.latent_shape,
                )
        self.source = CachedSource(out)
        self._check_cache(self.source)
        return self.source

    def _shift(self) -> float:
        return self.cfg.shift if self.cfg.student_shift is None else self.cfg.student_shift

    # ---- the loss ----
    def _interval(self, batch: dict, keys: list[int]) -> tuple[torch.Tensor, ...]:
        """(x_i, x_{i+1}, σ_i, σ_{i+1}) for a keyed random step i of each sample."""
        states = batch["states"].to(self.device).float()  # [B, k + 1, C, F, H, W]
        k = states.shape[1] - 1
        i = (keyed(keys, self.cfg.seed, "interval") * k).long().clamp_max(k - 1).to(self.device)
        rows = torch.arange(len(keys), device=self.device)
        sig = self.sigmas.to(self.device)
        return states[rows, i], states[rows, i + 1], sig[i], sig[i + 1]

    def loss(self, student, batch: dict, keys: list[int]) -> LossParts:
        context = batch["context"].to(self.device).float()
        x, x_next, s, s_next = self._interval(batch, keys)
        target = (x_next - x) / (s_next - s).view(-1, 1, 1, 1, 1)  # the secant velocity that lands on x_next
        parts = {"out": F.mse_loss(wan_forward(student, x, s, context), target)}
        total = self.cfg.w_out * parts["out"]
        if self.cfg.w_final > 0:
            states = batch["states"].to(self.device).float()
            parts["final"] = F.mse_loss(self.rollout(student, states[:, 0], context), states[:, -1])
            total = total + self.cfg.w_final * parts["final"]
        return LossParts(total, {"loss": total, **parts})

    def rollout(self, student, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The student's own k Euler steps from noise (with gradients)."""
        x = noise
        for s, s_next in zip(self.sigmas[:-1].tolist(), self.sigmas[1:].tolist()):
            x = euler_step(x, wan_forward(student, x, s, context), s, s_next)
        return x

    # ---- validation: every step of the held-out samples, and their k-step samples ----
    def prepare_validation(self, indices: list[int]) -> None:
        batch = fixed_batch(self.source, indices)
        self.val_states = batch["states"].to(self.device).float()
        self.val_context = batch["context"].to(self.device).float()

    @torch.no_grad()
    def validate(self, student) -> dict:
        states, context, sig = self.val_states, self.val_context, self.sigmas.tolist()
        report = {}
        for i in range(len(sig) - 1):
            v = wan_forward(student, states[:, i], sig[i], context)
            report[f"rel_mse@step{i}"] = rel_mse(euler_step(states[:, i], v, sig[i], sig[i + 1]), states[:, i + 1])
        report["rel_mse"] = sum(report.values()) / len(report)  # landing error per step, the mean
        report["final_rel_mse"] = rel_mse(self.rollout(student, states[:, 0], context), states[:, -1])
        return report

    def sampling(self):
        return student_sampling(self.cfg, self.name)
