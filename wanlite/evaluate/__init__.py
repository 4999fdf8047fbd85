"""How close is a student to its teacher, and what does it cost? Sampling with diffusers' schedulers, metrics,
cost, `compare` -> `Comparison`, figures, curves of a run, and the report."""

from .compare import CompareConfig, compare
from .comparison import Comparison
from .sampling import ImageCondition, SampleResult, sample, schedule

__all__ = ["CompareConfig", "Comparison", "ImageCondition", "SampleResult", "compare", "sample", "schedule"]
