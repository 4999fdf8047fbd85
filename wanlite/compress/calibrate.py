"""Measure which teacher blocks, heads, FFN neurons and channels matter, before pruning (`calibrate`).

Scores are measured per channel space (see `spaces.py`). Scores (higher = more important):
* a channel's importance is the energy it feeds into the layers that read it, E[x_j^2] * ||W[:, j]||^2,
  summed over readers (activation statistics as in Minitron, weighted like Wanda); a head sums its 128
  channels; magnitude scores are the same with E[x_j^2] = 1 (weights only, no data);
* a block's importance is ShortGPT's 1 - cos(block input, block output), averaged over tokens, and
  optionally the relative change of the model's output when the block is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .._version import __version__
from ..core.display import new_figure
from ..core.flow import BlockOutputs, rel_mse, wan_forward
from ..errors import RecipeError
from ..formats.records import spec_json
from ..formats.spec import WanSpec
from .batches import noise_batch, prepare_batch
from .spaces import _BLOCK_NO, check_teacher, param_axes, teacher_fingerprint

__all__ = ["Calibration", "calibrate", "magnitude_scores", "noise_batch", "prepare_batch"]


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
    scores = {
        "channel": z(n, d),
        "channel_global": z(d),
        "text_context": z(n, d),
        "text_hidden": z(d),
        "time_hidden": z(d),
        "self_heads": z(n, d),
        "cross_heads": z(n, d),
        "ffn": z(n, spec.ffn_dim),
    }
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
        lines = [
            f"Calibration of {s}",
            f"  batch: {self.num_samples} sample(s) x {self.tokens} tokens, "
            f"sigmas {self.sigmas if self.sigmas is not None else 'as given'}; teacher {self.fingerprint}",
            f"  block importance 1-cos(in, out), high = keep: {fmt(self.block_cosine)}",
            f"    least important first: {self.block_cosine.argsort().tolist()}",
        ]
        if self.block_skip is not None:
            lines += [
                f"  output change when skipped ||dv||^2/||v||^2: {fmt(self.block_skip)}",
                f"    least important first: {self.block_skip.argsort().tolist()}",
            ]
        for key, what in (
            ("self_heads", "self-attn heads"),
            ("cross_heads", "cross-attn heads"),
            ("ffn", "FFN neurons"),
            ("channel_all", "residual channels"),
        ):
            t = (
                self.scores["channel"].sum(0) + self.scores["channel_global"]
                if key == "channel_all"
                else self.scores[key]
            )
            share = _top_half_share(t)
            lines.append(f"  {what}: the top half holds {share:.0%} of the importance (50% = all alike)")
        return "\n".join(lines)

    def plot(self):
        """Block scores, head maps, sorted FFN and channel importance: a matplotlib Figure (no pyplot, headless)."""
        from matplotlib.ticker import MaxNLocator

        fig = new_figure(figsize=(15, 7), layout="constrained")
        ax = fig.subplots(2, 3)
        n = self.spec.num_layers
        ax[0, 0].bar(range(n), self.block_cosine.numpy(), label="1 - cos(in, out)")
        if self.block_skip is not None:
            ax[0, 0].plot(range(n), self.block_skip.numpy(), "o-", color="C1", label="output change if skipped")
        ax[0, 0].set(title="block importance (high = keep)", xlabel="teacher block")
        ax[0, 0].set_ylim(0, ax[0, 0].get_ylim()[1] * 1.3)  # headroom: the legend sits above the bars
        ax[0, 0].legend(loc="upper center", ncol=2, fontsize=8)
        for a, key in ((ax[0, 1], "self_heads"), (ax[0, 2], "cross_heads")):
            t = self.scores[key]
            im = a.imshow((t / t.sum(1, keepdim=True)).numpy(), aspect="auto", cmap="viridis")
            a.set(title=f"{key.replace('_', ' ')} (share per block)", xlabel="head", ylabel="teacher block")
            fig.colorbar(im, ax=a)
        for axis in (ax[0, 0].xaxis, ax[0, 1].xaxis, ax[0, 1].yaxis, ax[0, 2].xaxis, ax[0, 2].yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))  # blocks and heads are indices
        for a, key, title in (
            (ax[1, 0], "ffn", "FFN neurons, sorted, per block"),
            (ax[1, 1], "channel", "residual channels, sorted, per reading block"),
        ):
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
        meta = {
            "spec": spec_json(self.spec),
            "sigmas": self.sigmas,
            "num_samples": self.num_samples,
            "tokens": self.tokens,
            "fingerprint": self.fingerprint,
            "batch_key": self.batch_key,
            "meta": self.meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {k: v.contiguous() for k, v in self.scores.items()},
            str(tmp),
            metadata={"wanlite_calibration": json.dumps(meta)},
        )
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
        return cls(
            WanSpec(**m["spec"]),
            scores,
            sig,
            m["num_samples"],
            m["tokens"],
            m["fingerprint"],
            m["batch_key"],
            m.get("meta", {}),
        )


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
def calibrate(
    teacher,
    batch: Mapping,
    sigmas: Sequence[float] | None = None,
    seed: int = 0,
    skip_blocks: bool = False,
    cache_dir=None,
    use_cache: bool = True,
) -> Calibration:
    """Run the teacher on a small batch and measure block, head, FFN-neuron and channel importance.

    `batch`: see `prepare_batch` (clean latents + text embeddings, noised at each sigma, or an already-noisy
    batch with its timestep). `skip_blocks=True` also measures each block's output change when skipped
    (one extra forward per block and sigma). Results are cached in memory, and in `cache_dir` as
    safetensors when given, keyed on the teacher's weights, the batch and the options."""
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
    scores, outputs = _activation_scores(teacher, spec, runs)
    if skip_blocks:
        scores["block_skip"] = _skip_scores(teacher, runs, outputs)
    x = runs[0][1]["x"]
    tokens = (
        (x.shape[2] // spec.patch_size[0]) * (x.shape[3] // spec.patch_size[1]) * (x.shape[4] // spec.patch_size[2])
    )
    cal = Calibration(
        spec,
        scores,
        tuple(s for s, _ in runs) if runs[0][0] is not None else None,
        x.shape[0],
        tokens,
        fp,
        key,
        {"seconds": round(time.perf_counter() - start, 3), "seed": seed, "wanlite_version": __version__},
    )
    if use_cache:
        _remember(key, cal)
        if cache_file is not None:
            cal.save(cache_file)
    return cal


def _activation_scores(teacher, spec: WanSpec, runs) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """One forward per run with every reader's input energy recorded (channel, head, neuron scores) and each
    block's 1 − cos(input, output) (block scores); also the velocities, for the skip scores."""
    sq = {}  # reader name -> [sum of x^2 per input channel, token count]
    cos = torch.zeros(spec.num_layers, 2, dtype=torch.float64)  # [sum of 1-cos, token count]

    def reader_hook(name):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sq.setdefault(name, [torch.zeros(x.shape[1], dtype=torch.float64, device=x.device), 0])
            acc[0] += x.pow(2).sum(0).double()
            acc[1] += x.shape[0]

        return hook

    readers = _readers(teacher)
    handles = [m.register_forward_pre_hook(reader_hook(name)) for m, name, _, _ in readers]
    outputs = []
    try:
        for _, kw in runs:
            with BlockOutputs(teacher, inputs=True, detach=True) as blocks:
                outputs.append(wan_forward(teacher, **kw))
            for i, out in blocks.outputs.items():
                c = torch.nn.functional.cosine_similarity(blocks.inputs[i].float(), out.float(), dim=-1).double()
                cos[i] += torch.tensor([(1 - c).sum().item(), c.numel()], dtype=torch.float64)
    finally:
        for h in handles:
            h.remove()
    scores = _empty_scores(spec)
    for module, name, space, block in readers:
        total, count = sq[name]
        energy = (total / max(count, 1)).cpu() * module.weight.detach().float().pow(2).sum(0).double().cpu()
        _add(scores, space, block, energy)
    scores = _finish(spec, scores)
    scores["block_cosine"] = (cos[:, 0] / cos[:, 1].clamp_min(1)).float()
    return scores, outputs


def _skip_scores(teacher, runs, outputs) -> torch.Tensor:
    """Relative output change ||v_skip - v||^2 / ||v||^2 when each block is replaced by the identity."""
    out = torch.zeros(len(teacher.blocks))
    for i, blk in enumerate(teacher.blocks):
        handle = blk.register_forward_hook(lambda m, args, o: args[0])
        try:
            for (_, kw), ref in zip(runs, outputs):
                out[i] += rel_mse(wan_forward(teacher, **kw), ref)
        finally:
            handle.remove()
    return out / len(runs)


def _remember(key: str, cal: Calibration) -> None:
    _CACHE[key] = cal
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
