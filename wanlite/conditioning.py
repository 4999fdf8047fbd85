"""The text conditioning the notebooks, `compare` and `quant-report` sample or calibrate with, and where it came from.

A real Wan teacher follows umT5 embeddings only: they come from a prompts (or latents) cache `wanlite encode`
wrote, or from umT5 run now; without either, seeded random contexts stand in, and they say so loudly (labels
"random context #i", a banner, a note in every report). A cache is checked against the teacher it feeds (width,
length) before anything is measured, so a cache of another model is an error naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from .errors import ConfigError


def toy_bundle(teacher_path) -> Path | None:
    """The toy teacher bundle a notebook's `teacher_path` names: the shipped one when empty or "toy", else the
    folder (toy.json + vae.safetensors + teacher/) that the path is or whose teacher/ it is; None for a real Wan.
    A bundle brings its own toy VAE, so every notebook decodes and scores with the VAE its teacher was trained on."""
    from .toy.teacher import ASSETS

    if str(teacher_path) in ("", "toy"):
        return ASSETS
    path = Path(teacher_path)
    for folder in (path, path.parent):
        if (folder / "toy.json").is_file():
            missing = [name for name in ("vae.safetensors", "teacher/config.json") if not (folder / name).is_file()]
            if missing:
                raise ConfigError(
                    f"teacher_path={teacher_path}: {folder} holds toy.json, so it is a toy teacher bundle, but "
                    f"{' and '.join(missing)} is missing. Fix: write the bundle again (`python -m wanlite.toy train "
                    "--out DIR`) or restore the missing file."
                )
            return folder
    return None


def is_toy(teacher_path) -> bool:
    """Whether a notebook's `teacher_path` names a toy-world teacher: the shipped one (empty or "toy") or a bundle."""
    return toy_bundle(teacher_path) is not None


@dataclasses.dataclass
class Conditioning:
    """The text conditioning a notebook samples or calibrates with, and where it came from: the toy text encoder,
    a prompts (or latents) cache written by `wanlite encode`, umT5 run now, or seeded random contexts (then every
    label says "random context #i" and `random` is true: nothing here follows a caption)."""

    contexts: torch.Tensor  # [P, L, text_dim]
    negative: torch.Tensor  # [1, L, text_dim]
    labels: list[str]
    source: str

    @property
    def random(self) -> bool:
        return self.source.startswith("random")

    def announce(self) -> None:
        """Print where the contexts come from; random ones get a banner no one can miss."""
        if self.random:
            loud(f"{self.source}. These are NOT prompt embeddings: what is measured with them is functional fidelity")
        else:
            print(f"conditioning: {len(self.labels)} prompts from {self.source}")

    def __repr__(self) -> str:
        shown = ", ".join(repr(label) for label in self.labels[:4]) + (", ..." if len(self.labels) > 4 else "")
        return f"Conditioning({len(self.labels)} prompts from {self.source}: {shown})"


RANDOM_NOTE = (
    "WARNING: no prompt embeddings were given: seeded RANDOM contexts (rows 'random context #i'); these numbers "
    "measure functional fidelity, not caption following. Give a prompts cache or a text encoder."
)


def loud(what: str) -> None:
    """A warning banner in the output (stdout: an executed notebook keeps it in the cell, not a red stderr box)."""
    bar = "!" * 100
    print(
        f"{bar}\nWARNING: {what}, not caption following. Fix: set prompts_cache (written by `wanlite encode "
        "--prompts FILE --models Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out DIR`), text_encoder (a Diffusers Wan "
        f"directory or Hub id with text_encoder/ and tokenizer/) or data (a latents cache).\n{bar}"
    )


def random_conditioning(spec, count: int, seed: int = 0) -> Conditioning:
    """`count` seeded random umT5-shaped contexts (16 tokens of noise, zero padding) and a zero negative."""
    g = torch.Generator().manual_seed(seed)
    context = torch.zeros(count, spec.text_len, spec.text_dim)
    context[:, :16] = torch.randn(count, 16, spec.text_dim, generator=g)
    labels = [f"random context #{i}" for i in range(count)]
    return Conditioning(context, torch.zeros_like(context[:1]), labels, f"random contexts (seed {seed})")


def open_cache(path, kinds: tuple[str, ...], field: str, spec=None):
    """A `CachedSource` of one of `kinds` (non-empty; with `spec`, its contexts as wide as the teacher's text_dim
    and its latents of the teacher's channels), or a ConfigError naming the parameter, the file and the fix."""
    from .errors import FormatError
    from .train.data import CachedSource

    fix = "Fix: write one with `wanlite encode` " + ("--prompts FILE" if "prompts" in kinds else "--videos DIR")
    fix += " --models <the teacher's Diffusers Wan> (or notebook 00)."
    try:
        cache = CachedSource(path)
    except FormatError as err:
        raise ConfigError(f"{field}={path}: {err} Expected a {' or '.join(kinds)} cache. {fix}") from None
    if cache.kind not in kinds or not len(cache):
        other = " (a prompts cache holds no latents: give it as prompts_cache)" if cache.kind == "prompts" else ""
        raise ConfigError(
            f"{field}={path}: a {cache.kind!r} cache with {len(cache)} samples{other}; expected a non-empty "
            f"{' or '.join(kinds)} cache. {fix}"
        )
    if spec is not None:
        width = (cache.shapes.get("context") or [spec.text_dim])[-1]
        if width != spec.text_dim:
            raise ConfigError(
                f"{field}={path}: its contexts are {width} wide (manifest.json 'shapes'), the teacher's text_dim "
                f"is {spec.text_dim}: the cache was encoded for another model. {fix}"
            )
        channels = (cache.shapes.get("latents") or [spec.in_dim])[0]
        if cache.kind == "latents" and channels not in (spec.in_dim, spec.out_dim):
            raise ConfigError(
                f"{field}={path}: its latents have {channels} channels (manifest.json 'shapes'), the teacher "
                f"takes {spec.out_dim}: another VAE (Wan2.1's has 16 channels, Wan2.2's 48). {fix}"
            )
    return cache


def fit_text_len(contexts: torch.Tensor, spec, where: str) -> torch.Tensor:
    """Contexts [..., L, text_dim] zero-padded to the teacher's text_len, as Wan's pipelines pad umT5's output
    (a cache encoded with fewer tokens then equals one encoded at text_len); longer ones only lose zero padding."""
    length = contexts.shape[-2]
    if length < spec.text_len:
        pad = contexts.new_zeros(*contexts.shape[:-2], spec.text_len - length, contexts.shape[-1])
        return torch.cat([contexts, pad], dim=-2)
    if length > spec.text_len:
        if contexts[..., spec.text_len :, :].any():
            raise ConfigError(
                f"{where}: its contexts hold tokens past {spec.text_len}, the teacher's text_len (they have "
                f"{length}); the teacher would see prompts cut short. Fix: encode them again with --text-length "
                f"{spec.text_len} (or shorter prompts)."
            )
        return contexts[..., : spec.text_len, :]
    return contexts


def cache_captions(cache) -> list[str]:
    """The caption of each sample of a cache `wanlite encode` wrote, in order."""
    return [r.get("caption", "") for shard in cache.manifest["shards"] for r in shard.get("records") or []]


def _cached(spec, prompts: list[str], prompts_cache) -> Conditioning:
    """The embeddings of `prompts` (all, when empty) in a prompts or latents cache, checked against `spec`."""
    cache = open_cache(prompts_cache, ("prompts", "latents"), "prompts_cache", spec)
    captions = cache_captions(cache)
    missing = [p for p in prompts if p not in captions]
    if missing:
        raise ConfigError(
            f"prompts_cache={prompts_cache}: no embedding for {missing} (it holds {len(captions)} prompts, "
            f"e.g. {captions[:2]}). Fix: encode them (`wanlite encode --prompts FILE --out DIR`), or set "
            "prompts to [] to use the cache's own prompts."
        )
    index = [captions.index(p) for p in prompts] if prompts else list(range(len(captions)))
    rows = [cache[i] for i in index]
    return Conditioning(
        fit_text_len(torch.stack([r["context"].float() for r in rows]), spec, f"prompts_cache={prompts_cache}"),
        fit_text_len(rows[0]["negative_context"].float()[None], spec, f"prompts_cache={prompts_cache}"),
        [captions[i] for i in index],
        f"the prompts cache {prompts_cache}",
    )


def _text_encoder_path(text_encoder, prompts: list[str]) -> Path:
    """`text_encoder` as a path, once it is known to be a folder or a Hub id and there are prompts to encode."""
    from .formats import hub

    folder = Path(text_encoder).expanduser()
    if not folder.exists() and not hub.is_repo_id(text_encoder):
        raise ConfigError(
            f"text_encoder={text_encoder}: no such folder, and not a Hub id (org/name). Fix: the path of a "
            "Diffusers Wan directory (text_encoder/ and tokenizer/ inside) or its text_encoder/ folder, or a Hub "
            "id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers."
        )
    if not prompts:
        raise ConfigError(f"text_encoder={text_encoder} is set but prompts is empty. Fix: give the prompts to encode.")
    return folder


def _prompt_list(prompts) -> list[str]:
    if isinstance(prompts, (str, bytes)):  # e.g. --set prompts="a cat": a string would be read letter by letter
        raise ConfigError(
            f"prompts={prompts!r}: expected a list of prompts, got one string. Fix: a YAML list, e.g. "
            f"prompts: [{prompts!r}] (or --set 'prompts=[\"{prompts}\"]')."
        )
    return list(prompts)


def check_sources(spec, data="", prompts_cache="", text_encoder="", prompts: Sequence[str] = ()) -> None:
    """What a real teacher's contexts will come from (as `conditioning` and `prompt_batch` pick: `data`, else
    `prompts_cache`, else `text_encoder`), checked against its `spec` without loading a model: 01 calls it before
    it claims the run, so a bad path never follows an overwrite that has already cleared the old run."""
    prompts = _prompt_list(prompts)
    if data:
        open_cache(data, ("latents",), "data", spec)
    elif prompts_cache:
        _cached(spec, prompts, prompts_cache)
    elif text_encoder:
        _text_encoder_path(text_encoder, prompts)


def _live(spec, prompts: list[str], text_encoder, negative_prompt, device) -> Conditioning:
    """`prompts` through umT5 at `text_encoder` (a Diffusers Wan directory or Hub id, or its text_encoder/)."""
    from .train.encoders import WAN_NEGATIVE, load_encoders

    folder = _text_encoder_path(text_encoder, prompts)
    whole = not (folder / "config.json").is_file()  # a Diffusers Wan directory / Hub id, not text_encoder/
    encoders = load_encoders(
        text_encoder if whole else None,
        text_encoder=None if whole else folder,
        need_vae=False,
        device=device,
        text_length=spec.text_len,
    )
    negative = WAN_NEGATIVE if negative_prompt is None else negative_prompt
    return Conditioning(
        encoders.text(prompts).float(), encoders.text([negative]).float(), prompts, f"umT5 at {text_encoder}"
    )


def conditioning(
    teacher,
    teacher_path: str,
    prompts: Sequence[str] = (),
    prompts_cache="",
    text_encoder="",
    seed: int = 0,
    count: int | None = None,
    negative_prompt: str | None = None,
    device=None,
) -> Conditioning:
    """The contexts to sample or calibrate with. Toy teacher: the toy text encoder on `prompts`. Real teacher:
    the embeddings of a prompts (or latents) cache `prompts_cache` (those whose caption is in `prompts`, in that
    order; all of them when `prompts` is empty; zero-padded to the teacher's text_len), else `prompts` through umT5
    at `text_encoder` (a Diffusers Wan directory or Hub id, or a text_encoder/ folder; negative: `negative_prompt`,
    default Wan's own), else `count` (default len(prompts)) seeded random contexts, announced as such. Prints
    where they came from."""
    from . import toy
    from .formats import spec_of

    prompts = _prompt_list(prompts)
    if is_toy(teacher_path):
        if not prompts:
            raise ConfigError("prompts is empty: the toy teacher samples captions. Fix: give prompts (toy captions).")
        made = Conditioning(toy.encode_text(prompts), toy.encode_text([""]), prompts, "the toy text encoder")
    elif prompts_cache:
        made = _cached(spec_of(teacher), prompts, prompts_cache)
    elif text_encoder:
        made = _live(spec_of(teacher), prompts, text_encoder, negative_prompt, device)
    else:
        made = random_conditioning(spec_of(teacher), count or len(prompts) or 2, seed)
    made.announce()
    return made
