"""Figures for a `Comparison` and a distillation run, and an explorer that works with or without a widget front end.

Every function returns a matplotlib Figure (never shows it), so scripts, tests and CI render headless (Agg).
`explore` gives ipywidgets in a live notebook; where nothing can run widgets (papermill, nbval, nbconvert,
a plain script) the same view is there as a static PNG.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path

import torch

KIND_STYLE = {"cond": ("C0", "conditional"), "uncond": ("C1", "unconditional"), "guided": ("C3", "guided (CFG)")}


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _figure(*args, **kw):
    from matplotlib.figure import Figure

    if _in_kernel():  # make a returned Figure display as a PNG even where no pyplot backend is set up
        png = __import__("IPython").get_ipython().display_formatter.formatters["image/png"]
        if Figure not in png.type_printers:
            png.for_type(Figure, _png)

    return Figure(*args, **kw)  # not registered with pyplot: nothing leaks, nothing pops up


def plot_velocity(comp, axes=None):
    """Per-sigma velocity relative MSE (log) and cosine, teacher vs student, for cond / uncond / guided.
    Lines are the mean over prompts; the band spans the best and worst prompt."""
    fig = None
    if axes is None:
        fig = _figure(figsize=(10, 3.6), layout="constrained")
        axes = fig.subplots(1, 2)
    sig = comp.sigmas
    for kind, values in comp.velocity.items():
        colour, label = KIND_STYLE[kind]
        for ax, metric in zip(axes, ("rel_mse", "cosine")):
            v = torch.tensor(values[metric], dtype=torch.float64)  # [prompt, sigma]
            ax.plot(sig, v.mean(0).tolist(), "o-", color=colour, label=label, ms=3)
            if v.shape[0] > 1:
                ax.fill_between(sig, v.min(0).values.tolist(), v.max(0).values.tolist(), color=colour, alpha=0.15, lw=0)
    axes[0].set(xlabel="sigma (noise level)", ylabel="relative MSE  ||v_s - v_t||² / ||v_t||²",
                title="velocity error vs sigma")
    if any(x > 0 for k in comp.velocity.values() for row in k["rel_mse"] for x in row):
        axes[0].set_yscale("log")
    axes[1].set(xlabel="sigma (noise level)", ylabel="cosine(v_s, v_t)", title="velocity direction vs sigma")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig if fig is not None else axes[0].figure


def plot_drift(comp, ax=None):
    """Relative L2 between student and teacher trajectory states after each sampling step."""
    fig = None
    if ax is None:
        fig = _figure(figsize=(5, 3.6), layout="constrained")
        ax = fig.subplots()
    d = torch.tensor(comp.drift, dtype=torch.float64)  # [prompt, state]
    steps = range(d.shape[1])
    for p, row in enumerate(d):
        ax.plot(steps, row.tolist(), color="0.6", lw=0.8, label="per prompt" if p == 0 else None)
    ax.plot(steps, d.mean(0).tolist(), "o-", color="C3", ms=3, label="mean")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=f"sampling step ({comp.config.scheduler}, shift {comp.config.shift})",
           ylabel="||x_s - x_t|| / ||x_t||", title="trajectory drift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def _annotate(ax, values: torch.Tensor, fmt: str, limit: int = 150):
    """Write each cell's value on a small heatmap (colour scales near 1 hide the numbers that matter)."""
    if values.numel() > limit:
        return
    lo, hi = float(values.min()), float(values.max())
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            dark = hi > lo and (v - lo) / (hi - lo) < 0.5
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="w" if dark else "k")


def plot_blocks(comp, axes=None):
    """Left: cosine of each student block's output with its teacher block's, per sigma. Right: every student
    block against every teacher block (mean over sigmas and prompts), kept pairs boxed. Colour scales span
    [worst, 1] so that differences near 1 stay visible; small maps carry their numbers."""
    panels = [x for x in (comp.block_cosine, comp.block_matrix) if x is not None]
    fig = None
    if axes is None:
        fig = _figure(figsize=(5 * max(1, len(panels)), 3.8), layout="constrained")
        axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    axes = list(axes)
    if not panels:
        axes[0].text(0.5, 0.5, "block outputs not comparable\n" + "\n".join(comp.notes), ha="center", va="center",
                     fontsize=8, wrap=True)
        axes[0].set_axis_off()
        return fig if fig is not None else axes[0].figure
    if comp.block_cosine is not None:
        ax = axes.pop(0)
        c = torch.tensor(comp.block_cosine, dtype=torch.float64).mean(0).T  # [student block, sigma]
        im = ax.imshow(c.numpy(), aspect="auto", cmap="viridis", vmin=min(float(c.min()), 1 - 1e-3), vmax=1.0)
        _annotate(ax, c, "{:.3f}")
        ax.set_xticks(range(len(comp.sigmas)), [f"{s:g}" for s in comp.sigmas], rotation=90, fontsize=7)
        ax.set_yticks(range(c.shape[0]), [f"s{i}←t{j}" for i, j in enumerate(comp.kept_blocks)], fontsize=7)
        ax.set(xlabel="sigma", title="block output cosine (student vs its teacher block)")
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    if comp.block_matrix is not None:
        ax = axes.pop(0)
        m = torch.tensor(comp.block_matrix, dtype=torch.float64)  # [student, teacher]
        im = ax.imshow(m.numpy(), aspect="auto", cmap="magma", vmin=min(float(m.min()), 1 - 1e-3), vmax=1.0)
        if comp.kept_blocks is not None:
            from matplotlib.patches import Rectangle
            for i, j in enumerate(comp.kept_blocks):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
        ax.set_xticks(range(m.shape[1])), ax.set_yticks(range(m.shape[0]))
        _annotate(ax, m, "{:.3f}")
        ax.set(xlabel="teacher block", ylabel="student block", title="all pairs (mean over sigma)")
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return fig if fig is not None else ax.figure


def _frame(video: torch.Tensor, f: int):
    return video[:, f].permute(1, 2, 0).clamp(0, 1).numpy()


def plot_frames(comp, prompt: int = 0, step: int | None = None, frames=None, axes=None):
    """Teacher | student | |difference| (x4) strips of a prompt's video (`frames`: default 8 evenly spaced):
    the final sample, or the x0 the models predict at sampling `step`."""
    teacher, student = comp.frames(prompt, step)
    n = teacher.shape[1]
    if frames is None:  # at most 8, evenly spaced, first and last included
        frames = sorted({round(i * (n - 1) / max(1, min(n, 8) - 1)) for i in range(min(n, 8))})
    frames = [frames] if isinstance(frames, int) else list(frames)
    fig = None
    if axes is None:
        fig = _figure(figsize=(1.6 * len(frames) + 0.8, 5.0), layout="constrained")
        axes = fig.subplots(3, len(frames), squeeze=False)
    diff = ((teacher - student).abs() * 4).clamp(0, 1)
    for col, f in enumerate(frames):
        for row, (video, name) in enumerate(((teacher, "teacher"), (student, "student"), (diff, "|diff| x4"))):
            ax = axes[row][col]
            ax.imshow(_frame(video, f), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title(f"frame {f}", fontsize=8)
    what = "final sample" if step is None else f"x0 predicted at step {step} (sigma {comp.schedule[step]:.3f})"
    source = "decoded" if comp.decoded else "latent RGB preview"
    fig_ = fig if fig is not None else axes[0][0].figure
    fig_.suptitle(f"{comp.prompts[prompt]!r}: {what}, {source}", fontsize=9)
    return fig_


def plot_cost(comp, ax=None):
    """Student cost as a fraction of the teacher's (params, bytes, FLOPs, latency, memory, sampling)."""
    fig = None
    if ax is None:
        fig = _figure(figsize=(6, 3.4), layout="constrained")
        ax = fig.subplots()
    if comp.cost is None:
        ax.text(0.5, 0.5, "cost not measured", ha="center")
        return fig if fig is not None else ax.figure
    t, s = comp.cost.teacher, comp.cost.student
    items = [("params", t.params, s.params), ("weights", t.weight_bytes, s.weight_bytes), ("FLOPs", t.flops, s.flops),
             ("forward (median)", t.forward_s, s.forward_s), ("forward (best)", t.forward_min_s, s.forward_min_s),
             ("peak mem", t.peak_bytes, s.peak_bytes),
             ("sampling", t.sample_s, s.sample_s)]
    items = [(n, b / a) for n, a, b in items if a and b is not None]
    ax.barh([n for n, _ in items], [r for _, r in items], color="C2")
    ax.axvline(1.0, color="k", lw=0.8)
    for i, (_, r) in enumerate(items):
        ax.text(r, i, f" {r:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="student / teacher (lower is cheaper)",
           title=f"cost (forward speedup {comp.cost.speedup:.2f}x median, {comp.cost.speedup_best:.2f}x best; "
                 f"{comp.cost.device})")
    return fig if fig is not None else ax.figure


# ---------------------------------------------------------------- a run directory's loss curves
STEP_KEYS = ("step", "global_step", "iteration", "iter")
VAL_MARKERS = ("val", "validation", "eval")


def read_metrics(run_dir) -> list[dict]:
    """The JSON lines of a run (`run_dir/metrics.jsonl`, else every *.jsonl in it, or the file itself)."""
    path = Path(run_dir)
    files = [path] if path.is_file() else ([path / "metrics.jsonl"] if (path / "metrics.jsonl").exists()
                                           else sorted(path.glob("*.jsonl")))
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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or "loss" not in k.lower() or not math.isfinite(v):
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
        fig = _figure(figsize=(7, 3.8), layout="constrained")
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


# ---------------------------------------------------------------- everything, and the explorer
def figures(comp) -> dict:
    """name -> Figure, for the report: velocity, drift, blocks, cost, frames_<i> per prompt, losses."""
    figs = {"velocity": plot_velocity(comp), "drift": plot_drift(comp), "blocks": plot_blocks(comp),
            "cost": plot_cost(comp)}
    for p in range(len(comp.prompts)):
        figs[f"frames_{p}"] = plot_frames(comp, p)
    if comp.run_dir is not None:
        figs["losses"] = plot_run(comp.run_dir)
    return figs


def plot_comparison(comp, prompt: int = 0):
    """One dashboard: velocity error and cosine, drift, block cosine, cost."""
    fig = _figure(figsize=(15, 7.5), layout="constrained")
    grid = fig.subplots(2, 3)
    plot_velocity(comp, axes=grid[0][:2])
    plot_drift(comp, ax=grid[0][2])
    if comp.block_cosine is not None or comp.block_matrix is not None:
        plot_blocks(comp, axes=[grid[1][0], grid[1][1]] if comp.block_cosine is not None and comp.block_matrix is not None
                    else [grid[1][0]])
    if comp.block_cosine is None or comp.block_matrix is None:
        grid[1][1].set_axis_off()
    plot_cost(comp, ax=grid[1][2])
    fig.suptitle(f"teacher: {comp.teacher}\nstudent: {comp.student}", fontsize=9)
    return fig


def explorer_view(comp, prompt: int = 0, step: int | None = None, frame: int = 0):
    """The explorer's picture: velocity error with the chosen sigma marked, and teacher | student | diff."""
    fig = _figure(figsize=(11, 3.6), layout="constrained")
    a, b, c, d = fig.subplots(1, 4, width_ratios=[2, 1, 1, 1])
    for kind, values in comp.velocity.items():
        a.plot(comp.sigmas, values["rel_mse"][prompt], "o-", ms=3, color=KIND_STYLE[kind][0], label=KIND_STYLE[kind][1])
    if any(x > 0 for k in comp.velocity.values() for x in k["rel_mse"][prompt]):
        a.set_yscale("log")
    if step is not None and step < len(comp.schedule) - 1:
        a.axvline(comp.schedule[step], color="k", ls=":", label=f"step {step}")
    a.set(xlabel="sigma", ylabel="velocity relative MSE", title=comp.prompts[prompt])
    a.legend(fontsize=7)
    teacher, student = comp.frames(prompt, step)
    frame = min(frame, teacher.shape[1] - 1)
    for ax, img, name in ((b, teacher, "teacher"), (c, student, "student"),
                          (d, ((teacher - student).abs() * 4).clamp(0, 1), "|diff| x4")):
        ax.imshow(_frame(img, frame), interpolation="nearest")
        ax.set_title(f"{name}, frame {frame}", fontsize=8)
        ax.set_axis_off()
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class Explorer:
    """ipywidgets (prompt dropdown, step and frame sliders) where a widget front end runs; the same view as a
    static PNG everywhere else. Both travel in one display bundle, so a notebook executed headless
    (papermill, nbval, nbconvert) still shows a picture, and a live one shows the widgets."""

    def __init__(self, comp):
        self.comp = comp
        self.static = explorer_view(comp)
        self.widget = self._widget() if _in_kernel() and not os.environ.get("WANLITE_STATIC") else None

    def _widget(self):
        try:
            import ipywidgets as w
        except ImportError:
            return None
        comp = self.comp
        steps = len(comp.schedule) - 1
        prompt = w.Dropdown(options=[(p, i) for i, p in enumerate(comp.prompts)], description="prompt")
        step = w.IntSlider(value=steps, min=0, max=steps, description="step",
                           tooltip=f"{steps} = final sample; below: x0 predicted at that step")
        frame = w.IntSlider(value=0, min=0, max=comp.frames(0)[0].shape[1] - 1, description="frame")
        out = w.Output()

        def draw(*_):
            fig = explorer_view(comp, prompt.value, None if step.value >= steps else step.value, frame.value)
            out.clear_output(wait=True)
            with out:
                from IPython.display import Image, display
                display(Image(_png(fig)))
        for control in (prompt, step, frame):
            control.observe(draw, names="value")
        draw()
        return w.VBox([w.HBox([prompt, step, frame]), out])

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": f"<Explorer over {len(self.comp.prompts)} prompt(s); static view attached>",
                  "image/png": base64.b64encode(_png(self.static)).decode()}
        if self.widget is not None:
            data = self.widget._repr_mimebundle_(include=include, exclude=exclude)
            data = data[0] if isinstance(data, tuple) else data
            bundle |= {k: v for k, v in data.items() if k != "text/plain"}
        return bundle


def explore(comp) -> Explorer:
    return Explorer(comp)
