"""`WanLiteStudent.from_pretrained` / `save_pretrained` with diffusers' arguments and diffusers' habits.

Every argument diffusers' `ModelMixin` defines is honoured (dtype / torch_dtype, variant, device_map, max_memory,
offload_folder, output_loading_info, Hub ids with subfolder / revision / cache_dir / token / local_files_only) or
refused with the reason and the diffusers-compatible alternative (quantization_config, pickles, FlashPack).
Deliberate differences: weights are read from every Wan layout, strictly (no random weights left behind),
and saved in the official Wan layout by default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from ..errors import FormatError, SpecError
from ..formats import inspect_wan, materialize, save_wan
from ..formats.load import INDEX, WEIGHTS, with_variant
from ..formats.records import PRUNING_FILE

ROPE_DEFAULT = 1024  # diffusers' rope_max_seq_len default; the official code and ComfyUI size RoPE themselves
HUB_ARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only", "force_download")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# (argument, value that is refused, why, the diffusers-compatible alternative)
REFUSED = (
    (
        "quantization_config",
        lambda v: v is not None,
        "wanlite reads Wan weights itself and does not run diffusers' quantizers",
        "save with layout='diffusers' and load it with WanTransformer3DModel.from_pretrained(..., "
        "quantization_config=...)",
    ),
    ("use_safetensors", lambda v: v is False, "wanlite never loads pickles", "convert the weights to safetensors"),
    ("use_flashpack", bool, "FlashPack files are not a Wan layout", "load the safetensors weights"),
    ("flashpack_kwargs", bool, "FlashPack files are not a Wan layout", "load the safetensors weights"),
    (
        "parallel_config",
        lambda v: v is not None,
        "tensor/context parallel loading is not supported",
        "load, then call model.enable_parallelism(config=...)",
    ),
    ("ignore_mismatched_sizes", bool, "wanlite never leaves weights random", "load the matching checkpoint"),
    ("proxies", lambda v: v is not None, "huggingface_hub takes proxies from the environment", "set HTTPS_PROXY"),
)
ACCEPTED = ("offload_state_dict", "disable_mmap")  # memory strategies of diffusers' loader: same weights either way


def load_student(cls, path, kwargs: dict):
    """What `WanLiteStudent.from_pretrained(path, **kwargs)` does (see the module docstring)."""
    kw = dict(kwargs)
    torch_dtype = kw.pop("torch_dtype", None)
    dtype = kw.pop("dtype", None)  # diffusers' newer name wins, as in diffusers
    torch_dtype = dtype if dtype is not None else torch_dtype
    output_loading_info = kw.pop("output_loading_info", False)
    variant, expert = kw.pop("variant", None), kw.pop("expert", None)
    device_map, device = kw.pop("device_map", None), kw.pop("device", None)
    max_memory, offload_folder = kw.pop("max_memory", None), kw.pop("offload_folder", None)
    low_cpu_mem_usage = kw.pop("low_cpu_mem_usage", None)
    for name, refused, why, instead in REFUSED:
        if refused(kw.pop(name, None)):
            raise SpecError(f"WanLiteStudent.from_pretrained: {name} is not supported ({why}). Fix: {instead}.")
    for name in ACCEPTED:
        kw.pop(name, None)
    hub = {name: kw.pop(name) for name in HUB_ARGS if name in kw}
    init = {name: kw.pop(name) for name in ("allow_non_comfyui", "rope_max_seq_len") if name in kw}
    if kw:
        raise TypeError(
            f"WanLiteStudent.from_pretrained: unexpected argument(s) {sorted(kw)}. The architecture comes from the "
            "checkpoint; besides diffusers' loading arguments only allow_non_comfyui, rope_max_seq_len, expert "
            "and device are accepted."
        )
    if low_cpu_mem_usage is False and device_map is not None:
        raise ValueError(f"low_cpu_mem_usage=False cannot be used with device_map={device_map!r} (as in diffusers).")
    target, strategy = _device_target(device_map, device)

    source = inspect_wan(path, expert, variant, **hub)
    saved = source.provenance
    init.setdefault("allow_non_comfyui", bool(saved.get("allow_non_comfyui", False)))
    if "rope_max_seq_len" in saved:
        init.setdefault("rope_max_seq_len", int(saved["rope_max_seq_len"]))
    try:
        model = materialize(source, torch_dtype, target, cls, init)
    except SpecError as err:
        if init["allow_non_comfyui"]:
            raise
        raise SpecError(
            f"{source.path}: WanLiteStudent refuses a checkpoint ComfyUI would mis-load:\n{err}\nFix: pass "
            "allow_non_comfyui=True to load it anyway, or read it as a plain WanTransformer3DModel with "
            "wanlite.load_wan(path)."
        ) from None
    if strategy is not None:
        _dispatch(model, strategy, max_memory, offload_folder, torch_dtype)
    model.register_to_config(_name_or_path=str(path))
    if output_loading_info:  # strict loading: anything but empty lists is an error before this point
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


def _device_target(device_map, device):
    """(one device to load onto, or None; a device map for accelerate to dispatch, or None), as diffusers reads
    device_map: a torch.device, a device name, a GPU index, {"": device}, a strategy or a module -> device dict."""
    if device_map is None:
        return device, None
    if device is not None:
        raise SpecError("WanLiteStudent.from_pretrained: give device or device_map, not both.")
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, torch.device):
        return device_map, None
    if isinstance(device_map, bool) or not isinstance(device_map, (str, int, dict)):
        raise ValueError(f"device_map={device_map!r}: expected a device, a strategy {DEVICE_MAP_STRATEGIES} or a dict.")
    if isinstance(device_map, int):
        if device_map < 0:
            raise ValueError("You can't pass device_map as a negative int; use device_map='cpu' for the CPU.")
        return torch.device("cuda", device_map), None
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        try:
            return torch.device(device_map), None
        except RuntimeError:
            raise ValueError(
                f"device_map={device_map!r}: a device name (cpu, cuda:0) or one of {DEVICE_MAP_STRATEGIES}."
            ) from None
    return None, device_map


def _dispatch(model, device_map, max_memory, offload_folder, torch_dtype) -> None:
    """Spread the loaded model over devices as diffusers does (its own device-map planning, accelerate's hooks)."""
    from accelerate import dispatch_model
    from diffusers.models.model_loading_utils import _determine_device_map

    keep = model._keep_in_fp32_modules or []
    keep = [keep] if isinstance(keep, str) else list(keep)
    device_map = _determine_device_map(model, device_map, max_memory, torch_dtype, keep, None)
    if "disk" in device_map.values() and offload_folder is None:
        raise ValueError("device_map puts modules on 'disk': pass offload_folder= (as in diffusers).")
    dispatch_model(model, device_map=device_map, offload_dir=offload_folder)


# ----------------------------------------------------------------------------------------------- saving
def _weight_files(variant: str | None) -> re.Pattern:
    """The weight files of one variant (single or sharded) and its index: what a new save replaces."""
    stem = re.escape(with_variant(WEIGHTS, variant).removesuffix(".safetensors"))
    index = re.escape(with_variant(INDEX, variant))
    return re.compile(rf"{stem}(-\d{{5}}-of-\d{{5}})?\.safetensors|{index}")


def save_in_place(model, directory, layout: str = "wan", variant: str | None = None, **save) -> object:
    """Write `model` into `directory` as diffusers' save_pretrained does: create it, or update it in place (the
    files of this save replaced, stale shards of the same variant and a stale pruning record removed, every
    other file kept). Each file is written whole before it replaces the old one."""
    out = Path(directory)
    if layout == "comfyui":  # one file: replaced atomically (a variant names directory weights: refused there)
        return save_wan(model, out, layout=layout, overwrite=True, variant=variant, **save)
    if out.is_file():
        raise FormatError(f"{out}: is a file; save_pretrained writes a directory. Fix: give a directory path.")
    if not out.exists() or not any(out.iterdir()):
        return save_wan(model, out, layout=layout, variant=variant, overwrite=True, **save)
    tmp = out.parent / f".{out.name}.wanlite-new-{uuid.uuid4().hex[:8]}"
    try:
        export = save_wan(model, tmp, layout=layout, variant=variant, **save)
        stale = _weight_files(variant)
        for old in out.iterdir():
            ours = stale.fullmatch(old.name) or old.name == PRUNING_FILE or _is_wanlite_card(old)
            if old.is_file() and ours and old.name not in export.files:
                old.unlink()
        kept = [n for n in export.files if n == "README.md" and (out / n).exists() and not _is_wanlite_card(out / n)]
        for name in export.files:
            if name not in kept:
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataclasses.replace(export, path=out, files=[n for n in export.files if n not in kept])


def _is_wanlite_card(path: Path) -> bool:
    """A README.md that wanlite wrote (a user's own README is kept when a save writes none)."""
    if path.name != "README.md":
        return False
    try:
        return "- wanlite\n" in path.read_text(errors="replace")[:2000]
    except OSError:
        return False
