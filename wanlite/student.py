"""`WanLiteStudent`: a Wan transformer that is a diffusers model and saves as Wan.

It *is* diffusers' `WanTransformer3DModel` (nothing re-implemented) with three differences: it refuses shapes
ComfyUI would mis-load, `save_pretrained` writes the official Wan layout (not diffusers'), and `from_pretrained`
reads every Wan layout. The seeds' calling conventions (a config dict, or hidden_size/depth/... keywords) map
onto the Wan config, so config.json still holds exactly the official fields.
"""

from __future__ import annotations

import dataclasses

from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config

from .errors import SpecError
from .formats import Export, load_wan, save_wan, spec_of
from .spec import WanSpec

# The seeds' keyword -> WanSpec field.
SEED_NAMES = {"hidden_size": "dim", "depth": "num_layers", "num_heads": "num_heads", "ffn_dim": "ffn_dim",
              "num_channels": ("in_dim", "out_dim"), "text_max_length": "text_len",
              "text_encoder_output_dim": "text_dim", "model_type": "model_type", "patch_size": "patch_size"}
_NOT_CONFIG = ["config", "model_type", "hidden_size", "depth", "num_heads", "num_channels", "text_max_length",
               "text_encoder_output_dim", "image_size", "projection_factor", "teacher_checkpoint_path", "recipe",
               "device", "allow_non_comfyui"]


class WanLiteStudent(WanTransformer3DModel):
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
        rope_max_seq_len: int = 1024,
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
        teacher_checkpoint_path=None,
        recipe=None,
        device=None,
        allow_non_comfyui: bool = False,
    ):
        seeds = dict(config or {})
        seeds.update({k: v for k, v in dict(model_type=model_type, hidden_size=hidden_size, depth=depth,
                                            num_heads=num_heads, num_channels=num_channels,
                                            text_max_length=text_max_length,
                                            text_encoder_output_dim=text_encoder_output_dim,
                                            image_size=image_size, projection_factor=projection_factor).items()
                      if v is not None})
        if isinstance(patch_size, int):  # the seeds' square spatial patch
            patch_size = (1, patch_size, patch_size)
        spec = WanSpec.from_diffusers_config(dict(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
            num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps, image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim, pos_embed_seq_len=pos_embed_seq_len), source="WanLiteStudent")
        teacher = seeds.pop("teacher_checkpoint_path", None) or teacher_checkpoint_path
        if seeds:
            spec = spec_from_seed_config(seeds, base=spec)
        if not allow_non_comfyui:
            try:
                spec.check_comfyui(where=f"WanLiteStudent({_describe(seeds) or spec})")
            except SpecError as err:
                raise SpecError(f"{err}\nA valid Wan student in the seeds' names: {_valid_seed_example(spec)}") from None
        super().__init__(**spec.to_diffusers_config())
        self.provenance: dict = {}
        if teacher is not None:
            self._copy_from_teacher(teacher, seeds, recipe)
        if device is not None:
            self.to(device)

    # ---- construction ----
    @classmethod
    def from_spec(cls, spec: WanSpec, **kwargs) -> "WanLiteStudent":
        """A randomly initialised student of `spec` (weights come later: from a teacher, a file or training)."""
        return cls(**spec.to_diffusers_config(), **kwargs)

    @classmethod
    def from_teacher(cls, teacher, recipe, calibration=None) -> "WanLiteStudent":
        """Build a student from a teacher (a model or any Wan path) by the recipe's depth and width pruning."""
        from .prune import build_student

        if not hasattr(teacher, "blocks"):
            teacher = load_wan(teacher)
        student, pruning = build_student(teacher, recipe, calibration, cls=cls)
        source = getattr(teacher, "wanlite_source", None)
        student.pruning = pruning
        student.provenance = {"teacher": str(source.path) if source else "in-memory model",
                              "recipe": pruning.recipe.to_dict(), "kept_blocks": pruning.kept_blocks,
                              "pruning": pruning.to_dict()}
        return student

    def _copy_from_teacher(self, teacher_path, seeds: dict, recipe) -> None:
        """The seeds' form `WanLiteStudent(..., teacher_checkpoint_path=...)`: take this student's shape from the
        teacher by pruning (uniform depth, importance-free magnitude width) and copy its weights."""
        from .prune import Recipe

        teacher = load_wan(teacher_path)
        spec = self.spec
        if recipe is None:
            recipe = Recipe(num_blocks=spec.num_layers, num_heads=spec.num_heads, ffn_dim=spec.ffn_dim,
                            width_selection="magnitude")
        built = WanLiteStudent.from_teacher(teacher, recipe)
        if built.spec != spec:
            raise SpecError(f"teacher_checkpoint_path={teacher_path}: the recipe builds {built.spec}, but this "
                            f"student was declared as {spec}. Fix: make them agree, or use WanLiteStudent.from_teacher.")
        self.load_state_dict(built.state_dict(), strict=True)
        self.pruning, self.provenance = built.pruning, built.provenance

    # ---- the Wan view ----
    @property
    def spec(self) -> WanSpec:
        return WanSpec.from_diffusers_config(dict(self.config))

    # ---- saving and loading as Wan ----
    def save_pretrained(self, save_directory, layout: str = "wan", dtype=None, provenance: dict | None = None,
                        overwrite: bool = False, is_main_process: bool = True, safe_serialization: bool = True,
                        max_shard_size="10GB", verbose: bool = True, **kwargs) -> Export | None:
        """Write the official Wan layout (default), or layout="comfyui" | "diffusers"; prints what was written."""
        if not safe_serialization:
            raise SpecError("safe_serialization=False (pickle) is not supported: wanlite writes safetensors only.")
        if kwargs.get("push_to_hub"):
            raise SpecError("push_to_hub is not supported by wanlite; upload the saved folder with huggingface_hub.")
        if not is_main_process:
            return None
        export = save_wan(self, save_directory, layout=layout, dtype=dtype,
                          provenance={**self.provenance, **(provenance or {})}, overwrite=overwrite,
                          max_shard_size=max_shard_size)
        if verbose:
            print(repr(export))
        return export

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, device=None, expert=None,
                        subfolder: str | None = None, **kwargs) -> "WanLiteStudent":
        """Read any Wan layout (official, ComfyUI file, diffusers, legacy seeds) into a WanLiteStudent."""
        from pathlib import Path

        path = Path(pretrained_model_name_or_path) / (subfolder or "")
        model = load_wan(path, torch_dtype=torch_dtype, device=device or kwargs.get("device_map"), expert=expert, cls=cls)
        model.provenance = dict(model.wanlite_source.provenance)
        return model


def spec_from_seed_config(seeds: dict, base: WanSpec | None = None) -> WanSpec:
    """Map the seed documents' config names onto a WanSpec, validating what has no Wan counterpart."""
    base = base or WanSpec()
    unknown = set(seeds) - set(SEED_NAMES) - {"image_size", "projection_factor", "teacher_checkpoint_path"}
    if unknown:
        raise SpecError(f"WanLiteStudent config: unknown field(s) {sorted(unknown)}. "
                        f"Known seed names: {sorted(SEED_NAMES) + ['image_size', 'projection_factor']}.")
    changes = {}
    for name, value in seeds.items():
        target = SEED_NAMES.get(name)
        if target is None:
            continue
        for field in (target if isinstance(target, tuple) else (target,)):
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
        raise SpecError(f"WanLiteStudent: image_size={image_size!r} must be a positive multiple of 16 "
                        "(Wan's VAE stride 8 x patch 2); Wan itself has no fixed image size.")
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
    return (f"WanLiteStudent(hidden_size={heads * 128}, num_heads={heads}, depth={spec.num_layers}, "
            f"num_channels={channels}, patch_size=(1, 2, 2), text_max_length=512, text_encoder_output_dim=4096)")


def _describe(seeds: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in seeds.items() if k != "teacher_checkpoint_path")


__all__ = ["WanLiteStudent", "spec_from_seed_config", "spec_of"]
