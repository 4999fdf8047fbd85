"""A run directory and what a run writes there: `config.yaml` (what this run does), `metrics.jsonl` (one JSON
object per logged step), `pruning.json` (the student's record), `checkpoints/`, `student/`. A directory that
holds a run is never overwritten: it is resumed (`resume=True`) or refused. One run at a time: the main process
holds `.lock` (an flock, released by the kernel if the process dies) for the run's life."""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

import yaml

from ..errors import ConfigError, DestinationExistsError
from .checkpoints import intact_checkpoints, load_checkpoint, step_of

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, no lock
    fcntl = None

# What a resume may change, and how it applies: the schedule (`steps`, `lr`, rescaled through the scheduler) and
# bookkeeping. Anything else would train a different student on top of this one's optimiser state: refused.
RESUMABLE_CHANGES = {
    "steps",
    "lr",
    "run_dir",
    "teacher",
    "student",
    "log_every",
    "val_every",
    "checkpoint_every",
    "keep_checkpoints",
    "snapshot_weights",
    "trackers",
    "progress",
    "num_workers",
    "export",
    "export_layout",
    "export_dtype",
}
RUN_FILES = ("config.yaml", "metrics.jsonl", "student", "checkpoints")


class RunLock:
    """An exclusive lock on a run directory, held for the run's life. A lock left by a process that died is
    free (the kernel drops an flock with its process): it is reported, then taken over."""

    def __init__(self, folder: Path):
        self.file, self.fh, self.stale = folder / ".lock", None, None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        fh = open(self.file, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise DestinationExistsError(
                f"{self.file.parent} is in use by another run ({holder}); two runs in one directory would mix "
                "their checkpoints, metrics and config. Fix: wait for that run to finish (or stop it), or choose "
                "another run_dir."
            ) from None
        fh.seek(0)
        previous = fh.read().strip()
        if previous:  # the lock was free, yet names a holder: that process died without releasing it
            self.stale = previous
            warnings.warn(
                f"{self.file}: stale lock of a run that died ({previous}); taken over by PID {os.getpid()}.",
                stacklevel=3,
            )
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%FT%T")}))
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()  # an empty lock file: released cleanly
            self.fh.flush()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # launchers set RANK before any accelerator exists


class RunDir:
    """One run's directory: lock it, refuse or resume, then log. `close()` releases the lock."""

    def __init__(self, path, resume: bool, objective: str = "velocity", config=None):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"
        self.changes: dict = {}
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run_dir {self.path} is a file, not a directory. Fix: choose a directory path.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"run_dir {self.path}: cannot create it ({err.strerror}). Fix: use a writable path."
            ) from None
        self.lock = RunLock(self.path)
        if _main_process():
            self.lock.acquire()
        try:
            self._check(resume, objective, config)
        except BaseException:
            self.close()
            raise

    def _check(self, resume: bool, objective: str, config) -> None:
        held = [name for name in RUN_FILES if (self.path / name).exists()]
        if held and not resume:
            raise DestinationExistsError(
                f"{self.path} already holds a run ({', '.join(held)}); pass resume=True (--resume) to "
                "continue it, or choose a new run_dir."
            )
        self.intact = intact_checkpoints(self.path, warn=resume) if resume else []
        self.checkpoint = self.intact[-1] if self.intact else None
        if (
            resume
            and self.checkpoint is None
            and ((self.path / "student").exists() or self.read_lines() or any((self.path / "checkpoints").glob("*")))
        ):
            raise ConfigError(
                f"{self.path}: --resume, but no intact checkpoint is left to resume from, while the directory "
                f"holds a run ({', '.join(held)}); resuming would restart at step 0 and overwrite its metrics and "
                "student. Fix: choose a new run_dir, or delete metrics.jsonl, student/ and checkpoints/ to start "
                "this run over."
            )
        saved = self.path / "config.yaml"
        if self.checkpoint is None or not saved.is_file():
            return
        try:
            before = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{saved}: unreadable ({err}). Fix: restore the run's config.yaml.") from None
        if before.get("objective", "velocity") != objective:
            raise ConfigError(
                f"{saved}: this run trained with objective {before.get('objective', 'velocity')!r}; resuming it "
                f"with {objective!r} would mix two students. Fix: a new run_dir for the new objective (initialise "
                "from this run's student with `student:`)."
            )
        if config is None:
            return
        if config.steps < step_of(self.checkpoint):
            raise ConfigError(
                f"{self.path}: steps={config.steps}, but the run is already at step {step_of(self.checkpoint)} "
                f"({self.checkpoint.name}). Fix: resume with steps >= {step_of(self.checkpoint)}, or export "
                "that checkpoint's student as it is."
            )
        now = config.to_dict()
        self.changes = {k: (before[k], now[k]) for k in now if k in before and before[k] != now[k]}
        refused = sorted(k for k in self.changes if k not in RESUMABLE_CHANGES)
        if "lr" in self.changes and now.get("objective") == "dmd" and now.get("fake_lr") is None:
            refused.append("lr")  # the fake score's optimiser follows lr and has no scheduler to rescale
        if refused:
            diffs = ", ".join(f"{k}: {self.changes[k][0]!r} -> {self.changes[k][1]!r}" for k in refused)
            raise ConfigError(
                f"{saved}: resuming with changed {diffs}; the checkpoint's optimiser and data state belong to "
                f"the old values, so the run would silently train something else. A resume may change only "
                f"{sorted(RESUMABLE_CHANGES)}. Fix: drop those --set overrides, or start a new run_dir "
                "(initialise from this run's student with `student:`)."
            )

    def begin(self, acc, cfg, pruning, ema, scheduler=None) -> int:
        """Write what this run is, restore the newest checkpoint (if any) and return the step to start from.
        A resume's new `lr` is applied through the scheduler (the checkpoint's own lr would win otherwise)."""
        start = 0
        for checkpoint in reversed(self.intact):
            try:
                start = load_checkpoint(acc, checkpoint, ema)
            except Exception as err:  # unreadable despite its file list (or an older checkpoint without one)
                warnings.warn(f"{checkpoint}: skipped, cannot be restored ({type(err).__name__}: {err})", stacklevel=2)
                continue
            self.checkpoint = checkpoint
            break
        else:
            if self.intact:
                raise ConfigError(
                    f"{self.path}: no checkpoint could be restored ({', '.join(c.name for c in self.intact)}). "
                    "Fix: choose a new run_dir, or restore checkpoints/ from a backup."
                )
        if start and "lr" in self.changes and scheduler is not None:
            rescale_lr(scheduler, cfg.lr)
        if acc.is_main_process:
            cfg.to_yaml(self.path / "config.yaml")  # what this run does from now on, resumed ones included
            if pruning is not None:  # every kept index, for the record
                (self.path / "pruning.json").write_text(pruning.to_json())
            kept = [] if start == 0 else [line for line in self.read_lines() if json.loads(line)["step"] <= start]
            if start and self.changes:  # the record of what changed mid-run: config.yaml holds only the latest
                changed = {k: list(v) for k, v in self.changes.items() if k != "run_dir"}
                kept.append(json.dumps({"step": start, "event": "resumed", "changed": changed}))
            self.metrics.write_text("".join(line + "\n" for line in kept))  # drop what a killed run logged later
        return start

    def close(self) -> None:
        self.lock.release()

    def read_lines(self) -> list[str]:
        return [line for line in self.metrics.read_text().splitlines() if line] if self.metrics.exists() else []

    def validation(self) -> list[dict]:
        """The held-out measures logged so far (step, rel_mse, cosine, per bucket ...), without the `val/`."""
        return [
            {k[4:]: v for k, v in r.items() if k.startswith("val/")} | {"step": r["step"]}
            for r in self.records()
            if "val/rel_mse" in r
        ]

    def records(self) -> list[dict]:
        """Every metrics line written so far."""
        return [json.loads(line) for line in self.read_lines()]

    def logger(self, acc, on_log=None):
        """`log(record)`: a metrics line (main process), accelerate's trackers, and `on_log` (e.g. a LivePlot)."""

        def log(record: dict) -> None:
            if not acc.is_main_process:
                return
            with self.metrics.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            acc.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=record["step"]
            )
            if on_log is not None:
                on_log(record)

        return log


def rescale_lr(scheduler, lr: float) -> None:
    """Give a restored LambdaLR schedule (every diffusers schedule) a new peak lr, at the step it has reached."""
    inner = getattr(scheduler, "scheduler", scheduler)
    if not hasattr(inner, "lr_lambdas"):
        raise ConfigError(
            f"lr: the restored scheduler {type(inner).__name__} cannot take a new lr. Fix: resume without --set lr."
        )
    inner.base_lrs = [lr for _ in inner.base_lrs]
    values = [base * lam(inner.last_epoch) for base, lam in zip(inner.base_lrs, inner.lr_lambdas)]
    for group, value in zip(inner.optimizer.param_groups, values):
        group["initial_lr"], group["lr"] = lr, value
    inner._last_lr = values
