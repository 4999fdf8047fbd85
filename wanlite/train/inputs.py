"""How a batch becomes model inputs: training sigmas drawn with Wan's shift, noise, the context (a share of samples
sees the negative one), in `wan_forward`'s words.

Every random draw of a sample (its noise, σ, whether it sees the negative context, an objective's extra draws)
comes from a generator keyed by (seed, the sample's global draw index), so a run is the same on 1 or N processes
and after a resume: the randomness belongs to the data position, not to a process's RNG state.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from ..core.flow import add_noise, shift_sigma, velocity_target
from ..errors import ConfigError

SIGMA_SAMPLING = ("uniform", "logit_normal", "student")


def draw_sigma(u: torch.Tensor, shift: float, sampling: str = "uniform", schedule=None) -> torch.Tensor:
    """Map uniform draws u in (0, 1) to training sigmas: uniform or logit-normal, then Wan's shift; or "student":
    one of the sigmas a few-step student visits (`schedule`, already shifted), each equally often."""
    if sampling == "student":
        if not schedule:
            raise ConfigError(
                "sigma_sampling='student' draws the student's own sigmas, but this objective has no student "
                "schedule. Fix: use it with objective guided (and student_steps), or sigma_sampling: uniform."
            )
        visited = torch.tensor(schedule, dtype=u.dtype, device=u.device)
        return visited[(u * len(visited)).long().clamp(max=len(visited) - 1)]
    if sampling == "uniform":
        sigma = u
    elif sampling == "logit_normal":  # SD3-style: sigmoid of a standard normal (inverse CDF of u)
        sigma = torch.sigmoid(math.sqrt(2) * torch.erfinv(2 * u - 1))
    else:
        raise ConfigError(f"sigma_sampling={sampling!r} is not known; expected one of {SIGMA_SAMPLING}.")
    return shift_sigma(sigma.clamp(1e-4, 1 - 1e-4), shift)


def sample_draws(
    keys: list[int], seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu"
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


def keyed(
    keys: list[int],
    seed: int,
    tag: str,
    shape: tuple[int, ...] = (),
    normal: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draws [B, *shape] (uniform in [0, 1), or standard normal) that depend only on (seed, sample key, tag): the
    objectives' extra randomness (a trajectory interval, DMD's noise levels) is as resumable as the data's."""
    out = []
    for key in keys:
        g = torch.Generator(device=device).manual_seed(zlib.crc32(f"{seed}/{int(key)}/{tag}".encode()))
        out.append((torch.randn if normal else torch.rand)(shape, generator=g, device=device))
    return torch.stack(out)


@dataclass(frozen=True)
class Noising:
    """How clean latents become training states (the noising fields of `DistillConfig`)."""

    shift: float = 5.0  # Wan's sigma shift used when drawing training sigmas
    sigma_sampling: str = "uniform"  # uniform | logit_normal, before the shift
    uncond_fraction: float = 0.1  # share of samples that see the negative (empty-prompt) context
    schedule: tuple[float, ...] | None = None  # sigma_sampling "student": the sigmas the student samples at

    @classmethod
    def of(cls, cfg) -> "Noising":
        return cls(cfg.shift, cfg.sigma_sampling, cfg.uncond_fraction)


def model_inputs(batch: dict, keys: list[int], seed: int, noising: Noising, device) -> dict:
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
        sigma = draw_sigma(u_sigma, noising.shift, noising.sigma_sampling, noising.schedule)
        noisy, task = add_noise(x0, eps, sigma), velocity_target(x0, eps)
    context = batch["context"].to(device).float()  # caches may hold bf16; the models cast (teacher) or autocast
    negative = batch.get("negative_context")
    negative = torch.zeros_like(context) if negative is None else negative.to(device).float()
    if "v_teacher" not in batch and noising.uncond_fraction > 0:  # a target cache fixed its contexts already
        drop = (u_drop < noising.uncond_fraction).view(-1, 1, 1)
        context = torch.where(drop, negative, context)
    inputs = dict(noisy=noisy, sigma=sigma, context=context, negative=negative, task=task)
    for key in ("image_latents", "image_clip"):
        if key in batch:
            inputs[key] = batch[key].to(device).float()
    return inputs


def forward_args(inputs: dict) -> dict:
    """`model_inputs` in `wan_forward`'s words."""
    return {
        "x": inputs["noisy"],
        "sigma": inputs["sigma"],
        "context": inputs["context"],
        "image_latents": inputs.get("image_latents"),
        "image_clip": inputs.get("image_clip"),
    }
