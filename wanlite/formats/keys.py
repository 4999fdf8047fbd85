"""The one official <-> diffusers key map for Wan transformers, exact in both directions.

Official Wan names are what the Wan-AI releases, the official code and ComfyUI use; diffusers renames them.
diffusers ships only official -> diffusers (`convert_wan_transformer_to_diffusers`); we own both directions
here and test them against it.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, TypeVar

from ..errors import FormatError

V = TypeVar("V")

# Global modules: diffusers prefix -> official prefix (the `.weight` / `.bias` suffix is carried over).
_GLOBAL = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
# Bare parameters (no suffix).
_PARAMS = {
    "scale_shift_table": "head.modulation",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}
# Inside `blocks.N.`: diffusers -> official. norm2 (diffusers) is the affine cross-attention norm = norm3 (official).
_BLOCK = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_BLOCK_PARAMS = {"scale_shift_table": "modulation"}

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SUFFIXES = ("weight", "bias")


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


_DIRECTIONS = {
    "to_official": (_GLOBAL, _PARAMS, _BLOCK, _BLOCK_PARAMS),
    "to_diffusers": (_invert(_GLOBAL), _invert(_PARAMS), _invert(_BLOCK), _invert(_BLOCK_PARAMS)),
}


def _rename(key: str, direction: str) -> str | None:
    modules, params, block_modules, block_params = _DIRECTIONS[direction]
    prefix = ""
    match = _BLOCK_KEY.match(key)
    if match:
        prefix, key = f"blocks.{match.group(1)}.", match.group(2)
        modules, params = block_modules, block_params
    if key in params:
        return prefix + params[key]
    module, _, suffix = key.rpartition(".")
    if suffix in _SUFFIXES and module in modules:
        return f"{prefix}{modules[module]}.{suffix}"
    return None


def _rename_all(keys: Iterable[str], direction: str, source: str) -> dict[str, str]:
    mapping, unknown = {}, []
    for key in keys:
        new = _rename(key, direction)
        (unknown.append(key) if new is None else mapping.__setitem__(key, new))
    if unknown:
        naming = "diffusers" if direction == "to_official" else "official Wan"
        raise FormatError(
            f"{source}: {len(unknown)} key(s) are not {naming} Wan transformer keys, e.g. {unknown[:3]}. "
            f"Expected a Wan transformer state dict in {naming} naming; "
            "a LoRA, VAE or text encoder file cannot be converted."
        )
    return mapping


def to_official(state: Mapping[str, V], source: str = "state dict") -> dict[str, V]:
    """Rename a diffusers `WanTransformer3DModel` state dict to official Wan (= ComfyUI) names."""
    return {new: state[old] for old, new in _rename_all(state, "to_official", source).items()}


def to_diffusers(state: Mapping[str, V], source: str = "state dict") -> dict[str, V]:
    """Rename an official Wan state dict (prefix already stripped) to diffusers names."""
    return {new: state[old] for old, new in _rename_all(state, "to_diffusers", source).items()}


def official_name(diffusers_key: str) -> str:
    """The official name of one diffusers key (raises FormatError when it has none)."""
    return _rename_all([diffusers_key], "to_official", "key")[diffusers_key]


def diffusers_name(official_key: str) -> str:
    """The diffusers name of one official key (raises FormatError when it has none)."""
    return _rename_all([official_key], "to_diffusers", "key")[official_key]
