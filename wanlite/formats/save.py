"""`save_wan`: write a Wan transformer so every Wan tool loads it as Wan — the official release layout, one
ComfyUI file, or a diffusers directory — atomically, with provenance, the student's records and a model card."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..errors import FormatError, SpecError
from . import keys as keymap
from . import quant as quants
from .io import atomic_path, write_json, write_safetensors
from .load import INDEX, SHORT, WEIGHTS, parse_dtype, with_variant
from .records import PRUNING_FILE, pruning_file, pruning_metadata, pruning_sidecar
from .spec import WanSpec, spec_of

LAYOUTS = ("wan", "comfyui", "diffusers")
FEW_STEP_OBJECTIVES = ("guided", "trajectory", "dmd")  # students that must not be sampled like their teacher
FORMAT_LINE = {
    "wan": "official Wan release layout (WanModel config.json, official key names; ComfyUI-ready weights)",
    "comfyui": "one ComfyUI diffusion-model file (official key names) for models/diffusion_models/",
    "diffusers": "diffusers WanTransformer3DModel directory",
}


@dataclass
class Export:
    """What `save_wan` wrote. `os.fspath(export)` is its path."""

    path: Path
    layout: str
    spec: WanSpec
    dtype: str
    files: list[str]
    quant: str | None = None

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        files = "\n".join(f"  - {f}" for f in self.files)
        line = FORMAT_LINE[self.layout]
        if quants.is_gguf(self.quant):
            line = QUANT_LINE["gguf"]
        elif self.quant:
            line = QUANT_LINE[self.quant]
        return f"✓ Model saved successfully to: {self.path}\n{files}\n  Format: {line} ({self.dtype})"


QUANT_LINE = {
    "fp8_e4m3fn": "one ComfyUI file, block linear weights in float8_e4m3fn (no scales), the rest bf16",
    "fp8_scaled": "one ComfyUI scaled-fp8 file (legacy form: scaled_fp8 marker + scale_weight; loads in every "
    "ComfyUI since 2025), for models/diffusion_models/",
    "gguf": "one ComfyUI-GGUF file (arch wan, official key names) for models/diffusion_models/, "
    "load it with the Unet Loader (GGUF) node",
}


def default_comfyui_name(spec: WanSpec, dtype: torch.dtype, quant: str | None = None) -> str:
    """e.g. wanlite_t2v_0.6B_bf16.safetensors, wanlite_t2v_0.6B_fp8_scaled.safetensors, wanlite_t2v_0.6B_Q8_0.gguf:
    what it is, how big, which dtype or quantization."""
    n = spec.num_params()
    size = f"{n / 1e9:.1f}B" if n >= 1e8 else f"{n / 1e6:.0f}M"
    suffix = ".gguf" if quants.is_gguf(quant) else ".safetensors"
    return f"wanlite_{spec.model_type}_{size}_{quant or SHORT[dtype]}{suffix}"


def _metadata(spec: WanSpec, provenance: dict | None, pruning, sampling, beside: str) -> dict[str, str]:
    meta = {
        "format": "pt",
        "wanlite.version": json.dumps(__version__),
        "wanlite.spec": json.dumps({**spec.__dict__, "patch_size": list(spec.patch_size)}),
    }
    if pruning is not None:
        meta["wanlite.pruning"] = pruning_metadata(pruning, beside)
    if sampling is not None:
        meta["wanlite.sampling"] = json.dumps(sampling.to_dict())
    for key, value in (provenance or {}).items():
        meta.setdefault(f"wanlite.{key}", json.dumps(value, default=str))  # never overrides the records
    return meta


def _state(model, dtype: torch.dtype | None, official: bool) -> dict[str, torch.Tensor]:
    state = {}
    for name, t in model.state_dict().items():
        if dtype == torch.float16 and t.is_floating_point() and t.numel():
            peak = t.detach().abs().max().item()  # before the cast, which would turn it into inf
            if peak > torch.finfo(torch.float16).max:
                raise SpecError(
                    f"weight {keymap.official_name(name) if official else name} exceeds the fp16 range "
                    f"({peak:.4g} > 65504). Fix: export bf16 or fp32 (--dtype bf16)."
                )
        state[name] = t.detach().to("cpu", dtype or t.dtype).contiguous()
    return keymap.to_official(state) if official else state


def _stored_dtype(model) -> torch.dtype:
    """The dtype an export keeps when none is given: the model's most common one, said aloud when it has several
    (diffusers keeps norms and modulation in fp32 in a bf16 model: they are cast too)."""
    counts = Counter(p.dtype for p in model.parameters())
    chosen = counts.most_common(1)[0][0]
    if len(counts) > 1:
        mixed = ", ".join(f"{n} {SHORT.get(d, d)}" for d, n in counts.most_common())
        warnings.warn(
            f"save_wan: the model mixes dtypes ({mixed} tensors); all are written as {SHORT.get(chosen, chosen)}. "
            "Pass dtype= (CLI: --dtype) to choose.",
            stacklevel=3,
        )
    return chosen


def _write_weights(folder: Path, state: dict, metadata: dict, max_shard_size, variant=None) -> list[str]:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    pattern = with_variant(WEIGHTS, variant).replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(folder / filename), metadata=metadata)
    files = list(split.filename_to_tensors)
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = with_variant(INDEX, variant)
        write_json(folder / index, {"metadata": {"total_size": total}, "weight_map": dict(split.tensor_to_filename)})
        files.append(index)
    return files


def _check_layout(layout: str, quant: str | None, variant: str | None) -> str:
    """The layout, if it can hold this export: a quantized file is one ComfyUI file, a variant names directory files."""
    if layout not in LAYOUTS:
        raise FormatError(f"unknown layout {layout!r}. Fix: use one of {list(LAYOUTS)}.")
    if variant is not None and layout == "comfyui":
        raise FormatError("variant= names the weights of a directory layout; a ComfyUI file is named by `out`.")
    if quant and layout != "comfyui":
        raise FormatError(
            f"quant={quant!r} with layout {layout!r}: quantized exports are single ComfyUI files. "
            + (
                "A diffusers directory holds diffusers-named bf16/fp32 weights (from_pretrained would load fp8 "
                "weights without their scales); diffusers reads the GGUF file itself with "
                "WanTransformer3DModel.from_single_file(path, quantization_config=GGUFQuantizationConfig(...)). "
                if layout == "diffusers"
                else "The official Wan code loads bf16/fp32 only. "
            )
            + "Fix: use layout 'comfyui' (CLI: --layout comfyui, the default with --quant)."
        )
    return layout


def _write_directory(tmp: Path, layout: str, spec: WanSpec, state, metadata, max_shard_size, variant) -> list[str]:
    """config.json (WanModel's fields, or diffusers') and the weights of a directory export."""
    if layout == "wan":
        config = spec.to_official_config()
    else:
        import diffusers

        config = {
            "_class_name": "WanTransformer3DModel",
            "_diffusers_version": diffusers.__version__,
            **spec.to_diffusers_config(),
        }
    write_json(tmp / "config.json", config)
    return ["config.json"] + _write_weights(tmp, state, metadata, max_shard_size, variant)


def save_wan(
    model,
    out,
    layout: str | None = None,
    dtype=None,
    provenance: dict | None = None,
    overwrite: bool = False,
    allow_non_comfyui: bool = False,
    max_shard_size="10GB",
    comfyui_root=None,
    variant: str | None = None,
    quant: str | None = None,
) -> Export:
    """Write a Wan transformer so every Wan tool loads it as Wan.

    layout "wan": the official release directory (config.json with exactly WanModel's fields, official key names,
    shards + index above `max_shard_size`, safetensors metadata, a model card). "comfyui": one .safetensors
    (bf16 by default) for ComfyUI/models/diffusion_models/ — `out` is the file path, or a directory to put the
    default-named file in; `comfyui_root` writes straight into a ComfyUI install. "diffusers": a directory
    `WanTransformer3DModel.from_pretrained` loads. The model's `.pruning` record travels in the metadata (and
    as pruning.json in directory layouts). Refuses specs ComfyUI would mis-load unless `allow_non_comfyui`;
    atomic; never overwrites without `overwrite=True`. `variant` names the weights as diffusers does
    (diffusion_pytorch_model.<variant>.safetensors; directory layouts only).

    `quant` writes one quantized ComfyUI file instead (layout "comfyui", the default then): "fp8_e4m3fn",
    "fp8_scaled" (legacy ComfyUI scaled-fp8 form) or a GGUF type "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0" (a .gguf
    for ComfyUI-GGUF); `dtype` is then the dtype of the tensors kept unquantized (fp8: bf16 by default). Streams
    one tensor at a time. See `wanlite.formats.quant` for which tensors each format quantizes."""
    quant = quants.parse_quant(quant)
    layout = _check_layout(layout or ("comfyui" if quant else "wan"), quant, variant)
    spec = spec_of(model)
    torch_dtype = parse_dtype(dtype) or (torch.bfloat16 if layout == "comfyui" else _stored_dtype(model))
    if torch_dtype not in SHORT:
        raise FormatError(
            f"save_wan: the model is {torch_dtype}, which a {layout} export cannot store as is. "
            "Fix: pass dtype='bf16' (CLI: --dtype bf16), or fp16 / fp32."
        )
    if quant:
        spec.check_comfyui(where=f"save_wan(quant={quant!r})")  # always: a quantized file is for ComfyUI only
    elif not allow_non_comfyui:
        spec.check_comfyui(where=f"save_wan({layout!r})")
    out = _comfyui_target(out, comfyui_root, spec, torch_dtype, quant) if layout == "comfyui" else Path(out)
    pruning, sampling = getattr(model, "pruning", None), getattr(model, "sampling", None)
    if sampling is None and (provenance or {}).get("objective") in FEW_STEP_OBJECTIVES:
        raise SpecError(
            f"save_wan: a student trained with objective {provenance['objective']!r} samples with its own "
            "steps and guidance, but it carries no sampling record: every tool would sample it like the "
            "teacher. Fix: set model.sampling = wanlite.formats.Sampling(...) (distill() sets it)."
        )
    beside = pruning_sidecar(out) if layout == "comfyui" else PRUNING_FILE
    metadata = _metadata(spec, provenance, pruning, sampling, beside)
    with atomic_path(out, overwrite, is_dir=layout != "comfyui") as tmp:
        state = {} if quant else _state(model, torch_dtype, official=layout != "diffusers")
        if quant:  # a model loaded from a quantized file was dequantized on load: this quantizes it again
            _write_quantized(model, tmp, quant, parse_dtype(dtype), metadata)
            files = [out.name]
        elif layout == "comfyui":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata=metadata)
            files = [out.name]
        else:
            files = _write_directory(tmp, layout, spec, state, metadata, max_shard_size, variant)
            if pruning is not None:
                (tmp / PRUNING_FILE).write_text(pruning.to_json())
                files.append(PRUNING_FILE)
            if layout == "wan":
                (tmp / "README.md").write_text(model_card(spec, provenance, SHORT[torch_dtype], pruning, sampling))
                files.append("README.md")
        del state
    if layout == "comfyui" and pruning_file(metadata.get("wanlite.pruning")):  # too big to ride inside the file
        with atomic_path(out.parent / beside, True, is_dir=False) as tmp:
            tmp.write_text(pruning.to_json())
        files.append(beside)
    if layout == "comfyui" and sampling is not None:  # drag-and-drop and API workflows that sample it right
        from .workflow import write_workflows

        loader = "UnetLoaderGGUF" if quants.is_gguf(quant) else "UNETLoader"
        files += write_workflows(out, sampling, channels=spec.out_dim, overwrite=overwrite, loader=loader)
    return Export(out, layout, spec, quant or SHORT[torch_dtype], files, quant)


def _official_tensors(model):
    """(official name, tensor) one at a time, without building a second state dict."""
    for name, t in model.state_dict().items():
        yield keymap.official_name(name), t.detach().to("cpu")


def _write_quantized(model, path: Path, quant: str, dtype: torch.dtype | None, metadata: dict) -> None:
    """One tensor at a time: peak memory is the model plus one converted tensor."""
    if quants.is_gguf(quant):
        from .gguf import write_gguf

        if dtype is not None:  # the requested dtype decides the kept big tensors: bf16 -> BF16, else F16
            source = lambda: ((n, t.to(dtype)) for n, t in _official_tensors(model))  # noqa: E731
        else:
            source = lambda: _official_tensors(model)  # noqa: E731
        write_gguf(path, source, quant, metadata)
        return
    keep = dtype or torch.bfloat16
    plan, scaled = [], quant == "fp8_scaled"
    for name, t in _official_tensors(model):
        if quants.fp8_quantized(name, t.shape, quant):
            plan.append((name, torch.float8_e4m3fn, tuple(t.shape)))
            if scaled:
                plan.append((name.removesuffix(".weight") + ".scale_weight", torch.float32, ()))
        else:
            plan.append((name, keep, tuple(t.shape)))
    if scaled:
        plan.append((quants.MARKER, torch.float8_e4m3fn, (0,)))

    def tensors():
        for name, t in _official_tensors(model):
            if quants.fp8_quantized(name, t.shape, quant):
                weight, scale = quants.quantize_fp8(t, scaled)
                yield weight
                if scaled:
                    yield scale
            else:
                if keep == torch.float16 and t.is_floating_point() and t.abs().max() > 65504:
                    raise SpecError(f"weight {name} exceeds the fp16 range. Fix: keep bf16 (the default).")
                yield t.to(keep)
        if scaled:
            yield torch.empty(0, dtype=torch.float8_e4m3fn)

    write_safetensors(path, plan, tensors(), {**metadata, "wanlite.quant": json.dumps(quant)})


def _comfyui_target(out, comfyui_root, spec: WanSpec, dtype, quant: str | None = None) -> Path:
    name = default_comfyui_name(spec, dtype, quant)
    suffix = Path(name).suffix
    if comfyui_root is not None:
        root = Path(comfyui_root)
        if not (root / "models").is_dir():
            raise FormatError(
                f"{root}: is not a ComfyUI install (no models/ folder). Fix: pass the ComfyUI root directory."
            )
        folder = root / "models" / "diffusion_models"
        folder.mkdir(exist_ok=True)
        return folder / (Path(out).name if out else name)
    if out is None:
        raise FormatError("save_wan(layout='comfyui') needs out (a file or directory path) or comfyui_root.")
    out = Path(out)
    if out.suffix in (".safetensors", ".gguf") and out.suffix != suffix and not out.is_dir():
        raise FormatError(
            f"{out}: a {'GGUF' if suffix == '.gguf' else 'safetensors'} export needs a name ending in {suffix}. "
            f"Fix: name it {out.with_suffix(suffix).name}, or pass a directory."
        )
    if out.is_dir() or (out.suffix != suffix and not out.exists()):
        return out / name
    return out


def model_card(spec: WanSpec, provenance: dict | None, dtype: str, pruning=None, sampling=None) -> str:
    """A Hugging Face model card: what this is and how to load it in ComfyUI, diffusers and the official code."""
    prov = dict(provenance or {})
    if pruning is not None:
        prov["pruning"] = pruning.summary()
    teacher = prov.get("teacher")
    base = f"base_model: {teacher}\n" if isinstance(teacher, str) and teacher.count("/") == 1 else ""
    task = {"t2v": "text-to-video", "ti2v": "text-to-video"}.get(spec.model_type, "image-to-video")
    rows = "\n".join(f"| {k} | `{json.dumps(v, default=str)[:200]}` |" for k, v in prov.items())
    latents = "Wan 2.2 (48-channel)" if spec.out_dim == 48 else "Wan 2.1 (16-channel)"
    how = "sampling as for the teacher (shift 8 default, flow prediction)"
    if sampling is not None:
        c = sampling.comfyui()
        sched = c["scheduler"] if c["sigmas"] is None else f"exact sigmas {c['sigmas']} (ManualSigmas)"
        how = (
            f"sample it with its own settings, not the teacher's: {c['sampler_name']}, {sched}, {c['steps']} steps, "
            f"cfg {c['cfg']:g}, ModelSamplingSD3 shift {c['shift']:g} ({sampling.forwards} forwards per video; "
            "the workflow JSON written beside the ComfyUI file does this)"
        )
    return f"""---
{base}library_name: diffusers
pipeline_tag: {task}
tags:
- wan
- video
- {task}
- wanlite
- distillation
---
# wanlite Wan {spec.model_type} transformer

{spec}. Weights: {dtype}, official Wan key names. Made by [wanlite](https://pypi.org/project/wanlite/) — the
same architecture as the Wan release it came from, with head_dim {spec.head_dim}, so every Wan tool loads it as Wan.
Use it with the teacher's {latents} VAE and umT5-XXL text encoder.

| provenance | value |
|---|---|
{rows or "| (none recorded) | |"}

## Load it
- **ComfyUI**: `wanlite convert THIS_DIR ComfyUI/models/diffusion_models/student.safetensors --layout comfyui`
  (or copy `diffusion_pytorch_model.safetensors` there when it is a single file), then the
  "Load Diffusion Model" node; {how}.
- **official Wan code**: `WanModel.from_pretrained("THIS_DIR")`.
- **diffusers**: `wanlite.load_wan("THIS_DIR")` returns a `WanTransformer3DModel`; or
  `wanlite convert THIS_DIR OUT --layout diffusers` then `WanTransformer3DModel.from_pretrained(OUT)`.
"""
