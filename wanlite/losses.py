"""The distillation objective, flow matching as Wan trains: noising, feature capture, losses, validation metrics.

x_t = (1 - s) x0 + s eps, target v = eps - x0, model timestep = s * 1000, s drawn with Wan's shift.
Every random draw of a sample (its noise, sigma, and whether it sees the negative context) comes from a
generator keyed by (seed, the sample's global draw index), so a run is the same on 1 or N processes and
after a resume: the randomness belongs to the data position, not to a process's RNG state.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import WanliteError

SIGMA_SAMPLING = ("uniform", "logit_normal")
BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)  # sigma buckets of the validation report


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's shifted sigma: s' = shift * s / (1 + (shift - 1) * s) (shift > 1 spends more steps at high noise)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def draw_sigma(u: torch.Tensor, shift: float, sampling: str = "uniform") -> torch.Tensor:
    """Map uniform draws u in (0, 1) to training sigmas: uniform or logit-normal, then Wan's shift."""
    if sampling == "uniform":
        sigma = u
    elif sampling == "logit_normal":  # SD3-style: sigmoid of a standard normal (inverse CDF of u)
        sigma = torch.sigmoid(math.sqrt(2) * torch.erfinv(2 * u - 1))
    else:
        raise WanliteError(f"sigma_sampling={sampling!r} is not known; expected one of {SIGMA_SAMPLING}.")
    return shift_sigma(sigma.clamp(1e-4, 1 - 1e-4), shift)


def sample_draws(keys: list[int], seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps [B, *shape], u_sigma [B], u_drop [B]) for samples with global draw indices `keys`; each sample's
    draws depend only on (seed, key) so any batch split across processes sees the same numbers."""
    eps, u = [], []
    for key in keys:
        g = torch.Generator(device=device).manual_seed((seed * 1_000_003 + int(key)) % (2**63 - 1))
        u.append(torch.rand(2, generator=g, device=device))
        eps.append(torch.randn(shape, generator=g, device=device))
    u = torch.stack(u)
    return torch.stack(eps), u[:, 0], u[:, 1]


@dataclass(frozen=True)
class Objective:
    """How a batch becomes model inputs and a loss (the loss-related fields of `DistillConfig`)."""

    shift: float = 5.0  # Wan's sigma shift used when drawing training sigmas
    sigma_sampling: str = "uniform"  # uniform | logit_normal, before the shift
    uncond_fraction: float = 0.1  # share of samples that see the negative (empty-prompt) context
    w_out: float = 1.0  # weight of MSE(v_student, v_teacher)
    w_feat: float = 0.0  # weight of the summed per-block feature MSE
    w_task: float = 0.0  # weight of MSE(v_student, eps - x0), only when the batch holds real x0 latents


def model_inputs(batch: dict, keys: list[int], seed: int, objective: Objective, device) -> dict:
    """Noisy latents, sigma, chosen context (and the task target when x0 is known) for one batch.

    A batch holds either clean `latents` (noised here) or a given `noisy` state with its `sigma`
    (teacher trajectories, target caches)."""
    if "noisy" in batch:
        noisy, sigma = batch["noisy"].to(device).float(), batch["sigma"].to(device).float().reshape(-1)
        _, _, u_drop = sample_draws(keys, seed, (1,), device)
        task = batch["v_task"].to(device).float() if "v_task" in batch else None
    else:
        x0 = batch["latents"].to(device).float()
        eps, u_sigma, u_drop = sample_draws(keys, seed, tuple(x0.shape[1:]), device)
        sigma = draw_sigma(u_sigma, objective.shift, objective.sigma_sampling)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        noisy, task = (1 - s) * x0 + s * eps, eps - x0
    context = batch["context"].to(device).float()  # caches may hold bf16; the models cast (teacher) or autocast
    if "v_teacher" not in batch and objective.uncond_fraction > 0:  # a target cache fixed its contexts already
        negative = batch.get("negative_context")
        negative = torch.zeros_like(context) if negative is None else negative.to(device).float()
        drop = (u_drop < objective.uncond_fraction).view(-1, 1, 1)
        context = torch.where(drop, negative, context)
    inputs = dict(noisy=noisy, sigma=sigma, context=context, task=task)
    if "image_latents" in batch:
        inputs["image_latents"] = batch["image_latents"].to(device).float()
    if "image_clip" in batch:
        inputs["image_clip"] = batch["image_clip"].to(device).float()
    return inputs


def forward(model, inputs: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A Wan velocity for prepared `inputs` (i2v image latents concatenated on channels, timestep = sigma*1000)."""
    x = inputs["noisy"]
    if "image_latents" in inputs:
        x = torch.cat([x, inputs["image_latents"].to(x)], dim=1)
    kwargs = {}
    if "image_clip" in inputs:
        kwargs["encoder_hidden_states_image"] = inputs["image_clip"] if dtype is None else inputs["image_clip"].to(dtype)
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    return model(hidden_states=cast(x), timestep=inputs["sigma"] * 1000, encoder_hidden_states=cast(inputs["context"]),
                 return_dict=False, **kwargs)[0]


class FeatureCapture(contextlib.AbstractContextManager):
    """Forward hooks on `model.blocks[i]` for i in `blocks`: `.features[i]` is that block's output [B, N, dim]."""

    def __init__(self, model, blocks):
        self.features: dict[int, torch.Tensor] = {}
        self._handles = [model.blocks[i].register_forward_hook(self._hook(i)) for i in blocks] if blocks else []

    def _hook(self, i):
        def hook(module, args, output):
            self.features[i] = output
        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False


@dataclass
class LossParts:
    """The loss and its weighted components (tensors, so they can be reduced across processes)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # out | feat | task, unweighted

    def non_finite(self) -> list[str]:
        """Names of components that are NaN or infinite."""
        return [k for k, v in self.parts.items() if not torch.isfinite(v).all()]


def distill_loss(v_student: torch.Tensor, v_teacher: torch.Tensor, objective: Objective,
                 student_feats: dict[int, torch.Tensor] | None = None,
                 teacher_feats: dict[int, torch.Tensor] | None = None, block_map: list[int] | None = None,
                 kept_channels: torch.Tensor | None = None, task_target: torch.Tensor | None = None) -> LossParts:
    """w_out * MSE(v_s, v_t) + w_feat * sum_i MSE(h_s[i], h_t[block_map[i]][..., kept]) + w_task * MSE(v_s, eps - x0)."""
    parts = {"out": F.mse_loss(v_student.float(), v_teacher.float())}
    total = objective.w_out * parts["out"]
    if objective.w_feat > 0:
        feat = v_student.new_zeros((), dtype=torch.float32)
        for i, t in enumerate(block_map or []):
            hs, ht = student_feats[i].float(), teacher_feats[t].float()
            if hs.shape[-1] != ht.shape[-1]:
                if kept_channels is None:
                    raise WanliteError(f"student block {i} is {hs.shape[-1]} wide, teacher block {t} {ht.shape[-1]}: "
                                       "feature distillation needs kept_channels (Pruning.kept_channels). "
                                       "Fix: pass kept_channels, or set w_feat=0.")
                ht = ht.index_select(-1, kept_channels.to(ht.device))
            feat = feat + F.mse_loss(hs, ht)
        parts["feat"] = feat
        total = total + objective.w_feat * feat
    if objective.w_task > 0 and task_target is not None:
        parts["task"] = F.mse_loss(v_student.float(), task_target.float())
        total = total + objective.w_task * parts["task"]
    return LossParts(total, parts)


def velocity_report(v_student: torch.Tensor, v_teacher: torch.Tensor, sigma: torch.Tensor) -> dict:
    """Relative velocity error ||v_s - v_t|| / ||v_t|| and cosine, overall and per sigma bucket."""
    vs, vt = v_student.float().flatten(1), v_teacher.float().flatten(1)
    rel = (vs - vt).norm(dim=1) / vt.norm(dim=1).clamp_min(1e-12)
    cos = F.cosine_similarity(vs, vt, dim=1)
    report = {"rel_err": rel.mean().item(), "cosine": cos.mean().item()}
    sigma = sigma.float().reshape(-1).cpu()
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        inside = (sigma >= lo) & ((sigma < hi) if hi < 1 else (sigma <= hi))
        if inside.any():
            report[f"rel_err@{lo:.2f}-{hi:.2f}"] = rel.cpu()[inside].mean().item()
            report[f"cosine@{lo:.2f}-{hi:.2f}"] = cos.cpu()[inside].mean().item()
    return report
