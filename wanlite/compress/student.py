"""`WanLiteStudent`: a Wan transformer that is a diffusers model and saves as Wan.

It *is* diffusers' `WanTransformer3DModel` (nothing re-implemented) with three differences: it refuses shapes
ComfyUI would mis-load, `save_pretrained` writes the official Wan layout (not diffusers'), and `from_pretrained`
reads every Wan layout, strictly. Everything else follows diffusers (`compress.pretrained`: its arguments, variants,
device maps, Hub ids, in-place saves; a `WanPipeline` saves and reloads it). The seeds' calling conventions (a
config dict, or hidden_size/depth/... keywords) map onto the Wan config, so config.json still holds exactly the
official fields. It carries its records: `.pruning` (what was kept from the teacher) and `.provenance`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging

# diffusers' pipeline loader looks the base classes it knows (ModelMixin) up in the module that defines a
# component (model_index.json names this module): ModelMixin must be a name here for WanPipeline to load us.
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401
from diffusers.configuration_utils import register_to_config

from ..errors import SpecError
from ..formats import Export, load_wan
from ..formats.spec import WanSpec
from .pretrained import ROPE_DEFAULT, load_student, save_in_place

logger = logging.getLogger(__name__)

# The seeds' keyword -> WanSpec field.
SEED_NAMES = {
    "hidden_size": "dim",
    "depth": "num_layers",
    "num_heads": "num_heads",
    "ffn_dim": "ffn_dim",
    "num_channels": ("in_dim", "out_dim"),
    "text_max_length": "text_len",
    "text_encoder_output_dim": "text_dim",
    "model_type": "model_type",
    "patch_size": "patch_size",
}
SEED_ONLY = (
    "model_type",
    "hidden_size",
    "depth",
    "num_heads",
    "num_channels",
    "text_max_length",
    "text_encoder_output_dim",
    "image_size",
    "projection_factor",
)
_NOT_CONFIG = ["config", *SEED_ONLY, "device"]
DIFFUSERS_FIELDS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "image_dim",
    "added_kv_proj_dim",
    "pos_embed_seq_len",
)


class _SeedForm(type(WanTransformer3DModel)):
    """The seeds' `WanLiteStudent(..., teacher_checkpoint_path=...)` is a load, not a construction: it is routed
    to `WanLiteStudent.from_teacher_checkpoint`, so the constructor itself never touches a file."""

    def __call__(cls, *args, teacher_checkpoint_path=None, recipe=None, **kwargs):
        config = dict(args[0] if args and isinstance(args[0], dict) else kwargs.get("config") or {})
        path = teacher_checkpoint_path or config.pop("teacher_checkpoint_path", None)
        if path is None:
            return super().__call__(*args, **kwargs)
        kwargs.pop("config", None)
        return cls.from_teacher_checkpoint(path, config or None, recipe=recipe, **kwargs)


class WanLiteStudent(WanTransformer3DModel, metaclass=_SeedForm):
    """A Wan 2.1/2.2 transformer student (diffusers ModelMixin + ConfigMixin) that every Wan tool loads as Wan.

    Build it from a teacher (`from_teacher`), from a `WanSpec` (`from_spec`), with diffusers' config names, or with
    the seeds' names: `WanLiteStudent({"hidden_size": 1536, "depth": 15, ...})` or
    `WanLiteStudent(hidden_size=1536, depth=15, num_heads=12, num_channels=16)`."""

    ignore_for_config = _NOT_CONFIG

    @register_to_config
    def __init__(
        self,
        config: dict | None = None,
        patch_size=(1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = ROPE_DEFAULT,
        pos_embed_seq_len: int | None = None,
        # the seeds' names (not registered: they are mapped onto the fields above)
        model_type: str | None = None,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        num_channels: int | None = None,
        text_max_length: int | None = None,
        text_encoder_output_dim: int | None = None,
        image_size: int | None = None,
        projection_factor: float | None = None,
        device=None,
        allow_non_comfyui: bool = False,
    ):
        given = {k: v for k, v in locals().items() if k in DIFFUSERS_FIELDS or k in SEED_ONLY}
        spec = declared_spec(config, given, allow_non_comfyui)
        super().__init__(**{**spec.to_diffusers_config(), "rope_max_seq_len": rope_max_seq_len})
        self.pruning = None  # a Pruning when built from a teacher (or loaded with its record)
        self.provenance: dict = {}
        if device is not None:
            self.to(device)

    # ---- construction ----
    @classmethod
    def from_spec(cls, spec: WanSpec, **kwargs) -> "WanLiteStudent":
        """A randomly initialised student of `spec` (weights come later: from a teacher, a file or training)."""
        return cls(**{**spec.to_diffusers_config(), **kwargs})

    @classmethod
    def from_teacher(cls, teacher, recipe, calibration=None) -> "WanLiteStudent":
        """Build a student from a teacher (a model or any Wan path) by the recipe's depth and width pruning."""
        from .prune import build_student

        if not hasattr(teacher, "blocks"):
            teacher = load_wan(teacher)
        student, pruning = build_student(teacher, recipe, calibration, cls=cls)
        source = getattr(teacher, "wanlite_source", None)
        student.provenance = {
            "teacher": str(source.path) if source else "in-memory model",
            "recipe": pruning.recipe.to_dict(),
        }
        return student

    @classmethod
    def from_teacher_checkpoint(
        cls, teacher_checkpoint_path, config: dict | None = None, recipe=None, device=None, **kwargs
    ) -> "WanLiteStudent":
        """The seeds' form `WanLiteStudent(..., teacher_checkpoint_path=...)`: the declared student's shape, taken
        from the teacher by pruning (uniform depth, magnitude width unless `recipe` says otherwise)."""
        from ..formats.records import Recipe

        given = {k: v for k, v in kwargs.items() if k in DIFFUSERS_FIELDS or k in SEED_ONLY}
        spec = declared_spec(config, given, kwargs.get("allow_non_comfyui", False))
        if recipe is None:
            recipe = Recipe(
                num_blocks=spec.num_layers, num_heads=spec.num_heads, ffn_dim=spec.ffn_dim, width_selection="magnitude"
            )
        student = cls.from_teacher(load_wan(teacher_checkpoint_path), recipe)
        if student.spec != spec:
            raise SpecError(
                f"teacher_checkpoint_path={teacher_checkpoint_path}: the recipe builds {student.spec}, but "
                f"this student was declared as {spec}. Fix: make them agree, or use WanLiteStudent.from_teacher."
            )
        return student if device is None else student.to(device)

    # ---- the Wan view ----
    @property
    def spec(self) -> WanSpec:
        return WanSpec.from_diffusers_config(dict(self.config))

    # ---- saving and loading as Wan ----
    def save_pretrained(
        self,
        save_directory,
        is_main_process: bool = True,
        save_function=None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size="10GB",
        push_to_hub: bool = False,
        use_flashpack: bool = False,
        *,
        layout: str = "wan",
        dtype=None,
        provenance: dict | None = None,
        verbose: bool = False,
        **kwargs,
    ) -> Export | None:
        """diffusers' `save_pretrained` (same positional arguments), writing the official Wan layout by default
        (layout="comfyui" | "diffusers" for the others). Like diffusers it writes into `save_directory` in place:
        other files stay, stale weight shards go. Unlike diffusers: safetensors only, and other processes
        (`is_main_process=False`) write nothing rather than racing on the same files. Logs what was written
        (`verbose=True` prints it)."""
        refused = {
            "save_function": (save_function, "wanlite writes safetensors itself"),
            "safe_serialization=False": (not safe_serialization, "pickle is never written by wanlite"),
            "push_to_hub": (push_to_hub, "upload the saved folder with huggingface_hub.upload_folder"),
            "use_flashpack": (use_flashpack, "FlashPack files are not a Wan layout; save safetensors"),
        }
        for name, (given, fix) in refused.items():
            if given:
                raise SpecError(f"WanLiteStudent.save_pretrained: {name} is not supported: {fix}.")
        if kwargs:
            raise TypeError(
                f"WanLiteStudent.save_pretrained: unexpected argument(s) {sorted(kwargs)} (diffusers passes extra "
                "arguments only to push_to_hub, which wanlite does not do)."
            )
        if not is_main_process:
            return None
        records = dict(self.provenance)
        if self.config.get("allow_non_comfyui"):
            records["allow_non_comfyui"] = True
        if self.config.get("rope_max_seq_len", ROPE_DEFAULT) != ROPE_DEFAULT:
            records["rope_max_seq_len"] = self.config["rope_max_seq_len"]
        export = save_in_place(
            self,
            save_directory,
            layout=layout,
            dtype=dtype,
            variant=variant,
            provenance={**records, **(provenance or {})},
            allow_non_comfyui=bool(self.config.get("allow_non_comfyui")),
            max_shard_size=max_shard_size,
        )
        logger.info(repr(export))
        if verbose:
            print(repr(export))
        return export

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "WanLiteStudent":
        """diffusers' `from_pretrained` for every Wan layout (official, ComfyUI file, diffusers, legacy seeds), from a
        path or a Hub id (`org/name`, with subfolder / revision / cache_dir / token / local_files_only; only the
        transformer's files are downloaded). Returns a WanLiteStudent with the records the export carries
        (`.pruning`, `.provenance`). Loading is strict: missing, unexpected or mis-shaped keys are errors, never
        random weights (so there is no `ignore_mismatched_sizes`)."""
        return load_student(cls, pretrained_model_name_or_path, kwargs)


def declared_spec(config: dict | None, given: dict, allow_non_comfyui: bool = False) -> WanSpec:
    """The WanSpec a constructor call declares: diffusers names, overridden by the seeds' (config dict or keywords);
    checked against what ComfyUI loads unless `allow_non_comfyui`."""
    defaults = inspect.signature(WanLiteStudent.__init__).parameters
    diffusers_cfg = {k: given.get(k, defaults[k].default) for k in DIFFUSERS_FIELDS}
    if isinstance(diffusers_cfg.get("patch_size"), int):  # the seeds' square spatial patch
        diffusers_cfg["patch_size"] = (1, diffusers_cfg["patch_size"], diffusers_cfg["patch_size"])
    spec = WanSpec.from_diffusers_config(diffusers_cfg, source="WanLiteStudent")
    seeds = dict(config or {})
    seeds.update({k: given[k] for k in SEED_ONLY if given.get(k) is not None})
    if seeds:
        spec = spec_from_seed_config(seeds, base=spec)
    if not allow_non_comfyui:
        try:
            spec.check_comfyui(where=f"WanLiteStudent({_describe(seeds) or spec})")
        except SpecError as err:
            raise SpecError(f"{err}\nA valid Wan student in the seeds' names: {_valid_seed_example(spec)}") from None
    return spec


def spec_from_seed_config(seeds: dict, base: WanSpec | None = None) -> WanSpec:
    """Map the seed documents' config names onto a WanSpec, validating what has no Wan counterpart."""
    base = base or WanSpec()
    unknown = set(seeds) - set(SEED_NAMES) - {"image_size", "projection_factor", "teacher_checkpoint_path"}
    if unknown:
        raise SpecError(
            f"WanLiteStudent config: unknown field(s) {sorted(unknown)}. "
            f"Known seed names: {sorted(SEED_NAMES) + ['image_size', 'projection_factor']}."
        )
    changes = {}
    for name, value in seeds.items():
        target = SEED_NAMES.get(name)
        if target is None:
            continue
        for field in target if isinstance(target, tuple) else (target,):
            changes[field] = value
    if changes.get("model_type") == "WanLiteStudent":  # the seeds' default name, not a Wan type
        changes["model_type"] = base.model_type
    patch = changes.get("patch_size")
    if isinstance(patch, int):
        changes["patch_size"] = (1, patch, patch)
    if "dim" in changes and "num_heads" not in changes:
        changes["num_heads"] = max(1, changes["dim"] // 128)
    image_size = seeds.get("image_size")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0 or image_size % 16):
        raise SpecError(
            f"WanLiteStudent: image_size={image_size!r} must be a positive multiple of 16 "
            "(Wan's VAE stride 8 x patch 2); Wan itself has no fixed image size."
        )
    factor = seeds.get("projection_factor")
    if factor is not None and not (0 < float(factor) <= 1):
        raise SpecError(f"WanLiteStudent: projection_factor={factor!r} must be in (0, 1] (the kept width fraction).")
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, SpecError) as err:
        raise SpecError(f"WanLiteStudent({_describe(seeds)}): {err}") from None


def _valid_seed_example(spec: WanSpec) -> str:
    heads = max(1, spec.dim // 128)
    channels = spec.out_dim if spec.out_dim in (16, 48) else 16
    return (
        f"WanLiteStudent(hidden_size={heads * 128}, num_heads={heads}, depth={spec.num_layers}, "
        f"num_channels={channels}, patch_size=(1, 2, 2), text_max_length=512, text_encoder_output_dim=4096)"
    )


def _describe(seeds: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in seeds.items() if k != "teacher_checkpoint_path")


__all__ = ["WanLiteStudent", "declared_spec", "spec_from_seed_config"]
