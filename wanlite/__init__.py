"""wanlite: compress a Wan 2.1 / 2.2 video diffusion transformer into a smaller student that every Wan tool
loads as Wan (ComfyUI, diffusers, the official Wan code)."""

__version__ = "0.1.0"

from .errors import DestinationExistsError, FormatError, RecipeError, SpecError, WanliteError  # noqa: E402
from .spec import Problem, WanSpec  # noqa: E402
