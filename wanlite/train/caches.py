"""Caches the teacher makes once, so students train without it: the teacher's sampling trajectories (data-free
inputs) and its target velocities and block outputs (recipe sweeps train many students on one cache)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import torch

from ..core.flow import BlockOutputs, wan_forward
from ..evaluate.sampling import sample, solve_through
from .data import ShardWriter, collate
from .inputs import Noising, forward_args, keyed, model_inputs


@torch.no_grad()
def write_trajectories(
    teacher,
    contexts: torch.Tensor,
    out,
    negative_context: torch.Tensor | None = None,
    latent_shape=(16, 21, 60, 104),
    steps: int = 20,
    guidance: float = 5.0,
    shift: float = 5.0,
    scheduler: str = "unipc",
    seeds_per_prompt: int = 1,
    seed: int = 0,
    shard_size: int = 64,
    overwrite: bool = False,
) -> Path:
    """Data-free distillation inputs: the teacher samples `steps` steps from noise for each prompt embedding
    ([P, L, 4096]) and seed; every visited (x_t, sigma) becomes a training sample with its prompt."""
    device = next(teacher.parameters()).device
    meta = dict(
        steps=steps,
        guidance=guidance,
        shift=shift,
        scheduler=scheduler,
        prompts=int(contexts.shape[0]),
        seeds_per_prompt=seeds_per_prompt,
        seed=seed,
    )
    with ShardWriter(out, kind="trajectory", shard_size=shard_size, meta=meta, overwrite=overwrite) as w:
        for p in range(contexts.shape[0]):
            ctx = contexts[p : p + 1].to(device)
            neg = None if negative_context is None else negative_context.reshape(1, *contexts.shape[1:]).to(device)
            for r in range(seeds_per_prompt):
                g = torch.Generator().manual_seed(seed * 1_000_003 + p * seeds_per_prompt + r)
                noise = torch.randn((1, *latent_shape), generator=g).to(device)
                res = sample(
                    teacher,
                    noise,
                    ctx,
                    neg,
                    steps=steps,
                    guidance=guidance,
                    shift=shift,
                    scheduler=scheduler,
                    return_trajectory=True,
                )
                for i in range(steps):  # the states the teacher visited before each step (sigma > 0)
                    w.add(
                        noisy=res.trajectory[i, 0].float(),
                        sigma=res.sigmas[i].reshape(()).float(),
                        context=ctx[0].float(),
                        negative_context=None if neg is None else neg[0].float(),
                    )
    return Path(out)


@torch.no_grad()
def write_teacher_targets(
    teacher,
    source,
    out,
    noising: Noising = Noising(),
    feature_blocks: Iterable[int] = (),
    seed: int = 0,
    batch_size: int = 4,
    dtype: torch.dtype = torch.float32,
    shard_size: int = 64,
    overwrite: bool = False,
    teacher_name: str = "",
    guidance: float | None = None,
) -> Path:
    """Run the teacher once over `source` and store its velocities (and block outputs at `feature_blocks`)
    with the exact inputs it saw, so several students (recipes) train against it without the teacher.
    Noise, sigma and the negative-context choice are drawn as the loop would (epoch 0, keyed by index).
    `guidance`: store the guided velocity v_u + g·(v_c − v_u) instead (for the `guided` objective; every sample
    is then conditional)."""
    device = next(teacher.parameters()).device
    blocks = sorted(set(int(b) for b in feature_blocks))
    if guidance is not None:
        noising = dataclasses.replace(noising, uncond_fraction=0.0)
    meta = dict(
        teacher=teacher_name,
        feature_blocks=blocks,
        seed=seed,
        source=repr(source),
        dtype=str(dtype),
        noising=noising.__dict__,
        guidance=guidance,
    )
    with ShardWriter(out, kind="targets", shard_size=shard_size, meta=meta, overwrite=overwrite) as w:
        for lo in range(0, len(source), batch_size):
            keys = list(range(lo, min(lo + batch_size, len(source))))
            inputs = model_inputs(collate([source[i] for i in keys]), keys, seed, noising, device)
            args = forward_args(inputs)
            with BlockOutputs(teacher, blocks, detach=True) as cap:
                v = wan_forward(teacher, **args)
            if guidance is not None and guidance != 1:
                v_uncond = wan_forward(teacher, **{**args, "context": inputs["negative"]})
                v = v_uncond + guidance * (v - v_uncond)
            extra = {f"feat.{b}": cap.outputs[b].to(dtype) for b in blocks}
            w.add_batch(
                noisy=inputs["noisy"].to(dtype),
                sigma=inputs["sigma"].float(),
                context=inputs["context"].to(dtype),
                v_teacher=v.to(dtype),
                v_task=None if inputs["task"] is None else inputs["task"].to(dtype),
                image_latents=inputs.get("image_latents"),
                image_clip=inputs.get("image_clip"),
                **extra,
            )
    return Path(out)


@torch.no_grad()
def write_ode(
    teacher,
    source,
    out,
    sigmas,
    guidance: float,
    shift: float,
    substeps: int = 5,
    seed: int = 0,
    batch_size: int = 16,
    latent_shape=None,
    shard_size: int = 64,
    overwrite: bool = False,
    teacher_name: str = "",
) -> Path:
    """The teacher's guided ODE solution from noise for every prompt of `source`, recorded at a student's
    `sigmas` (kind "ode": `states` [k + 1, C, F, H, W], the first the noise and the last the teacher's sample):
    data-free targets for the `trajectory` objective, made once. The noise of sample i is keyed by (seed, i); its
    shape is the sample's latents' (or `latent_shape`)."""
    device = next(teacher.parameters()).device
    meta = dict(
        teacher=teacher_name,
        sigmas=list(sigmas),
        guidance=guidance,
        shift=shift,
        substeps=substeps,
        seed=seed,
        source=repr(source),
        solver="unipc",
    )
    with ShardWriter(out, kind="ode", shard_size=shard_size, meta=meta, overwrite=overwrite) as w:
        for lo in range(0, len(source), batch_size):
            keys = list(range(lo, min(lo + batch_size, len(source))))
            batch = collate([source[i] for i in keys])
            shape = tuple(batch["latents"].shape[1:]) if "latents" in batch else tuple(latent_shape)
            noise = keyed(keys, seed, "ode-noise", shape, normal=True).to(device)
            negative = batch.get("negative_context")
            states = solve_through(
                teacher,
                noise,
                batch["context"].to(device),
                None if negative is None else negative.to(device),
                sigmas,
                guidance,
                shift,
                substeps,
            )
            w.add_batch(
                states=states.transpose(0, 1).cpu().float(), context=batch["context"], negative_context=negative
            )
    return Path(out)
