"""Wan's flow-matching conventions and the measures every stage shares, each defined once.

x_σ = (1 − σ)·x0 + σ·ε; the model predicts v = ε − x0 at timestep σ·1000, so x0 = x_σ − σ·v and an Euler step is
x_σ' = x_σ + (σ' − σ)·v. Sigmas are shifted the way Wan trains and samples: σ' = s·σ / (1 + (s − 1)·σ).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def shift_sigma(sigma, shift: float):
    """Wan's shifted sigma s·σ / (1 + (s − 1)·σ): shift > 1 spends more of a schedule at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def _per_sample(sigma, like: torch.Tensor) -> torch.Tensor:
    """σ (a number, or one per sample) shaped to broadcast over a batch like `like` [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim else sigma


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """The state x_σ = (1 − σ)·x0 + σ·ε (σ a number or one per sample)."""
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """What a Wan transformer is trained to predict: v = ε − x0."""
    return eps - x0


def predict_x0(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """The clean sample a velocity implies: x0 = x_σ − σ·v."""
    return x - _per_sample(sigma, x) * v


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One flow-matching Euler step x_σ' = x_σ + (σ' − σ)·v (what ComfyUI's `euler` does for flow models)."""
    return x + (_per_sample(sigma_next, x) - _per_sample(sigma, x)) * v


def wan_forward(
    model,
    x: torch.Tensor,
    sigma,
    context: torch.Tensor,
    image_latents: torch.Tensor | None = None,
    image_clip: torch.Tensor | None = None,
) -> torch.Tensor:
    """The velocity a Wan transformer predicts for states `x` [B, C, F, H, W] at noise `sigma` (a number or [B]),
    in fp32. Inputs move to the model's device and dtype; i2v image latents are concatenated on channels."""
    p = next(model.parameters())
    if image_latents is not None:
        x = torch.cat([x, image_latents.to(x)], dim=1)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=p.device).reshape(-1)
    kwargs = {} if image_clip is None else {"encoder_hidden_states_image": image_clip.to(p.device, p.dtype)}
    out = model(
        hidden_states=x.to(p.device, p.dtype),
        timestep=(sigma * 1000).expand(x.shape[0]),
        encoder_hidden_states=context.to(p.device, p.dtype),
        return_dict=False,
        **kwargs,
    )[0]
    return out.float()


class BlockOutputs(contextlib.AbstractContextManager):
    """Forward hooks on `model.blocks`: after a forward, `outputs[i]` is block i's output hidden states [B, L, D]
    (and `inputs[i]` its input, with `inputs=True`) for each watched block (default: all). `detach=True` keeps
    no graph (for measuring); otherwise the outputs carry gradients (for feature losses)."""

    def __init__(self, model, blocks=None, inputs: bool = False, detach: bool = False):
        self.outputs: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        self._keep_inputs, self._detach = inputs, detach
        watched = range(len(model.blocks)) if blocks is None else blocks
        self._handles = [model.blocks[i].register_forward_hook(self._hook(i)) for i in watched]

    def _hook(self, i: int):
        def hook(_module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            self.outputs[i] = output.detach() if self._detach else output
            if self._keep_inputs:
                self.inputs[i] = args[0].detach() if self._detach else args[0]

        return hook

    def in_order(self) -> list[torch.Tensor]:
        """The watched blocks' outputs of the latest forward, by block index."""
        return [self.outputs[i] for i in sorted(self.outputs)]

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(x.shape[0], -1)


def rel_mse(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative MSE ‖pred − ref‖² / ‖ref‖² over all the given samples: 0 is perfect, 1 is as wrong as predicting
    zeros. The one error measure wanlite reports (its square root is `rel_l2`)."""
    p, r = _flat(pred), _flat(ref)
    return float(((p - r) ** 2).sum() / (r**2).sum().clamp_min(1e-30))


def rel_l2(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """‖pred − ref‖ / ‖ref‖, the square root of `rel_mse` (for states and samples, where distances read better)."""
    return rel_mse(pred, ref) ** 0.5


def cosine(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of each sample's flattened tensor, averaged over the batch."""
    return float(F.cosine_similarity(_flat(pred), _flat(ref), dim=1, eps=1e-12).clamp(-1, 1).mean())
