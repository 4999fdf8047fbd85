"""Low-level file work: safetensors headers, memory-lean tensor reads, atomic writes.

safetensors' own loaders either copy a whole file or keep it memory-mapped; to load a model "with no second
copy" (and to convert dtypes one tensor at a time) we read each tensor straight into its destination.
Writes go to a temporary sibling that is renamed into place, so an interrupted save loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import DestinationExistsError, FormatError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    file: Path
    name: str  # the name stored in the file
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(
            f"{path}: a PyTorch pickle ({path.suffix}) is never loaded by wanlite: unpickling runs arbitrary code. "
            "Fix: convert it to .safetensors in a trusted environment "
            "(safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')), then load that."
        )


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header: the tensors' places and the file's metadata."""
    path = Path(path)
    refuse_pickle(path)
    bad = f"{path}: not a valid safetensors file"
    fix = "Fix: re-download or re-export it (a truncated copy or another format cannot be read)."
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise FormatError(f"{bad} ({size} bytes, shorter than a header). {fix}")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise FormatError(f"{bad} (header length {n} does not fit in a {size}-byte file). {fix}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FormatError(f"{bad} (header is not JSON: {err}). {fix}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{bad} (header is not a JSON object). {fix}")
    metadata = header.pop("__metadata__", None) or {}
    base, entries = 8 + n, {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (base + int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{bad} (tensor {name!r} has a malformed or unsupported entry {info!r}). {fix}") from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * dtype.itemsize or end > size or start < base:
            raise FormatError(
                f"{bad}: tensor {name!r} lies outside the file or has the wrong byte length "
                f"(file is {size} bytes; truncated?). {fix}"
            )
        entries[name] = TensorEntry(path, name, dtype, shape, start, end)
    return entries, dict(metadata)


_CHUNK = 4 * 1024 * 1024  # bytes of scratch for dtype conversion


def read_tensor(
    entry: TensorEntry, dtype: torch.dtype | None = None, device=None, fh=None, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Read one tensor straight into fresh memory. A dtype conversion streams through `scratch` (a few MB of
    bytes, reused across calls so the allocator never fragments), so converting a whole model costs the converted
    model and nothing more."""
    dtype = dtype or entry.dtype
    out = torch.empty(entry.shape, dtype=dtype)
    own = fh is None
    fh = fh or open(entry.file, "rb")
    try:
        fh.seek(entry.start)
        flat = out.view(-1)
        if dtype == entry.dtype:
            got = fh.readinto(flat.view(torch.uint8).numpy()) if out.numel() else 0
        else:
            buffer = (scratch if scratch is not None else torch.empty(_CHUNK, dtype=torch.uint8)).view(entry.dtype)
            step, got = buffer.numel(), 0
            for i in range(0, flat.numel(), step):
                part = buffer[: min(step, flat.numel() - i)]
                got += fh.readinto(part.view(torch.uint8).numpy())
                flat[i : i + part.numel()].copy_(part)
    finally:
        if own:
            fh.close()
    if got != entry.end - entry.start:
        raise FormatError(f"{entry.file}: tensor {entry.name!r} is truncated. Fix: re-download or re-export it.")
    return out if device is None else out.to(device)


@contextlib.contextmanager
def open_files(entries) -> Iterator[dict[Path, object]]:
    """One open handle per file for a batch of reads."""
    with contextlib.ExitStack() as stack:
        yield {f: stack.enter_context(open(f, "rb")) for f in {e.file for e in entries}}


def check_destination(out: Path, overwrite: bool, want_dir: bool) -> None:
    """Refuse before any work when `out` exists and may not be replaced."""
    if not out.exists():
        return
    if want_dir and out.is_file():
        raise DestinationExistsError(f"{out} is a file, but this export is a directory. Fix: choose another path.")
    if not want_dir and out.is_dir():
        raise DestinationExistsError(
            f"{out} is a directory, but this export is one file. Fix: give a file path ending in .safetensors."
        )
    if not overwrite and (out.is_file() or any(out.iterdir())):
        raise DestinationExistsError(
            f"{out} already exists. Fix: pass overwrite=True (CLI: --overwrite) to replace it, or choose another path."
        )


@contextlib.contextmanager
def atomic_path(out: Path, overwrite: bool = False, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write into; on success it replaces `out`, on error it vanishes."""
    out = Path(out)
    check_destination(out, overwrite, is_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.wanlite-tmp-{tag}"
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if is_dir else tmp.unlink(missing_ok=True)
        raise
    if is_dir:
        swap_into_place(tmp, out)
    else:
        os.replace(tmp, out)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Move a finished directory `tmp` to `out`; an existing `out` is set aside first and removed only after the
    new one is in place, so a crash never leaves half of either."""
    old = out.parent / f".{out.name}.wanlite-old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


_CODES = {dtype: code for code, dtype in DTYPES.items()}


def write_safetensors(path: Path, plan: list[tuple[str, torch.dtype, tuple]], tensors, metadata: dict) -> None:
    """Write a safetensors file one tensor at a time: `plan` gives (name, dtype, shape) of every tensor in order,
    `tensors` yields them in that order, so only one converted tensor is ever held (safetensors' save_file needs
    them all at once)."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape in plan:
        n = dtype.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for (name, dtype, shape), t in zip(plan, tensors):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise FormatError(f"{path}: tensor {name} is {t.dtype} {list(t.shape)}, planned {dtype} {list(shape)}")
            if t.numel():
                fh.write(t.contiguous().view(-1).view(torch.uint8).numpy())
