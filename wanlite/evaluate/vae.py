"""A diffusers `AutoencoderKLWan` as the `decode(latents) -> [B, 3, F, H, W] in [0, 1]` that `compare` uses (and
the `encode` that `wanlite encode` uses), and its loader (safetensors only)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WanliteError


class DiffusersWanVAE:
    """Adapter: a diffusers `AutoencoderKLWan` as the `decode(latents) -> [B, 3, F, H, W] in [0, 1]` that
    `compare` expects. Latents are the transformer's normalised ones; this undoes the per-channel
    normalisation (`latents_mean` / `latents_std` of the VAE config) the way diffusers' Wan pipelines do."""

    def __init__(self, vae):
        self.vae = vae
        z = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 4k+1, H, W] in [0, 1] -> normalised latents (the posterior mean, as Wan encodes)."""
        p = next(self.vae.parameters())
        x = (video.to(p.device, torch.float32) * 2 - 1).to(p.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = latents.to(p.device, torch.float32) * self.std.to(p.device) + self.mean.to(p.device)
        video = self.vae.decode(z.to(p.dtype), return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float() / 2 + 0.5).clamp(0, 1)


def load_diffusers_vae(path, device=None) -> DiffusersWanVAE:
    """A local diffusers `AutoencoderKLWan` (a VAE folder, or a pipeline folder with `vae/`), safetensors only,
    wrapped as the `decode(latents) -> [0, 1] video` that `compare` uses."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    sub = "vae" if (path / "vae" / "config.json").is_file() else None
    if not (path / (sub or "") / "config.json").is_file():
        raise WanliteError(
            f"{path}: no diffusers VAE here (expected config.json, or vae/config.json in a pipeline "
            "folder). Fix: point --vae at an AutoencoderKLWan folder, e.g. Wan2.1-T2V-1.3B-Diffusers/vae."
        )
    folder = path / (sub or "")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (only {pickles}, which wanlite never unpickles)" if pickles else ""
        raise WanliteError(
            f"{folder}: a VAE config.json but no .safetensors weights{found}. Fix: download the VAE's "
            "diffusion_pytorch_model.safetensors into it (e.g. from Wan2.1-T2V-1.3B-Diffusers/vae)."
        )
    vae = AutoencoderKLWan.from_pretrained(path, subfolder=sub, torch_dtype=torch.float32, use_safetensors=True)
    return DiffusersWanVAE(vae.to(device) if device is not None else vae)
