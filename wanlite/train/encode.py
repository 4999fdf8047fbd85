"""`wanlite encode`: videos + captions -> a latents cache, prompts -> an embeddings-only cache, for `distill`.

One path for every source: a clip is probed (size, fps), read only as far as needed, resampled to `fps`, cut to
`frames` (4k+1, the Wan VAE's rule; `split=K` cuts a long clip into up to K samples), resized to cover the target
size (or its aspect-ratio bucket) and centre-cropped, then encoded in batches: the VAE's posterior mean normalised
with the config's latents_mean / latents_std (as Wan's pipelines do), the caption through umT5 (zero padding past
its tokens, which the cache strips), the negative prompt embedded once. Samples go through `ShardWriter` in append
mode with their source (path, size, mtime) recorded per sample, so a re-run skips what is done and a killed run
loses at most one shard. A bad input is skipped with one line naming it and why, and listed in `skipped.jsonl`.
The toy world runs the same code with the toy VAE and toy text encoder (`runs.toy_encoders`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, WanliteError
from .clips import Clip, buckets, choose_size, conform, file_clip, gather, parse_size, windows  # noqa: F401
from .data import SKIPPED, CachedSource, ShardWriter
from .encoders import WAN_NEGATIVE, Encoders, UMT5Text, load_encoders  # noqa: F401


@dataclass
class EncodeResult:
    """Where the cache(s) went, what was encoded now, what was already there, what was skipped and why."""

    out: Path
    caches: list[Path]
    encoded: int
    already: int
    skipped: list[dict]

    def __repr__(self) -> str:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            key = s.get("kind", "other")
            reasons[key] = reasons.get(key, 0) + 1
        why = ", ".join(f"{n} {r}" for r, n in reasons.items())
        return (
            f"encoded {self.encoded} samples ({self.already} already in the cache), skipped {len(self.skipped)}"
            + (f" ({why}; see {self.out / SKIPPED})" if self.skipped else "")
            + f" -> {', '.join(map(str, self.caches)) or self.out}"
        )


def _done(cache: Path, settings: dict, overwrite: bool) -> dict:
    """{(path, size, mtime): [windows done, windows in all]} of an existing cache with the same settings."""
    if overwrite or not (cache / "manifest.json").is_file():
        return {}
    source = CachedSource(cache)
    old = source.meta.get("encode")
    if old != settings:
        changed = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
        raise ConfigError(
            f"{cache}: a cache encoded with other settings ({', '.join(changed) or 'not by wanlite encode'}); "
            "resuming would mix them. Fix: --overwrite to start over, or another --out."
        )
    done: dict = {}
    for shard in source.manifest["shards"]:
        for r in shard.get("records") or []:
            key = (r["path"], r["size"], r["mtime"])
            done.setdefault(key, [0, r.get("windows", 1)])[0] += 1
    return done


def encode(
    out,
    encoders: Encoders,
    clips: list[Clip] | None = None,
    prompts: Sequence[str] | None = None,
    size=(480, 832),
    frames: int = 81,
    fps: float = 16.0,
    bucket: bool = False,
    split: int = 1,
    batch: int = 1,
    negative: str | None = None,
    overwrite: bool = False,
    shard_size: int = 64,
    low_memory: bool = False,
    skipped: list[dict] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    meta: dict | None = None,
) -> EncodeResult:
    """Encode `clips` (latents cache; with `bucket`, one cache per bucket in out/HxW/; `split=K`: up to K
    consecutive samples per clip) or `prompts` (an embeddings-only cache) into `out`, resuming what a previous run
    with the same settings wrote. `skipped`:
    inputs already found bad (`gather`'s), reported with the rest."""
    size = parse_size(size)
    if frames < 1 or (frames - 1) % 4:
        raise ConfigError(
            f"--frames {frames}: the Wan VAE takes 4k+1 frames (1, 5, ..., 81). Fix: --frames "
            f"{4 * max(0, (frames - 1) // 4) + 1}."
        )
    multiple = 2 * encoders.stride  # VAE stride x the transformer's 2x2 patch
    if not bucket and (size[0] % multiple or size[1] % multiple):
        raise ConfigError(f"--size {size[0]}x{size[1]}: both sides must be multiples of {multiple} for this VAE.")
    if (clips is None) == (prompts is None):
        raise ConfigError("encode: give clips (--videos / --toy) or --prompts, not both or neither.")
    negative = encoders.negative if negative is None else negative
    settings = {"negative": negative, "encoders": encoders.name}
    if clips is not None:
        settings.update(size=list(size), frames=frames, fps=fps, bucket=bucket, split=split)
    job = _Job(Path(out), encoders, settings, {"source": "wanlite encode", **(meta or {}), "encode": settings})
    job.batch, job.shard_size, job.overwrite, job.progress = max(1, batch), shard_size, overwrite, progress
    job.say = log or _write_line
    job.use = _placer(encoders, low_memory)
    for s in skipped or []:
        job.skip(s["path"], s.get("kind", "other"), s["reason"])
    try:
        job.use("text")
        job.negative = encoders.text([negative])[0]
        job.encode_prompts(prompts) if clips is None else job.encode_clips(clips, size, frames, fps, bucket, split)
        caches = [w.close() for w in job.writers.values()]
    finally:
        for w in job.writers.values():
            if not w.append:  # an --overwrite run that stopped: its unfinished copy goes, the old cache stays
                shutil.rmtree(w.tmp, ignore_errors=True)
    job.out.mkdir(parents=True, exist_ok=True)
    part = job.out / f".{SKIPPED}.part"
    part.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in job.skipped), encoding="utf-8")
    os.replace(part, job.out / SKIPPED)
    if not caches and (job.out / "manifest.json").is_file():
        caches = [job.out]
    result = EncodeResult(job.out, caches, job.encoded, job.already, job.skipped)
    job.say(repr(result))
    return result


def _write_line(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)  # above a progress bar, not through it


def _placer(encoders: Encoders, low_memory: bool) -> Callable[[str], None]:
    """With low_memory, keep only the encoder in use on the device (the other waits on the CPU)."""
    home = {k: next(m.parameters()).device for k, m in encoders.modules.items()}

    def use(which: str) -> None:
        if not low_memory or home.get(which, torch.device("cpu")).type == "cpu":
            return
        for k, m in encoders.modules.items():
            m.to(home[k] if k == which else "cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    return use


class _Job:
    """One `encode` call: its writers (one per cache), counts and skip list."""

    def __init__(self, out: Path, encoders: Encoders, settings: dict, meta: dict):
        self.out, self.encoders, self.settings, self.meta = out, encoders, settings, meta
        self.writers: dict = {}
        self.skipped: list[dict] = []
        self.encoded = self.already = 0

    def skip(self, path: str, kind: str, reason: str) -> None:
        self.skipped.append({"path": path, "kind": kind, "reason": reason})
        self.say(f"skip {path}: {reason}")

    def writer(self, cache: Path, kind: str) -> ShardWriter:
        if cache not in self.writers:
            self.writers[cache] = ShardWriter(
                cache, kind, self.shard_size, self.meta, overwrite=self.overwrite, append=not self.overwrite
            )
        return self.writers[cache]

    def bar(self, items, unit: str):
        from tqdm.auto import tqdm

        return tqdm(items, disable=not self.progress, unit=unit, desc="encode")

    def encode_prompts(self, prompts: Sequence[str]) -> None:
        done, todo = _done(self.out, self.settings, self.overwrite), []
        for n, text in enumerate(prompts):
            record = {"path": f"prompt {n + 1}", "size": len(text), "mtime": 0, "caption": text}
            if not text.strip():
                self.skip(record["path"], "empty prompt", "empty prompt")
            elif (record["path"], record["size"], 0) in done:
                self.already += 1
            else:
                todo.append(record)
        w = self.writer(self.out, "prompts")
        for i in self.bar(range(0, len(todo), self.batch), "batch"):
            chunk = todo[i : i + self.batch]
            for r, context in zip(chunk, self.encoders.text([r["caption"] for r in chunk])):
                w.add(record=r, context=context, negative_context=self.negative)
                self.encoded += 1

    def encode_clips(self, clips: list[Clip], size, frames: int, fps: float, bucket: bool, split: int) -> None:
        planned, aspects = [], {}  # (clip, its target size); aspect ratio -> the first clip of it
        for clip in clips:
            try:
                info = clip.info()
            except WanliteError as err:
                self.skip(clip.path, "unreadable", f"unreadable: {err}".replace(f"{clip.path}: ", ""))
                continue
            target, why = choose_size(info.height, info.width, size, bucket, 2 * self.encoders.stride)
            if target is None:
                self.skip(clip.path, "no bucket" if "aspect" in why else "too small", why)
                continue
            aspects.setdefault(round(info.width / info.height, 2), f"{clip.path} ({info.width}x{info.height})")
            planned.append((clip, target))
        if len(aspects) > 1 and not bucket:
            raise ConfigError(
                f"clips of mixed resolutions (aspect ratios): {', '.join(list(aspects.values())[:3])}; cropping "
                f"them all to {size[0]}x{size[1]} would cut some badly. Fix: --bucket (one cache per aspect-ratio "
                "bucket, out/HxW/), or encode each shape apart."
            )
        caches = {t: (self.out / f"{t[0]}x{t[1]}" if bucket else self.out) for _, t in planned}
        done = {t: _done(c, self.settings, self.overwrite) for t, c in caches.items()}
        pending: dict = {t: [] for t in caches}
        encoded_paths = {key[0] for d in done.values() for key in d}
        for clip, target in self.bar(planned, "clip"):
            have, total = done[target].get((clip.record["path"], clip.record["size"], clip.record["mtime"]), [0, 0])
            if not have and clip.record["path"] in encoded_paths:
                self.say(f"note {clip.path}: changed since encoded; encoding it again (--overwrite drops old ones)")
            self.already += have
            if total and have >= total:
                continue
            try:
                pixels, times = clip.load((max(1, split) * frames - 0.5) / fps)  # only what the samples use
            except WanliteError as err:
                self.skip(clip.path, "unreadable", f"unreadable: {err}".replace(f"{clip.path}: ", ""))
                continue
            count, available = windows(times, fps, frames, split)
            if count == 0:
                self.skip(clip.path, "too short", f"too short: {available} frames at {fps:g} fps, needs {frames}")
                continue
            for k in range(have, count):
                sample = conform(pixels, times, fps, frames, target, start=k * frames)
                record = {**clip.record, "window": k, "windows": count, "caption": clip.caption}
                pending[target].append((sample, record))
                if len(pending[target]) >= self.batch:
                    self.flush(caches[target], pending[target])
        for target, items in pending.items():
            self.flush(caches[target], items)

    def flush(self, cache: Path, items: list) -> None:
        """Encode and write the pending samples of one cache (and empty the list)."""
        if not items:
            return
        self.use("vae")
        latents = self.encoders.vae.encode(torch.stack([v for v, _ in items]))
        self.use("text")
        contexts = self.encoders.text([r["caption"] for _, r in items])
        w = self.writer(cache, "latents")
        for lat, context, (_, record) in zip(latents, contexts, items):
            w.add(record=record, latents=lat.float(), context=context, negative_context=self.negative)
        self.encoded += len(items)
        items.clear()


# ------------------------------------------------------------------ checking a cache
@dataclass
class RoundTrip:
    """Some cached samples decoded next to their source frames (conformed the same way), with the PSNR of each:
    what the VAE keeps of your clips at this size."""

    originals: torch.Tensor  # [N, 3, F, H, W] in [0, 1]
    decoded: torch.Tensor
    psnr: list[float]
    captions: list[str]

    def rows(self) -> tuple[torch.Tensor, list[str]]:
        """(clips interleaved original, decoded, ...; row titles) for a filmstrip."""
        videos = torch.stack([v for pair in zip(self.originals, self.decoded) for v in pair])
        titles = [t for c, p in zip(self.captions, self.psnr) for t in (c[:24], f"decoded {p:.1f} dB")]
        return videos, titles

    def __repr__(self) -> str:
        shown = ", ".join(f"{p:.1f}" for p in self.psnr)
        return f"RoundTrip({len(self.psnr)} samples, VAE round-trip PSNR {shown} dB)"


@torch.no_grad()
def round_trip(cache, encoders: Encoders, clips: list[Clip], n: int = 3) -> RoundTrip:
    """Decode the first `n` samples of a latents cache and set them beside their sources (found among `clips` by
    the path each sample records), read and conformed with the cache's own settings."""
    source = CachedSource(cache)
    settings = source.meta.get("encode") or {}
    if source.kind != "latents" or "size" not in settings:
        raise ConfigError(f"{cache}: not a latents cache written by wanlite encode (nothing to decode).")
    records = [r for shard in source.manifest["shards"] for r in shard.get("records") or []]
    by_path = {c.record["path"]: c for c in clips}
    originals, decoded, psnr, captions = [], [], [], []
    for i, record in enumerate(records[:n]):
        if record["path"] not in by_path:
            raise ConfigError(f"{cache}: sample {i} comes from {record['path']}, which is not among the given clips.")
        pixels, times = by_path[record["path"]].load(None)
        frames, fps = settings["frames"], settings["fps"]
        original = conform(pixels, times, fps, frames, _size(source, settings), start=record["window"] * frames)
        video = encoders.vae.decode(source[i]["latents"][None].float())[0].cpu().float()
        mse = (video - original).pow(2).mean().item()
        originals.append(original)
        decoded.append(video)
        psnr.append(10 * math.log10(1 / max(mse, 1e-12)))
        captions.append(record.get("caption", ""))
    return RoundTrip(torch.stack(originals), torch.stack(decoded), psnr, captions)


def _size(source: CachedSource, settings: dict) -> tuple[int, int]:
    """The pixel size of a cache's samples (a bucket's, with --bucket)."""
    if not settings.get("bucket"):
        return tuple(settings["size"])
    h, w = source.path.name.split("x")
    return int(h), int(w)
