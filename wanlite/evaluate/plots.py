"""Figures for a `Comparison` and a distillation run, and an explorer that works with or without a widget front end.

Every function returns a matplotlib Figure (`core.display.new_figure`: it displays when a cell returns it and
never pops up), so scripts, tests and CI render headless.
`explore` gives ipywidgets in a live notebook; where nothing can run widgets (papermill, nbval, nbconvert,
a plain script) the same view is there as a static PNG.
"""

from __future__ import annotations

import base64

import torch

from ..core.display import headless, in_kernel, new_figure, png
from .curves import plot_run

KIND_STYLE = {
    "cond": ("C0", "conditional"),
    "uncond": ("C1", "unconditional"),
    "guided": ("C3", "guided (CFG)"),
    "cfg-free": ("C4", "student cfg 1 vs teacher CFG"),
}


def plot_velocity(comp, axes=None):
    """Per-sigma velocity relative MSE (log) and cosine, teacher vs student, for cond / uncond / guided.
    Lines are the mean over prompts; the band spans the best and worst prompt."""
    fig = None
    if axes is None:
        fig = new_figure(figsize=(10, 3.6), layout="constrained")
        axes = fig.subplots(1, 2)
    if not comp.velocity:
        for ax in axes:
            ax.text(
                0.5,
                0.5,
                "per-σ velocity not compared:\na few-step student learns its steps,\nnot the teacher's "
                "velocity at every σ",
                ha="center",
                va="center",
                fontsize=8,
            )
            ax.set_axis_off()
        return fig if fig is not None else axes[0].figure
    sig = comp.sigmas
    for kind, values in comp.velocity.items():
        colour, label = KIND_STYLE[kind]
        for ax, metric in zip(axes, ("rel_mse", "cosine")):
            v = torch.tensor(values[metric], dtype=torch.float64)  # [prompt, sigma]
            ax.plot(sig, v.mean(0).tolist(), "o-", color=colour, label=label, ms=3)
            if v.shape[0] > 1:
                ax.fill_between(sig, v.min(0).values.tolist(), v.max(0).values.tolist(), color=colour, alpha=0.15, lw=0)
    axes[0].set(
        xlabel="sigma (noise level)", ylabel="relative MSE  ||v_s - v_t||² / ||v_t||²", title="velocity error vs sigma"
    )
    if any(x > 0 for k in comp.velocity.values() for row in k["rel_mse"] for x in row):
        axes[0].set_yscale("log")
    axes[1].set(xlabel="sigma (noise level)", ylabel="cosine(v_s, v_t)", title="velocity direction vs sigma")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig if fig is not None else axes[0].figure


def plot_drift(comp, ax=None):
    """Relative L2 between student and teacher trajectory states after each step (same schedule); else the two
    schedules, σ per step: where the teacher spends its forwards and where the student does."""
    from matplotlib.ticker import MaxNLocator

    fig = None
    if ax is None:
        fig = new_figure(figsize=(5, 3.6), layout="constrained")
        ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if comp.drift is None:
        for sched, how, style in (
            (comp.schedule, comp.teacher_sampling, "o-"),
            (comp.student_schedule, comp.student_sampling, "s--"),
        ):
            ax.plot(
                range(len(sched)), sched, style, ms=4, label=f"{how.solver}, {how.steps} steps, cfg {how.guidance:g}"
            )
        ax.set(xlabel="step", ylabel="sigma", title="schedules (teacher vs student)")
        ax.legend(fontsize=8)
        return fig if fig is not None else ax.figure
    d = torch.tensor(comp.drift, dtype=torch.float64)  # [prompt, state]
    steps = range(d.shape[1])
    for p, row in enumerate(d):
        ax.plot(steps, row.tolist(), color="0.6", lw=0.8, label="per prompt" if p == 0 else None)
    ax.plot(steps, d.mean(0).tolist(), "o-", color="C3", ms=3, label="mean")
    how = comp.teacher_sampling
    ax.set(
        xlabel=f"sampling step ({how.solver}, shift {how.shift:g})",
        ylabel="||x_s - x_t|| / ||x_t||",
        title="trajectory drift",
    )
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def _annotate(ax, values: torch.Tensor, fmt: str, min_points: float = 5.5):
    """Write each cell's value on a heatmap (colour scales near 1 hide the numbers that matter), in a font that
    fits the cell; none when the cells are too small to read."""
    box = ax.get_position()  # the axes' share of the figure (before layout: close enough to size the text)
    width, height = ax.figure.get_size_inches()
    cell_w = box.width * width * 72 / values.shape[1]  # points
    cell_h = box.height * height * 72 / values.shape[0]
    size = min(9.0, cell_h * 0.45, cell_w / (len(fmt.format(0.5)) * 0.62))
    if size < min_points:
        return
    lo, hi = float(values.min()), float(values.max())
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            dark = hi > lo and (v - lo) / (hi - lo) < 0.5
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size, color="w" if dark else "k")


def plot_blocks(comp, axes=None):
    """Left: cosine of each student block's output with its teacher block's, per sigma. Right: every student
    block against every teacher block (mean over sigmas and prompts), kept pairs boxed. Colour scales span
    [worst, 1] so that differences near 1 stay visible; small maps carry their numbers."""
    panels = [x for x in (comp.block_cosine, comp.block_matrix) if x is not None]
    fig = None
    if axes is None:
        fig = new_figure(figsize=(5 * max(1, len(panels)), 3.8), layout="constrained")
        axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    axes = list(axes)
    if not panels:
        axes[0].text(
            0.5,
            0.5,
            "block outputs not comparable\n" + "\n".join(comp.notes),
            ha="center",
            va="center",
            fontsize=8,
            wrap=True,
        )
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
        fig = new_figure(figsize=(1.6 * len(frames) + 0.8, 5.0), layout="constrained")
        axes = fig.subplots(3, len(frames), squeeze=False)
    diff = ((teacher - student).abs() * 4).clamp(0, 1)
    for col, f in enumerate(frames):
        rows = (
            (teacher, f"teacher\n{comp.teacher_sampling.forwards} forwards"),
            (student, f"student\n{comp.student_sampling.forwards} forwards"),
            (diff, "|diff| x4"),
        )
        for row, (video, name) in enumerate(rows):
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
        fig = new_figure(figsize=(6, 3.4), layout="constrained")
        ax = fig.subplots()
    if comp.cost is None:
        ax.text(0.5, 0.5, "cost not measured", ha="center")
        return fig if fig is not None else ax.figure
    t, s = comp.cost.teacher, comp.cost.student
    items = [
        ("params", t.params, s.params),
        ("weights", t.weight_bytes, s.weight_bytes),
        ("FLOPs", t.flops, s.flops),
        ("forward (median)", t.forward_s, s.forward_s),
        ("forward (best)", t.forward_min_s, s.forward_min_s),
        ("peak mem", t.peak_bytes, s.peak_bytes),
        ("forwards / video", t.forwards, s.forwards),
        ("FLOPs / video", t.flops_per_video, s.flops_per_video),
        ("wall / video", t.sample_s, s.sample_s),
    ]
    items = [(n, b / a) for n, a, b in items if a and b is not None]
    ax.barh([n for n, _ in items], [r for _, r in items], color="C2")
    ax.axvline(1.0, color="k", lw=0.8)
    for i, (_, r) in enumerate(items):
        ax.text(r, i, f" {r:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(
        xlabel="student / teacher (lower is cheaper)",
        title=f"cost per video: {comp.cost.video_flops_ratio or float('nan'):.1f}x fewer FLOPs, "
        f"{comp.cost.sample_speedup or float('nan'):.1f}x faster ({comp.cost.device})",
    )
    return fig if fig is not None else ax.figure


# ---------------------------------------------------------------- everything, and the explorer
def figures(comp) -> dict:
    """name -> Figure, for the report: velocity, drift, blocks, cost, frames_<i> per prompt, losses."""
    figs = {
        "velocity": plot_velocity(comp),
        "drift": plot_drift(comp),
        "blocks": plot_blocks(comp),
        "cost": plot_cost(comp),
    }
    for p in range(len(comp.prompts)):
        figs[f"frames_{p}"] = plot_frames(comp, p)
    if comp.run_dir is not None:
        figs["losses"] = plot_run(comp.run_dir)
    return figs


def plot_comparison(comp, prompt: int = 0):
    """One dashboard: velocity error and cosine, drift, block cosine, cost."""
    fig = new_figure(figsize=(15, 7.5), layout="constrained")
    grid = fig.subplots(2, 3)
    plot_velocity(comp, axes=grid[0][:2])
    plot_drift(comp, ax=grid[0][2])
    if comp.block_cosine is not None or comp.block_matrix is not None:
        plot_blocks(
            comp,
            axes=[grid[1][0], grid[1][1]]
            if comp.block_cosine is not None and comp.block_matrix is not None
            else [grid[1][0]],
        )
    if comp.block_cosine is None or comp.block_matrix is None:
        grid[1][1].set_axis_off()
    plot_cost(comp, ax=grid[1][2])
    fig.suptitle(f"teacher: {comp.teacher}\nstudent: {comp.student}", fontsize=9)
    return fig


def explorer_view(comp, prompt: int = 0, step: int | None = None, frame: int = 0):
    """The explorer's picture: velocity error with the chosen sigma marked, and teacher | student | diff."""
    fig = new_figure(figsize=(11, 3.6), layout="constrained")
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
    for ax, img, name in (
        (b, teacher, "teacher"),
        (c, student, "student"),
        (d, ((teacher - student).abs() * 4).clamp(0, 1), "|diff| x4"),
    ):
        ax.imshow(_frame(img, frame), interpolation="nearest")
        ax.set_title(f"{name}, frame {frame}", fontsize=8)
        ax.set_axis_off()
    return fig


class Explorer:
    """ipywidgets (prompt dropdown, step and frame sliders) where a widget front end runs; the same view as a
    static PNG everywhere else. Both travel in one display bundle, so a notebook executed headless
    (papermill, nbval, nbconvert) still shows a picture, and a live one shows the widgets."""

    def __init__(self, comp):
        self.comp = comp
        self.static = explorer_view(comp)
        self.widget = self._widget() if in_kernel() and not headless() else None

    def _widget(self):
        try:
            import ipywidgets as w
        except ImportError:
            return None
        comp = self.comp
        steps = len(comp.schedule) - 1
        prompt = w.Dropdown(options=[(p, i) for i, p in enumerate(comp.prompts)], description="prompt")
        step = w.IntSlider(
            value=steps,
            min=0,
            max=steps,
            description="step",
            tooltip=f"{steps} = final sample; below: x0 predicted at that step",
        )
        frame = w.IntSlider(value=0, min=0, max=comp.frames(0)[0].shape[1] - 1, description="frame")
        out = w.Output()

        def draw(*_):
            fig = explorer_view(comp, prompt.value, None if step.value >= steps else step.value, frame.value)
            out.clear_output(wait=True)
            with out:
                from IPython.display import Image, display

                display(Image(png(fig)))

        for control in (prompt, step, frame):
            control.observe(draw, names="value")
        draw()
        return w.VBox([w.HBox([prompt, step, frame]), out])

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {
            "text/plain": f"<Explorer over {len(self.comp.prompts)} prompt(s); static view attached>",
            "image/png": base64.b64encode(png(self.static)).decode(),
        }
        if self.widget is not None:
            data = self.widget._repr_mimebundle_(include=include, exclude=exclude)
            data = data[0] if isinstance(data, tuple) else data
            bundle |= {k: v for k, v in data.items() if k != "text/plain"}
        return bundle


def explore(comp) -> Explorer:
    return Explorer(comp)
