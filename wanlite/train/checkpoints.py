"""Checkpoints of a run: accelerate's `save_state` (models, optimisers, schedulers, RNG) plus progress and EMA,
written to a temporary folder and renamed, so a kill mid-save loses nothing; resume restores all of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def latest_checkpoint(run) -> Path | None:
    """The newest complete checkpoint of a run directory (a half-written one is never picked)."""
    done = sorted((Path(run) / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def save_checkpoint(acc, run: Path, step: int, ema, keep: int) -> Path:
    """accelerate `save_state` into a temp dir, then an atomic rename: a kill mid-save loses nothing."""
    final = run / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        progress = {"step": step}
        if ema is not None:
            from safetensors.torch import save_file

            state = ema.state_dict()
            save_file(
                {str(i): t.contiguous() for i, t in enumerate(state.pop("shadow_params"))}, str(tmp / "ema.safetensors")
            )
            progress["ema"] = state
        (tmp / "progress.json").write_text(json.dumps(progress))
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
