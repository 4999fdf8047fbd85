"""`inspect_wan` and `load_wan`: every Wan transformer layout in, as a diffusers `WanTransformer3DModel`.

Layouts read: an official Wan-AI directory (config.json `_class_name: WanModel`, single or sharded weights,
Wan2.2 A14B experts by subfolder); a diffusers transformer or pipeline directory; one `.safetensors` file in
official names (bare or `model.diffusion_model.`-prefixed, as ComfyUI ships them) with no config, inferred exactly
as ComfyUI infers it; the seeds' legacy `student_config.json` + `diffusion_model.safetensors`.
Missing, unexpected or mis-shaped keys are errors here: diffusers and ComfyUI only warn, and that is how a
student "loads fine" and produces garbage.
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import FormatError, SpecError
from . import keys as keymap
from .io import _CHUNK, TensorEntry, inside, open_files, read_header, read_tensor, refuse_pickle, require_float
from .quant import QuantEntry
from .source import (  # noqa: F401  (re-exported: the names every layout module uses)
    COMFY_PREFIX,
    DTYPE_NAMES,
    EXPERTS,
    INDEX,
    RECORD_KEYS,
    SHORT,
    WEIGHTS,
    WanSource,
    parse_dtype,
    quantized_view,
)
from .spec import WanSpec, block_indices


def _fail(path, what: str, fix: str) -> FormatError:
    return FormatError(f"{path}: {what} Fix: {fix}")


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"unreadable JSON ({err}).", "restore the file from the original release.") from None
    if not isinstance(found, dict):
        raise _fail(
            path, f"is JSON but not an object (found a {type(found).__name__}).", "restore it from the release."
        )
    return found


def with_variant(name: str, variant: str | None) -> str:
    """diffusers' variant file name: diffusion_pytorch_model.fp16.safetensors, ...safetensors.index.fp16.json."""
    if variant is None:
        return name
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{variant}.{ext}"


def _weight_entries(folder: Path, variant: str | None = None) -> dict[str, TensorEntry]:
    """Tensors of a diffusers/official directory: single file, or shards listed by the index json (of `variant`:
    diffusion_pytorch_model.<variant>.safetensors, as diffusers names them)."""
    weights, index_name = with_variant(WEIGHTS, variant), with_variant(INDEX, variant)
    if (folder / index_name).exists():
        index = _read_json(folder / index_name)
        weight_map = index.get("weight_map", {})
        if not isinstance(weight_map, dict):
            raise _fail(
                folder / index_name, "its weight_map is not an object of key -> shard file.", "re-export the model."
            )
        paths = {str(shard): inside(folder, shard, folder / index_name) for shard in weight_map.values()}
        shards = sorted(paths)
        if not shards:
            raise _fail(folder / index_name, "the index has no weight_map.", "re-export the model.")
        entries = {}
        for shard in shards:
            if not paths[shard].exists():
                raise _fail(
                    folder / index_name,
                    f"names shard {shard!r}, which is missing.",
                    "download/copy every shard listed in the index.",
                )
            found, _ = read_header(paths[shard])
            entries.update(found)
        listed = set(index["weight_map"])
        if listed != set(entries):
            raise _fail(
                folder / index_name,
                f"the index and the shards disagree on {len(listed ^ set(entries))} keys "
                f"(e.g. {sorted(listed ^ set(entries))[:3]}).",
                "re-export the model.",
            )
        return entries
    if (folder / weights).exists():
        return read_header(folder / weights)[0]
    for pickled in sorted(folder.glob("diffusion_pytorch_model*.bin")) + sorted(folder.glob("*.pth")):
        refuse_pickle(pickled)
    named = folder.glob("diffusion_pytorch_model.*.safetensors")
    variants = sorted({f.name.split(".")[1].split("-")[0] for f in named})
    fix = "point at a directory holding Wan weights."
    if variants:
        fix = f"this directory holds the variant(s) {variants}: pass variant={variants[0]!r} (CLI: --variant)."
    raise _fail(folder, f"no {weights} (nor a sharded index) here.", fix)


def _to_official_names(entries: dict[str, TensorEntry], where) -> tuple[dict[str, TensorEntry], str, list[str]]:
    """Strip a ComfyUI prefix and rename diffusers keys, so everything downstream speaks official names."""
    notes = []
    require_float(entries, where)
    prefixed = sum(k.startswith(COMFY_PREFIX) for k in entries)
    if 0 < prefixed < len(entries):
        raise _fail(
            where,
            f"{prefixed} of its {len(entries)} keys carry ComfyUI's '{COMFY_PREFIX}' prefix and the rest do not: "
            "two state dicts were merged into one file.",
            "re-export the model from one source (wanlite convert SRC OUT.safetensors --layout comfyui).",
        )
    if entries and all(k.startswith(COMFY_PREFIX) for k in entries):
        entries = {k[len(COMFY_PREFIX) :]: e for k, e in entries.items()}
        notes.append(f"keys carry ComfyUI's '{COMFY_PREFIX}' prefix (stripped)")
    elif entries and all(k.startswith("diffusion_model.") for k in entries):
        entries = {k[len("diffusion_model.") :]: e for k, e in entries.items()}
        notes.append(
            "keys carry a bare 'diffusion_model.' prefix, which ComfyUI does NOT detect "
            "(re-export with `wanlite convert --layout comfyui`)"
        )
    if "head.modulation" in entries:
        naming = "official"
    elif "scale_shift_table" in entries:
        naming = "diffusers"
        entries = keymap.to_official(entries, source=str(where))
    else:
        sample = sorted(entries)[:4]
        kind = " It looks like a VAE." if any(k.startswith(("encoder.", "decoder.")) for k in entries) else ""
        raise _fail(
            where,
            f"not a Wan transformer: neither 'head.modulation' (official) nor 'scale_shift_table' "
            f"(diffusers) is among its {len(entries)} keys (e.g. {sample}).{kind}",
            "point at the diffusion transformer (the file ComfyUI loads with 'Load Diffusion Model').",
        )
    unknown = [k for k in entries if keymap._rename(k, "to_diffusers") is None]
    if unknown:
        raise _fail(
            where,
            f"{len(unknown)} key(s) are not part of a Wan 2.1/2.2 T2V/I2V/TI2V transformer "
            f"(e.g. {unknown[:3]}); VACE, camera and other add-on variants are not supported.",
            "load the base Wan transformer.",
        )
    blocks = block_indices(entries)
    if blocks != list(range(len(blocks))):
        raise _fail(
            where,
            f"block numbers are not contiguous 0..N-1: {blocks}. ComfyUI counts blocks.0, blocks.1, "
            "... and silently drops every block after a gap.",
            "renumber the kept blocks 0..N-1 (wanlite's student builder does this).",
        )
    return entries, naming, notes


def _compare(spec: WanSpec, weights: WanSpec, where) -> None:
    diffs = [
        f"{n}: config {getattr(spec, n)!r} vs weights {getattr(weights, n)!r}"
        for n in (
            "dim",
            "ffn_dim",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "freq_dim",
            "patch_size",
            "image_dim",
            "image_pos_len",
        )
        if getattr(spec, n) != getattr(weights, n)
    ]
    if diffs:
        raise _fail(
            where,
            "the config disagrees with the weight shapes: " + "; ".join(diffs) + ".",
            "use the config.json that was saved with these weights (or re-export the model).",
        )


def _find_model_dir(path: Path, expert: str | None) -> Path:
    """Resolve a pipeline directory or a Wan2.2 A14B release to the one transformer directory to read."""
    if expert is not None and expert not in EXPERTS:
        raise _fail(path, f"unknown expert {expert!r}.", f"use one of {list(EXPERTS)}.")
    experts = {name: path / sub for name, subs in EXPERTS.items() for sub in subs if (path / sub).is_dir()}
    if (path / "model_index.json").exists() or any((path / s).is_dir() for s, _ in EXPERTS.values()):
        if expert is None:
            if (path / "transformer").is_dir() and not (path / "transformer_2").is_dir():
                return path / "transformer"
            raise _fail(
                path,
                f"holds two experts ({', '.join(str(p.name) for p in experts.values())}).",
                "pass expert='high_noise' or expert='low_noise' (CLI: --expert).",
            )
        if expert not in experts:
            raise _fail(path, f"has no {expert} expert.", f"use one of {list(experts)}.")
        return experts[expert]
    return path


def _resolve(path, expert: str | None, variant: str | None, hub: dict) -> Path:
    """`path`, or the Hub repository it names with only its transformer's files fetched (`formats.hub`)."""
    from . import hub as hf

    def files(folder: str) -> list[str]:  # config, weights of this variant (single or sharded), records
        at, weights = f"{folder}/" if folder else "", with_variant(WEIGHTS, variant)
        shards = weights.replace(".safetensors", "-*-of-*.safetensors")
        return [at + f for f in ("config.json", weights, shards, with_variant(INDEX, variant), "pruning.json")]

    locators = ["model_index.json", "config.json"] + [f"{s}/config.json" for subs in EXPERTS.values() for s in subs]
    return hf.resolve(path, locators, lambda root: _find_model_dir(root, expert), files, **hub)


def inspect_wan(path, expert: str | None = None, variant: str | None = None, **hub) -> WanSource:
    """Identify a Wan transformer on disk and its architecture from headers and configs only (`variant`: read
    diffusion_pytorch_model.<variant>.safetensors, as diffusers does). `path` may be a Hub id `org/name`;
    `hub` holds subfolder, revision, cache_dir, token, local_files_only, force_download (see `formats.hub`)."""
    path = _resolve(path, expert, variant, hub)
    if not path.exists():
        try:
            path.stat()
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _fail(path, "is a symlink loop (a link that points back at itself).", "fix the link.") from None
        raise _fail(path, "no such file or directory.", "check the path.")
    if not path.is_file() and not path.is_dir():
        raise _fail(path, "is neither a file nor a directory (a FIFO or a device?).", "point at a Wan model.")
    if path.is_file():
        return _inspect_file(path)
    folder = _find_model_dir(path, expert)
    if (folder / "config.json").exists():
        cfg = _read_json(folder / "config.json")
        entries, naming, notes = _to_official_names(_weight_entries(folder, variant), folder)
        shapes = {k: e.shape for k, e in entries.items()}
        if cfg.get("_class_name") == "WanModel" or "dim" in cfg:
            spec, layout = WanSpec.from_official_config(cfg, keys=entries, source=str(folder / "config.json")), "wan"
        elif "num_attention_heads" in cfg:
            spec = WanSpec.from_diffusers_config(cfg, source=str(folder / "config.json"))
            layout = "diffusers"
        else:
            raise _fail(
                folder / "config.json",
                f"is neither an official Wan nor a diffusers Wan config (_class_name {cfg.get('_class_name')!r}).",
                "point at a Wan transformer directory.",
            )
        try:
            _compare(spec, WanSpec.from_shapes(shapes, num_heads=spec.num_heads), folder / "config.json")
        except SpecError as err:
            raise _fail(folder, str(err), "re-export the model.") from None
        metadata = read_header(next(iter(entries.values())).file)[1]
        return WanSource(folder, layout, spec, entries, naming, cfg, metadata, notes)
    if (folder / "student_config.json").exists():
        return _inspect_legacy(folder)
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return _inspect_file(files[0])
    for pickled in sorted(folder.iterdir()):
        refuse_pickle(pickled)
    raise _fail(
        folder,
        f"holds no config.json and {len(files)} .safetensors files.",
        "point at a Wan transformer directory (config.json + weights) or at one .safetensors file.",
    )


def _inspect_file(path: Path) -> WanSource:
    entries, metadata, quant = quantized_view(path)
    entries, naming, notes = _to_official_names(entries, path)
    shapes = {k: e.shape for k, e in entries.items()}
    try:
        spec = WanSpec.from_shapes(shapes)  # heads = dim // 128, exactly as ComfyUI
    except SpecError as err:
        raise _fail(path, str(err), "re-export the model with head_dim 128.") from None
    notes.append("no config: architecture inferred from key names and shapes as ComfyUI does (heads = dim // 128)")
    try:
        saved = json.loads(metadata.get("wanlite.spec", "{}") or "{}")
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise _fail(path, "its metadata 'wanlite.spec' is not a JSON object.", "re-export the model with wanlite.")
    if saved.get("num_heads") not in (None, spec.num_heads):
        notes.append(
            f"the file's metadata says {saved['num_heads']} heads, but ComfyUI (and this loader) "
            f"use dim // 128 = {spec.num_heads}: outputs will differ from the trained model"
        )
    return WanSource(path, "single-file", spec, entries, naming, None, metadata, notes, quant)


def _inspect_legacy(folder: Path) -> WanSource:
    cfg = _read_json(folder / "student_config.json")
    weights = folder / "diffusion_model.safetensors"
    if not weights.exists():
        raise _fail(folder, "has student_config.json but no diffusion_model.safetensors.", "restore the weights file.")
    raw, metadata = read_header(weights)
    try:
        entries, naming, notes = _to_official_names(raw, weights)
    except FormatError as err:
        raise _fail(
            weights,
            "the seeds' legacy layout, but these weights are not a Wan transformer (the earlier "
            f"WanLiteStudent used its own architecture): {err}",
            "re-train the student with wanlite (a Wan-shaped student built from the teacher).",
        ) from None
    heads = cfg.get("num_heads")
    spec = WanSpec.from_shapes({k: e.shape for k, e in entries.items()}, num_heads=heads or None)
    for seed_name, name in (("hidden_size", "dim"), ("depth", "num_layers")):
        if seed_name in cfg and cfg[seed_name] != getattr(spec, name):
            raise _fail(
                folder / "student_config.json",
                f"{seed_name}={cfg[seed_name]} but the weights have {name}={getattr(spec, name)}.",
                "use the student_config.json saved with these weights.",
            )
    notes.append("legacy seeds layout (student_config.json); re-save with save_wan for the official layout")
    return WanSource(folder, "legacy", spec, entries, naming, cfg, metadata, notes)


def load_wan(
    path, torch_dtype=None, device=None, expert: str | None = None, cls=None, variant=None, init_kwargs=None, **hub
):
    """Load a Wan transformer from any layout as a diffusers `WanTransformer3DModel` (or `cls`, a subclass).

    Built on the meta device and filled with tensors read straight from safetensors: no random init and no
    second copy. `torch_dtype` converts one tensor at a time (modules diffusers keeps in fp32 stay fp32);
    fp8, scaled-fp8 and GGUF files are dequantized one tensor at a time into it (default: bf16);
    `expert` picks 'high_noise' or 'low_noise' of a Wan2.2 A14B release; `variant` diffusers' weight-file
    variant; `init_kwargs` go to `cls` beside the architecture (e.g. WanLiteStudent's allow_non_comfyui).
    `path` may be a Hub id `org/name` (only the transformer's files are downloaded; `hub`: subfolder, revision,
    cache_dir, token, local_files_only, force_download)."""
    source = path if isinstance(path, WanSource) else inspect_wan(path, expert, variant, **hub)
    return materialize(source, torch_dtype, device, cls, init_kwargs)


def materialize(source: WanSource, torch_dtype=None, device=None, cls=None, init_kwargs=None):
    """Build the model a `WanSource` describes and fill it from the files."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    cls = cls or WanTransformer3DModel
    dtype = parse_dtype(torch_dtype)
    with init_empty_weights(include_buffers=False):
        model = cls(**{**source.spec.to_diffusers_config(), **(init_kwargs or {})})
    expected = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    names = {keymap.official_name(n): n for n in expected}
    missing = sorted(set(names) - set(source.tensors))
    unexpected = sorted(set(source.tensors) - set(names))
    if missing or unexpected:
        raise _fail(
            source.path,
            f"keys do not match a {source.spec.model_type} Wan of this shape: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            "ComfyUI would leave missing weights uninitialised (NaN/garbage outputs).",
            "re-export the complete model; do not drop or rename keys.",
        )
    keep_fp32 = getattr(cls, "_keep_in_fp32_modules", None) or ()
    keep_fp32 = (keep_fp32,) if isinstance(keep_fp32, str) else tuple(keep_fp32)  # as diffusers: a str is one name
    state = {}
    with open_files(source.tensors.values()) as handles, contextlib.ExitStack() as maps:
        mapped = {}  # same-dtype CPU loads are zero-copy views of the file (safetensors' memory map)
        scratch = torch.empty(_CHUNK, dtype=torch.uint8)  # one conversion buffer for every tensor
        for official, entry in source.tensors.items():
            name = names[official]
            if tuple(entry.shape) != expected[name]:
                raise _fail(
                    entry.file,
                    f"tensor {entry.name!r} has shape {list(entry.shape)}, expected "
                    f"{list(expected[name])} for {source.spec}.",
                    "use the config saved with these weights.",
                )
            want = dtype
            if want is None and isinstance(entry, QuantEntry):
                want = torch.bfloat16  # a quantized weight dequantizes into the compute dtype (ComfyUI's: bf16)
            if want in (torch.float16, torch.bfloat16) and any(m in name.split(".") for m in keep_fp32):
                want = torch.float32
            if isinstance(entry, QuantEntry):
                state[name] = entry.read(want, device, handles[entry.file])
            elif want in (None, entry.dtype) and device in (None, "cpu"):
                if entry.file not in mapped:
                    mapped[entry.file] = maps.enter_context(safe_open(entry.file, framework="pt"))
                state[name] = mapped[entry.file].get_tensor(entry.name)
            else:  # convert one tensor at a time: the model plus one tensor of scratch, never the whole file
                state[name] = read_tensor(entry, want, device, handles[entry.file], scratch)
    model.load_state_dict(state, strict=True, assign=True)
    attach_records(model, source)
    return model.eval()


def attach_records(model, source: WanSource) -> None:
    """The student carries what describes it: `.pruning`, `.sampling`, `.provenance` and `.wanlite_source`."""
    model.wanlite_source = source
    model.pruning = source.pruning
    model.sampling = source.sampling
    model.provenance = source.provenance
