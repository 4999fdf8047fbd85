"""What the 1.3B-shape benchmarks share: their command-line shape and device options, the threads rule, and a
Wan-like text context (64 real tokens, zero padding to the umT5 length)."""

from __future__ import annotations

import torch


def add_options(ap, blocks: int, frames: int, height: int, width: int) -> None:
    """--blocks --frames --height --width --text-tokens --device --dtype --threads, with these defaults."""
    ap.add_argument("--blocks", type=int, default=blocks, help="teacher depth (1.3B has 30)")
    ap.add_argument("--frames", type=int, default=frames, help="latent frames (81 video frames = 21)")
    ap.add_argument("--height", type=int, default=height, help="latent height (tokens = F * H/2 * W/2; 480p = 60)")
    ap.add_argument("--width", type=int, default=width, help="latent width (832 = 104)")
    ap.add_argument("--text-tokens", type=int, default=512, help="context length (Wan pads umT5 to 512)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 on the CPU, where contended threads distort ratios; torch's choice on GPU)",
    )


def setup(args) -> tuple[torch.device, torch.dtype]:
    """Apply the threads rule; the device and dtype the options name."""
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return torch.device(args.device), getattr(torch, args.dtype)


def where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def text_context(tokens: int, generator: torch.Generator) -> torch.Tensor:
    """[1, tokens, 4096]: 64 random "real" tokens, then zeros, as Wan's pipeline pads umT5's output."""
    context = torch.zeros(1, tokens, 4096)
    context[:, : min(64, tokens)] = torch.randn(1, min(64, tokens), 4096, generator=generator)
    return context
