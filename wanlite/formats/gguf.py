"""GGUF files for ComfyUI-GGUF (city96, `UnetLoaderGGUF`), written and read with the PyPI `gguf` package.

Conventions read from ComfyUI-GGUF (`tools/convert.py`, `tools/lcpp.patch`, `loader.py`): architecture `wan`,
official (ComfyUI) key names without prefix; quantized only are 2-D weights of more than 1024 elements whose names
contain none of `modulation`, `patch_embedding`, `text_embedding`, `time_embedding`, `time_projection`,
`img_emb`, `head.` (the patched llama-quantize's Wan rule). Of the rest, 1-D tensors, tensors of ≤ 1024 elements
and `.modulation` tables are F32 (convert.py: modulation is an nn.Parameter that must not lose precision), other
weights F16 (BF16 for a bf16 model, F32 beyond the fp16 range). The 5-D `patch_embedding.weight` is F32 with its
5-D shape, as ComfyUI-GGUF's `fix_5d_tensors.py` writes it into the Wan GGUFs in circulation (diffusers'
GGUF loader needs that shape), and the shape is also in `comfy.gguf.orig_shape.<name>` (an INT32 array, which
ComfyUI-GGUF's loader reshapes by). A row that is not a whole number of blocks falls back to F16, as convert.py.
Written one tensor at a time: the header is planned from shapes, then each tensor is quantized and appended.
The `gguf` package (0.19) quantizes Q8_0, Q5_0/1 and Q4_0/1 in numpy; K-quants it only dequantizes, so Q4_K_M /
Q5_K_M files made by llama-quantize are read back but not written.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError
from .quant import QuantEntry, QuantInfo

ARCH = "wan"
KEEP = ("modulation", "patch_embedding", "text_embedding", "time_embedding", "time_projection", "img_emb", "head.")
THRESHOLD = 1024
ORIG_SHAPE = "comfy.gguf.orig_shape."
_ROWS = 256  # rows quantized at a time


def _gguf():
    try:
        import gguf
    except ImportError:
        raise FormatError("GGUF needs the `gguf` package. Fix: pip install gguf") from None
    return gguf


def tensor_type(name: str, shape, source: torch.dtype, quant: str, big: bool = False):
    """The GGML type ComfyUI-GGUF's converter + quantizer give the official-named tensor `name`."""
    gguf = _gguf()
    T = gguf.GGMLQuantizationType
    numel = math.prod(shape)
    if len(shape) == 1 or numel <= THRESHOLD or ".modulation" in name or "patch_embedding" in name:
        return T.F32
    block = gguf.GGML_QUANT_SIZES[T[quant]][0]
    if len(shape) == 2 and not any(k in name for k in KEEP) and shape[-1] % block == 0:
        return T[quant]
    if big:
        return T.F32
    return T.BF16 if source == torch.bfloat16 else T.F16


def write_gguf(path: Path, tensors, quant: str, metadata: dict[str, str]) -> dict[str, int]:
    """Write (name, tensor) pairs from the iterable factory `tensors()` (called twice: plan, then data) as a
    ComfyUI-GGUF file; returns the count per stored type."""
    gguf = _gguf()
    T = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), arch=ARCH)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{quant}"))
    for key, value in metadata.items():
        writer.add_string(key, value)
    plan, counts = [], Counter()
    for name, t in tensors():
        big = t.is_floating_point() and t.numel() > 0 and t.abs().max().item() > 65504
        qtype = tensor_type(name, tuple(t.shape), t.dtype, quant, big)
        shape = tuple(t.shape)
        if len(shape) > 4:  # the 5-D patch_embedding: stored whole in F32, its shape also in the metadata
            writer.add_array(ORIG_SHAPE + name, [int(s) for s in shape])
        if qtype in (T.F32, T.F16):
            item = np.dtype(np.float32 if qtype == T.F32 else np.float16).itemsize
            writer.add_tensor_info(name, shape, np.float32 if qtype == T.F32 else np.float16, math.prod(shape) * item)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(name, byte_shape, np.uint8, math.prod(byte_shape), raw_dtype=qtype)
        plan.append((name, shape, qtype))
        counts[qtype.name] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for (_name, shape, qtype), (_, t) in zip(plan, tensors()):
        rows = t.detach().reshape(-1, shape[-1]) if len(shape) > 1 else t.detach().reshape(1, -1)
        # quantized in slices of rows: only the output and one slice's numpy temporaries are held
        parts = [gguf.quants.quantize(r.to(torch.float32).numpy(), qtype) for r in rows.split(_ROWS)]
        writer.write_tensor_data(np.concatenate(parts).reshape(-1).view(np.uint8).reshape(-1))
        del parts
    writer.close()
    return dict(counts)


def _field(reader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    gguf = _gguf()
    if field.types[0] == gguf.GGUFValueType.STRING:
        return str(bytes(field.parts[field.data[-1]]), encoding="utf-8")
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [int(field.parts[i][0]) for i in field.data]
    return field.parts[field.data[-1]][0]


def read_gguf(path: Path):
    """A GGUF file's tensors (QuantEntry by stored name, logical shapes), its wanlite metadata and a QuantInfo."""
    gguf = _gguf()
    size = path.stat().st_size
    fix = "Fix: re-download or re-export it (wanlite convert MODEL --quant Q8_0)."
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the package raises ValueError, KeyError, struct/numpy errors on a damaged file
        why = f"{type(err).__name__}: {err}"
        raise FormatError(f"{path}: not a readable GGUF file ({why}; truncated?). {fix}") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise FormatError(
            f"{path}: a GGUF of architecture {arch!r}, not a Wan transformer ('{ARCH}'): ComfyUI-GGUF would load it "
            f"as {arch!r} or refuse it. Fix: point at a Wan diffusion-model GGUF."
        )
    metadata = {k: _field(reader, k) for k in reader.fields if k.startswith("wanlite.")}
    entries, types, quantized = {}, Counter(), []
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size:
            raise FormatError(f"{path}: tensor {t.name!r} lies past the end of the file (truncated?). {fix}")
        orig = _field(reader, ORIG_SHAPE + t.name)
        shape = tuple(orig) if orig else tuple(int(s) for s in reversed(t.shape.tolist()))
        qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
        entries[t.name] = QuantEntry(path, t.name, qtype.name, shape, gguf=(int(t.data_offset), int(t.n_bytes), qtype))
        types[qtype.name] += 1
        if qtype.name not in ("F32", "F16", "BF16"):
            quantized.append(t.name)
    main = max((n for n in types if n not in ("F32", "F16", "BF16")), key=types.get, default="F16")
    info = QuantInfo(
        f"gguf {main}",
        "ComfyUI-GGUF: arch wan, official key names",
        dict(types),
        quantized,
        len(entries),
        sum(math.prod(e.shape) for e in entries.values()),
        size,
    )
    return entries, {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}, info
