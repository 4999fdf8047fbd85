"""LoRAs that follow the student: `remap` rewrites a LoRA trained on the teacher for its pruned student, exactly,
through the student's pruning record; `merge` adds a LoRA's update into a model's weights.

A LoRA updates a weight W [out, in] by scale * up @ down (scale = alpha / rank). The student's weight is W with
the kept rows and columns (`prune.slice_param`), so its update is up[kept rows] @ down[:, kept columns]: the
LoRA of kept blocks is kept (renumbered), `lora_up` / `lora_B` loses the rows of pruned output channels,
`lora_down` / `lora_A` the columns of pruned input channels; alpha and rank stay. Full deltas (`.diff`, `.diff_b`,
`.diff_m`) are sliced like the weights they update. Merging the teacher's LoRA then pruning equals merging the
remapped LoRA into the student (tests/test_lora.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..errors import FormatError
from ..formats.io import atomic_path, refuse_pickle
from ..formats.lora_keys import LoraFormat, LoraKey, detect, fits, output_format
from ..formats.spec import WanSpec
from .prune import kept_of, slice_param
from .spaces import param_axes

KNOWN_BASES = {  # (dim, ffn_dim) -> the Wan release it belongs to
    (1536, 8960): "Wan2.1 / Wan2.2 T2V 1.3B",
    (5120, 13824): "Wan 14B (Wan2.1 T2V/I2V/FLF2V 14B or a Wan2.2 A14B expert)",
    (3072, 14336): "Wan2.2 TI2V 5B",
}


@dataclass
class LoraRemap:
    """What `remap` wrote: the kept LoRA, what was dropped, and how much of the LoRA's update that was."""

    path: Path | None  # the written file (None when not written)
    format: str  # the input's format (comfyui | kohya | diffusers)
    out_format: str  # the output's
    state: dict = field(repr=False)  # the remapped LoRA tensors, by key
    kept_modules: int  # adapted parameters kept
    dropped_keys: list[str]  # keys of LoRA on blocks the student does not have
    dropped_blocks: list[int]  # those teacher blocks
    energy: float  # ||update||_F^2 of the teacher LoRA, summed over parameters (scale included)
    dropped_energy: float  # ... of the dropped blocks
    kept_energy: float  # ... of the remapped LoRA

    @property
    def dropped_share(self) -> float:
        """Share of the LoRA's update (squared Frobenius norm) on blocks the student removed."""
        return self.dropped_energy / self.energy if self.energy else 0.0

    @property
    def width_share(self) -> float:
        """Share on the heads, neurons and channels the student removed (inside kept blocks)."""
        return max(0.0, self.energy - self.dropped_energy - self.kept_energy) / self.energy if self.energy else 0.0

    def __repr__(self) -> str:
        where = f" -> {self.path}" if self.path else ""
        return (
            f"LoraRemap({self.format} -> {self.out_format}{where}: {self.kept_modules} adapted parameters kept; "
            f"{len(self.dropped_keys)} keys dropped with teacher blocks {self.dropped_blocks} = "
            f"{100 * self.dropped_share:.1f}% of the LoRA's update (squared norm); "
            f"{100 * self.width_share:.1f}% was on pruned heads/neurons/channels)"
        )


def read(lora, where: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(tensors, metadata, where) of a LoRA: a .safetensors path (never a pickle) or a state dict."""
    if isinstance(lora, dict):
        return dict(lora), {}, where or "LoRA state dict"
    from safetensors import safe_open

    path = Path(lora)
    if not path.is_file():
        raise FormatError(f"{path}: no such LoRA file. Fix: check the path.")
    refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), str(path)
    except Exception as err:  # safetensors raises its own error types for a damaged or foreign file
        raise FormatError(f"{path}: not a readable safetensors LoRA ({err}). Fix: re-download it.") from None


def parse(state: dict, where: str) -> tuple[LoraFormat, dict[str, LoraKey]]:
    """The file's format and what each key adapts; every down factor must have its up factor and vice versa."""
    fmt = detect(state, where)
    keys = {k: fmt.parse(k, where) for k in state}
    parts = {(key.param, key.part) for key in keys.values()}
    alone = sorted(
        p for p, part in parts if part in ("down", "up") and (p, "up" if part == "down" else "down") not in parts
    )
    if alone:
        raise FormatError(
            f"{where}: {len(alone)} parameter(s) have only one LoRA factor (e.g. {alone[:2]}): the file is "
            "incomplete. Fix: re-download or re-export the LoRA."
        )
    return fmt, keys


def _pruning_of(student):
    """The student's Pruning record: from a model, or from any Wan path's metadata (no weights are read)."""
    if hasattr(student, "state_dict"):
        pruning, where = getattr(student, "pruning", None), type(student).__name__
    else:
        from ..formats import inspect_wan

        pruning, where = inspect_wan(student).pruning, str(student)
    if pruning is None:
        raise FormatError(
            f"student {where}: carries no pruning record, so which teacher blocks, heads and neurons it kept is "
            "unknown. Fix: build the student with wanlite (WanLiteStudent.from_teacher / build_student / "
            "`wanlite distill`), whose every save carries the record (`wanlite inspect STUDENT` shows it); an "
            "unpruned model needs no remap."
        )
    return pruning


def _teacher_shapes(spec: WanSpec) -> dict[str, tuple]:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        model = WanTransformer3DModel(**spec.to_diffusers_config())
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def _describe_base(keys: dict[str, LoraKey], state: dict) -> str:
    """Which Wan its shapes belong to, from a self-attention query and an FFN projection."""
    dim = ffn = None
    for k, key in keys.items():
        if key.param.endswith("attn1.to_q.weight") and key.part in ("down", "diff"):
            dim = state[k].shape[-1]
        if key.param.endswith("ffn.net.0.proj.weight") and key.part in ("up", "diff"):
            ffn = state[k].shape[0]
    blocks = sorted({key.block for key in keys.values() if key.block is not None})
    known = KNOWN_BASES.get((dim, ffn), "no Wan release wanlite knows")
    last = blocks[-1] if blocks else "-"
    return f"dim {dim}, ffn_dim {ffn}, {len(blocks)} blocks with LoRA (up to block {last}): {known}"


def _check_base(keys, state, shapes, pruning, where) -> None:
    bad = [k for k, key in keys.items() if not fits(key, state[k].shape, shapes.get(key.param))]
    if not bad:
        return
    t, s = pruning.teacher, pruning.student
    lora, first = _describe_base(keys, state), keys[bad[0]].param
    hint = ""
    if (s.dim, s.ffn_dim) != (t.dim, t.ffn_dim) and f"dim {s.dim}, ffn_dim {s.ffn_dim}," in lora:
        hint = " Its shapes fit the student itself: it needs no remap, load it as it is."
    raise FormatError(
        f"{where}: this LoRA was made for another base: {len(bad)} tensor(s) do not fit the student's teacher "
        f"({t}), e.g. {bad[0]} {list(state[bad[0]].shape)} for the teacher's {first} "
        f"{list(shapes.get(first, ()))}. The LoRA's shapes: {lora}.{hint} Fix: use a LoRA trained on this "
        "student's teacher."
    )


def _scales(keys: dict[str, LoraKey], state: dict) -> dict[str, float]:
    """alpha / rank of each adapted parameter that has an alpha (1 otherwise, as ComfyUI and diffusers read it)."""
    rank = {key.param: state[k].shape[0] for k, key in keys.items() if key.part == "down"}
    return {
        key.param: float(state[k]) / rank[key.param]
        for k, key in keys.items()
        if key.part == "alpha" and key.param in rank
    }


def _energy(keys: dict[str, LoraKey], state: dict, scales: dict) -> dict[str, float]:
    """||update||_F^2 per adapted parameter: for up @ down, trace((B^T B)(A A^T)) (rank x rank, never out x in)."""
    by = {}
    for k, key in keys.items():
        by.setdefault((key.param, key.part), state[k])
    energy = {}
    for (param, part), t in by.items():
        if part == "down" and (param, "up") in by:
            a = t.double().reshape(t.shape[0], -1)
            up = by[(param, "up")].double()
            b = up.reshape(up.shape[0], -1)
            energy[param] = float(((b.T @ b) * (a @ a.T)).sum()) * scales.get(param, 1.0) ** 2
        elif part in ("diff", "diff_b"):
            energy[f"{param}:{part}"] = float(t.double().square().sum())
    return energy


def remap(lora, student, out=None, format: str | None = None, overwrite: bool = False) -> LoraRemap:
    """The LoRA `lora` (a .safetensors path or state dict, trained on the student's teacher) for the pruned
    `student` (a model with `.pruning`, or any Wan path of it). Written to `out` when given, in the input's
    format unless `format` ('comfyui' | 'kohya' | 'diffusers') says otherwise; returns a `LoraRemap`."""
    state, metadata, where = read(lora)
    fmt, keys = parse(state, where)
    pruning = _pruning_of(student)
    tspec = pruning.teacher
    _check_base(keys, state, _teacher_shapes(tspec), pruning, where)
    kept = kept_of(pruning)
    scales = _scales(keys, state)
    target = output_format(format, fmt)
    new_keys, new_state, dropped = {}, {}, []
    for k, key in keys.items():
        if key.block is not None and key.block not in kept["blocks"]:
            dropped.append(k)
            continue
        axes = param_axes(key.param)
        t = state[k]
        if key.part == "down":  # columns: the input channels the student kept
            t = slice_param(t, key.param, kept, tspec, axes=(None, axes[1] if len(axes) > 1 else None))
        elif key.part == "up":  # rows: the output channels the student kept
            t = slice_param(t, key.param, kept, tspec, axes=axes[:1])
        elif key.part in ("diff", "diff_b"):
            t = slice_param(t, key.param, kept, tspec)
        new = key if key.block is None else key.renumbered(kept["blocks"].index(key.block))
        new_keys[k], new_state[k] = new, t.contiguous()
    energy = _energy(keys, state, scales)
    dropped_params = {keys[k].param for k in dropped}
    dropped_energy = sum(v for p, v in energy.items() if p.split(":")[0] in dropped_params)
    kept_energy = sum(_energy(new_keys, new_state, scales).values())
    written = _write(new_keys, new_state, scales, target)
    result = LoraRemap(
        None,
        fmt.kind,
        target.kind,
        written,
        len({key.param for key in new_keys.values() if key.part != "alpha"}),
        sorted(dropped),
        sorted({keys[k].block for k in dropped}),
        sum(energy.values()),
        dropped_energy,
        kept_energy,
    )
    if out is not None:
        result.path = _save(written, metadata, result, pruning, Path(out), overwrite)
    return result


def _write(keys: dict[str, LoraKey], state: dict, scales: dict, target: LoraFormat) -> dict[str, torch.Tensor]:
    """Name the tensors in `target`'s format; diffusers names carry no alpha, so it is folded into lora_A."""
    out = {}
    for k, key in keys.items():
        t = state[k]
        if target.kind == "diffusers" and key.param in scales:
            if key.part == "alpha":
                continue
            if key.part == "down":
                t = (t * scales[key.param]).to(t.dtype)
        out[target.name(key)] = t
    return dict(sorted(out.items()))


def _save(state: dict, metadata: dict, result: LoraRemap, pruning, out: Path, overwrite: bool) -> Path:
    from safetensors.torch import save_file

    meta = dict(metadata)
    meta["wanlite.version"] = json.dumps(__version__)
    meta["wanlite.lora_remap"] = json.dumps(
        {
            "student": str(pruning.student),
            "teacher": str(pruning.teacher),
            "kept_blocks": pruning.kept_blocks,
            "dropped_teacher_blocks": result.dropped_blocks,
            "dropped_share": round(result.dropped_share, 6),
            "width_share": round(result.width_share, 6),
        }
    )
    with atomic_path(out, overwrite, is_dir=False) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return out


@torch.no_grad()
def merge(model, lora, strength: float = 1.0):
    """Add `strength` x the LoRA's update into `model`'s weights (a diffusers Wan transformer), in place: W +=
    strength * alpha/rank * up @ down, plus full deltas. Every key must fit a parameter of the model."""
    state, _, where = read(lora)
    _, keys = parse(state, where)
    params = dict(model.named_parameters())
    scales = _scales(keys, state)
    by = {(key.param, key.part): state[k] for k, key in keys.items()}
    missing = sorted({p for p, _ in by if p not in params})
    if missing:
        raise FormatError(
            f"{where}: adapts parameters this model does not have (e.g. {missing[:3]}); it was made for a model "
            "with more blocks or an image embedder. Fix: remap it for this student (`wanlite lora remap`)."
        )
    for (param, part), t in by.items():
        w = params[param]
        if part == "down":
            up = by[(param, "up")]
            delta = up.reshape(up.shape[0], -1).double() @ t.reshape(t.shape[0], -1).double()
            delta = delta.reshape(w.shape) * scales.get(param, 1.0)
        elif part in ("diff", "diff_b"):
            delta = t.double()
        else:
            continue
        if tuple(delta.shape) != tuple(w.shape):
            raise FormatError(f"{where}: the update of {param} is {list(delta.shape)}, the weight {list(w.shape)}.")
        w.add_((strength * delta).to(w.dtype))
    return model


__all__ = ["LoraRemap", "merge", "read", "remap"]
