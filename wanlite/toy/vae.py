"""The toy "VAE": a fixed linear map between RGB clips and Wan2.1-shaped latents, fitted as a patch PCA.

Wan2.1's VAE turns [3, F, H, W] into [16, (F-1)/4+1, H/8, W/8]: the first frame is encoded alone, then each
group of 4 frames becomes one latent frame. This toy keeps exactly those shapes (a 48x compression, like the
real one) with two PCAs: 8x8 px patches of frame 0 (192 numbers -> 16) and 4x8x8 px patches of each later
group (768 -> 16). Latents are whitened per channel (mean 0, std 1), like Wan's normalised latents, so Gaussian
noise is the right prior. It is fitted once on world clips, saved beside the toy teacher (a teacher only makes
sense with the exact VAE it was trained with), and is deterministic: the sign of each component is fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import FormatError, WanliteError
from .world import WorldConfig, batch, captions

CHANNELS = 16
SPATIAL = 8
TEMPORAL = 4


def _first_patches(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -> frame-0 patches [B, H/8, W/8, 3*8*8]."""
    b, c, _, h, w = video.shape
    x = video[:, :, 0].reshape(b, c, h // SPATIAL, SPATIAL, w // SPATIAL, SPATIAL)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // SPATIAL, w // SPATIAL, c * SPATIAL * SPATIAL)


def _group_patches(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -> patches of frames 1.. in groups of 4: [B, (F-1)/4, H/8, W/8, 3*4*8*8]."""
    b, c, f, h, w = video.shape
    x = video[:, :, 1:].reshape(b, c, (f - 1) // TEMPORAL, TEMPORAL, h // SPATIAL, SPATIAL, w // SPATIAL, SPATIAL)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T, h, w, C, 4, 8, 8]
    return x.reshape(b, (f - 1) // TEMPORAL, h // SPATIAL, w // SPATIAL, c * TEMPORAL * SPATIAL * SPATIAL)


def _pca(patches: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and top-k components [k, D] (float64 SVD; each component's largest entry made positive)."""
    x = patches.reshape(-1, patches.shape[-1]).double()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    return mean.float(), (comps * signs).float()


@dataclass
class ToyVAE:
    """Linear encoder/decoder between videos [B, 3, F, H, W] in [0, 1] and latents [B, 16, (F-1)/4+1, H/8, W/8]."""

    first_mean: torch.Tensor  # [192] mean frame-0 patch
    first_basis: torch.Tensor  # [16, 192] PCA components of frame-0 patches
    group_mean: torch.Tensor  # [768] mean 4-frame patch
    group_basis: torch.Tensor  # [16, 768] PCA components of 4-frame patches
    latent_mean: torch.Tensor  # [2, 16] per-channel latent mean (row 0: first frame, row 1: groups)
    latent_std: torch.Tensor  # [2, 16] per-channel latent std

    def __repr__(self) -> str:
        return (
            f"ToyVAE(linear patch PCA: frame 0 {self.first_basis.shape[1]}->{CHANNELS}, 4-frame groups "
            f"{self.group_basis.shape[1]}->{CHANNELS}; latents [B, 16, (F-1)/4+1, H/8, W/8], whitened)"
        )

    @classmethod
    def fit(cls, clips: int = 192, config: WorldConfig = WorldConfig(), seed: int = 0) -> "ToyVAE":
        """Fit on `clips` world clips (every caption in turn, seeds from `seed`); deterministic."""
        caps = captions()
        names = [caps[i % len(caps)] for i in range(clips)]
        video = batch(names, [seed + i for i in range(clips)], config)
        fm, fb = _pca(_first_patches(video), CHANNELS)
        gm, gb = _pca(_group_patches(video), CHANNELS)
        zf = (_first_patches(video) - fm) @ fb.T  # [B, h, w, 16]
        zg = (_group_patches(video) - gm) @ gb.T  # [B, T, h, w, 16]
        zf, zg = zf.reshape(-1, CHANNELS), zg.reshape(-1, CHANNELS)
        return cls(fm, fb, gm, gb, torch.stack([zf.mean(0), zg.mean(0)]), torch.stack([zf.std(0), zg.std(0)]))

    def _check(self, video: torch.Tensor) -> None:
        if (
            video.ndim != 5
            or video.shape[1] != 3
            or (video.shape[2] - 1) % TEMPORAL
            or video.shape[3] % SPATIAL
            or video.shape[4] % SPATIAL
        ):
            raise WanliteError(
                f"ToyVAE.encode expects a video [B, 3, 4k+1 frames, H, W] with H, W multiples of 8, "
                f"got {tuple(video.shape)}."
            )

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [0, 1] -> whitened latents [B, 16, (F-1)/4+1, H/8, W/8]."""
        self._check(video)
        video = video.float()
        zf = ((_first_patches(video) - self.first_mean) @ self.first_basis.T - self.latent_mean[0]) / self.latent_std[0]
        zg = ((_group_patches(video) - self.group_mean) @ self.group_basis.T - self.latent_mean[1]) / self.latent_std[1]
        z = torch.cat([zf.unsqueeze(1), zg], dim=1)  # [B, T, h, w, 16]
        return z.permute(0, 4, 1, 2, 3).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w], clamped to [0, 1]."""
        if latents.ndim != 5 or latents.shape[1] != CHANNELS:
            raise WanliteError(f"ToyVAE.decode expects latents [B, 16, T, h, w], got {tuple(latents.shape)}.")
        z = latents.detach().float().cpu().permute(0, 2, 3, 4, 1)  # [B, T, h, w, 16]
        b, t, h, w, _ = z.shape
        pf = (z[:, 0] * self.latent_std[0] + self.latent_mean[0]) @ self.first_basis + self.first_mean  # [B, h, w, 192]
        pg = (z[:, 1:] * self.latent_std[1] + self.latent_mean[1]) @ self.group_basis + self.group_mean
        # pg: [B, T-1, h, w, 768]
        first = (
            pf.reshape(b, h, w, 3, SPATIAL, SPATIAL)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(b, 3, 1, h * SPATIAL, w * SPATIAL)
        )
        rest = pg.reshape(b, t - 1, h, w, 3, TEMPORAL, SPATIAL, SPATIAL)  # [B, T', h, w, C, 4, 8, 8]
        rest = rest.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, 3, (t - 1) * TEMPORAL, h * SPATIAL, w * SPATIAL)
        return torch.cat([first, rest], dim=2).clamp(0, 1)

    def latent_shape(self, config: WorldConfig = WorldConfig()) -> tuple[int, int, int, int]:
        """(16, T, h, w) of one clip of `config`."""
        return CHANNELS, (config.frames - 1) // TEMPORAL + 1, config.height // SPATIAL, config.width // SPATIAL

    def psnr(self, video: torch.Tensor) -> float:
        """Round-trip PSNR in dB of `video` through encode -> decode."""
        mse = (self.decode(self.encode(video)) - video).pow(2).mean().item()
        return 10 * math.log10(1.0 / max(mse, 1e-12))

    # ---- files ----
    def save(self, path: str | Path) -> Path:
        tensors = {k: getattr(self, k).contiguous() for k in self.__dataclass_fields__}
        save_file(tensors, str(path), metadata={"format": "wanlite-toy-vae", "version": "1"})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ToyVAE":
        path = Path(path)
        if not path.is_file():
            raise FormatError(
                f"{path}: toy VAE file not found. Fix: ToyVAE.fit().save(path), or use toy.vae() "
                "for the one shipped with the toy teacher."
            )
        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors' own error type: truncated, empty or not safetensors
            raise FormatError(
                f"{path}: not a readable safetensors file ({err}). Fix: restore the bundle's VAE."
            ) from None
        missing = set(cls.__dataclass_fields__) - set(tensors)
        if missing:
            raise FormatError(f"{path}: not a toy VAE file, missing tensors {sorted(missing)}.")
        return cls(**{k: tensors[k] for k in cls.__dataclass_fields__})
