"""Distil the student: `DistillConfig`, objectives (one module each), data sources, the caches of your clips
(`train.encode`, `wanlite encode`) and the teacher's, the one training loop (`distill`), checkpoints and the run
directory."""

from ..evaluate.curves import LivePlot
from .caches import write_teacher_targets, write_trajectories
from .checkpoints import latest_checkpoint
from .config import DistillConfig
from .data import CachedSource, ShardWriter, SyntheticSource
from .loop import DistillResult, distill, export_student

__all__ = [
    "CachedSource",
    "DistillConfig",
    "DistillResult",
    "LivePlot",
    "ShardWriter",
    "SyntheticSource",
    "distill",
    "export_student",
    "latest_checkpoint",
    "write_teacher_targets",
    "write_trajectories",
]
