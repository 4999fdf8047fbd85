"""wanlite: compress a Wan 2.1 / 2.2 video diffusion transformer into a smaller student that every Wan tool
loads as Wan (ComfyUI, diffusers, the official Wan code).

Sub-packages by stage, imports pointing downward only: `core` (flow-matching conventions, display) and
`formats` (files in and out) at the bottom; `compress` (make the student) and `evaluate` (compare it) above
them; `train` (distil it) and `toy` (the toy world) above those; `cli`, `pipeline` and `runs` on top.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from ._version import __version__
from .errors import DestinationExistsError, FormatError, RecipeError, SpecError, WanliteError
from .formats import Problem, WanSpec, inspect_wan, load_wan, save_wan

__all__ = [
    "DestinationExistsError",
    "FormatError",
    "Problem",
    "RecipeError",
    "SpecError",
    "WanSpec",
    "WanliteError",
    "__version__",
    "inspect_wan",
    "load_wan",
    "save_wan",
]

# name -> module, imported on first use (these import diffusers, ~10 s).
_LAZY = {
    "WanLiteStudent": "compress",
    "Recipe": "formats",
    "Pruning": "formats",
    "build_student": "compress",
    "init_report": "compress",
    "Calibration": "compress",
    "DistillConfig": "train",
    "sample": "evaluate",
    "Comparison": "evaluate",
    "CompareConfig": "evaluate",
    "compare_paths": "runs",
    "quantization_report": "evaluate.quantization",
    "comfy": "formats.comfy",
    "lora": "compress.lora",
    "toy": "toy",
    "runs": "runs",
}
# The first version's flat modules, now in their stage's sub-package: `import wanlite.prune` keeps working.
MOVED = {
    "spec": "formats.spec",
    "keys": "formats.keys",
    "io": "formats.io",
    "comfy": "formats.comfy",
    "calibrate": "compress.calibrate",
    "prune": "compress.prune",
    "student": "compress.student",
    "losses": "train.objectives",
    "data": "train.data",
    "distill": "train",
    "sampling": "evaluate.sampling",
    "compare": "evaluate.compare",
    "cost": "evaluate.cost",
    "plots": "evaluate.plots",
    "report": "evaluate.report",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'wanlite' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return module if _LAZY[name].rpartition(".")[2] == name else getattr(module, name)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`wanlite.<old>` resolves to the module it became (the same module object, so nothing is loaded twice)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(f"{__name__}.")
        if fullname.startswith(f"{__name__}.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass

    def get_code(self, fullname):  # `python -m wanlite.distill` runs the new module's code
        new = f"{__name__}.{MOVED[fullname.rpartition('.')[2]]}"
        spec = importlib.util.find_spec(new + ".__main__") or importlib.util.find_spec(new)
        return spec.loader.get_code(spec.name)


sys.meta_path.append(_MovedModules())
