"""`WanSpec`: the one Wan transformer config vocabulary, and its three dialects.

* official `config.json` (what `WanModel` registers; ComfyUI never reads it),
* diffusers' `WanTransformer3DModel` config,
* "as ComfyUI infers it" from a state dict's key names and shapes (ComfyUI reads nothing else).

`WanSpec.comfyui_problems()` lists every reason ComfyUI would mis-load a spec, each with its fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import FormatError, SpecError

COMFY_HEAD_DIM = 128  # ComfyUI: num_heads = dim // 128
OFFICIAL_FIELDS = (
    "dim",
    "eps",
    "ffn_dim",
    "freq_dim",
    "in_dim",
    "model_type",
    "num_heads",
    "num_layers",
    "out_dim",
    "text_len",
)
MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
CLIP_DIM = 1280  # Wan2.1 i2v / flf2v image embedder input (CLIP ViT-H)
FLF2V_POS_LEN = 2 * 257  # img_emb.emb_pos rows in flf2v (first and last frame tokens)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Problem:
    """One reason a Wan tool would mis-load a spec, and how to fix it."""

    field: str
    found: Any
    expected: str
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}={self.found!r} (expected {self.expected}): {self.why} Fix: {self.fix}"


@dataclass(frozen=True)
class WanSpec:
    """A Wan 2.1 / 2.2 transformer's architecture, in the official field names."""

    model_type: str = "t2v"  # t2v | i2v | flf2v | ti2v (official vocabulary)
    dim: int = 1536  # hidden width = num_heads * head_dim
    ffn_dim: int = 8960  # FFN inner width, the same in every block
    num_heads: int = 12  # attention heads
    num_layers: int = 30  # transformer blocks
    in_dim: int = 16  # latent channels in (36 for i2v: noise + image latents + mask)
    out_dim: int = 16  # latent channels out (16 Wan2.1 VAE, 48 Wan2.2 VAE)
    text_len: int = 512  # umT5 tokens (context padded to this)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6  # norm epsilon
    text_dim: int = 4096  # umT5-XXL width
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the latent grid
    image_dim: int | None = None  # CLIP width of the Wan2.1 i2v/flf2v image embedder; None = no embedder
    image_pos_len: int | None = None  # flf2v: rows of img_emb.emb_pos; None = absent

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"WanSpec.{name} must be a positive integer, got {value!r}.")
        if self.model_type not in MODEL_TYPES:
            raise SpecError(f"WanSpec.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}.")
        if self.dim % self.num_heads:
            raise SpecError(
                f"WanSpec.dim={self.dim} is not divisible by num_heads={self.num_heads}. "
                f"Fix: dim = num_heads * 128 (e.g. dim={self.num_heads * COMFY_HEAD_DIM})."
            )

    # ---- derived ----
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def has_image_embedder(self) -> bool:
        return self.image_dim is not None

    def replace(self, **changes) -> "WanSpec":
        """A copy with some fields changed; unknown field names are an error (typos never pass silently)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SpecError(
                f"WanSpec has no field(s) {sorted(unknown)}; fields: {[f.name for f in dataclasses.fields(self)]}."
            )
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count of the transformer this spec describes (no model needed)."""
        d, f, p = self.dim, self.ffn_dim, self.patch_size
        patch = p[0] * p[1] * p[2]
        n = self.in_dim * patch * d + d  # patch embedding
        n += self.text_dim * d + d + d * d + d  # text embedding
        n += self.freq_dim * d + d + d * d + d  # time embedding
        n += d * 6 * d + 6 * d  # time projection
        attn = 4 * (d * d + d) + 2 * d  # q k v o + norm_q norm_k
        block = 2 * attn + 2 * d + (d * f + f + f * d + d) + 6 * d  # self, cross, norm3, ffn, modulation
        if self.has_image_embedder:
            block += 2 * (d * d + d) + d  # k_img v_img norm_k_img
        n += self.num_layers * block
        n += d * self.out_dim * patch + self.out_dim * patch + 2 * d  # head + head modulation
        if self.has_image_embedder:
            c = self.image_dim
            n += 2 * c + (c * c + c) + (c * d + d) + 2 * d + (self.image_pos_len or 0) * c
        return n

    # ---- official config.json ----
    def to_official_config(self) -> dict:
        """Exactly the fields the official `WanModel` writes to config.json."""
        import diffusers

        cfg = {"_class_name": "WanModel", "_diffusers_version": diffusers.__version__}
        cfg.update({name: getattr(self, name) for name in OFFICIAL_FIELDS})
        return cfg

    @classmethod
    def from_official_config(
        cls, cfg: Mapping, keys: Sequence[str] | None = None, source: str = "config.json"
    ) -> "WanSpec":
        """Read an official config.json. `keys` (official names) decide whether an i2v model has an image
        embedder: Wan2.1 i2v/flf2v have one, Wan2.2 A14B i2v has none."""
        missing = [f for f in OFFICIAL_FIELDS if f not in cfg and f not in ("eps", "freq_dim", "text_len")]
        if missing:
            raise FormatError(
                f"{source}: missing official Wan field(s) {missing}. An official Wan config.json has "
                f"{list(OFFICIAL_FIELDS)} and _class_name 'WanModel'."
            )
        model_type = cfg["model_type"]
        image = model_type in ("i2v", "flf2v") and (keys is None or "img_emb.proj.0.weight" in keys)
        with _naming(source, "num_heads", cfg.get("dim")):
            return cls(
                model_type=model_type,
                dim=cfg["dim"],
                ffn_dim=cfg["ffn_dim"],
                num_heads=cfg["num_heads"],
                num_layers=cfg["num_layers"],
                in_dim=cfg["in_dim"],
                out_dim=cfg["out_dim"],
                text_len=cfg.get("text_len", 512),
                freq_dim=cfg.get("freq_dim", 256),
                eps=cfg.get("eps", 1e-6),
                image_dim=CLIP_DIM if image else None,
                image_pos_len=FLF2V_POS_LEN if image and model_type == "flf2v" else None,
            )

    # ---- diffusers config ----
    def to_diffusers_config(self) -> dict:
        """Keyword arguments of diffusers' `WanTransformer3DModel` for this spec."""
        return dict(
            patch_size=list(self.patch_size),
            num_attention_heads=self.num_heads,
            attention_head_dim=self.head_dim,
            in_channels=self.in_dim,
            out_channels=self.out_dim,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=self.eps,
            image_dim=self.image_dim,
            added_kv_proj_dim=self.dim if self.has_image_embedder else None,
            rope_max_seq_len=1024,
            pos_embed_seq_len=self.image_pos_len,
        )

    @classmethod
    def from_diffusers_config(
        cls, cfg: Mapping, model_type: str | None = None, text_len: int = 512, source: str = "config.json"
    ) -> "WanSpec":
        """Read a diffusers `WanTransformer3DModel` config (diffusers has no model_type: infer it)."""
        try:
            heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
            in_dim = cfg["in_channels"]
            out_dim = cfg.get("out_channels") or in_dim
            image_dim = cfg.get("image_dim")
            if model_type is None:
                if image_dim is not None:
                    model_type = "flf2v" if cfg.get("pos_embed_seq_len") else "i2v"
                elif out_dim == 48:
                    model_type = "ti2v"
                else:
                    model_type = "i2v" if in_dim != out_dim else "t2v"
            if (
                cfg.get("cross_attn_norm", True) is not True
                or cfg.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads"
            ):
                raise FormatError(
                    f"{source}: cross_attn_norm={cfg.get('cross_attn_norm')!r}, qk_norm={cfg.get('qk_norm')!r}; "
                    "every Wan release uses True and 'rms_norm_across_heads' (official code hard-codes them)."
                )
            with _naming(source, "num_attention_heads", None):
                spec = cls(
                    model_type=model_type,
                    dim=heads * head_dim,
                    ffn_dim=cfg["ffn_dim"],
                    num_heads=heads,
                    num_layers=cfg["num_layers"],
                    in_dim=in_dim,
                    out_dim=out_dim,
                    text_len=text_len,
                    freq_dim=cfg.get("freq_dim", 256),
                    eps=cfg.get("eps", 1e-6),
                    text_dim=cfg.get("text_dim", 4096),
                    patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
                    image_dim=image_dim,
                    image_pos_len=cfg.get("pos_embed_seq_len"),
                )
            return spec
        except KeyError as err:
            raise FormatError(f"{source}: diffusers WanTransformer3DModel config lacks field {err}.") from None

    # ---- as ComfyUI infers it ----
    @classmethod
    def as_comfyui_infers(cls, shapes: Mapping[str, Sequence[int]]) -> "WanSpec":
        """The spec ComfyUI builds from official-named keys -> shapes (prefix stripped), ignoring everything else.

        Mirrors comfy/model_detection.py: dim from head.modulation, heads = dim // 128, ffn from block 0,
        layers = contiguous block count, in/out from the patch embedding and head; the rest hard-coded."""
        if "head.modulation" not in shapes:
            raise FormatError(
                "no 'head.modulation' key: ComfyUI would not detect a Wan model (\"Could not detect model type\")."
            )
        dim = int(shapes["head.modulation"][-1])
        if dim < COMFY_HEAD_DIM:
            raise SpecError(
                f"dim={dim} < 128: ComfyUI computes num_heads = dim // 128 = 0 and fails (division by zero). "
                "Fix: use dim = heads * 128."
            )
        layers = 0
        while any(k.startswith(f"blocks.{layers}.") for k in shapes):
            layers += 1
        if layers == 0 or "blocks.0.ffn.0.weight" not in shapes:
            raise FormatError("no 'blocks.0.ffn.0.weight': ComfyUI reads ffn_dim from block 0 and would fail.")
        image = "img_emb.proj.0.bias" in shapes
        out_dim = int(shapes["head.head.weight"][0]) // 4
        in_dim = int(shapes["patch_embedding.weight"][1])
        if image:
            model_type = "flf2v" if "img_emb.emb_pos" in shapes else "i2v"
        elif out_dim == 48:
            model_type = "ti2v"
        else:
            model_type = "i2v" if in_dim != out_dim else "t2v"
        return cls(
            model_type=model_type,
            dim=dim,
            ffn_dim=int(shapes["blocks.0.ffn.0.weight"][0]),
            num_heads=dim // COMFY_HEAD_DIM,
            num_layers=layers,
            in_dim=in_dim,
            out_dim=out_dim,
            image_dim=CLIP_DIM if image else None,
            image_pos_len=FLF2V_POS_LEN if image and "img_emb.emb_pos" in shapes else None,
        )

    @classmethod
    def from_shapes(
        cls, shapes: Mapping[str, Sequence[int]], num_heads: int | None = None, eps: float = 1e-6, text_len: int = 512
    ) -> "WanSpec":
        """The spec the weights actually have (official names). Heads are invisible in shapes: pass them,
        or the head_dim-128 convention is assumed."""
        base = cls.as_comfyui_infers(shapes)
        patch = tuple(int(s) for s in shapes["patch_embedding.weight"][2:])
        image_dim = int(shapes["img_emb.proj.0.weight"][0]) if "img_emb.proj.0.weight" in shapes else None
        pos = int(shapes["img_emb.emb_pos"][1]) if "img_emb.emb_pos" in shapes else None
        out_dim = int(shapes["head.head.weight"][0]) // (patch[0] * patch[1] * patch[2])
        return base.replace(
            num_heads=num_heads or base.num_heads,
            patch_size=patch,
            out_dim=out_dim,
            text_dim=int(shapes["text_embedding.0.weight"][1]),
            freq_dim=int(shapes["time_embedding.0.weight"][1]),
            eps=eps,
            text_len=text_len,
            image_dim=image_dim,
            image_pos_len=pos,
        )

    # ---- ComfyUI compatibility ----
    def comfyui_problems(self) -> list[Problem]:
        """Every reason ComfyUI's "Load Diffusion Model" would mis-load a file of this spec, with the fix."""
        # Long by nature: one check per way ComfyUI mis-reads a Wan file, each with its own message.
        problems = []
        if self.dim < COMFY_HEAD_DIM:
            problems.append(
                Problem(
                    "dim",
                    self.dim,
                    ">= 128",
                    "ComfyUI computes num_heads = dim // 128 = 0.",
                    "use at least one head of 128: dim = heads * 128.",
                )
            )
        elif self.head_dim != COMFY_HEAD_DIM:
            heads = max(1, round(self.dim / COMFY_HEAD_DIM))
            problems.append(
                Problem(
                    "num_heads",
                    self.num_heads,
                    f"dim // 128 = {self.dim // COMFY_HEAD_DIM}",
                    f"head_dim is {self.head_dim}, but ComfyUI ignores config.json and runs "
                    f"{self.dim // COMFY_HEAD_DIM} heads of 128: the file loads silently and produces wrong outputs.",
                    f"keep head_dim 128: num_heads={self.num_heads} -> dim={self.num_heads * COMFY_HEAD_DIM}, "
                    f"or dim={self.dim} -> num_heads={heads} with dim={heads * COMFY_HEAD_DIM}.",
                )
            )
        hard_coded = {"text_dim": 4096, "freq_dim": 256, "patch_size": (1, 2, 2), "eps": 1e-6, "text_len": 512}
        why = {
            "text_dim": "ComfyUI builds text_embedding for umT5-XXL (4096) and fails on a size mismatch.",
            "freq_dim": "ComfyUI builds the timestep embedding with 256 frequencies and fails on a size mismatch.",
            "patch_size": "ComfyUI hard-codes patch (1,2,2); other patches fail or mis-load.",
            "eps": "ComfyUI hard-codes eps 1e-6: outputs would differ from the trained model.",
            "text_len": "ComfyUI pads the text context to 512 tokens.",
        }
        for name, want in hard_coded.items():
            if getattr(self, name) != want:
                problems.append(Problem(name, getattr(self, name), repr(want), why[name], f"use {name}={want!r}."))
        if self.out_dim not in (16, 48):
            problems.append(
                Problem(
                    "out_dim",
                    self.out_dim,
                    "16 (Wan2.1 VAE) or 48 (Wan2.2 VAE)",
                    "no Wan latent format has these channels; ComfyUI picks the Wan2.1 format.",
                    "use out_dim=16 (Wan2.1 VAE latents) or 48 (Wan2.2 TI2V VAE latents).",
                )
            )
        valid_in = {16: (16, 32, 36, 48), 48: (48,)}.get(self.out_dim, ())
        if self.out_dim in (16, 48) and self.in_dim not in valid_in:
            problems.append(
                Problem(
                    "in_dim",
                    self.in_dim,
                    f"one of {valid_in} for out_dim {self.out_dim}",
                    "the input channels match no Wan conditioning (t2v = out, i2v = 36).",
                    f"use in_dim={self.out_dim} (t2v) or 36 (i2v, 16-channel latents).",
                )
            )
        if self.image_dim not in (None, CLIP_DIM):
            problems.append(
                Problem(
                    "image_dim",
                    self.image_dim,
                    f"{CLIP_DIM} or None",
                    "ComfyUI builds the i2v image embedder for CLIP ViT-H (1280).",
                    f"use image_dim={CLIP_DIM}.",
                )
            )
        return problems

    def check_comfyui(self, where: str = "spec") -> None:
        """Raise SpecError listing every ComfyUI problem (with fixes); return silently when there is none."""
        problems = self.comfyui_problems()
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise SpecError(
                f"{where}: ComfyUI would mis-load this Wan transformer:\n{lines}\n"
                "Pass allow_non_comfyui=True (CLI: --allow-non-comfyui) to export anyway."
            )

    def __str__(self) -> str:
        extra = f", image_dim={self.image_dim}" if self.image_dim else ""
        return (
            f"Wan {self.model_type}: {self.num_layers} blocks x dim {self.dim} ({self.num_heads} heads x "
            f"{self.head_dim}), ffn {self.ffn_dim}, in/out {self.in_dim}/{self.out_dim}{extra}, "
            f"{self.num_params() / 1e6:.1f}M params"
        )


@contextlib.contextmanager
def _naming(source: str, heads_field: str, dim):
    """A config's values rejected by WanSpec: say which file, which field, and the fix the weights dictate."""
    try:
        yield
    except (SpecError, TypeError, ValueError) as err:
        text = str(err) if isinstance(err, SpecError) else f"a field has the wrong type ({err})."
        if "not divisible by num_heads" in text and isinstance(dim, int):
            text = (
                f"{heads_field} does not divide dim={dim} (the weights fix dim). "
                f"Fix: set {heads_field} to {max(1, dim // COMFY_HEAD_DIM)} in {source} "
                "(128-wide heads, as in every Wan)."
            )
        elif "Fix" not in text:
            text += f" Fix: correct that field in {source} (or use the config saved with these weights)."
        raise SpecError(f"{source}: {text}") from None


def block_indices(keys) -> list[int]:
    """Sorted distinct block numbers present in official or diffusers keys."""
    return sorted({int(m.group(1)) for k in keys if (m := _BLOCK.match(k))})


def spec_of(model) -> WanSpec:
    """The WanSpec of an in-memory diffusers Wan transformer (or a WanLiteStudent)."""
    spec = getattr(model, "spec", None)
    return spec if isinstance(spec, WanSpec) else WanSpec.from_diffusers_config(dict(model.config))
