"""The toy world: short clips of one coloured shape moving across a plain background, drawn from a caption.

Designed to be learnable by a few-million-parameter Wan on a CPU: the shape is large (24 px of a 64-px frame,
1.5 of the transformer's 16-px tokens), it crosses 40 px (2.5 tokens) in 17 frames on a fixed track, the
background is black, and there are only 4 colours x 3 shapes x 4 directions = 48 captions. A seed adds a
small jitter to the track, so a caption is a (narrow) distribution, not one clip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from ..errors import WanliteError

COLOURS = {  # name -> RGB in [0, 1]; far apart, so the colour is never ambiguous
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) in image coordinates


@dataclass(frozen=True)
class WorldConfig:
    """How clips are drawn; the defaults are what the shipped toy teacher was trained on."""

    frames: int = 17  # clip length (4k+1, Wan's rule; 17 -> 5 latent frames)
    height: int = 64  # pixels (a multiple of 16: 8 for the VAE x 2 for the Wan patch)
    width: int = 64  # pixels
    size: float = 24.0  # shape extent in pixels (circle diameter, square side, triangle base and height)
    travel: float = 40.0  # pixels the centre moves from the first to the last frame
    jitter: float = 3.0  # max random offset of the track, pixels, in each axis (0 = one clip per caption)
    background: float = 0.0  # grey level of the plain background

    def __post_init__(self):
        if self.frames < 1 or (self.frames - 1) % 4:
            raise WanliteError(
                f"WorldConfig.frames must be 4k+1 (Wan's temporal rule: 1, 5, 9, 17, ...), "
                f"got {self.frames}. Fix: frames={4 * max(0, (self.frames - 1) // 4) + 1}."
            )
        for name in ("height", "width"):
            if getattr(self, name) % 16 or getattr(self, name) <= 0:
                raise WanliteError(
                    f"WorldConfig.{name} must be a positive multiple of 16 (VAE stride 8 x Wan "
                    f"patch 2), got {getattr(self, name)}."
                )


@dataclass(frozen=True)
class Caption:
    """A parsed caption: what the clip shows."""

    colour: str
    shape: str
    direction: str

    def __str__(self) -> str:
        return f"{self.colour} {self.shape} moving {self.direction}"


def captions() -> list[str]:
    """Every caption of the world, in a fixed order (colour, then shape, then direction)."""
    return [f"{c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def parse(caption: str) -> Caption:
    """'red circle moving left' -> Caption('red', 'circle', 'left'); anything else is an error naming the vocabulary."""
    words = caption.lower().split()
    if (
        len(words) != 4
        or words[2] != "moving"
        or words[0] not in COLOURS
        or words[1] not in SHAPES
        or words[3] not in DIRECTIONS
    ):
        raise WanliteError(
            f"toy caption {caption!r} is not '<colour> <shape> moving <direction>' with colour in "
            f"{list(COLOURS)}, shape in {list(SHAPES)}, direction in {list(DIRECTIONS)}; "
            "toy.captions() lists all of them."
        )
    return Caption(words[0], words[1], words[3])


def _mask(shape: str, x: torch.Tensor, y: torch.Tensor, size: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a shape centred at 0, from pixel offsets x, y (1-px soft edge)."""
    half = size / 2
    if shape == "circle":
        inside = half - torch.sqrt(x * x + y * y)
    elif shape == "square":
        inside = half - torch.maximum(x.abs(), y.abs())
    else:  # isosceles triangle pointing up: apex (0, -half), base y = +half
        edge = 2 * x.abs() - (y + half) * 1.0  # >0 outside the slanted sides (slope: half-width grows 1/2 per px)
        inside = torch.minimum(half - y, -edge / math.sqrt(5.0))
        inside = torch.minimum(inside, y + half)
    return (inside + 0.5).clamp(0, 1)


def _track(cap: Caption, seed: int | None, config: WorldConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre x, y per frame [F] of a caption's object: a fixed track through the middle, jittered by the seed."""
    if seed is None or config.jitter == 0:
        jx = jy = 0.0
    else:
        rng = random.Random(f"{cap}|{seed}")
        jx, jy = (rng.uniform(-config.jitter, config.jitter) for _ in range(2))
    dx, dy = DIRECTIONS[cap.direction]
    t = torch.linspace(-0.5, 0.5, config.frames) if config.frames > 1 else torch.zeros(1)
    return config.width / 2 + jx + dx * config.travel * t, config.height / 2 + jy + dy * config.travel * t


def batch(
    caps: list[str | Caption], seeds: list[int | None] | None = None, config: WorldConfig = WorldConfig()
) -> torch.Tensor:
    """Clips of several captions, drawn together: [B, 3, F, H, W] in [0, 1]; the same (caption, seed) -> the same
    clip. seed None draws no jitter (the caption's canonical track)."""
    parsed = [parse(c) if isinstance(c, str) else c for c in caps]
    seeds = seeds if seeds is not None else [0] * len(parsed)
    if len(seeds) != len(parsed):
        raise WanliteError(f"toy.batch: {len(parsed)} captions but {len(seeds)} seeds; give one seed per caption.")
    tracks = [_track(c, s, config) for c, s in zip(parsed, seeds)]
    cx = torch.stack([t[0] for t in tracks]).view(len(parsed), -1, 1, 1)  # [B, F, 1, 1]
    cy = torch.stack([t[1] for t in tracks]).view(len(parsed), -1, 1, 1)
    xs = torch.arange(config.width, dtype=torch.float32).view(1, 1, 1, -1) + 0.5
    ys = torch.arange(config.height, dtype=torch.float32).view(1, 1, -1, 1) + 0.5
    x = (xs - cx).expand(-1, -1, config.height, -1)  # [B, F, H, W]
    y = (ys - cy).expand(-1, -1, -1, config.width)
    cover = torch.zeros_like(x)
    for shape in SHAPES:
        rows = [i for i, c in enumerate(parsed) if c.shape == shape]
        if rows:
            cover[rows] = _mask(shape, x[rows], y[rows], config.size)
    rgb = torch.tensor([COLOURS[c.colour] for c in parsed]).view(len(parsed), 3, 1, 1, 1)
    return config.background + cover.unsqueeze(1) * (rgb - config.background)  # [B, 3, F, H, W]


def render(caption: str | Caption, seed: int | None = 0, config: WorldConfig = WorldConfig()) -> torch.Tensor:
    """The clip of one caption: [3, F, H, W] in [0, 1] (see `batch`)."""
    return batch([caption], [seed], config)[0]
