"""Make the student: measure what matters in the teacher (`calibrate`), cut it by a `Recipe` (`build_student`,
which records a `Pruning`), rank recipes before training (`init_report`), and `WanLiteStudent`, the diffusers
model that saves as Wan."""

from ..formats.records import Pruning, Recipe
from .calibrate import Calibration, calibrate, noise_batch
from .prune import InitReport, build_student, init_report
from .student import WanLiteStudent

__all__ = [
    "Calibration",
    "InitReport",
    "Pruning",
    "Recipe",
    "WanLiteStudent",
    "build_student",
    "calibrate",
    "init_report",
    "noise_batch",
]
