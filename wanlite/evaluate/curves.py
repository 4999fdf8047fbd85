"""A training run's curves: read `metrics.jsonl`, draw the loss terms and the held-out error, and `LivePlot`, the
figure that redraws in place while a run goes (silent headless)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.display import headless, new_figure

# ---------------------------------------------------------------- a run directory's loss curves
STEP_KEYS = ("step", "global_step", "iteration", "iter")
VAL_MARKERS = ("val", "validation", "eval")


def read_metrics(run_dir) -> list[dict]:
    """The JSON lines of a run (`run_dir/metrics.jsonl`, else every *.jsonl in it, or the file itself)."""
    path = Path(run_dir)
    files = (
        [path]
        if path.is_file()
        else ([path / "metrics.jsonl"] if (path / "metrics.jsonl").exists() else sorted(path.glob("*.jsonl")))
    )
    records = []
    for file in files:
        for line in file.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash mid-write
                if isinstance(rec, dict):
                    records.append(rec)
    return records


def loss_series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """name -> (steps, values) for every numeric field whose name says loss (validation ones prefixed 'val/')."""
    series: dict[str, tuple[list, list]] = {}
    for i, rec in enumerate(records):
        step = next((rec[k] for k in STEP_KEYS if isinstance(rec.get(k), (int, float))), i)
        split = str(rec.get("split", rec.get("kind", rec.get("phase", "")))).lower()
        is_val = split in VAL_MARKERS
        flat = {}
        for k, v in rec.items():
            if isinstance(v, dict):
                flat |= {f"{k}/{kk}": vv for kk, vv in v.items()}
            else:
                flat[k] = v
        for k, v in flat.items():
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or "loss" not in k.lower()
                or not math.isfinite(v)
            ):
                continue
            name = f"val/{k}" if is_val and not k.lower().startswith(VAL_MARKERS) else k
            xs, ys = series.setdefault(name, ([], []))
            xs.append(step), ys.append(v)
    return series


def plot_run(run_dir, ax=None):
    """Training and validation loss curves of a run directory (log scale); validation as markers."""
    series = loss_series(read_metrics(run_dir))
    fig = None
    if ax is None:
        fig = new_figure(figsize=(7, 3.8), layout="constrained")
        ax = fig.subplots()
    if not series:
        ax.text(0.5, 0.5, f"no loss values in {run_dir}", ha="center")
        return fig if fig is not None else ax.figure
    for name, (xs, ys) in sorted(series.items()):
        val = name.lower().startswith(VAL_MARKERS)
        ax.plot(xs, ys, "o--" if val else "-", ms=4 if val else 0, lw=1.2 if val else 0.9, label=name)
    if all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=f"run {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig if fig is not None else ax.figure


def metrics_figure(rows: list[dict]):
    """Loss terms and held-out velocity error (overall and per sigma bucket) of metrics.jsonl rows: a Figure
    outside pyplot, so a notebook shows it once and no display is needed. Points carry markers, so the first
    lines of a run (one point each) show; a panel with nothing yet says what it waits for."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(10, 3.5), layout="constrained")
    a, b = fig.subplots(1, 2)
    for key in ("loss", "out", "feat", "task"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            a.plot(*zip(*pts), marker="o", ms=3, lw=1.2 if key == "loss" else 0.9, label=key)
    a.set(xlabel="step", title="training loss")
    if a.lines:
        a.set_yscale("log")
        a.legend(fontsize=8)
    else:
        a.text(
            0.5,
            0.5,
            "no loss logged yet\n(one line every log_every steps)",
            ha="center",
            va="center",
            transform=a.transAxes,
            color="0.4",
        )
    keys = [k for k in (rows[-1] if rows else {}) if k.startswith("val/rel_mse")] or ["val/rel_mse"]
    for key in sorted(keys, key=lambda k: (k != "val/rel_mse", k)):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            overall = key == "val/rel_mse"
            b.plot(
                *zip(*pts),
                marker="o",
                ms=4 if overall else 2.5,
                lw=1.6 if overall else 0.8,
                color="k" if overall else None,
                label="all sigmas" if overall else "sigma " + key[12:],
            )
    b.set(xlabel="step", ylabel="||v_s - v_t||² / ||v_t||²", title="held-out relative velocity error")
    if b.lines:
        b.legend(fontsize=7)
    else:
        b.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=b.transAxes, color="0.4")
    span = max([r["step"] for r in rows if "step" in r] + [1])
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.03 * span, 1.03 * span)  # from step 0, also while only step 0 is in
        ax.grid(alpha=0.3)
    return fig


class LivePlot:
    """Pass as `distill(..., on_log=LivePlot())`: the loss and validation figure redraws in place in a notebook
    while the run goes (one output, updated through its display id). Silent headless (papermill, nbval, CI),
    where `result.plot()` shows the same curves. A resumed run hands it the history first (`history`)."""

    def __init__(self, every: int = 20):
        self.rows, self.every, self.handle = [], every, None
        self.live = not headless()

    def history(self, records: list[dict]) -> None:
        """The run so far (a resumed or finished run): drawn at once."""
        self.rows = list(records)
        if self.live and self.rows:
            self._draw()

    def __call__(self, record: dict) -> None:
        self.rows.append(record)
        if self.live and ("val/rel_mse" in record or record["step"] % self.every == 0):
            self._draw()

    def _draw(self) -> None:
        from IPython.display import display

        figure = metrics_figure(self.rows)
        if self.handle is None:
            self.handle = display(figure, display_id=True)
        else:
            self.handle.update(figure)
