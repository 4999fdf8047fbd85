"""Run the five notebooks in order with papermill: `python -m wanlite.pipeline --run NAME --params FILE
[--set KEY=VALUE ...]` (a `--set` wins over the file).

Each notebook gets the parameters its `parameters` cell declares (from the YAML file, plus `run_dir`), writes its
executed copy to runs/<run>/, and the run stops at the first failing notebook, showing the failing cell. While a
notebook runs, the console shows a line every `--progress-every` seconds: the notebook, its time so far and, while
02 trains, step/total read from the run's distill/metrics.jsonl with an ETA.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .core.overrides import add_set_option, parse_overrides
from .errors import ConfigError, WanliteError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass
class PipelineResult:
    """What a pipeline run executed and where its outputs are."""

    run_dir: Path
    executed: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        rows = "\n".join(f"  {p.name:<34} {self.seconds[p.name]:6.1f} s" for p in self.executed)
        return f"pipeline run in {self.run_dir}:\n{rows}"


class Progress(threading.Thread):
    """Prints what the running notebook is doing every `every` seconds: its name and elapsed time, and the
    training step/total with an ETA once `metrics` (a run's metrics.jsonl) has lines."""

    def __init__(self, name: str, metrics: Path | None, total: int | None, every: float):
        super().__init__(daemon=True)
        self.name, self.metrics, self.total, self.every = name, metrics, total, every
        self.start_time, self.first = time.perf_counter(), None  # (time, step) of the first step seen
        self.done = threading.Event()

    def step(self) -> int | None:
        """The newest step in metrics.jsonl (None before the first line, or for a notebook that does not train)."""
        if self.metrics is None:
            return None
        try:
            lines = self.metrics.read_bytes().decode(errors="replace").splitlines()
        except OSError:  # not written yet (a line caught mid-write fails json below: the one before it counts)
            return None
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def line(self) -> str:
        now = time.perf_counter()
        text = f"   {self.name}: {_clock(now - self.start_time)}"
        step = self.step()
        if step is None:
            return text + " running"
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
        text += f", step {step}/{self.total or '?'}"
        if self.total and step > self.first[1]:
            rate = (step - self.first[1]) / (now - self.first[0])
            text += f" ({100 * step / self.total:.0f}%), {rate:.2f} steps/s, ETA {_clock((self.total - step) / rate)}"
        return text

    def run(self) -> None:
        while not self.done.wait(self.every):
            print(self.line(), flush=True)

    def stop(self) -> None:
        self.done.set()
        self.join()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# parameters that name files: a relative one that exists here is made absolute, since papermill runs each notebook
# with its cwd in notebooks/ (a Hub id, or a path that does not exist here, is passed as given)
PATH_PARAMETERS = {
    "teacher_path",
    "data",
    "prompts_cache",
    "text_encoder",
    "vae",
    "models",
    "videos",
    "captions",
    "start_from",
    "comfyui_root",
}


def _absolute(value):
    if isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    return value


def check_progress_every(seconds) -> float:
    """The console's progress interval: a finite number of seconds above 0 (0 would print without pause)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not (0 < value < float("inf")):
        raise ConfigError(
            f"--progress-every {seconds!r}: expected the seconds between progress lines, a number above 0. "
            "Fix: e.g. --progress-every 60 (the default)."
        )
    return value


def load_params(path) -> dict:
    """Parameters from a YAML file (a flat mapping: name -> value)."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WanliteError(
            f"{path}: cannot read parameters ({err}). Fix: give a YAML file of name: value lines."
        ) from None
    if not isinstance(params, dict):
        raise WanliteError(f"{path}: parameters must be a mapping of name: value, got {type(params).__name__}.")
    return params


def run_pipeline(
    run: str = "toy",
    params: dict | str | Path | None = None,
    notebooks=NOTEBOOKS,
    runs_dir="runs",
    only: list[str] | None = None,
    progress_every: float = 60.0,
) -> PipelineResult:
    """Execute notebooks/0*_*.ipynb in order into runs/<run>/; raise at the first failure with its cell."""
    import os

    import papermill as pm

    check_progress_every(progress_every)
    os.environ.setdefault("WANLITE_HEADLESS", "1")  # kernels inherit it: progress bars as text, no live widgets

    values = load_params(params) if isinstance(params, (str, Path)) else dict(params or {})
    books = sorted(Path(notebooks).glob("0*_*.ipynb"))
    unmatched = [o for o in only or () if not any(b.name.startswith(o) for b in books)]
    if unmatched:  # before anything is written
        raise ConfigError(
            f"--only {' '.join(unmatched)}: no notebook in {notebooks} starts with it (they are "
            f"{', '.join(b.name for b in books)}). Fix: give prefixes such as 01 02."
        )
    run_dir = Path(runs_dir) / run
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {k: _absolute(v) if k in PATH_PARAMETERS else v for k, v in values.items()}
    values["run_dir"] = str(run_dir.resolve())
    result = PipelineResult(run_dir)
    declares = {b: pm.inspect_notebook(str(b)) for b in books}
    known = set().union(*declares.values())  # over every notebook: --only does not make the others' unknown
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
    for book in books:
        declared = declares[book]
        given = {k: v for k, v in values.items() if k in declared}
        out = run_dir / book.name
        print(f"== {book.name} -> {out}", flush=True)
        start = time.perf_counter()
        trains = "steps" in declared  # 02: its steps show up in the run's metrics.jsonl
        steps = given.get("steps", declared.get("steps", {}).get("default")) if trains else None
        # absolute: papermill runs each notebook with the process's cwd set to the notebooks' folder
        metrics = run_dir.resolve() / "distill" / "metrics.jsonl" if trains else None
        watch = Progress(book.stem, metrics, int(steps) if str(steps).isdigit() else None, progress_every)
        watch.start()
        try:
            pm.execute_notebook(
                str(book),
                str(out),
                parameters=given,
                cwd=str(book.parent),
                progress_bar=False,
                kernel_name="python3",
                log_output=False,
                # the kernel's own startup log (ipykernel warns that a local TCP kernel is unencrypted) is no
                # news to someone running notebooks on their machine; errors still show
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except pm.PapermillExecutionError as err:
            raise WanliteError(
                f"{book.name} failed at cell {err.exec_count} ({err.ename}: {err.evalue}). "
                f"The executed notebook with the error is {out}."
            ) from None
        finally:
            watch.stop()
        result.executed.append(out)
        result.seconds[book.name] = time.perf_counter() - start
    unused = set(values) - known - {"run_dir"}
    if unused:
        print(f"note: parameters no notebook declares: {sorted(unused)}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanlite.pipeline", description=__doc__)
    parser.add_argument("--run", default="toy", help="run name: outputs go to runs/<run>/")
    parser.add_argument("--params", default=None, help="YAML parameters (e.g. params/toy.yaml)")
    parser.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 02")
    parser.add_argument(
        "--progress-every", type=float, default=60.0, help="seconds between console progress lines (default 60)"
    )
    add_set_option(parser, "parameter")
    args = parser.parse_args(argv)
    try:
        check_progress_every(args.progress_every)
        values = (load_params(args.params) if args.params else {}) | parse_overrides(args.set)
    except WanliteError as err:  # bad input: nothing ran
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    try:
        print(repr(run_pipeline(args.run, values, only=args.only, progress_every=args.progress_every)))
    except ConfigError as err:  # bad input, found before any notebook ran
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    except WanliteError as err:
        print(f"pipeline stopped: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
