"""`velocity`: the student reproduces the teacher's flow-matching velocity where Wan trains, at every σ.

    w_out  · MSE(v_student, v_teacher)                                           (always)
  + w_feat · Σ_i MSE(h_student[i], h_teacher[block_map[i]][..., kept_channels])   (block outputs)
  + w_task · MSE(v_student, ε − x0)                                               (real latents only)

A share of the samples (`uncond_fraction`) sees the negative context, so the unconditional branch that
classifier-free guidance needs is distilled too: the student samples like the teacher (same steps, same CFG).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...core.flow import BlockOutputs, add_noise, wan_forward
from ...errors import ConfigError
from ..data import fixed_batch
from ..inputs import forward_args, model_inputs, sample_draws
from .base import LossParts, Objective, velocity_report


class Velocity(Objective):
    """Velocity matching with feature and task terms (see the module docstring)."""

    name = "velocity"

    def __init__(self, cfg, teacher, student, block_map, kept_channels, source, device):
        super().__init__(cfg, teacher, student, block_map, kept_channels, source, device)
        self.feat_blocks = list(block_map) if cfg.w_feat > 0 else []
        self.needs_teacher = getattr(source, "kind", "") != "targets"
        if not self.needs_teacher:
            self._check_target_cache(source)

    def _check_target_cache(self, source) -> None:
        stored = set(source.meta.get("feature_blocks", []))
        if self.cfg.w_feat > 0 and not set(self.block_map) <= stored:
            raise ConfigError(
                f"the target cache {source.path} stores features of teacher blocks {sorted(stored)}; "
                f"block_map {self.block_map} needs {sorted(set(self.block_map) - stored)} too. Rebuild "
                "the cache with write_teacher_targets(feature_blocks=...) or set w_feat=0."
            )

    # ---- the teacher's side ----
    def teacher_velocity(self, inputs: dict) -> torch.Tensor:
        """The velocity the student learns at these inputs (here: the teacher's, as conditioned)."""
        return wan_forward(self.teacher, **forward_args(inputs))

    def targets(self, batch: dict, inputs: dict) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(teacher velocity, teacher block outputs at feat_blocks): from a target cache, or one teacher forward."""
        if "v_teacher" in batch:
            feats = {b: batch[f"feat.{b}"].to(self.device).float() for b in self.feat_blocks}
            return batch["v_teacher"].to(self.device).float(), feats
        with torch.inference_mode(), BlockOutputs(self.teacher, self.feat_blocks) as cap:
            v = self.teacher_velocity(inputs)
        return v.clone(), {b: f.float().clone() for b, f in cap.outputs.items()}  # normal tensors for autograd

    # ---- the loss ----
    def loss(self, student, batch: dict, keys: list[int]) -> LossParts:
        inputs = model_inputs(batch, keys, self.cfg.seed, self.noising, self.device)
        v_teacher, teacher_feats = self.targets(batch, inputs)
        student_blocks = range(len(self.block_map)) if self.feat_blocks else []
        with BlockOutputs(self.raw_student, student_blocks) as cap:
            v_student = wan_forward(student, **forward_args(inputs))
        return velocity_loss(
            self.cfg,
            v_student,
            v_teacher,
            cap.outputs,
            teacher_feats,
            self.block_map,
            self.kept_channels,
            inputs["task"],
        )

    # ---- validation ----
    def prepare_validation(self, indices: list[int]) -> None:
        """Held-out inputs with fixed noise, sigmas spread evenly over (0, 1), the conditional context, and the
        teacher's target velocities for them (computed once)."""
        batch = fixed_batch(self.source, indices)
        keys = [-(i + 1) for i in range(len(indices))]  # a draw range training never uses
        inputs = model_inputs(
            batch, keys, self.cfg.seed, dataclasses.replace(self.noising, uncond_fraction=0.0), self.device
        )
        if "latents" in batch:
            x0 = batch["latents"].to(self.device).float()
            eps, _, _ = sample_draws(keys, self.cfg.seed, tuple(x0.shape[1:]), self.device)
            sigma = (torch.arange(len(keys), device=self.device) + 0.5) / len(keys)
            inputs.update(noisy=add_noise(x0, eps, sigma), sigma=sigma)
        chunk = max(self.cfg.batch_size, 1)
        self.val_chunks = [
            {k: v[i : i + chunk] for k, v in inputs.items() if v is not None and k != "task"}
            for i in range(0, len(keys), chunk)
        ]
        if "v_teacher" in batch:
            self.val_targets = batch["v_teacher"].to(self.device).float()
        else:
            with torch.inference_mode():
                self.val_targets = torch.cat([self.teacher_velocity(c) for c in self.val_chunks]).clone()
        self.val_sigma = inputs["sigma"]

    @torch.no_grad()
    def validate(self, student) -> dict:
        v = torch.cat([wan_forward(student, **forward_args(chunk)) for chunk in self.val_chunks])
        return velocity_report(v, self.val_targets, self.val_sigma)


def velocity_loss(
    cfg, v_student, v_teacher, student_feats, teacher_feats, block_map, kept_channels, task_target=None
) -> LossParts:
    """w_out · MSE(v_s, v_t) + w_feat · Σ_i MSE(h_s[i], h_t[block_map[i]][..., kept]) + w_task · MSE(v_s, ε − x0)."""
    parts = {"out": F.mse_loss(v_student.float(), v_teacher.float())}
    total = cfg.w_out * parts["out"]
    if cfg.w_feat > 0:
        feat = v_student.new_zeros((), dtype=torch.float32)
        for i, t in enumerate(block_map):
            hs, ht = student_feats[i].float(), teacher_feats[t].float()
            if hs.shape[-1] != ht.shape[-1]:
                if kept_channels is None:
                    raise ConfigError(
                        f"student block {i} is {hs.shape[-1]} wide, teacher block {t} {ht.shape[-1]}: "
                        "feature distillation needs the student's pruning record (kept_channels). "
                        "Fix: distil a student built by wanlite (it carries .pruning), or set w_feat=0."
                    )
                ht = ht.index_select(-1, kept_channels.to(ht.device))
            feat = feat + F.mse_loss(hs, ht)
        parts["feat"] = feat
        total = total + cfg.w_feat * feat
    if cfg.w_task > 0 and task_target is not None:
        parts["task"] = F.mse_loss(v_student.float(), task_target.float())
        total = total + cfg.w_task * parts["task"]
    return LossParts(total, {"loss": total, **parts})
