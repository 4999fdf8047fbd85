"""A ComfyUI-like loader: read one file exactly the way ComfyUI's "Load Diffusion Model" (UNETLoader) does.

ComfyUI never reads config.json (nor safetensors metadata) for Wan: it strips a `model.diffusion_model.` prefix,
detects Wan by `head.modulation`, infers the architecture from shapes (num_heads = dim // 128) and loads with
strict=False, leaving missing weights uninitialised. Here everything ComfyUI would silently get wrong is reported,
and missing / unexpected / mis-shaped keys are errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FormatError, SpecError
from . import keys as keymap
from .io import read_header, refuse_pickle
from .load import WanSource, materialize, quantized_view
from .quant import QuantInfo
from .spec import COMFY_HEAD_DIM, WanSpec

PREFIX = "model.diffusion_model."
CONVERT = "wanlite convert {path} {stem}_comfyui.safetensors --layout comfyui"


@dataclass
class ComfyReport:
    """What ComfyUI would make of a file, and what it would get wrong."""

    path: Path
    prefix: str  # the prefix ComfyUI strips ("" for bare official keys)
    spec: WanSpec  # the architecture as ComfyUI infers it
    model_class: str  # ComfyUI's supported_models class: WAN21_T2V, WAN21_I2V, WAN22_T2V, ...
    latent_format: str  # Wan21 (16 channels) | Wan22 (48 channels)
    missing: list[str] = field(default_factory=list)  # ComfyUI: logged, left uninitialised
    unexpected: list[str] = field(default_factory=list)  # ComfyUI: logged, ignored
    mismatched: list[str] = field(default_factory=list)  # ComfyUI: size-mismatch error
    warnings: list[str] = field(default_factory=list)  # silent mis-loads
    quant: QuantInfo | None = None  # fp8 / scaled fp8 / GGUF (ComfyUI-GGUF's UnetLoaderGGUF), None for bf16/fp16/fp32

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __repr__(self) -> str:
        verdict = (
            "loads as Wan in ComfyUI"
            if self.ok and not self.warnings
            else ("loads, with silent problems" if self.ok else "does NOT load correctly in ComfyUI")
        )
        lines = [
            f"ComfyUI verdict for {self.path.name}: {verdict}",
            f"  detected: {self.model_class} ({self.latent_format} latents), prefix {self.prefix or '(none)'!r}",
            f"  config as ComfyUI infers it: {self.spec}",
        ]
        if self.quant is not None:
            gguf = self.quant.format.startswith("gguf")
            node = "Unet Loader (GGUF), ComfyUI-GGUF" if gguf else "Load Diffusion Model"
            lines.append(f"  quantization: {self.quant} — load with {node}")
        for title, items in (
            ("missing keys (left uninitialised by ComfyUI)", self.missing),
            ("unexpected keys (ignored by ComfyUI)", self.unexpected),
            ("shape mismatches (ComfyUI errors)", self.mismatched),
            ("warnings", self.warnings),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    - {item}" for item in items[:8]] + (["    - ..."] if len(items) > 8 else [])
        return "\n".join(lines)


def _not_detected(path: Path, why: str) -> FormatError:
    stem = path.with_suffix("")
    return FormatError(
        f"ERROR: Could not detect model type of: {path}\n({why}) "
        f"Fix: convert it to official Wan key names: {CONVERT.format(path=path, stem=stem)}"
    )


def _model_class(shapes: dict, spec: WanSpec) -> str:
    if "vace_patch_embedding.weight" in shapes:
        return "WAN21_Vace"
    if "control_adapter.conv.weight" in shapes:
        return "WAN21_Camera"
    if spec.has_image_embedder:
        return "WAN21_I2V" if spec.image_pos_len is None else "WAN21_FLF2V"
    return "WAN22_T2V" if spec.out_dim == 48 else "WAN21_T2V"


def check(path) -> ComfyReport:
    """Inspect one file as ComfyUI would (headers only) and report every difference from a faithful load. fp8 and
    scaled-fp8 files are read as ComfyUI's Load Diffusion Model does, .gguf files as ComfyUI-GGUF's UnetLoaderGGUF
    (which checks the architecture, then runs ComfyUI's own shape-based detection)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file. Fix: check the path.")
    if path.is_dir():
        raise FormatError(
            f"{path} is a directory; ComfyUI's Load Diffusion Model takes one file from "
            f"ComfyUI/models/diffusion_models/. Fix: wanlite convert {path} student.safetensors --layout comfyui"
        )
    refuse_pickle(path)
    entries, metadata, quant = quantized_view(path)
    prefixed = {k[len(PREFIX) :]: e for k, e in entries.items() if k.startswith(PREFIX)}
    prefix, entries = (PREFIX, prefixed) if prefixed else ("", entries)
    shapes = {k: tuple(e.shape) for k, e in entries.items()}
    if "head.modulation" not in shapes:
        if "scale_shift_table" in shapes or any(k.startswith("condition_embedder.") for k in shapes):
            raise _not_detected(
                path,
                "the keys are diffusers-named (scale_shift_table, condition_embedder.*, "
                "attn1.to_q ...); ComfyUI only knows official Wan names",
            )
        if any(k.startswith("diffusion_model.head.modulation") for k in shapes):
            raise _not_detected(path, "keys carry a bare 'diffusion_model.' prefix, which ComfyUI does not strip")
        raise _not_detected(path, f"no 'head.modulation' key among {len(shapes)} keys: not a Wan transformer")
    try:
        spec = WanSpec.as_comfyui_infers(shapes)
    except SpecError as err:
        raise FormatError(f"{path}: {err}") from None
    report = ComfyReport(
        path,
        prefix,
        spec,
        _model_class(shapes, spec),
        "Wan22 (48 channels)" if spec.out_dim == 48 else "Wan21 (16 channels)",
        quant=quant,
    )
    if report.model_class in ("WAN21_Vace", "WAN21_Camera"):
        report.warnings.append(f"{report.model_class} add-on weights are not checked by wanlite")
    expected = _expected_shapes(spec)
    report.missing = sorted(set(expected) - set(shapes))
    report.unexpected = sorted(set(shapes) - set(expected))
    report.mismatched = [
        f"{k}: file {list(shapes[k])}, ComfyUI builds {list(expected[k])}"
        for k in sorted(set(shapes) & set(expected))
        if shapes[k] != expected[k]
    ]
    _warn_silent(report, path, shapes, metadata)
    return report


def _expected_shapes(spec: WanSpec) -> dict[str, tuple]:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        model = WanTransformer3DModel(**spec.to_diffusers_config())
    return {keymap.official_name(n): tuple(t.shape) for n, t in model.state_dict().items()}


def _warn_silent(report: ComfyReport, path: Path, shapes: dict, metadata: dict) -> None:
    heads = report.spec.num_heads
    claimed = json.loads(metadata.get("wanlite.spec", "{}") or "{}").get("num_heads")
    if claimed not in (None, heads):
        report.warnings.append(
            f"the file's metadata says {claimed} heads, but ComfyUI uses dim // 128 = {heads} "
            f"heads of {COMFY_HEAD_DIM}: it loads silently and computes wrong outputs"
        )
    config = path.parent / "config.json"
    if config.exists():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            cfg = {}
        said = cfg.get("num_heads", cfg.get("num_attention_heads"))
        if said not in (None, heads):
            report.warnings.append(
                f"{config.name} beside the file says {said} heads; ComfyUI never reads it and "
                f"runs {heads} heads of {COMFY_HEAD_DIM}"
            )
    ffn = {k: v[0] for k, v in shapes.items() if k.endswith(".ffn.0.weight")}
    if len(set(ffn.values())) > 1:
        report.warnings.append(
            f"per-block FFN widths differ {sorted(set(ffn.values()))}; ComfyUI builds every "
            f"block with block 0's width {report.spec.ffn_dim}"
        )
    gap = [k for k in report.unexpected if k.startswith("blocks.")]
    if gap:
        report.warnings.append(
            f"block numbers have a gap: {len(gap)} keys after block {report.spec.num_layers - 1} "
            "are silently dropped by ComfyUI"
        )
    if any(k.endswith("norm3.weight") for k in report.missing):
        report.warnings.append("norm3 (the cross-attention norm) is missing: ComfyUI logs it and produces NaN")


def load(path, torch_dtype=torch.float32, device=None):
    """Load one file as ComfyUI would; return (diffusers model, ComfyReport). Raises where ComfyUI would load
    garbage (missing / unexpected / mis-shaped keys) with the report in the message."""
    report = check(path)
    if not report.ok:
        raise FormatError(
            f"{path}: ComfyUI would mis-load this file.\n{report!r}\n"
            "Fix: export the model with wanlite (save_wan / wanlite convert --layout comfyui)."
        )
    if report.model_class in ("WAN21_Vace", "WAN21_Camera"):
        raise FormatError(f"{path}: {report.model_class} models are detected but not built by wanlite.")
    entries, metadata, quant = quantized_view(Path(path))
    entries = {k[len(report.prefix) :]: e for k, e in entries.items() if k.startswith(report.prefix)}
    source = WanSource(
        Path(path),
        "single-file",
        report.spec,
        entries,
        "official",
        None,
        metadata,
        ["loaded as ComfyUI infers it"],
        quant,
    )
    model = materialize(source, torch_dtype, device)
    if torch_dtype in (torch.float16, "fp16"):
        big = [n for n, p in model.named_parameters() if p.float().abs().max() > 65504]
        if big:
            report.warnings.append(f"{len(big)} weights overflow fp16 (ComfyUI's default on NVIDIA GPUs)")
    return model, report


# ------------------------------------------------------------------------------------------------------ LoRAs
@dataclass
class LoraReport:
    """What ComfyUI's LoRA loader would do with a LoRA on this model: patch, log "lora key not loaded", or skip
    on a shape mismatch ("WEIGHT NOT MERGED")."""

    path: Path
    format: str  # comfyui | kohya | diffusers | unknown
    applied: int  # model parameters the LoRA would update
    not_loaded: list[str] = field(default_factory=list)  # LoRA keys ComfyUI logs as "lora key not loaded"
    mismatched: list[str] = field(default_factory=list)  # shape mismatches: ComfyUI warns and skips the weight

    @property
    def ok(self) -> bool:
        return not (self.not_loaded or self.mismatched)

    def __repr__(self) -> str:
        verdict = "every key applies" if self.ok else "does NOT apply completely"
        lines = [
            f"ComfyUI LoRA verdict for {self.path.name} ({self.format}): {verdict}; {self.applied} weights patched"
        ]
        for title, items in (("lora key not loaded", self.not_loaded), ("shape mismatch", self.mismatched)):
            lines += [f"  {title}: {item}" for item in items[:8]] + (
                [f"  ... ({len(items)} in all)"] if len(items) > 8 else []
            )
        return "\n".join(lines)


def check_lora(model_file, lora_file) -> LoraReport:
    """Check a LoRA against one model file the way ComfyUI applies it (headers only): the keys it would not
    load (another model's blocks or modules) and the shapes that do not fit (a LoRA for another base)."""
    from .lora_keys import detect, fits

    shapes = {keymap.diffusers_name(k): v for k, v in _expected_shapes(check(model_file).spec).items()}
    lora_file = Path(lora_file)
    entries, _ = read_header(lora_file)
    try:
        fmt = detect(entries, str(lora_file))
    except FormatError:
        return LoraReport(lora_file, "unknown", 0, sorted(entries))
    report, patched = LoraReport(lora_file, fmt.kind, 0), set()
    for name, entry in sorted(entries.items()):
        try:
            key = fmt.parse(name, str(lora_file))
        except FormatError:
            report.not_loaded.append(name)
            continue
        if key.param not in shapes:
            report.not_loaded.append(name)
        elif not fits(key, entry.shape, shapes[key.param]):
            report.mismatched.append(f"{name}: {list(entry.shape)} does not fit {key.param} {list(shapes[key.param])}")
        elif key.part != "alpha":
            patched.add(key.param)
    report.applied = len(patched)
    return report
