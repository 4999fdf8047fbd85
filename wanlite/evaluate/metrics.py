"""Fidelity measures beyond the shared relative error (`core.flow.rel_mse`): PSNR, SSIM, and a latent preview."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import WanliteError

# ComfyUI's Wan 2.1 latent -> RGB preview factors (comfy/latent_formats.py, class Wan21), for model-space latents.
WAN21_RGB = torch.tensor(
    [
        [-0.1299, -0.1692, 0.2932],
        [0.0671, 0.0406, 0.0442],
        [0.3568, 0.2548, 0.1747],
        [0.0372, 0.2344, 0.1420],
        [0.0313, 0.0189, -0.0328],
        [0.0296, -0.0956, -0.0665],
        [-0.3477, -0.4059, -0.2925],
        [0.0166, 0.1902, 0.1975],
        [-0.0412, 0.0267, -0.1364],
        [-0.1293, 0.0740, 0.1636],
        [0.0680, 0.3019, 0.1128],
        [0.0032, 0.0581, 0.0639],
        [-0.1251, 0.0927, 0.1699],
        [0.0060, -0.0633, 0.0005],
        [0.3477, 0.2275, 0.2950],
        [0.1984, 0.0913, 0.1861],
    ]
)
WAN21_RGB_BIAS = torch.tensor([-0.1835, -0.0868, -0.3360])


def psnr(pred: torch.Tensor, ref: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; `inf` for identical tensors. Without `data_range` the reference's
    max - min is the peak (right for latents, which have no fixed range); pixels in [0, 1] use 1."""
    mse = float(((pred.detach().float() - ref.detach().float()) ** 2).mean())
    if mse == 0:
        return math.inf
    peak = float(ref.max() - ref.min()) if data_range is None else data_range
    return 10 * math.log10(peak**2 / mse)


def ssim(pred: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian 11x11 window, sigma 1.5) over every frame of videos [B, C, F, H, W]
    (or images [B, C, H, W]); computed per channel and averaged, like scikit-image's channel_axis mode."""
    if pred.shape != ref.shape:
        raise WanliteError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(ref.shape)}.")
    x, y = pred.detach().float(), ref.detach().float()
    if x.ndim == 5:  # [B, C, F, H, W] -> [B*F, C, H, W]
        x, y = (t.permute(0, 2, 1, 3, 4).reshape(-1, t.shape[1], t.shape[3], t.shape[4]) for t in (x, y))
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2]) | 1
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    blur = lambda t: F.conv2d(t, kernel, groups=c)  # noqa: E731 (valid region only, as scikit-image crops)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def latent_preview(latents: torch.Tensor) -> torch.Tensor:
    """A cheap RGB look at latents [B, C, F, H, W] -> [B, 3, F, H, W] in [0, 1] by a fixed linear map of the
    channels: ComfyUI's Wan 2.1 preview factors for 16 channels, a fixed seeded projection otherwise."""
    x = latents.detach().float()
    if x.shape[1] == 16:
        weight, bias = WAN21_RGB, WAN21_RGB_BIAS
    else:
        weight = torch.randn(x.shape[1], 3, generator=torch.Generator().manual_seed(0)) / math.sqrt(x.shape[1])
        bias = torch.zeros(3)
    weight, bias = weight.to(x.device), bias.to(x.device)
    rgb = torch.einsum("bcfhw,cr->brfhw", x, weight) + bias[None, :, None, None, None]
    return ((rgb + 1) / 2).clamp(0, 1)
