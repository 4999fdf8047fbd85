"""Every prunable axis of a Wan transformer belongs to one *channel space* (`SPACES`): the residual stream,
the text / image cross-attention context, the hidden width of the text and time embedders, and per block the
self- and cross-attention heads and the FFN neurons. One table says which axis of which parameter lives in which
space; slicing (`prune`) and scoring (`calibrate`) both read it, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
import weakref

import torch

from ..errors import RecipeError
from ..formats.spec import WanSpec

PER_BLOCK = ("self_heads", "cross_heads", "ffn")  # spaces whose kept indices differ per block
_B = r"blocks\.\d+\."
# (diffusers parameter name regex, space of each leading axis; None = axis kept whole). Every parameter
# of a WanTransformer3DModel matches exactly one row; an unmatched parameter is an error, never dropped.
SPACES: tuple[tuple[str, tuple], ...] = (
    (r"patch_embedding\.(weight|bias)", ("channel",)),
    (r"condition_embedder\.time_embedder\.linear_1\.(weight|bias)", ("time_hidden",)),
    (r"condition_embedder\.time_embedder\.linear_2\.weight", ("channel", "time_hidden")),
    (r"condition_embedder\.time_embedder\.linear_2\.bias", ("channel",)),
    (r"condition_embedder\.time_proj\.weight", ("channel6", "channel")),  # rows: 6 chunks of dim
    (r"condition_embedder\.time_proj\.bias", ("channel6",)),
    (r"condition_embedder\.text_embedder\.linear_1\.(weight|bias)", ("text_hidden",)),
    (r"condition_embedder\.text_embedder\.linear_2\.weight", ("text_context", "text_hidden")),
    (r"condition_embedder\.text_embedder\.linear_2\.bias", ("text_context",)),
    (r"condition_embedder\.image_embedder\.(norm1\.(weight|bias)|ff\.net\.0\.proj\.(weight|bias)|pos_embed)", ()),
    (r"condition_embedder\.image_embedder\.(ff\.net\.2\.(weight|bias)|norm2\.(weight|bias))", ("image_context",)),
    (_B + r"scale_shift_table", (None, None, "channel")),  # [1, 6, dim]
    (_B + r"attn1\.to_[qkv]\.weight", ("self_heads", "channel")),
    (_B + r"attn1\.(to_[qkv]\.bias|norm_[qk]\.weight)", ("self_heads",)),
    (_B + r"attn1\.to_out\.0\.weight", ("channel", "self_heads")),
    (_B + r"attn2\.to_q\.weight", ("cross_heads", "channel")),
    (_B + r"attn2\.to_[kv]\.weight", ("cross_heads", "text_context")),
    (_B + r"attn2\.add_[kv]_proj\.weight", ("cross_heads", "image_context")),
    (_B + r"attn2\.(to_[qkv]\.bias|add_[kv]_proj\.bias|norm_[qk]\.weight|norm_added_k\.weight)", ("cross_heads",)),
    (_B + r"attn2\.to_out\.0\.weight", ("channel", "cross_heads")),
    (_B + r"(attn1\.to_out\.0\.bias|attn2\.to_out\.0\.bias|norm2\.(weight|bias))", ("channel",)),
    (_B + r"ffn\.net\.0\.proj\.weight", ("ffn", "channel")),
    (_B + r"ffn\.net\.0\.proj\.bias", ("ffn",)),
    (_B + r"ffn\.net\.2\.weight", ("channel", "ffn")),
    (_B + r"ffn\.net\.2\.bias", ("channel",)),
    (r"scale_shift_table", (None, None, "channel")),  # [1, 2, dim]
    (r"proj_out\.weight", (None, "channel")),
    (r"proj_out\.bias", ()),
)
_SPACES = [(re.compile(p), axes) for p, axes in SPACES]
_BLOCK_NO = re.compile(r"^blocks\.(\d+)\.")


def param_axes(name: str) -> tuple:
    """The channel space of each leading axis of the diffusers parameter `name` (see SPACES)."""
    for pattern, axes in _SPACES:
        if pattern.fullmatch(name):
            return axes
    raise RecipeError(
        f"parameter {name!r} is not part of a Wan transformer as wanlite knows it (diffusers "
        f"WanTransformer3DModel). If the teacher has fused projections, call "
        f"teacher.unfuse_qkv_projections() first; otherwise this layer is not supported."
    )


def check_teacher(teacher) -> WanSpec:
    """The teacher's WanSpec, or a clear error when it is not a diffusers Wan transformer."""
    from diffusers import WanTransformer3DModel

    if not isinstance(teacher, WanTransformer3DModel):
        raise RecipeError(
            f"teacher: expected a diffusers WanTransformer3DModel (or a WanLiteStudent), got "
            f"{type(teacher).__module__}.{type(teacher).__qualname__}. Load one with "
            "wanlite.formats.load_wan(path)."
        )
    return WanSpec.from_diffusers_config(teacher.config)


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def teacher_fingerprint(teacher) -> str:
    """A short hash of the teacher's config and weights (sum and norm of each tensor to 4 digits, so a dtype
    cast keeps it; computed in float32 because float64 is 20x slower on CPU)."""
    spec = check_teacher(teacher)
    # tensors count their in-place changes (_version): recompute only when a weight changed
    try:
        state = tuple((p.data_ptr(), p._version, p.dtype) for p in teacher.parameters())
    except RuntimeError:  # inference-mode tensors keep no version counter: never cache
        state = object()
    cached = _FINGERPRINTS.get(teacher)
    if cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256(repr(spec).encode())
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            p32 = p.detach().float()
            h.update(f"{name}{tuple(p.shape)}{p32.sum().item():.4g}{p32.norm().item():.4g}".encode())
    _FINGERPRINTS[teacher] = (state, h.hexdigest()[:16])
    return _FINGERPRINTS[teacher][1]
