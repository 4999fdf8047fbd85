"""What `wanlite encode` reads: clips and their captions gathered from a folder or list, and the geometry that makes
a clip a Wan sample (target size or aspect-ratio bucket, 4k+1 frames at the target fps, centre crop)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from . import video as videoio


@dataclass
class Clip:
    """One source clip: where it is, its caption, and how to read it (`load`: toy clips are rendered)."""

    path: str
    caption: str
    record: dict  # what identifies this version of the source: path, size, mtime
    load: Callable[[float | None], tuple[torch.Tensor, torch.Tensor]] | None = None
    info: Callable[[], videoio.Probe] | None = None


def file_clip(path: Path, caption: str, folder_fps: float) -> Clip:
    stat = path.stat()
    record = {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}
    if path.is_dir():  # a frames folder: its newest frame says when it changed
        frames = [p.stat() for p in path.iterdir()]
        record.update(size=sum(s.st_size for s in frames), mtime=max(s.st_mtime for s in frames))
    return Clip(
        str(path),
        caption,
        record,
        load=lambda seconds: videoio.read(path, seconds, folder_fps),
        info=lambda: videoio.probe(path, folder_fps),
    )


def _read_captions(captions, videos: list[Path]) -> dict[str, str | None]:
    """Caption per video: sidecar .txt files (default), or a .csv / .jsonl with a path and a caption column."""
    if captions in (None, "", "sidecar"):
        out = {}
        for v in videos:
            side = v.with_suffix(".txt") if v.is_file() else v / "caption.txt"
            if not side.is_file() and v.is_dir():
                side = v.with_name(v.name + ".txt")
            out[str(v)] = side.read_text(encoding="utf-8") if side.is_file() else None
        return out
    path = Path(captions)
    if not path.is_file():
        raise ConfigError(
            f"--captions {captions}: no such file. Fix: 'sidecar' (NAME.txt beside each video), or a "
            ".csv / .jsonl with columns path (or file, video) and caption (or text, prompt)."
        )
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ConfigError(f"--captions {captions}: expected 'sidecar', a .csv or a .jsonl file.")
    table = {}
    for n, row in enumerate(rows):
        key = next((row[k] for k in ("path", "file", "video", "file_name") if k in row), None)
        text = next((row[k] for k in ("caption", "text", "prompt") if k in row), None)
        if key is None:
            raise ConfigError(f"{path}: row {n + 1} has no path column (path, file, video or file_name).")
        table[key] = text
    out = {}
    for v in videos:
        for key in (str(v), v.name, str(v.resolve()), v.stem):
            if key in table:
                out[str(v)] = table[key]
                break
        else:
            out[str(v)] = None
    return out


def gather(videos, captions=None, folder_fps: float = 16.0) -> tuple[list[Clip], list[dict]]:
    """Clips from a folder (its videos and frame folders, sorted) or a .txt list of paths; (clips, skipped)."""
    videos = Path(videos)
    if videos.is_dir():
        paths = sorted(p for p in videos.iterdir() if videoio.is_clip(p))
        if not paths and videoio.is_clip(videos):
            paths = [videos]
    elif videos.is_file() and videos.suffix.lower() == ".txt":
        lines = [line.strip() for line in videos.read_text(encoding="utf-8").splitlines() if line.strip()]
        paths = [Path(line) if Path(line).is_absolute() else videos.parent / line for line in lines]
    elif videos.is_file():
        paths = [videos]
    else:
        raise ConfigError(f"--videos {videos}: no such folder or file. Fix: a folder of videos or a .txt list.")
    if not paths:
        raise ConfigError(f"--videos {videos}: no videos ({', '.join(videoio.VIDEO_SUFFIXES)}) or frame folders.")
    table = _read_captions(captions, paths)
    clips, skipped = [], []
    for p in paths:
        text = table[str(p)]
        if not p.exists():
            skipped.append({"path": str(p), "kind": "missing", "reason": "no such file"})
        elif text is None:
            skipped.append({"path": str(p), "kind": "no caption", "reason": f"no caption ({_where(captions, p)})"})
        elif not text.strip():
            skipped.append(
                {"path": str(p), "kind": "empty caption", "reason": f"empty caption ({_where(captions, p)})"}
            )
        else:
            clips.append(file_clip(p, text.strip(), folder_fps))
    return clips, skipped


def _where(captions, p: Path) -> str:
    return f"expected {p.with_suffix('.txt').name} beside it" if captions in (None, "", "sidecar") else str(captions)


# ------------------------------------------------------------------ conforming
def parse_size(size) -> tuple[int, int]:
    """'480x832' (height x width) or a pair -> (height, width)."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"--size {size!r}: expected HEIGHTxWIDTH, e.g. 480x832.")
        return int(parts[0]), int(parts[1])
    return int(size[0]), int(size[1])


def buckets(size: tuple[int, int], multiple: int = 16) -> list[tuple[int, int]]:
    """Wan-style aspect-ratio buckets of about the area of `size`: it, its transpose, square, 4:3 and 3:4."""
    h, w = size
    area = h * w
    out = [(h, w), (w, h)]
    for rh, rw in ((1, 1), (3, 4), (4, 3)):
        bh = max(multiple, round(math.sqrt(area * rh / rw) / multiple) * multiple)
        bw = max(multiple, round(area / bh / multiple) * multiple)
        out.append((bh, bw))
    return list(dict.fromkeys(out))


def choose_size(height: int, width: int, size, bucket: bool, multiple: int) -> tuple[tuple[int, int] | None, str]:
    """(target size, "") or (None, why no bucket fits): the bucket of nearest aspect ratio, within 25%, and no
    more than a 2x upscale."""
    if not bucket:
        return size, ""
    aspect = math.log(width / height)
    best = min(buckets(size, multiple), key=lambda b: abs(math.log(b[1] / b[0]) - aspect))
    if abs(math.log(best[1] / best[0]) - aspect) > math.log(1.25):
        return None, f"frame size {width}x{height} (w x h) fits no bucket's aspect ratio within 25% (nearest {best})"
    if max(best[0] / height, best[1] / width) > 2:
        return None, f"frame size {width}x{height} (w x h) is too small for bucket {best[0]}x{best[1]} (over 2x)"
    return best, ""


def windows(times: torch.Tensor, fps: float, frames: int, split: int = 1) -> tuple[int, int]:
    """(how many `frames`-frame samples at `fps` a clip with these frame times holds, at most `split` (0 or 1: one),
    how many frames at `fps` it holds)."""
    step = float(times[1] - times[0]) if len(times) > 1 else 1 / fps
    available = int(math.floor((float(times[-1]) + step / 2) * fps + 1e-6)) + 1
    return min(max(1, split), available // frames), available


def conform(frames: torch.Tensor, times: torch.Tensor, fps: float, n: int, size, start: int = 0) -> torch.Tensor:
    """Frames [F, H, W, 3] (uint8, or float in [0, 1]) with their times -> [3, n, h, w] float in [0, 1]: the frame
    nearest each time (start + k) / fps, resized to cover `size` (antialiased bilinear) and centre-cropped."""
    targets = (torch.arange(start, start + n, dtype=torch.float64) / fps).view(-1, 1)
    pick = (times.view(1, -1) - targets).abs().argmin(1)
    clip = frames[pick]
    clip = clip.float() / 255 if clip.dtype == torch.uint8 else clip.float()
    clip = clip.permute(0, 3, 1, 2)  # [n, 3, H, W]
    h, w = size
    if tuple(clip.shape[2:]) != (h, w):
        scale = max(h / clip.shape[2], w / clip.shape[3])
        rh, rw = max(h, round(clip.shape[2] * scale)), max(w, round(clip.shape[3] * scale))
        clip = torch.cat(
            [
                torch.nn.functional.interpolate(c, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
                for c in clip.split(16)
            ]
        )
        top, left = (rh - h) // 2, (rw - w) // 2
        clip = clip[:, :, top : top + h, left : left + w]
    return clip.clamp(0, 1).permute(1, 0, 2, 3).contiguous()


# ------------------------------------------------------------------ the stage
