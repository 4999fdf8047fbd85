"""The two models of a run, from objects or paths: the teacher (loaded only when the run needs it) and the student
(given, loaded, or built from the config's recipe, calibrating first when the recipe selects by importance), and
the map from student blocks and channels to the teacher's — read from `student.pruning`."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..formats import load_wan
from ..formats.spec import spec_of
from . import data as wdata


def resolve_models(cfg, teacher, student, source, val_idx, block_map=None, kept_channels=None):
    """(teacher or None, student, block_map, kept_channels). `block_map` / `kept_channels` override the
    student's pruning record."""
    targets = getattr(source, "kind", "") == "targets"
    builds = student is None and not cfg.student
    if teacher is None and cfg.teacher and (not targets or builds):
        teacher = load_wan(cfg.teacher)
    if student is None and cfg.student:
        student = load_wan(cfg.student)
    elif student is None:
        student = build_from_recipe(cfg, teacher, calibration_batch(source, val_idx))
    pruning = getattr(student, "pruning", None)
    if block_map is None:
        block_map = pruning.kept_blocks if pruning is not None else cfg.block_map
    if kept_channels is None and pruning is not None:
        kept_channels = pruning.kept_channels
    depth = len(student.blocks)
    if block_map is None and teacher is not None and len(teacher.blocks) == depth:
        block_map = list(range(depth))
    if block_map is None and cfg.w_feat > 0:
        raise ConfigError(
            f"w_feat={cfg.w_feat} needs to know the teacher block of each of the {depth} student blocks: "
            "distil a student built by wanlite (it carries .pruning), or set block_map in the config."
        )
    block_map = list(block_map or [])
    teacher_depth = len(teacher.blocks) if teacher is not None else None
    if block_map and (len(block_map) != depth or (teacher_depth is not None and max(block_map) >= teacher_depth)):
        raise ConfigError(
            f"block_map={block_map} must give one teacher block (< {teacher_depth or '?'}) for each of "
            f"the {depth} student blocks."
        )
    kept = None if kept_channels is None else torch.as_tensor(kept_channels, dtype=torch.long)
    return teacher, student, block_map, kept


def build_from_recipe(cfg, teacher, calib_batch):
    """The config's recipe cut from the teacher (calibrated on the held-out samples when it needs scores)."""
    from ..compress import build_student, calibrate
    from ..formats.records import Recipe

    if cfg.recipe is None or teacher is None:
        raise ConfigError(
            "no student: pass distill(student=model), or set `student` (a path) or `recipe` "
            "(wanlite.compress.Recipe fields) together with `teacher` in the config."
        )
    recipe, tspec = Recipe.from_dict(cfg.recipe), spec_of(teacher)
    sspec = recipe.student_spec(tspec)
    calibration = None
    if recipe.blocks == "importance" or (
        recipe.width_selection == "importance" and (sspec.dim, sspec.ffn_dim) != (tspec.dim, tspec.ffn_dim)
    ):
        calibration = calibrate(teacher, calib_batch, seed=cfg.seed)
    return build_student(teacher, recipe, calibration)[0]


def calibration_batch(source, indices) -> dict:
    """The held-out samples in calibrate's vocabulary (clean latents, or a given noisy state)."""
    batch = wdata.fixed_batch(source, indices)
    if "latents" in batch:
        return {"latents": batch["latents"], "context": batch["context"]}
    return {"hidden_states": batch["noisy"], "timestep": batch["sigma"] * 1000, "context": batch["context"]}
