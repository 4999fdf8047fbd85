"""Measure which teacher blocks, heads, FFN neurons and channels matter, before pruning (`calibrate`).

Every prunable axis of a Wan transformer belongs to one *channel space* (`SPACES`): the residual stream,
the text / image cross-attention context, the hidden width of the text and time embedders, and per block
the self- and cross-attention heads and the FFN neurons. One table says which axis of which parameter
lives in which space; slicing (`wanlite.prune`) and scoring both read it, so they cannot drift apart.

Scores (higher = more important):
* a channel's importance is the energy it feeds into the layers that read it, E[x_j^2] * ||W[:, j]||^2,
  summed over readers (activation statistics as in Minitron, weighted like Wanda); a head sums its 128
  channels; magnitude scores are the same with E[x_j^2] = 1 (weights only, no data);
* a block's importance is ShortGPT's 1 - cos(block input, block output), averaged over tokens, and
  optionally the relative change of the model's output when the block is skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .errors import RecipeError
from .spec import WanSpec

DEFAULT_SIGMAS = (0.25, 0.5, 0.75)
PER_BLOCK = ("self_heads", "cross_heads", "ffn")  # spaces whose kept indices differ per block
_B = r"blocks\.\d+\."
# (diffusers parameter name regex, space of each leading axis; None = axis kept whole). Every parameter
# of a WanTransformer3DModel matches exactly one row; an unmatched parameter is an error, never dropped.
SPACES: tuple[tuple[str, tuple], ...] = (
    (r"patch_embedding\.(weight|bias)", ("channel",)),
    (r"condition_embedder\.time_embedder\.linear_1\.(weight|bias)", ("time_hidden",)),
    (r"condition_embedder\.time_embedder\.linear_2\.weight", ("channel", "time_hidden")),
    (r"condition_embedder\.time_embedder\.linear_2\.bias", ("channel",)),
    (r"condition_embedder\.time_proj\.weight", ("channel6", "channel")),  # rows: 6 chunks of dim
    (r"condition_embedder\.time_proj\.bias", ("channel6",)),
    (r"condition_embedder\.text_embedder\.linear_1\.(weight|bias)", ("text_hidden",)),
    (r"condition_embedder\.text_embedder\.linear_2\.weight", ("text_context", "text_hidden")),
    (r"condition_embedder\.text_embedder\.linear_2\.bias", ("text_context",)),
    (r"condition_embedder\.image_embedder\.(norm1\.(weight|bias)|ff\.net\.0\.proj\.(weight|bias)|pos_embed)", ()),
    (r"condition_embedder\.image_embedder\.(ff\.net\.2\.(weight|bias)|norm2\.(weight|bias))", ("image_context",)),
    (_B + r"scale_shift_table", (None, None, "channel")),  # [1, 6, dim]
    (_B + r"attn1\.to_[qkv]\.weight", ("self_heads", "channel")),
    (_B + r"attn1\.(to_[qkv]\.bias|norm_[qk]\.weight)", ("self_heads",)),
    (_B + r"attn1\.to_out\.0\.weight", ("channel", "self_heads")),
    (_B + r"attn2\.to_q\.weight", ("cross_heads", "channel")),
    (_B + r"attn2\.to_[kv]\.weight", ("cross_heads", "text_context")),
    (_B + r"attn2\.add_[kv]_proj\.weight", ("cross_heads", "image_context")),
    (_B + r"attn2\.(to_[qkv]\.bias|add_[kv]_proj\.bias|norm_[qk]\.weight|norm_added_k\.weight)", ("cross_heads",)),
    (_B + r"attn2\.to_out\.0\.weight", ("channel", "cross_heads")),
    (_B + r"(attn1\.to_out\.0\.bias|attn2\.to_out\.0\.bias|norm2\.(weight|bias))", ("channel",)),
    (_B + r"ffn\.net\.0\.proj\.weight", ("ffn", "channel")),
    (_B + r"ffn\.net\.0\.proj\.bias", ("ffn",)),
    (_B + r"ffn\.net\.2\.weight", ("channel", "ffn")),
    (_B + r"ffn\.net\.2\.bias", ("channel",)),
    (r"scale_shift_table", (None, None, "channel")),  # [1, 2, dim]
    (r"proj_out\.weight", (None, "channel")),
    (r"proj_out\.bias", ()),
)
_SPACES = [(re.compile(p), axes) for p, axes in SPACES]
_BLOCK_NO = re.compile(r"^blocks\.(\d+)\.")


def param_axes(name: str) -> tuple:
    """The channel space of each leading axis of the diffusers parameter `name` (see SPACES)."""
    for pattern, axes in _SPACES:
        if pattern.fullmatch(name):
            return axes
    raise RecipeError(f"parameter {name!r} is not part of a Wan transformer as wanlite knows it (diffusers "
                      f"WanTransformer3DModel). If the teacher has fused projections, call "
                      f"teacher.unfuse_qkv_projections() first; otherwise this layer is not supported.")


def check_teacher(teacher) -> WanSpec:
    """The teacher's WanSpec, or a clear error when it is not a diffusers Wan transformer."""
    from diffusers import WanTransformer3DModel

    if not isinstance(teacher, WanTransformer3DModel):
        raise RecipeError(f"teacher: expected a diffusers WanTransformer3DModel (or a WanLiteStudent), got "
                          f"{type(teacher).__module__}.{type(teacher).__qualname__}. Load one with "
                          "wanlite.formats.load_wan(path).")
    return WanSpec.from_diffusers_config(teacher.config)


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def teacher_fingerprint(teacher) -> str:
    """A short hash of the teacher's config and weights (sum and norm of each tensor to 4 digits, so a dtype
    cast keeps it; computed in float32 because float64 is 20x slower on CPU)."""
    spec = check_teacher(teacher)
    # tensors count their in-place changes (_version): recompute only when a weight changed
    try:
        state = tuple((p.data_ptr(), p._version, p.dtype) for p in teacher.parameters())
    except RuntimeError:  # inference-mode tensors keep no version counter: never cache
        state = object()
    cached = _FINGERPRINTS.get(teacher)
    if cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256(repr(spec).encode())
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            p32 = p.detach().float()
            h.update(f"{name}{tuple(p.shape)}{p32.sum().item():.4g}{p32.norm().item():.4g}".encode())
    _FINGERPRINTS[teacher] = (state, h.hexdigest()[:16])
    return _FINGERPRINTS[teacher][1]


# ---------------------------------------------------------------- batches
_ALIASES = {"latents": "hidden_states", "context": "encoder_hidden_states", "image": "encoder_hidden_states_image"}


def prepare_batch(spec: WanSpec, batch: Mapping, sigmas: Sequence[float] | None = None, seed: int = 0,
                  where: str = "calibration batch") -> list[tuple[float | None, dict]]:
    """Check a batch against the teacher and return (sigma, forward kwargs) runs.

    `batch`: hidden_states|latents [B, in_dim, F, H, W], encoder_hidden_states|context [B, L, text_dim],
    encoder_hidden_states_image|image [B, 257, 1280] for an image-embedder teacher, optional timestep [B].
    With a timestep the batch is used as given (already noisy); without one the latents are clean x0 and
    each sigma gives x_t = (1 - s) x0 + s eps on the out_dim noise channels (i2v's image/mask channels stay),
    timestep s * 1000."""
    unknown = set(batch) - set(_ALIASES) - set(_ALIASES.values()) - {"timestep"}
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; expected hidden_states (or latents), "
                          "encoder_hidden_states (or context), encoder_hidden_states_image (or image), timestep.")
    b = {_ALIASES.get(k, k): v for k, v in batch.items()}
    for key in ("hidden_states", "encoder_hidden_states"):
        if not isinstance(b.get(key), torch.Tensor):
            raise RecipeError(f"{where}: missing tensor {key!r} (found {type(b.get(key)).__name__}).")
    x, ctx = b["hidden_states"], b["encoder_hidden_states"]
    pt, ph, pw = spec.patch_size
    if x.ndim != 5 or x.shape[1] != spec.in_dim or x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
        raise RecipeError(f"{where}: hidden_states must be [B, {spec.in_dim}, F, H, W] with F, H, W divisible by "
                          f"the patch {spec.patch_size}; got {list(x.shape)}.")
    n = x.shape[0]
    if ctx.ndim != 3 or ctx.shape[0] != n or ctx.shape[2] != spec.text_dim:
        raise RecipeError(f"{where}: encoder_hidden_states must be [B={n}, L, {spec.text_dim}] (umT5 embeddings); "
                          f"got {list(ctx.shape)}.")
    img = b.get("encoder_hidden_states_image")
    if spec.has_image_embedder:
        if ctx.shape[1] != 512:
            raise RecipeError(f"{where}: an image-conditioned Wan splits its context as image tokens + the last 512 "
                              f"text tokens; the text context has {ctx.shape[1]} tokens. Pad it to 512 with zeros.")
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != n or img.shape[2] != spec.image_dim:
            raise RecipeError(f"{where}: this {spec.model_type} teacher needs encoder_hidden_states_image "
                              f"[B={n}, 257, {spec.image_dim}] (CLIP tokens); got "
                              f"{list(img.shape) if isinstance(img, torch.Tensor) else img!r}.")
    elif img is not None:
        raise RecipeError(f"{where}: encoder_hidden_states_image given, but this {spec.model_type} teacher has no "
                          "image embedder. Drop it.")
    for key, t in b.items():
        if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
            raise RecipeError(f"{where}: {key} holds NaN or inf values.")
    if "timestep" in b:
        t = torch.as_tensor(b["timestep"], dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise RecipeError(f"{where}: timestep must be [B={n}]; got {list(t.shape)}.")
        if sigmas is not None:
            raise RecipeError(f"{where}: has a timestep (an already-noisy batch) and sigmas were given too; "
                              "drop the timestep to noise clean latents at each sigma, or drop sigmas.")
        return [(None, {**b, "timestep": t})]
    sigmas = DEFAULT_SIGMAS if sigmas is None else tuple(float(s) for s in sigmas)
    if not sigmas or not all(0.0 <= s <= 1.0 for s in sigmas):
        raise RecipeError(f"{where}: sigmas must be a non-empty list of values in [0, 1]; got {sigmas!r}.")
    g = torch.Generator().manual_seed(seed)
    runs = []
    for s in sigmas:
        noisy = x.clone()
        k = min(spec.out_dim, spec.in_dim)  # noise channels; the rest are conditioning (i2v image + mask)
        eps = torch.randn(x[:, :k].shape, generator=g).to(x)
        noisy[:, :k] = (1 - s) * x[:, :k] + s * eps
        runs.append((s, {**b, "hidden_states": noisy, "timestep": torch.full((n,), s * 1000.0)}))
    return runs


def noise_batch(spec: WanSpec, context: torch.Tensor, frames: int = 1, height: int = 32, width: int = 32,
                image: torch.Tensor | None = None, seed: int = 0) -> dict:
    """A calibration batch without real latents: Gaussian x0 of the latent grid [B, in_dim, frames, height,
    width] for each prompt in `context` [B, L, text_dim] (i2v: random image latents, first-frame mask).
    Real latents calibrate better; this is for when none are at hand."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(context.shape[0], spec.in_dim, frames, height, width, generator=g)
    if spec.in_dim > spec.out_dim:  # i2v: [noise | 4 mask channels | image latents]
        k = spec.out_dim
        x[:, k:k + 4] = 0
        x[:, k:k + 4, 0] = 1
    batch = {"hidden_states": x, "encoder_hidden_states": context}
    if image is not None:
        batch["encoder_hidden_states_image"] = image
    return batch


def forward(model, kwargs: dict) -> torch.Tensor:
    """The model's velocity prediction for one run's kwargs, on the model's device and dtype."""
    p = next(model.parameters())
    moved = {k: v.to(p.device, p.dtype if v.is_floating_point() and k != "timestep" else v.dtype)
             for k, v in kwargs.items()}
    return model(**moved, return_dict=False)[0]


def _hash_batch(runs, extra) -> str:
    h = hashlib.sha256(repr(extra).encode())
    for s, kw in runs:
        h.update(repr(s).encode())
        for k in sorted(kw):
            h.update(k.encode() + kw[k].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- scores
def _readers(teacher):
    """(module, weight name, space, block) for every Linear whose input axis is a channel space."""
    out = []
    for name, module in teacher.named_modules():
        if isinstance(module, torch.nn.Linear):
            axes = param_axes(name + ".weight")
            if len(axes) == 2 and axes[1] is not None:
                m = _BLOCK_NO.match(name)
                out.append((module, name, axes[1], int(m.group(1)) if m else None))
    return out


def _empty_scores(spec: WanSpec) -> dict[str, torch.Tensor]:
    n, d = spec.num_layers, spec.dim
    z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    scores = {"channel": z(n, d), "channel_global": z(d), "text_context": z(n, d), "text_hidden": z(d),
              "time_hidden": z(d), "self_heads": z(n, d), "cross_heads": z(n, d), "ffn": z(n, spec.ffn_dim)}
    if spec.has_image_embedder:
        scores["image_context"] = z(n, d)
    return scores


def _add(scores, space, block, value):
    if space == "channel" and block is None:
        scores["channel_global"] += value
    elif block is None:
        scores[space] += value
    else:
        scores[space][block] += value


def _finish(spec: WanSpec, scores: dict) -> dict[str, torch.Tensor]:
    """Sum head channels into heads; float32 for storage."""
    for key in ("self_heads", "cross_heads"):
        scores[key] = scores[key].reshape(spec.num_layers, spec.num_heads, spec.head_dim).sum(-1)
    return {k: v.float().contiguous() for k, v in scores.items()}


@torch.no_grad()
def magnitude_scores(teacher) -> dict[str, torch.Tensor]:
    """Weight-only scores: ||W[:, j]||^2 summed over the layers that read channel j (no data needed)."""
    spec = check_teacher(teacher)
    scores = _empty_scores(spec)
    for module, _, space, block in _readers(teacher):
        _add(scores, space, block, module.weight.detach().float().pow(2).sum(0).double().cpu())
    return _finish(spec, scores)


# ---------------------------------------------------------------- the result
@dataclass
class Calibration:
    """Importance scores of one teacher on one batch (higher = keep). Reused by every recipe."""

    spec: WanSpec  # the teacher measured
    scores: dict[str, torch.Tensor]  # block_cosine [N], block_skip [N]?, self_heads/cross_heads [N, H], ffn [N, F],
    # channel/text_context/image_context [N, dim] (per reading block), channel_global/text_hidden/time_hidden [dim]
    sigmas: tuple | None  # noise levels measured (None: the batch's own timesteps)
    num_samples: int  # batch size
    tokens: int  # latent tokens per sample
    fingerprint: str  # teacher_fingerprint of the teacher measured
    batch_key: str = ""  # hash of the batch and options (the cache key)
    meta: dict = field(default_factory=dict)  # seconds taken, wanlite version

    @property
    def block_cosine(self) -> torch.Tensor:
        return self.scores["block_cosine"]

    @property
    def block_skip(self) -> torch.Tensor | None:
        return self.scores.get("block_skip")

    def __repr__(self) -> str:
        s, fmt = self.spec, (lambda t: " ".join(f"{v:.3g}" for v in t.tolist()))
        lines = [f"Calibration of {s}", f"  batch: {self.num_samples} sample(s) x {self.tokens} tokens, "
                 f"sigmas {self.sigmas if self.sigmas is not None else 'as given'}; teacher {self.fingerprint}",
                 f"  block importance 1-cos(in, out), high = keep: {fmt(self.block_cosine)}",
                 f"    least important first: {self.block_cosine.argsort().tolist()}"]
        if self.block_skip is not None:
            lines += [f"  output change when skipped ||dv||^2/||v||^2: {fmt(self.block_skip)}",
                      f"    least important first: {self.block_skip.argsort().tolist()}"]
        for key, what in (("self_heads", "self-attn heads"), ("cross_heads", "cross-attn heads"), ("ffn", "FFN neurons"),
                          ("channel_all", "residual channels")):
            t = self.scores["channel"].sum(0) + self.scores["channel_global"] if key == "channel_all" else self.scores[key]
            share = _top_half_share(t)
            lines.append(f"  {what}: the top half holds {share:.0%} of the importance (50% = all alike)")
        return "\n".join(lines)

    def plot(self):
        """Block scores, head maps, sorted FFN and channel importance: a matplotlib Figure (no pyplot, headless)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(15, 7), layout="constrained")
        ax = fig.subplots(2, 3)
        n = self.spec.num_layers
        ax[0, 0].bar(range(n), self.block_cosine.numpy(), label="1 - cos(in, out)")
        if self.block_skip is not None:
            ax[0, 0].plot(range(n), self.block_skip.numpy(), "o-", color="C1", label="output change if skipped")
        ax[0, 0].set(title="block importance (high = keep)", xlabel="teacher block")
        ax[0, 0].legend()
        for a, key in ((ax[0, 1], "self_heads"), (ax[0, 2], "cross_heads")):
            t = self.scores[key]
            im = a.imshow((t / t.sum(1, keepdim=True)).numpy(), aspect="auto", cmap="viridis")
            a.set(title=f"{key.replace('_', ' ')} (share per block)", xlabel="head", ylabel="teacher block")
            fig.colorbar(im, ax=a)
        for a, key, title in ((ax[1, 0], "ffn", "FFN neurons, sorted, per block"),
                              (ax[1, 1], "channel", "residual channels, sorted, per reading block")):
            for b, row in enumerate(self.scores[key]):
                a.plot((row.sort(descending=True).values / row.sum()).cumsum(0).numpy(), color=_shade(b, n), lw=0.8)
            a.set(title=title, xlabel="kept (most important first)", ylabel="cumulative share", ylim=(0, 1.02))
        for key in ("channel_global", "text_hidden", "time_hidden", "text_context", "image_context"):
            if key in self.scores:
                t = self.scores[key].reshape(-1, self.spec.dim).sum(0)
                ax[1, 2].plot((t.sort(descending=True).values / t.sum()).cumsum(0).numpy(), label=key)
        ax[1, 2].set(title="embedding spaces, sorted", xlabel="kept (most important first)", ylabel="cumulative share")
        ax[1, 2].legend(fontsize=8)
        return fig

    # ---- files: safetensors, tensors + JSON metadata (never pickle)
    def save(self, path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"spec": _spec_json(self.spec), "sigmas": self.sigmas, "num_samples": self.num_samples,
                "tokens": self.tokens, "fingerprint": self.fingerprint, "batch_key": self.batch_key, "meta": self.meta}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.scores.items()}, str(tmp),
                  metadata={"wanlite_calibration": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Calibration":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("wanlite_calibration")
            if raw is None:
                raise RecipeError(f"{path}: not a wanlite calibration file (no 'wanlite_calibration' metadata).")
            scores = {k: f.get_tensor(k) for k in f.keys()}
        m = json.loads(raw)
        sig = tuple(m["sigmas"]) if m["sigmas"] is not None else None
        return cls(WanSpec(**m["spec"]), scores, sig, m["num_samples"], m["tokens"], m["fingerprint"],
                   m["batch_key"], m.get("meta", {}))


def _spec_json(spec: WanSpec) -> dict:
    from dataclasses import asdict

    d = asdict(spec)
    d["patch_size"] = list(d["patch_size"])
    return d


def _top_half_share(t: torch.Tensor) -> float:
    flat = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t[None]
    s = flat.sort(-1, descending=True).values
    return float((s[:, : (s.shape[1] + 1) // 2].sum(1) / s.sum(1).clamp_min(1e-30)).mean())


def _shade(i, n):
    from matplotlib import colormaps

    return colormaps["viridis"](i / max(1, n - 1))


# ---------------------------------------------------------------- calibrate
_CACHE: dict[str, Calibration] = {}
_CACHE_SIZE = 8


@torch.no_grad()
def calibrate(teacher, batch: Mapping, sigmas: Sequence[float] | None = None, seed: int = 0,
              skip_blocks: bool = False, cache_dir=None, use_cache: bool = True) -> Calibration:
    """Run the teacher on a small batch and measure block, head, FFN-neuron and channel importance.

    `batch`: see `prepare_batch` (clean latents + text embeddings, noised at each sigma, or an already-noisy
    batch with its timestep). `skip_blocks=True` also measures each block's output change when skipped
    (one extra forward per block and sigma). Results are cached in memory, and in `cache_dir` as
    safetensors when given, keyed on the teacher's weights, the batch and the options."""
    import time

    spec = check_teacher(teacher)
    runs = prepare_batch(spec, batch, sigmas, seed)
    fp = teacher_fingerprint(teacher)
    key = fp + "-" + _hash_batch(runs, (seed, skip_blocks))
    if use_cache and key in _CACHE:
        return _CACHE[key]
    cache_file = Path(cache_dir) / f"calibration-{key}.safetensors" if cache_dir is not None else None
    if use_cache and cache_file is not None and cache_file.exists():
        cal = Calibration.load(cache_file)
        _remember(key, cal)
        return cal
    start = time.perf_counter()
    scores = _empty_scores(spec)
    sq = {}  # reader name -> [sum of x^2 per input channel, token count]
    cos = torch.zeros(spec.num_layers, 2, dtype=torch.float64)  # [sum of 1-cos, token count]

    def reader_hook(name):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sq.setdefault(name, [torch.zeros(x.shape[1], dtype=torch.float64, device=x.device), 0])
            acc[0] += x.pow(2).sum(0).double()
            acc[1] += x.shape[0]
        return hook

    def block_hook(i):
        def hook(module, args, out):
            c = torch.nn.functional.cosine_similarity(args[0].float(), out.float(), dim=-1).double()
            cos[i, 0] += (1 - c).sum().item()
            cos[i, 1] += c.numel()
        return hook

    readers = _readers(teacher)
    handles = [m.register_forward_pre_hook(reader_hook(name)) for m, name, _, _ in readers]
    handles += [blk.register_forward_hook(block_hook(i)) for i, blk in enumerate(teacher.blocks)]
    outputs = []
    try:
        for _, kw in runs:
            outputs.append(forward(teacher, kw))
    finally:
        for h in handles:
            h.remove()
    for module, name, space, block in readers:
        total, count = sq[name]
        energy = (total / max(count, 1)).cpu() * module.weight.detach().float().pow(2).sum(0).double().cpu()
        _add(scores, space, block, energy)
    scores = _finish(spec, scores)
    scores["block_cosine"] = (cos[:, 0] / cos[:, 1].clamp_min(1)).float()
    if skip_blocks:
        scores["block_skip"] = _skip_scores(teacher, runs, outputs)
    x = runs[0][1]["hidden_states"]
    tokens = (x.shape[2] // spec.patch_size[0]) * (x.shape[3] // spec.patch_size[1]) * (x.shape[4] // spec.patch_size[2])
    from . import __version__

    cal = Calibration(spec, scores, tuple(s for s, _ in runs) if runs[0][0] is not None else None, x.shape[0], tokens,
                      fp, key, {"seconds": round(time.perf_counter() - start, 3), "seed": seed,
                                "wanlite_version": __version__})
    if use_cache:
        _remember(key, cal)
        if cache_file is not None:
            cal.save(cache_file)
    return cal


def _skip_scores(teacher, runs, outputs) -> torch.Tensor:
    """Relative output change ||v_skip - v||^2 / ||v||^2 when each block is replaced by the identity."""
    out = torch.zeros(len(teacher.blocks))
    for i, blk in enumerate(teacher.blocks):
        handle = blk.register_forward_hook(lambda m, args, o: args[0])
        try:
            for (_, kw), ref in zip(runs, outputs):
                v = forward(teacher, kw)
                out[i] += ((v - ref).double().pow(2).sum() / ref.double().pow(2).sum().clamp_min(1e-30)).item()
        finally:
            handle.remove()
    return out / len(runs)


def _remember(key: str, cal: Calibration) -> None:
    _CACHE[key] = cal
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
