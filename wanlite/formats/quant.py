"""The quantized files ComfyUI users run: which Wan tensors each format quantizes, fp8 quantize / dequantize, and a
read-only view of a quantized file (fp8 safetensors or GGUF) that the loaders dequantize one tensor at a time.

Formats (`QUANTS`):
- `fp8_e4m3fn` (plain): the transformer blocks' linear weights cast to float8_e4m3fn, everything else bf16. No
  scales, so ComfyUI simply upcasts per layer; embeddings, the head, norms, modulation tables and biases stay bf16
  because they are small, and without a scale their small weights would fall into fp8's subnormal range.
- `fp8_scaled`: every `nn.Linear` weight in float8_e4m3fn with one fp32 scale (amax / 448, per tensor), in the
  legacy ComfyUI form: a top-level `scaled_fp8` marker tensor (empty, e4m3fn: ComfyUI reads the fp8 dtype from
  it) and `<layer>.scale_weight`. ComfyUI of October 2025 reads only this form: it sees the marker and builds
  EVERY Linear in fp8 (`scaled_fp8_ops(override_dtype=...)`, missing scales default to 1.0), so embedding and head
  Linears get their own scales too — a bf16 Linear weight without one would be cast to fp8 at scale 1 there.
  Later ComfyUI (`comfy/utils.py: convert_old_quants`) turns the same keys into `weight_scale` + `comfy_quant`
  itself. Conv (patch_embedding), norms, modulation tables and biases stay bf16. The scale is amax / 448: fp8's
  relative rounding error is the same at every magnitude in its normal range, so a smaller scale only clips.
- GGUF `Q8_0`, `Q5_0`, `Q5_1`, `Q4_0`, `Q4_1` (see `formats.gguf`): ComfyUI-GGUF's rules.
Both ComfyUI generations' fp8 forms (legacy and `weight_scale` + `comfy_quant` / `_quantization_metadata`) and GGUF
files of any type the `gguf` package dequantizes (K-quants included) are read back.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError
from .io import TensorEntry, read_tensor

FP8 = ("fp8_e4m3fn", "fp8_scaled")
GGUF_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")  # what the PyPI `gguf` package quantizes (no K-quants)
QUANTS = FP8 + GGUF_TYPES
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_SLICE = 1 << 20  # elements converted at a time
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MARKER = "scaled_fp8"
SCALE_KEYS = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")
# the transformer blocks' linear layers: what plain fp8 quantizes
_BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])\.weight$")


def parse_quant(quant) -> str | None:
    """'fp8_scaled' | 'fp8_e4m3fn' | 'Q8_0' | 'q4_0' ... -> the canonical name; None stays None."""
    if quant is None:
        return None
    for name in QUANTS:
        if str(quant).lower() == name.lower():
            return name
    hint = " The PyPI gguf package cannot write K-quants (Q4_K_M, Q5_K_M ...)." if "_K" in str(quant).upper() else ""
    raise FormatError(f"unknown quant type {quant!r}.{hint} Fix: use one of {list(QUANTS)}.")


def is_gguf(quant: str | None) -> bool:
    return quant in GGUF_TYPES


def fp8_quantized(name: str, shape, quant: str) -> bool:
    """Whether `quant` stores the official-named tensor `name` in fp8 (see the module docstring for why)."""
    if quant == "fp8_e4m3fn":
        return bool(_BLOCK_LINEAR.match(name))
    return quant == "fp8_scaled" and name.endswith(".weight") and len(shape) == 2  # every Wan Linear, nothing else


def quantize_fp8(t: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float8_e4m3fn weight (saturated at ±448: a plain cast would turn larger values into NaN) and its fp32 scale."""
    scale = None
    if scaled:
        amax = t.detach().abs().max().item() if t.numel() else 0.0
        scale = torch.tensor(amax / FP8_MAX if amax > 0 else 1.0, dtype=torch.float32)
    out = torch.empty(t.shape, dtype=torch.float8_e4m3fn)
    for src, dst in zip(t.detach().reshape(-1).split(_SLICE), out.view(-1).split(_SLICE)):  # slices: no fp32 copy
        part = src.to(torch.float32, copy=True)
        dst.copy_((part.div_(scale) if scaled else part).clamp_(-FP8_MAX, FP8_MAX))
    return out, scale


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    out = weight.to(torch.float32)
    if scale is not None:
        out.mul_(scale.to(torch.float32))
    return out.to(dtype)


# --------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class QuantEntry:
    """One quantized tensor in a file: `read(dtype)` dequantizes it (fp8 times its scale, or a GGUF block type)."""

    file: Path
    name: str  # the name stored in the file
    dtype: str  # stored type: fp8_e4m3fn | Q8_0 | F16 | ...
    shape: tuple[int, ...]  # the logical (PyTorch) shape
    weight: TensorEntry | None = None  # fp8: the weight ...
    scale: TensorEntry | None = None  # ... and its scale
    gguf: tuple | None = None  # GGUF: (byte offset, byte count, GGMLQuantizationType)

    def read(self, dtype: torch.dtype = torch.bfloat16, device=None, fh=None) -> torch.Tensor:
        if self.gguf is not None:
            out = _read_gguf_tensor(self, dtype)
        else:
            scale = None if self.scale is None else read_tensor(self.scale, fh=None)
            out = dequantize_fp8(read_tensor(self.weight, fh=fh), scale, dtype)
        return out if device is None else out.to(device)


@dataclass
class QuantInfo:
    """How a file is quantized: what `inspect` reports."""

    format: str  # fp8_e4m3fn | fp8_scaled | gguf Q8_0 ...
    form: str  # which layout of that format
    types: dict[str, int]  # stored type -> tensor count
    quantized: list[str] = field(repr=False)  # names of the quantized tensors
    tensors: int  # all weight tensors
    params: int
    file_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.file_bytes / max(self.params, 1)

    def __str__(self) -> str:
        types = ", ".join(f"{k} ×{v}" for k, v in sorted(self.types.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.format} ({self.form}): {len(self.quantized)} of {self.tensors} tensors quantized; "
            f"stored types {types}; {self.bits_per_weight:.2f} bits/weight, file {self.file_bytes / 1e6:,.1f} MB"
        )


def _scale_value(path: Path, entry: TensorEntry, layer: str) -> None:
    value = read_tensor(entry).float()
    if value.numel() != 1 or not math.isfinite(value.item()) or value.item() <= 0:
        raise FormatError(
            f"{path}: the fp8 scale {entry.name!r} of {layer!r} is {value.flatten()[:4].tolist()}, not one finite "
            "positive number: the weights cannot be dequantized. Fix: re-export the model (wanlite convert ... "
            "--quant fp8_scaled) from its bf16 source."
        )


def _layer_formats(path: Path, entries: dict, metadata: dict) -> dict[str, str]:
    """The newer ComfyUI form: per-layer `comfy_quant` JSON tensors or `_quantization_metadata`."""
    layers = {}
    if "_quantization_metadata" in metadata:
        try:
            for layer, conf in json.loads(metadata["_quantization_metadata"]).get("layers", {}).items():
                layers[layer] = conf.get("format") if isinstance(conf, dict) else conf
        except (json.JSONDecodeError, AttributeError):
            raise FormatError(f"{path}: unreadable _quantization_metadata. Fix: re-export the model.") from None
    for name, entry in entries.items():
        if name.endswith(".comfy_quant"):
            try:
                conf = json.loads(bytes(read_tensor(entry).to(torch.uint8).tolist()).decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise FormatError(f"{path}: {name} is not JSON. Fix: re-export the model.") from None
            layers[name[: -len(".comfy_quant")]] = conf.get("format")
    return layers


def fp8_view(path: Path, entries: dict, metadata: dict):
    fp8 = {torch.float8_e4m3fn, torch.float8_e5m2}
    marker = next((k for k in entries if k == MARKER or k.endswith("." + MARKER)), None)
    layers = _layer_formats(path, entries, metadata)
    if marker is None and not layers and not any(e.dtype in fp8 for e in entries.values()):
        return entries, metadata, None
    prefix = marker[: -len(MARKER)] if marker else ""
    scales = {k: e for k, e in entries.items() if k.endswith(SCALE_KEYS)}
    out, quantized, types = {}, [], Counter()
    for name, entry in entries.items():
        if name == marker or name in scales:
            continue
        layer = name.removesuffix(".weight")
        fmt = layers.get(layer) or layers.get(layer.removeprefix(prefix))
        if fmt not in (None, "float8_e4m3fn", "float8_e5m2"):
            raise FormatError(
                f"{path}: layer {layer!r} is quantized as {fmt!r}, which wanlite does not read "
                "(only float8_e4m3fn / float8_e5m2 scaled fp8 and GGUF). Fix: use an fp8 or GGUF file."
            )
        if entry.dtype not in fp8:
            out[name] = entry
            types[_SHORT.get(entry.dtype, str(entry.dtype).removeprefix("torch."))] += 1
            continue
        scale = scales.get(f"{layer}.scale_weight") or scales.get(f"{layer}.weight_scale")
        if scale is None and (marker or fmt):
            raise FormatError(
                f"{path}: the fp8 weight {name!r} has no scale ({layer}.scale_weight, or weight_scale in the newer "
                "form), but the file is scaled fp8: ComfyUI would run it at scale 1.0 and produce garbage. "
                "Fix: re-export the model (wanlite convert ... --quant fp8_scaled) from its bf16 source."
            )
        if scale is not None:
            _scale_value(path, scale, layer)
        stored = str(entry.dtype).removeprefix("torch.")
        out[name] = QuantEntry(path, name, stored, entry.shape, weight=entry, scale=scale)
        quantized.append(name)
        types[stored + (" + scale" if scale is not None else "")] += 1
    if marker:
        form = "legacy ComfyUI form: scaled_fp8 marker + <layer>.scale_weight"
    elif layers:
        form = "newer ComfyUI form: <layer>.weight_scale + comfy_quant"
    else:
        form = "plain, no scales"
    info = QuantInfo(
        "fp8_scaled" if (marker or layers) else "fp8_e4m3fn",
        form,
        dict(types),
        quantized,
        len(out),
        sum(math.prod(e.shape) for e in out.values()),
        path.stat().st_size,
    )
    if any(k.endswith((".scale_input", ".input_scale")) for k in scales):
        info.notes.append("input scales (scale_input) are ignored: wanlite dequantizes the weights only")
    return out, metadata, info


def _read_gguf_tensor(entry, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize one GGUF tensor into `dtype`, reading only its bytes."""
    import gguf

    offset, nbytes, qtype = entry.gguf
    raw = np.fromfile(entry.file, dtype=np.uint8, count=nbytes, offset=offset)
    if raw.size != nbytes:
        raise FormatError(f"{entry.file}: tensor {entry.name!r} is truncated. Fix: re-download or re-export it.")
    numel = math.prod(entry.shape)
    if qtype.name == "BF16":  # numpy has no bfloat16: reinterpret through torch
        out = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16)
        return out.reshape(entry.shape).to(dtype)
    data = raw if qtype.name in ("F32", "F16") else raw.reshape(1, -1)  # whole blocks in one row
    values = gguf.quants.dequantize(data, qtype).reshape(-1)[:numel]
    return torch.from_numpy(np.ascontiguousarray(values).reshape(entry.shape)).to(dtype)
