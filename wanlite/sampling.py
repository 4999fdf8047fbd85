"""Flow-matching sampling for any Wan transformer, teacher or student, with diffusers' own schedulers.

One call for both models, so a comparison differs only in the weights: same noise, same context, same sigmas.
Wan's convention (see docs): x_t = (1 - s) x0 + s eps, the model predicts v = eps - x0 at timestep s * 1000,
and classifier-free guidance combines v = v_uncond + g (v_cond - v_uncond).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .errors import WanliteError

SCHEDULERS = ("unipc", "euler")


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
    """A diffusers flow-matching scheduler configured the way Wan samples."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                       num_train_timesteps=1000)
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=1000)
    raise WanliteError(f"scheduler={name!r} is not known; expected one of {SCHEDULERS}.")


def schedule(steps: int, shift: float = 5.0, scheduler: str = "unipc") -> torch.Tensor:
    """The sigmas (steps + 1 values, ending at 0) a sampling run with these settings visits."""
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(steps)
    return sched.sigmas.detach().float().cpu().clone()


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
            raise WanliteError(f"the model takes {cfg.in_channels} input channels but the noise has {like.shape[1]}: "
                               f"an i2v model needs image=ImageCondition(latents=[B, {extra}, F, H, W], clip=...).")
        return None, None
    if isinstance(image, torch.Tensor):
        image = ImageCondition(latents=image)
    elif isinstance(image, Mapping):
        image = ImageCondition(latents=image["latents"], clip=image.get("clip"))
    if image.latents.shape[1] != extra or image.latents.shape[2:] != like.shape[2:]:
        raise WanliteError(f"image conditioning latents have shape {tuple(image.latents.shape)}; this model needs "
                           f"[B, {extra}, {', '.join(map(str, like.shape[2:]))}] (in_channels {cfg.in_channels} "
                           f"minus {like.shape[1]} noise channels).")
    if needs_clip and image.clip is None:
        raise WanliteError("this model has a CLIP image embedder (image_dim set): pass ImageCondition(clip=[B, 257, 1280]).")
    return image.latents, image.clip if needs_clip else None


@torch.no_grad()
def predict_velocity(model, x: torch.Tensor, sigma: float | torch.Tensor, context: torch.Tensor,
                     image=None) -> torch.Tensor:
    """One forward: the model's velocity at state `x` and noise level `sigma` (timestep sigma * 1000), in fp32."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    extra, clip = _image_inputs(model, image, x)
    inp = x if extra is None else torch.cat([x, extra.to(x)], dim=1)
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    timestep = (sigma * 1000).expand(x.shape[0]).to(device)
    kwargs = {}
    if clip is not None:
        kwargs["encoder_hidden_states_image"] = clip.to(device, dtype)
    out = model(hidden_states=inp.to(device, dtype), timestep=timestep, encoder_hidden_states=context.to(device, dtype),
                return_dict=False, **kwargs)[0]
    return out.float()


def guided_velocity(model, x, sigma, context, negative_context=None, guidance: float = 5.0, image=None
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
def sample(model, noise, context: torch.Tensor, negative_context: torch.Tensor | None = None, steps: int = 20,
           guidance: float = 5.0, shift: float = 5.0, scheduler: str = "unipc", seed: int | None = None,
           return_trajectory: bool = False, image=None) -> SampleResult:
    """Sample latents from `noise` (a tensor, or a shape drawn from `seed`) with classifier-free guidance.

    Deterministic: the same inputs and seed give the same latents. The scheduler runs in fp32 on the model's
    device whatever the model's dtype; results stay on that device. `image`: i2v conditioning (`ImageCondition`, or its latents tensor)."""
    if steps < 1:
        raise WanliteError(f"steps must be >= 1, got {steps}.")
    x = _noise(noise, seed).to(next(model.parameters()).device)
    cfg = _model_config(model)
    if x.ndim != 5 or x.shape[1] != cfg.out_channels:
        raise WanliteError(f"noise has shape {tuple(x.shape)}; expected [B, {cfg.out_channels}, F, H, W] "
                           f"(the model's out_channels).")
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(steps, device=x.device)
    sigmas = sched.sigmas.float().cpu()
    states, velocities = [], []
    for i, t in enumerate(sched.timesteps):
        if return_trajectory:
            states.append(x.clone())
        _, _, v = guided_velocity(model, x, sigmas[i], context, negative_context, guidance, image)
        if return_trajectory:
            velocities.append(v.clone())
        x = sched.step(v.to(x.device), t, x, return_dict=False)[0].float()
    if return_trajectory:
        states.append(x.clone())
        return SampleResult(x, torch.stack(states), sigmas, torch.stack(velocities))
    return SampleResult(x, None, sigmas)
