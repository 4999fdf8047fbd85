"""Look at toy clips: a filmstrip figure (rows = clips, columns = frames) and an animated GIF."""

from __future__ import annotations

import torch


def filmstrip(videos: torch.Tensor, titles: list[str] | None = None, frames: int = 5):
    """A matplotlib Figure of `frames` evenly spaced frames of each clip [B, 3, F, H, W]."""
    from ..core.display import new_figure

    b, _, f = videos.shape[:3]
    picks = torch.linspace(0, f - 1, frames).round().long().tolist()
    fig = new_figure(figsize=(1.3 * frames, 1.4 * b))
    axes = fig.subplots(b, frames, squeeze=False)
    for i in range(b):
        for j, k in enumerate(picks):
            ax = axes[i][j]
            ax.imshow(videos[i, :, k].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {k}", fontsize=8)
        if titles:
            axes[i][0].set_ylabel(titles[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def save_gif(videos: torch.Tensor, path, scale: int = 2, fps: int = 8):
    """Write clips [B, 3, F, H, W] side by side as one looping animated GIF (Pillow); returns the path."""
    from pathlib import Path

    from PIL import Image

    b, _, f, h, w = videos.shape
    tiles = videos.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    strip = tiles.permute(2, 3, 0, 4, 1).reshape(f, h, b * w, 3)  # [F, H, B*W, 3]: clips side by side
    strip = strip.contiguous().numpy()
    frames = [Image.fromarray(frame).resize((b * w * scale, h * scale), Image.NEAREST) for frame in strip]
    frames[0].save(str(path), save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return Path(path)
