"""wanlite: compress a Wan 2.1 / 2.2 video diffusion transformer into a smaller student that every Wan tool
loads as Wan (ComfyUI, diffusers, the official Wan code)."""

__version__ = "0.1.0"

from .errors import DestinationExistsError, FormatError, RecipeError, SpecError, WanliteError  # noqa: E402
from .formats import inspect_wan, load_wan, save_wan  # noqa: E402
from .spec import Problem, WanSpec  # noqa: E402

# name -> module, loaded on first use (these import diffusers, ~10 s). Submodules named like their function
# (wanlite.distill, wanlite.compare, wanlite.calibrate) stay modules: `from wanlite.distill import distill`.
_LAZY = {
    "WanLiteStudent": "student", "Recipe": "prune", "Pruning": "prune", "build_student": "prune",
    "init_report": "prune", "Calibration": "calibrate", "DistillConfig": "distill", "sample": "sampling",
    "compare_paths": "compare", "Comparison": "compare", "CompareConfig": "compare",
    "comfy": "comfy", "toy": "toy", "runs": "runs",
}


def __getattr__(name):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'wanlite' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return module if _LAZY[name] == name else getattr(module, name)
