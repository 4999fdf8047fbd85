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

import csv
import html
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, FormatError, WanliteError
from . import video as videoio
from .data import SKIPPED, CachedSource, ShardWriter

# Wan's default negative prompt (the official repositories and diffusers' examples)
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")


# ------------------------------------------------------------------ encoders
class UMT5Text:
    """umT5 (transformers `UMT5EncoderModel` + its tokenizer) as `prompts -> [B, length, dim]`, the way Wan's
    pipelines embed: whitespace cleaned, padded/truncated to `length` tokens, zeros past each prompt's tokens."""

    def __init__(self, model, tokenizer, length: int = 512):
        self.model, self.tokenizer, self.length = model, tokenizer, length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        p = next(self.model.parameters())
        tokens = self.tokenizer(
            [_clean(text) for text in prompts],
            padding="max_length",
            max_length=self.length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(p.device)
        hidden = self.model(tokens.input_ids.to(p.device), attention_mask=mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).cpu()


@dataclass
class Encoders:
    """What `encode` needs: `vae.encode(video [B, 3, F, H, W] in [0, 1]) -> normalised latents` (and `decode`
    back, for checks), `text(prompts) -> [B, L, 4096]`, the default negative prompt, and the pixel stride of one
    latent (8: Wan2.1 VAE, 16: Wan2.2 VAE). `modules` are moved on and off the device with `--low-memory`."""

    vae: object
    text: Callable[[Sequence[str]], torch.Tensor]
    negative: str = WAN_NEGATIVE
    stride: int = 8
    name: str = ""
    modules: dict = field(default_factory=dict)  # "vae" / "text": torch modules to place


def _clean(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed), HTML entities, runs of whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(
            f"{path}: a pickle checkpoint ({path.suffix}); wanlite never unpickles weights (it can run code). Fix: "
            "use the safetensors release instead: the ComfyUI file wan_2.1_vae.safetensors / wan2.2_vae.safetensors "
            "(Comfy-Org/Wan_2.1_ComfyUI_repackaged, Comfy-Org/Wan_2.2_ComfyUI_Repackaged) or the Diffusers "
            "repository's vae/ folder (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)."
        )


def load_encoders(
    models=None,
    vae=None,
    text_encoder=None,
    tokenizer=None,
    device=None,
    dtype: torch.dtype | None = None,
    text_length: int = 512,
    revision: str | None = None,
    need_vae: bool = True,
) -> Encoders:
    """The Wan VAE (diffusers `AutoencoderKLWan`, 16 or 48 channels) and umT5 (transformers) from a Diffusers-format
    directory or Hub id (`vae/`, `text_encoder/`, `tokenizer/`), or from given paths: `vae` may be a folder or a
    single .safetensors (ComfyUI's wan_2.1_vae.safetensors, through diffusers' from_single_file)."""
    from ..evaluate.vae import DiffusersWanVAE
    from ..formats import hub

    name = str(models or vae)  # what the cache records: the Hub id itself, not its snapshot folder
    if models is not None and hub.is_repo_id(models):
        patterns = ["vae/*.json", "vae/*.safetensors", "text_encoder/*.json", "text_encoder/*.safetensors"]
        patterns += ["tokenizer/*"]
        models = hub.resolve(
            models,
            locators=["model_index.json", "vae/config.json", "text_encoder/config.json"],
            locate=lambda root: root,
            files=lambda folder: patterns,
            revision=revision,
        )
    models = Path(models) if models is not None else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    vae_path = Path(vae) if vae is not None else (models / "vae" if models else None)
    te_path = Path(text_encoder) if text_encoder else (models / "text_encoder" if models else None)
    tok_path = Path(tokenizer) if tokenizer else None
    if tok_path is None and te_path is not None:
        beside = te_path.parent / "tokenizer"
        tok_path = beside if beside.is_dir() else te_path
    missing = []
    if need_vae and (vae_path is None or not (vae_path.is_file() or (vae_path / "config.json").is_file())):
        looked = f"{vae_path}/config.json" if vae_path and not vae_path.suffix else (vae_path or "(no --models)")
        missing.append(f"the VAE (looked for {looked}; or pass --vae)")
    if te_path is None or not (te_path / "config.json").is_file():
        looked = f"{te_path}/config.json" if te_path else "(no --models)"
        if te_path is not None and te_path.suffix == ".safetensors":
            looked += "; a single umT5 .safetensors has no config or tokenizer: pass its Diffusers text_encoder/"
        missing.append(f"the text encoder (looked for {looked}; or pass --text-encoder)")
    elif tok_path is None or not any((tok_path / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        missing.append(f"the tokenizer (looked for {tok_path}/tokenizer.json or spiece.model; or pass --tokenizer)")
    if missing:
        official = models is not None and models.is_dir() and any(models.glob("*VAE*.pth"))
        hint = " (this is the official Wan layout: its VAE and umT5 are pickles, never loaded)" if official else ""
        raise ConfigError(
            f"{models or 'encoders'}: missing " + " and ".join(missing) + f"{hint}. Fix: --models a Diffusers-format "
            "Wan directory or Hub id (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers: vae/, text_encoder/, tokenizer/)."
        )
    from transformers import AutoTokenizer, UMT5EncoderModel

    modules, wrapped, stride = {}, None, 8
    if need_vae:
        from diffusers import AutoencoderKLWan

        _refuse_pickle(vae_path)
        if vae_path.is_file():
            if vae_path.suffix != ".safetensors":
                raise FormatError(f"{vae_path}: expected a .safetensors VAE file or a diffusers vae/ folder.")
            try:
                model = AutoencoderKLWan.from_single_file(str(vae_path), torch_dtype=dtype)
            except Exception as err:  # diffusers fetches the matching config from the Hub: say what it needs
                raise FormatError(
                    f"{vae_path}: diffusers could not load this single-file VAE ({type(err).__name__}: {err}). "
                    "Fix: pass --vae a Diffusers vae/ folder, or be online once so diffusers can fetch its config."
                ) from None
        else:
            model = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=dtype, use_safetensors=True)
        model = model.to(device).eval()
        wrapped, modules["vae"] = DiffusersWanVAE(model), model
        stride = int(model.config.get("scale_factor_spatial") or 8)
    _refuse_pickle(te_path)
    text_model = UMT5EncoderModel.from_pretrained(te_path, torch_dtype=dtype, use_safetensors=True).to(device).eval()
    modules["text"] = text_model
    text = UMT5Text(text_model, AutoTokenizer.from_pretrained(tok_path), length=text_length)
    return Encoders(vae=wrapped, text=text, stride=stride, name=name, modules=modules)


# ------------------------------------------------------------------ sources
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
