"""wanlite: compress a Wan 2.1 / 2.2 video diffusion transformer into a smaller student that every Wan tool
loads as Wan (ComfyUI, diffusers, the official Wan code)."""

__version__ = "0.1.0"

from .errors import DestinationExistsError, FormatError, RecipeError, SpecError, WanliteError  # noqa: E402
from .formats import inspect_wan, load_wan, save_wan  # noqa: E402
from .spec import Problem, WanSpec  # noqa: E402

# Names whose modules import diffusers (~10 s): loaded on first use.
_LAZY = {"WanLiteStudent": "student", "comfy": None}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
        return module if _LAZY[name] is None else getattr(module, name)
    raise AttributeError(f"module 'wanlite' has no attribute {name!r}")
