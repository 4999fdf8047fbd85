"""A run directory and what a run writes there: `config.yaml` (what this run does), `metrics.jsonl` (one JSON
object per logged step), `pruning.json` (the student's record), `checkpoints/`, `student/`. A directory that
holds a run is never overwritten: it is resumed (`resume=True`) or refused."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import ConfigError, DestinationExistsError
from .checkpoints import latest_checkpoint, load_checkpoint


class RunDir:
    """One run's directory: refuse or resume, then log."""

    def __init__(self, path, resume: bool, objective: str = "velocity"):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = latest_checkpoint(self.path)
        if (self.checkpoint is not None or (self.path / "config.yaml").exists()) and not resume:
            held = self.checkpoint.name if self.checkpoint else "no checkpoint"
            raise DestinationExistsError(
                f"{self.path} already holds a run ({held}); pass resume=True (--resume) to "
                "continue it, or choose a new run_dir."
            )
        saved = self.path / "config.yaml"
        if self.checkpoint is not None and saved.is_file():  # before anything (an ODE cache ...) is written
            before = (yaml.safe_load(saved.read_text()) or {}).get("objective", "velocity")
            if before != objective:
                raise ConfigError(
                    f"{saved}: this run trained with objective {before!r}; resuming it with {objective!r} "
                    "would mix two students. Fix: a new run_dir for the new objective (initialise from this "
                    "run's student with `student:`)."
                )

    def begin(self, acc, cfg, pruning, ema) -> int:
        """Write what this run is, restore the newest checkpoint (if any) and return the step to start from."""
        self.path.mkdir(parents=True, exist_ok=True)
        start = load_checkpoint(acc, self.checkpoint, ema) if self.checkpoint is not None else 0
        if acc.is_main_process:
            cfg.to_yaml(self.path / "config.yaml")  # what this run does, resumed ones included
            if pruning is not None:  # every kept index, for the record
                (self.path / "pruning.json").write_text(pruning.to_json())
            kept = [] if start == 0 else [line for line in self.read_lines() if json.loads(line)["step"] <= start]
            self.metrics.write_text("".join(line + "\n" for line in kept))  # drop what a killed run logged later
        return start

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
