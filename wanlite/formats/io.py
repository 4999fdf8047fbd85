"""Low-level file work: safetensors headers, memory-lean tensor reads, atomic writes.

safetensors' own loaders either copy a whole file or keep it memory-mapped; to load a model "with no second
copy" (and to convert dtypes one tensor at a time) we read each tensor straight into its destination.
Writes go to a temporary sibling that is renamed into place, so an interrupted save loses nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import struct
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import DestinationExistsError, FormatError, WriteError, os_fix

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


def refuse_pickle(path: Path, fix: str | None = None) -> None:
    """A pickle is never loaded: unpickling runs arbitrary code. `fix`: where the safetensors form of this file is."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(
            f"{path}: a PyTorch pickle ({path.suffix}) is never loaded by wanlite: unpickling runs arbitrary code. "
            "Fix: "
            + (
                fix
                or "convert it to .safetensors in a trusted environment "
                "(safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')), then load that."
            )
        )


def open_regular(path: Path):
    """Open a weight file for reading, refusing what is not a regular file (a FIFO would block forever, a
    device has no end) with a message instead of a traceback."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
            kind = "a directory" if stat.S_ISDIR(mode) else kind
            raise FormatError(f"{path}: is {kind}, not a weight file. Fix: point at a .safetensors file.")
        return open(path, "rb")
    except OSError as err:
        raise FormatError(f"{path}: cannot be read ({err.strerror}). Fix: {os_fix(err)}") from None


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header: the tensors' places and the file's metadata. Everything
    safetensors itself would refuse is refused here first, before any tensor is read: data offsets that overlap,
    leave gaps, run backwards or leave the file, and metadata that is not a table of strings."""
    path = Path(path)
    refuse_pickle(path)
    bad = f"{path}: not a valid safetensors file"
    fix = "Fix: re-download or re-export it (a truncated copy or another format cannot be read)."
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if raw[:4] == b"GGUF":
            raise FormatError(
                f"{path}: is a GGUF file, not safetensors; this reader takes .safetensors. "
                "Fix: load the .safetensors release (or convert the GGUF with ComfyUI-GGUF's tools)."
            )
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
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(
            f"{bad}: its __metadata__ must be a JSON object of strings (found {str(metadata)[:80]!r}). {fix}"
        )
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
        if any(s < 0 for s in shape) or end < start:
            raise FormatError(f"{bad}: tensor {name!r} has a negative shape or reversed data_offsets {info!r}. {fix}")
        if end - start != numel * dtype.itemsize or end > size or start < base:
            raise FormatError(
                f"{bad}: tensor {name!r} lies outside the file or has the wrong byte length "
                f"(file is {size} bytes; truncated?). {fix}"
            )
        entries[name] = TensorEntry(path, name, dtype, shape, start, end)
    at = base  # the tensors must tile the data region exactly, as safetensors requires
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != at:
            what = "overlaps the tensor before it" if entry.start < at else "leaves a gap before it"
            raise FormatError(
                f"{bad}: tensor {entry.name!r} (data_offsets {entry.start - base}..{entry.end - base}) {what}; "
                f"two tensors would share bytes or read garbage. {fix}"
            )
        at = entry.end
    return entries, dict(metadata)


def require_float(entries: dict[str, TensorEntry], where) -> None:
    """Every weight of a transformer is a floating-point tensor: an integer or bool one is not a weight
    (and converting it to float would silently make one up)."""
    bad = [  # a quantized entry names its stored type (fp8_e4m3fn, Q8_0, F16 ...): its reader decodes floats
        f"{name} ({e.dtype})"
        for name, e in entries.items()
        if isinstance(e.dtype, torch.dtype) and not e.dtype.is_floating_point
    ]
    if bad:
        raise FormatError(
            f"{where}: {len(bad)} tensor(s) where Wan weights belong are not floating point (e.g. {bad[:3]}). "
            "Fix: point at the transformer's float weights (fp32/bf16/fp16/fp8), not an index or quantized blob."
        )


def inside(folder: Path, name, where) -> Path:
    """`folder/name` for a file name read from an index, refused when it would leave `folder`."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise FormatError(
            f"{where}: names {name!r} as a shard; shard names must be files inside {folder}. "
            "Fix: restore the index written with the model (it must never point outside its directory)."
        )
    return folder / name


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
    fh = fh or open_regular(entry.file)
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
        yield {f: stack.enter_context(open_regular(f)) for f in {e.file for e in entries}}


# Files save_wan writes into a directory export; --overwrite replaces a directory holding only these.
OWN_FILES = re.compile(
    r"^(config\.json|README\.md|pruning\.json|diffusion_pytorch_model(\.\w+)?(-\d{5}-of-\d{5})?\.safetensors"
    r"|diffusion_pytorch_model\.safetensors\.index(\.\w+)?\.json)$"  # (.fp16 ...: diffusers' weight variants)
)
_TEMP = re.compile(r"^\.(?P<name>.+)\.wanlite-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def check_destination(out: Path, overwrite: bool, want_dir: bool) -> None:
    """Refuse before any work when `out` exists and may not be replaced. `overwrite` replaces only what
    wanlite itself writes (an export directory of its own files, a safetensors or JSON file): anything else
    is refused, so an --overwrite typo never deletes a user's folder."""
    if not out.exists():
        if out.is_symlink():
            raise DestinationExistsError(f"{out} is a broken symlink. Fix: remove it or choose another path.")
        return
    if want_dir and not out.is_dir():
        raise DestinationExistsError(f"{out} is a file, but this export is a directory. Fix: choose another path.")
    if not want_dir and out.is_dir():
        raise DestinationExistsError(
            f"{out} is a directory, but this export is one file. Fix: give a file path ending in .safetensors."
        )
    if not want_dir and not out.is_file():
        raise DestinationExistsError(f"{out} exists and is not a regular file. Fix: choose another path.")
    if not overwrite and (out.is_file() or any(out.iterdir())):
        raise DestinationExistsError(
            f"{out} already exists. Fix: pass overwrite=True (CLI: --overwrite) to replace it, or choose another path."
        )
    foreign = _foreign(out) if want_dir else ([] if _own_file(out) else [out.name])
    if foreign:
        raise DestinationExistsError(
            f"{out} holds what wanlite did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); overwrite replaces only a wanlite export, never anything "
            "else. Fix: choose another path, or move those files away first."
        )


def _foreign(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir())
    return [n for n in names if not (OWN_FILES.match(n) and (folder / n).is_file() and not (folder / n).is_symlink())]


def _own_file(path: Path) -> bool:
    """A single file wanlite may replace: a readable safetensors file, a GGUF file, or a JSON workflow."""
    try:
        if path.suffix == ".safetensors":
            read_header(path)
            return True
        if path.suffix == ".gguf":
            with open_regular(path) as fh:
                return fh.read(4) == b"GGUF"
        if path.suffix == ".json":
            return isinstance(json.loads(path.read_text()), dict)
    except (FormatError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no pid at all: leave it alone
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporaries (`.NAME.wanlite-tmp-PID-…`) that killed processes left in `folder`; a set-aside
    old export (`.NAME.wanlite-old-PID-…`) whose destination is missing is put back instead. Temporaries of
    live processes (this machine) are left alone. Returns what was removed or restored."""
    done = []
    try:
        siblings = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return done
    for p in siblings:
        m = _TEMP.match(p.name)
        if m is None or _alive(int(m["pid"])):
            continue
        dest = folder / m["name"]
        try:
            if m["kind"] == "old" and not dest.exists() and not dest.is_symlink():
                p.rename(dest)  # a crash between the two renames of a fallback swap: the old export returns
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        done.append(p)
    if done:
        warnings.warn(f"{folder}: cleaned {len(done)} temporaries of killed wanlite processes", stacklevel=3)
    return done


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_permissions(path: Path) -> None:
    """safetensors writes 0600; an export gets what any new file gets (0644 / 0755 under the usual umask), so
    a ComfyUI running as another user (a container, a shared server) can read it."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(out: Path, overwrite: bool = False, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write into; on success it replaces `out`, on error it vanishes.
    At every instant `out` is the old export or the new one, never a mix or nothing; a write that fails (no
    permission, a full disk) raises WriteError naming the file, and leaves `out` as it was."""
    out = Path(out)
    check_destination(out, overwrite, is_dir)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.wanlite-tmp-{tag}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out.parent)
        if is_dir:
            tmp.mkdir()
    except OSError as err:
        raise _write_error(err, out) from None
    try:
        yield tmp
        _usual_permissions(tmp)
        if is_dir:
            swap_into_place(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":  # safetensors' write errors
            raise _write_error(err, out) from None
        raise


def replace_file(path, content) -> Path:
    """A small file a run owns (a record, a leaderboard) written whole or not at all: `content` is text, or a
    callable that writes to the path it is given. A reader sees the old file or the new one, never half of one.
    Unlike `atomic_path` it does not ask whether `path` is an export wanlite wrote: its caller owns that name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.wanlite-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        content(tmp) if callable(content) else tmp.write_text(content)
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(err, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_error(err: OSError, out: Path) -> WriteError:
    fixes = {
        errno.ENOSPC: "free disk space (or write elsewhere) and run it again.",
        errno.EDQUOT: "free space within your quota (or write elsewhere) and run it again.",
        errno.EACCES: "choose a destination this user may write, or fix its permissions.",
        errno.EPERM: "choose a destination this user may write, or fix its permissions.",
        errno.EROFS: "the file system is read-only: choose a writable destination.",
    }
    code = getattr(err, "errno", None)
    if code is None:  # a SafetensorError carries the OS error in its text only
        text = str(err)
        code = next((c for c in (errno.ENOSPC, errno.EACCES, errno.EROFS) if f"os error {c})" in text), None)
    fix = fixes.get(code, "check the destination path (its parent must be a writable directory).")
    where = getattr(err, "filename", None) or out
    why = getattr(err, "strerror", None) or str(err)
    return WriteError(f"{out}: could not write {where} ({why}); nothing was replaced. Fix: {fix}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Move a finished directory `tmp` to `out`. An existing `out` is exchanged with `tmp` in one atomic step
    and then removed, so a crash at any instant leaves the old or the new one at `out`. Where the file system
    cannot exchange, the old one is set aside under a name holding this process's id: a crash between the
    two renames leaves it there, and the next save puts it back (`clean_stale`)."""
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old one
        return
    old = out.parent / f".{out.name}.wanlite-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
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
