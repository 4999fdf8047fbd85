"""Calibration batches: a batch of latents and text embeddings checked against the teacher and turned into
`wan_forward` runs, noised at each calibration sigma; and a Gaussian batch for when no latents are at hand."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..core.flow import add_noise
from ..errors import RecipeError
from ..formats.spec import WanSpec

DEFAULT_SIGMAS = (0.25, 0.5, 0.75)
_ALIASES = {"latents": "hidden_states", "context": "encoder_hidden_states", "image": "encoder_hidden_states_image"}


def prepare_batch(
    spec: WanSpec,
    batch: Mapping,
    sigmas: Sequence[float] | None = None,
    seed: int = 0,
    where: str = "calibration batch",
) -> list[tuple[float | None, dict]]:
    """Check a batch against the teacher and return (sigma, forward kwargs) runs.

    `batch`: hidden_states|latents [B, in_dim, F, H, W], encoder_hidden_states|context [B, L, text_dim],
    encoder_hidden_states_image|image [B, 257, 1280] for an image-embedder teacher, optional timestep [B].
    With a timestep the batch is used as given (already noisy); without one the latents are clean x0 and
    each sigma gives x_t = (1 - s) x0 + s eps on the out_dim noise channels (i2v's image/mask channels stay),
    timestep s * 1000."""
    b, n = _checked(spec, batch, where)
    if "timestep" in b:
        t = torch.as_tensor(b["timestep"], dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise RecipeError(f"{where}: timestep must be [B={n}]; got {list(t.shape)}.")
        if sigmas is not None:
            raise RecipeError(
                f"{where}: has a timestep (an already-noisy batch) and sigmas were given too; "
                "drop the timestep to noise clean latents at each sigma, or drop sigmas."
            )
        return [(None, _forward_inputs(b, t / 1000))]
    sigmas = DEFAULT_SIGMAS if sigmas is None else tuple(float(s) for s in sigmas)
    if not sigmas or not all(0.0 <= s <= 1.0 for s in sigmas):
        raise RecipeError(f"{where}: sigmas must be a non-empty list of values in [0, 1]; got {sigmas!r}.")
    g = torch.Generator().manual_seed(seed)
    x, runs = b["hidden_states"], []
    for s in sigmas:
        noisy = x.clone()
        k = min(spec.out_dim, spec.in_dim)  # noise channels; the rest are conditioning (i2v image + mask)
        eps = torch.randn(x[:, :k].shape, generator=g).to(x)
        noisy[:, :k] = add_noise(x[:, :k], eps, s)
        runs.append((s, _forward_inputs({**b, "hidden_states": noisy}, torch.full((n,), s))))
    return runs


def _checked(spec: WanSpec, batch: Mapping, where: str) -> tuple[dict, int]:
    """The batch in canonical names, checked against the teacher's shapes; and its size."""
    unknown = set(batch) - set(_ALIASES) - set(_ALIASES.values()) - {"timestep"}
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected hidden_states (or latents), "
            "encoder_hidden_states (or context), encoder_hidden_states_image (or image), timestep."
        )
    b = {_ALIASES.get(k, k): v for k, v in batch.items()}
    for key in ("hidden_states", "encoder_hidden_states"):
        if not isinstance(b.get(key), torch.Tensor):
            raise RecipeError(f"{where}: missing tensor {key!r} (found {type(b.get(key)).__name__}).")
    x, ctx = b["hidden_states"], b["encoder_hidden_states"]
    pt, ph, pw = spec.patch_size
    if x.ndim != 5 or x.shape[1] != spec.in_dim or x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
        raise RecipeError(
            f"{where}: hidden_states must be [B, {spec.in_dim}, F, H, W] with F, H, W divisible by "
            f"the patch {spec.patch_size}; got {list(x.shape)}."
        )
    n = x.shape[0]
    if ctx.ndim != 3 or ctx.shape[0] != n or ctx.shape[2] != spec.text_dim:
        raise RecipeError(
            f"{where}: encoder_hidden_states must be [B={n}, L, {spec.text_dim}] (umT5 embeddings); "
            f"got {list(ctx.shape)}."
        )
    img = b.get("encoder_hidden_states_image")
    if spec.has_image_embedder:
        if ctx.shape[1] != 512:
            raise RecipeError(
                f"{where}: an image-conditioned Wan splits its context as image tokens + the last 512 "
                f"text tokens; the text context has {ctx.shape[1]} tokens. Pad it to 512 with zeros."
            )
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != n or img.shape[2] != spec.image_dim:
            raise RecipeError(
                f"{where}: this {spec.model_type} teacher needs encoder_hidden_states_image "
                f"[B={n}, 257, {spec.image_dim}] (CLIP tokens); got "
                f"{list(img.shape) if isinstance(img, torch.Tensor) else img!r}."
            )
    elif img is not None:
        raise RecipeError(
            f"{where}: encoder_hidden_states_image given, but this {spec.model_type} teacher has no "
            "image embedder. Drop it."
        )
    for key, t in b.items():
        if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
            raise RecipeError(f"{where}: {key} holds NaN or inf values.")
    return b, n


def _forward_inputs(b: dict, sigma: torch.Tensor) -> dict:
    """A checked batch in `wan_forward`'s words (x holds every input channel, i2v conditioning included)."""
    kw = {"x": b["hidden_states"], "sigma": sigma, "context": b["encoder_hidden_states"]}
    if b.get("encoder_hidden_states_image") is not None:
        kw["image_clip"] = b["encoder_hidden_states_image"]
    return kw


def noise_batch(
    spec: WanSpec,
    context: torch.Tensor,
    frames: int = 1,
    height: int = 32,
    width: int = 32,
    image: torch.Tensor | None = None,
    seed: int = 0,
) -> dict:
    """A calibration batch without real latents: Gaussian x0 of the latent grid [B, in_dim, frames, height,
    width] for each prompt in `context` [B, L, text_dim] (i2v: random image latents, first-frame mask).
    Real latents calibrate better; this is for when none are at hand."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(context.shape[0], spec.in_dim, frames, height, width, generator=g)
    if spec.in_dim > spec.out_dim:  # i2v: [noise | 4 mask channels | image latents]
        k = spec.out_dim
        x[:, k : k + 4] = 0
        x[:, k : k + 4, 0] = 1
    batch = {"hidden_states": x, "encoder_hidden_states": context}
    if image is not None:
        batch["encoder_hidden_states_image"] = image
    return batch
