"""Checkpoints of a run: accelerate's `save_state` (models, optimisers, schedulers, RNG) plus progress and EMA,
written to a temporary folder and renamed, so a kill mid-save loses nothing; resume restores all of it.

`progress.json`, written last, lists every file of the checkpoint with its size: a checkpoint whose files were
later lost or truncated is recognised as incomplete and skipped (with a warning) for the one before it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a missing, truncated or unreadable file), or None."""
    try:
        progress = json.loads((checkpoint / "progress.json").read_text())
        int(progress["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its progress.json is missing or unreadable"
    for name, size in (progress.get("files") or {}).items():
        f = checkpoint / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is truncated ({f.stat().st_size} of {size} bytes)"
    return None


def intact_checkpoints(run, warn: bool = False) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first (a half-written or damaged one is never
    picked; with `warn`, each damaged one is named)."""
    good = []
    for ckpt in sorted((Path(run) / "checkpoints").glob("step-*")):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            good.append(ckpt)
        elif warn:
            warnings.warn(f"{ckpt}: skipped, incomplete checkpoint ({problem})", stacklevel=3)
    return good


def latest_checkpoint(run, before: int | None = None) -> Path | None:
    """The newest complete checkpoint of a run directory (optionally: of a step < `before`)."""
    done = [c for c in intact_checkpoints(run) if before is None or step_of(c) < before]
    return done[-1] if done else None


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def save_checkpoint(acc, run: Path, step: int, ema, keep: int) -> Path:
    """accelerate `save_state` into a temp dir, then an atomic rename: a kill mid-save loses nothing."""
    final = run / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every process's files are written before the manifest lists them
    if acc.is_main_process:
        progress = {"step": step}
        if ema is not None:
            from safetensors.torch import save_file

            state = ema.state_dict()
            save_file(
                {str(i): t.contiguous() for i, t in enumerate(state.pop("shadow_params"))}, str(tmp / "ema.safetensors")
            )
            progress["ema"] = state
        progress["files"] = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / "progress.json").write_text(json.dumps(progress))
        shutil.rmtree(final, ignore_errors=True)  # a damaged checkpoint of this step, from an earlier attempt
        tmp.replace(final)
        for old in sorted((run / "checkpoints").glob("step-*"))[: -max(keep, 1)]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def load_checkpoint(acc, checkpoint: Path, ema) -> int:
    """Restore model, optimiser, scheduler, RNG (accelerate) and EMA; return the step to continue from."""
    acc.load_state(str(checkpoint))
    progress = json.loads((checkpoint / "progress.json").read_text())
    if ema is not None:
        from safetensors.torch import load_file

        shadow = load_file(str(checkpoint / "ema.safetensors"))
        ema.load_state_dict({**progress["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
    return int(progress["step"])


def set_aside(checkpoint: Path) -> Path:
    """Rename a checkpoint that must not be resumed from (it holds diverged weights) out of the `step-*` set."""
    aside = checkpoint.with_name(f"diverged-{checkpoint.name}")
    shutil.rmtree(aside, ignore_errors=True)
    checkpoint.rename(aside)
    return aside
