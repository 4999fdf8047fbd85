"""Wan files in and out: `WanSpec` and the one key map, safetensors I/O, `load_wan` / `inspect_wan` for every
Wan layout, `save_wan` for the official, ComfyUI and diffusers layouts and the quantized ComfyUI files (fp8, scaled fp8,
GGUF), the records a student carries, and the
ComfyUI-like loader (`formats.comfy`)."""

from .load import WanSource, inspect_wan, load_wan, materialize, parse_dtype
from .quant import QUANTS
from .records import Pruning, Recipe
from .save import LAYOUTS, Export, default_comfyui_name, model_card, save_wan
from .spec import Problem, WanSpec, spec_of

__all__ = [
    "Export",
    "LAYOUTS",
    "Problem",
    "QUANTS",
    "Pruning",
    "Recipe",
    "WanSource",
    "WanSpec",
    "default_comfyui_name",
    "inspect_wan",
    "load_wan",
    "materialize",
    "model_card",
    "parse_dtype",
    "save_wan",
    "spec_of",
]
