"""Reading clips for `wanlite encode`: video files (mp4, webm, mov, mkv, gif, ...) through PyAV, or a folder of
frames (png/jpg/webp) through Pillow. Frames come back as uint8 [F, H, W, 3] with their timestamps, read only as
far as the caller needs (an 81-frame sample of a 10-minute file decodes a few seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, FormatError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Probe:
    """What a clip is, read from its header: size, frame rate, duration in seconds (None: unknown)."""

    height: int
    width: int
    fps: float
    duration: float | None


def is_clip(path: Path) -> bool:
    """A video file or a folder holding frames."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir())
    return path.suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError("reading videos needs PyAV. Fix: pip install 'wanlite[video]' (or pip install av).") from None
    return av


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def probe(path, folder_fps: float = 16.0) -> Probe:
    """Size, fps and duration of a video file (its first video stream) or a frames folder (at `folder_fps`)."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = _frame_files(path)
        if not files:
            raise FormatError(f"{path}: a folder without frames ({', '.join(FRAME_SUFFIXES)}).")
        with Image.open(files[0]) as im:
            width, height = im.size
        return Probe(height, width, folder_fps, len(files) / folder_fps)
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FormatError(f"{path}: holds no video stream.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 0
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            return Probe(stream.codec_context.height, stream.codec_context.width, float(rate), duration)
    except av.error.FFmpegError as err:
        raise FormatError(f"{path}: not a readable video ({err.strerror or err}).") from None


def read(path, seconds: float | None = None, folder_fps: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames uint8 [F, H, W, 3], their times in seconds [F]) from the start, up to `seconds` (None: all)."""
    path = Path(path)
    if path.is_dir():
        import numpy as np
        from PIL import Image

        files = _frame_files(path)
        if seconds is not None:
            files = files[: int(seconds * folder_fps) + 1]
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(torch.from_numpy(np.array(im.convert("RGB"))))
        return torch.stack(frames), torch.arange(len(frames), dtype=torch.float64) / folder_fps
    av = _av()
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 16)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(frames) / rate
                if seconds is not None and frames and t > seconds + 0.5 / rate:
                    break
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                times.append(t)
    except (av.error.FFmpegError, IndexError) as err:
        raise FormatError(f"{path}: not a readable video ({getattr(err, 'strerror', None) or err}).") from None
    if not frames:
        raise FormatError(f"{path}: no frames could be decoded.")
    times = torch.tensor(times, dtype=torch.float64)
    return torch.stack(frames), times - times[0]


def write(path, frames: torch.Tensor, fps: float = 16.0, codec: str | None = None) -> Path:
    """Write uint8 frames [F, H, W, 3] as a video file (tests, notebooks): mp4 h264 unless the suffix says gif."""
    av = _av()
    path = Path(path)
    codec = codec or ("gif" if path.suffix.lower() == ".gif" else "libx264")
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f.contiguous().numpy(), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
