"""Flow-matching sampling for any Wan transformer, teacher or student, with diffusers' own schedulers.

One call for both models, so a comparison differs only in the weights: same noise, same context, same sigmas.
Wan's convention (see docs): x_t = (1 - s) x0 + s eps, the model predicts v = eps - x0 at timestep s * 1000,
and classifier-free guidance combines v = v_uncond + g (v_cond - v_uncond).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..core.flow import wan_forward
from ..errors import WanliteError
from ..formats.records import SOLVERS, Sampling

SCHEDULERS = SOLVERS


@dataclass(frozen=True)
class ImageCondition:
    """The i2v conditioning Wan concatenates to the noisy latents (and, Wan2.1 i2v, its CLIP tokens)."""

    latents: torch.Tensor  # [B, in_dim - out_dim, F, H, W]: 4 mask channels + 16 image latents for Wan i2v
    clip: torch.Tensor | None = None  # [B, 257, 1280] CLIP ViT-H tokens; needed when the model has an image embedder


@dataclass
class SampleResult:
    """What a sampling run produced: the final latents and, on request, every intermediate state."""

    latents: torch.Tensor  # [B, C, F, H, W] the final x (sigma 0)
    trajectory: torch.Tensor | None = None  # [steps + 1, B, C, F, H, W]: x before each step, then the final x
    sigmas: torch.Tensor | None = None  # [steps + 1] the sigma of each trajectory state (last is 0)
    velocities: torch.Tensor | None = None  # [steps, B, C, F, H, W] guided velocity used at each step

    def __repr__(self) -> str:
        steps = None if self.sigmas is None else len(self.sigmas) - 1
        traj = "with trajectory" if self.trajectory is not None else "no trajectory"
        return f"SampleResult(latents {tuple(self.latents.shape)}, {steps} steps, {traj})"


def make_scheduler(name: str = "unipc", shift: float = 5.0):
    """A diffusers flow-matching scheduler configured the way Wan samples: UniPC with Wan's shift, or flow Euler
    (`euler`: x + (σ' − σ)·v; `lcm`: x0 plus fresh noise at the next σ) on an exact schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000
        )
    if name in ("euler", "lcm"):  # the schedule is given exactly (already shifted), so no shift here
        return FlowMatchEulerDiscreteScheduler(shift=1.0, num_train_timesteps=1000, stochastic_sampling=name == "lcm")
    raise WanliteError(f"scheduler={name!r} is not known; expected one of {SOLVERS}.")


def _scheduler(sampling: Sampling, device=None):
    """A scheduler set to `sampling`'s schedule: UniPC's own, or the exact sigmas for euler / lcm."""
    sched = make_scheduler(sampling.solver, sampling.shift)
    exact = sampling.schedule()
    if exact is None:
        sched.set_timesteps(sampling.steps, device=device)
    else:
        sched.set_timesteps(sigmas=list(exact[:-1]), device=device)  # diffusers appends the final 0
    return sched


def schedule(steps: int, shift: float = 5.0, scheduler: str = "unipc", sigmas=None) -> torch.Tensor:
    """The sigmas (steps + 1 values, ending at 0) a sampling run with these settings visits."""
    sampling = Sampling(steps=steps, shift=shift, solver=scheduler, sigmas=sigmas)
    return _scheduler(sampling).sigmas.detach().float().cpu().clone()


def _model_config(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise WanliteError(f"{type(model).__name__} has no diffusers config; expected a WanTransformer3DModel.")
    return cfg


def _image_inputs(model, image, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate i2v conditioning against the model's channels; return (extra latent channels, clip tokens)."""
    cfg = _model_config(model)
    extra = cfg.in_channels - like.shape[1]
    needs_clip = getattr(cfg, "image_dim", None) is not None
    if image is None:
        if extra:
            raise WanliteError(
                f"the model takes {cfg.in_channels} input channels but the noise has {like.shape[1]}: "
                f"an i2v model needs image=ImageCondition(latents=[B, {extra}, F, H, W], clip=...)."
            )
        return None, None
    if isinstance(image, torch.Tensor):
        image = ImageCondition(latents=image)
    elif isinstance(image, Mapping):
        image = ImageCondition(latents=image["latents"], clip=image.get("clip"))
    if image.latents.shape[1] != extra or image.latents.shape[2:] != like.shape[2:]:
        raise WanliteError(
            f"image conditioning latents have shape {tuple(image.latents.shape)}; this model needs "
            f"[B, {extra}, {', '.join(map(str, like.shape[2:]))}] (in_channels {cfg.in_channels} "
            f"minus {like.shape[1]} noise channels)."
        )
    if needs_clip and image.clip is None:
        raise WanliteError(
            "this model has a CLIP image embedder (image_dim set): pass ImageCondition(clip=[B, 257, 1280])."
        )
    return image.latents, image.clip if needs_clip else None


@torch.no_grad()
def predict_velocity(
    model, x: torch.Tensor, sigma: float | torch.Tensor, context: torch.Tensor, image=None
) -> torch.Tensor:
    """One forward: the model's velocity at state `x` and noise level `sigma` (timestep sigma * 1000), in fp32."""
    extra, clip = _image_inputs(model, image, x)
    return wan_forward(model, x, sigma, context, image_latents=extra, image_clip=clip)


def guided_velocity(
    model, x, sigma, context, negative_context=None, guidance: float = 5.0, image=None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(v_cond, v_uncond or None, v_guided). Guidance 1 skips the unconditional pass; without a negative
    context the unconditional context is all zeros (an empty, fully padded umT5 context)."""
    v_cond = predict_velocity(model, x, sigma, context, image)
    if guidance == 1.0:
        return v_cond, None, v_cond
    neg = torch.zeros_like(context) if negative_context is None else negative_context
    v_uncond = predict_velocity(model, x, sigma, neg, image)
    return v_cond, v_uncond, v_uncond + guidance * (v_cond - v_uncond)


def _noise(noise, seed: int | None) -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        return noise.float()
    if isinstance(noise, Sequence) and all(isinstance(n, int) for n in noise):
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.randn(tuple(noise), generator=g)
    raise WanliteError(f"noise must be a tensor [B, C, F, H, W] or such a shape, got {type(noise).__name__}.")


@torch.no_grad()
def sample(
    model,
    noise,
    context: torch.Tensor,
    negative_context: torch.Tensor | None = None,
    steps: int = 20,
    guidance: float = 5.0,
    shift: float = 5.0,
    scheduler: str = "unipc",
    seed: int | None = None,
    return_trajectory: bool = False,
    image=None,
    sigmas=None,
    sampling: Sampling | None = None,
) -> SampleResult:
    """Sample latents from `noise` (a tensor, or a shape drawn from `seed`) with classifier-free guidance.

    `sampling` (e.g. a student's own `student.sampling`) sets steps, guidance, shift, scheduler and sigmas at once;
    otherwise they come from the arguments (`sigmas`: an exact schedule from 1 to 0, for euler / lcm). Deterministic:
    the same inputs and seed give the same latents (`lcm`'s fresh noise is drawn from `seed`). The scheduler runs in
    fp32 on the model's device whatever the model's dtype; results stay on that device. `image`: i2v conditioning
    (`ImageCondition`, or its latents tensor)."""
    if sampling is None:
        if steps < 1:
            raise WanliteError(f"steps must be >= 1, got {steps}.")
        sampling = Sampling(steps=steps, guidance=guidance, shift=shift, solver=scheduler, sigmas=sigmas)
    x = _noise(noise, seed).to(next(model.parameters()).device)
    cfg = _model_config(model)
    if x.ndim != 5 or x.shape[1] != cfg.out_channels:
        raise WanliteError(
            f"noise has shape {tuple(x.shape)}; expected [B, {cfg.out_channels}, F, H, W] (the model's out_channels)."
        )
    extra = {}
    if sampling.solver == "lcm":  # its fresh noise at each step, drawn from the seed
        extra["generator"] = torch.Generator(x.device).manual_seed(1 if seed is None else seed + 1)
    return _integrate(
        model,
        x,
        _scheduler(sampling, x.device),
        context,
        negative_context,
        sampling.guidance,
        image,
        return_trajectory,
        extra,
    )


def _integrate(model, x, sched, context, negative_context, guidance, image, keep: bool, extra: dict) -> SampleResult:
    """Run a set-up diffusers scheduler from state x to sigma 0 (guided velocities at each step)."""
    sigma_list = sched.sigmas.float().cpu()
    states, velocities = [], []
    for i, t in enumerate(sched.timesteps):
        if keep:
            states.append(x.clone())
        _, _, v = guided_velocity(model, x, sigma_list[i], context, negative_context, guidance, image)
        if keep:
            velocities.append(v.clone())
        x = sched.step(v.to(x.device), t, x, return_dict=False, **extra)[0].float()
    if keep:
        states.append(x.clone())
        return SampleResult(x, torch.stack(states), sigma_list, torch.stack(velocities))
    return SampleResult(x, None, sigma_list)


@torch.no_grad()
def solve_through(
    model, noise: torch.Tensor, context, negative_context, sigmas, guidance: float, shift: float, substeps: int = 5
) -> torch.Tensor:
    """The model's guided ODE solution from `noise`, recorded exactly at `sigmas` (1 ... 0): diffusers' UniPC on a grid
    of `substeps` steps per interval, uniform in Wan's unshifted time (diffusers re-applies `shift`), so each
    σ in `sigmas` is a grid point. Returns the states [len(sigmas), B, C, F, H, W] (the first is the noise)."""
    ts = [s / (shift - (shift - 1) * s) for s in sigmas]  # undo the shift: σ = shift(t)
    grid = [a + (b - a) * j / substeps for a, b in zip(ts, ts[1:]) for j in range(substeps)]
    sched = make_scheduler("unipc", shift)
    sched.set_timesteps(sigmas=np.array(grid), device=noise.device)
    run = _integrate(model, noise.float(), sched, context, negative_context, guidance, None, True, {})
    return run.trajectory[::substeps]
