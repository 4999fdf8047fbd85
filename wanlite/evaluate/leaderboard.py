"""A leaderboard of measured models: one row per model (teacher rows included), written as CSV and Markdown, with
the Pareto frontier of quality against cost per video drawn in one figure. Generic over rows of plain values, so a
sweep writes it and a notebook reads it back from the CSV."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError
from ..formats.io import replace_file
from .cost import human

# (column, header, format): what a sweep measures per model, in the order the tables show it
COLUMNS = (
    ("point", "point", "text"),
    ("kind", "kind", "text"),
    ("recipe", "recipe", "text"),
    ("objective", "objective", "text"),
    ("sampling", "samples at", "text"),
    ("params", "params", "si"),
    ("forwards_per_video", "forwards / video", "int"),
    ("flops_per_video", "FLOPs / video", "si"),
    ("video_flops_ratio", "teacher ÷ FLOPs / video", "x2"),
    ("wall_per_video_s", "wall / video (s)", "g3"),
    ("video_speedup", "teacher ÷ wall / video", "x2"),
    ("colour", "colour", "pct"),
    ("shape", "shape", "pct"),
    ("direction", "direction", "pct"),
    ("all", "all three", "pct"),
    ("pixel_psnr_db", "PSNR vs teacher (dB)", "f1"),
    ("latent_psnr_db", "latent PSNR (dB)", "f1"),
    ("velocity_rel_mse", "velocity rel-MSE", "g3"),
    ("val_rel_mse_start", "held-out rel-MSE untrained", "g3"),
    ("val_rel_mse_end", "held-out rel-MSE trained", "g3"),
    ("train_s", "training (s)", "f0"),
    ("status", "status", "text"),
    ("error", "error", "text"),
)
NUMERIC = {name for name, _, how in COLUMNS if how != "text"}


def _cell(value, how: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    if how == "text":
        return str(value).replace("|", "/").replace("\n", " ")
    value = float(value)
    if math.isinf(value):
        return "inf"
    return {
        "si": lambda v: human(v).replace(" ", ""),
        "int": lambda v: f"{v:.0f}",
        "pct": lambda v: f"{v:.0%}",
        "g3": lambda v: f"{v:.3g}",
        "f1": lambda v: f"{v:.1f}",
        "f0": lambda v: f"{v:.0f}",
        "x2": lambda v: f"{v:.2f}×",
    }[how](value)


def pareto_front(rows: list[dict], cost: str, quality: str) -> list[dict]:
    """The rows no other row beats: none is as cheap or cheaper (`cost`, lower is better) and as good or better
    (`quality`, higher is better) while strictly better in one. Rows without both numbers are left out. Sorted by
    cost."""
    have = [r for r in rows if _number(r.get(cost)) is not None and _number(r.get(quality)) is not None]
    front = []
    for r in have:
        c, q = _number(r[cost]), _number(r[quality])
        beaten = any(
            _number(o[cost]) <= c and _number(o[quality]) >= q and (_number(o[cost]) < c or _number(o[quality]) > q)
            for o in have
        )
        if not beaten:
            front.append(r)
    return sorted(front, key=lambda r: (_number(r[cost]), -_number(r[quality])))


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass
class Leaderboard:
    """Measured rows (dicts keyed by `COLUMNS` names; extra keys are kept in the CSV) and which of their numbers
    the Pareto figure weighs: `quality` (higher is better) against `cost` (lower is better)."""

    rows: list[dict]
    title: str = "leaderboard"
    quality: str = "all"
    cost: str = "flops_per_video"
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        known = [name for name, _, _ in COLUMNS]
        extra = sorted({k for r in self.rows for k in r} - set(known))
        return known + extra

    def frontier(self) -> list[dict]:
        """The Pareto-optimal rows among those that finished (see `pareto_front`)."""
        return pareto_front([r for r in self.rows if r.get("status", "ok") == "ok"], self.cost, self.quality)

    # ---- files ----
    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in self.columns} for r in self.rows])
        return out.getvalue()

    @classmethod
    def from_csv(cls, path, **options) -> "Leaderboard":
        """Read a leaderboard.csv back (numbers as floats, empty cells as None)."""
        path = Path(path)
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                header = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise FormatError(f"{path}: cannot read the leaderboard ({err}). Fix: run the sweep again.") from None
        wanted = ("point", options.get("cost", cls.cost), options.get("quality", cls.quality))
        missing = [c for c in wanted if c not in header]
        if missing:
            raise FormatError(
                f"{path}: not a leaderboard CSV (no column(s) {missing}). Fix: give the leaderboard.csv a sweep "
                "wrote (runs/<sweep>/leaderboard.csv)."
            )
        parsed = [{k: (_number(v) if k in NUMERIC else (v or None)) for k, v in r.items()} for r in rows]
        return cls(parsed, title=options.pop("title", path.parent.name), **options)

    def to_markdown(self, columns: list[str] | None = None) -> str:
        """The table (failed points included, with their error), the frontier marked with a star; `columns`: a
        selection of `COLUMNS` names (default: every one that holds a value)."""
        front = {id(r) for r in self.frontier()}
        chosen = [c for c in COLUMNS if columns is None or c[0] in columns]
        shown = [
            (name, head, how) for name, head, how in chosen if any(r.get(name) not in (None, "") for r in self.rows)
        ]
        lines = [
            "| " + " | ".join(head for _, head, _ in shown) + " | Pareto |",
            "|" + "---|" * (len(shown) + 1),
        ]
        for r in self.rows:
            cells = [_cell(r.get(name), how) for name, _, how in shown]
            lines.append("| " + " | ".join(cells) + f" | {'★' if id(r) in front else ''} |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir) -> dict[str, Path]:
        """leaderboard.csv, leaderboard.md and pareto.png in `out_dir`, each replaced in one step (never half
        written)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("leaderboard.csv", "leaderboard.md", "pareto.png")}
        md = f"# {self.title}\n\n" + self.to_markdown() + "".join(f"\n- {n}" for n in self.notes) + "\n"
        replace_file(paths["leaderboard.csv"], self.to_csv())
        replace_file(paths["leaderboard.md"], md)
        replace_file(
            paths["pareto.png"], lambda tmp: self.plot().savefig(tmp, dpi=110, format="png", bbox_inches="tight")
        )
        return paths

    # ---- the figure ----
    def plot(self, fidelity: str | None = "pixel_psnr_db"):
        """Quality against cost per video (log scale), one panel per measure: `quality` and, when rows hold it,
        `fidelity` (decoded-video PSNR against the teacher; the teacher's own row is its reference and has none).
        Every finished row, teacher rows as stars, each panel's Pareto frontier as a line, failed points named."""
        from ..core.display import new_figure

        done = [r for r in self.rows if r.get("status", "ok") == "ok"]
        measures = [self.quality] + [
            fidelity for _ in [0] if fidelity and any(_number(r.get(fidelity)) is not None for r in done)
        ]
        figure = new_figure(figsize=(6.5 * len(measures), 4.8), layout="constrained")
        for ax, measure in zip(figure.subplots(1, len(measures), squeeze=False)[0], measures):
            self._panel(ax, done, measure)
        failed = len(self.rows) - len(done)
        figure.suptitle(self.title + (f" ({failed} failed, not shown)" if failed else ""), fontsize=10)
        return figure

    def _panel(self, ax, done: list[dict], measure: str) -> None:
        plotted = [r for r in done if _number(r.get(self.cost)) and _number(r.get(measure)) is not None]
        for kind, marker, colour, size in (("student", "o", "tab:blue", 36), ("teacher", "*", "tab:red", 160)):
            sel = [r for r in plotted if (r.get("kind") or "student") == kind]
            if sel:
                xs, ys = [_number(r[self.cost]) for r in sel], [_number(r[measure]) for r in sel]
                ax.scatter(xs, ys, marker=marker, s=size, c=colour, label=kind, zorder=3)
        for r in plotted:
            where = (_number(r[self.cost]), _number(r[measure]))
            ax.annotate(str(r.get("point")), where, fontsize=7, xytext=(4, 3), textcoords="offset points")
        for r in done:  # the teacher a fidelity is measured against has no value of its own: its cost as a line
            if r.get("kind") == "teacher" and _number(r.get(measure)) is None and _number(r.get(self.cost)):
                ax.axvline(_number(r[self.cost]), ls="--", c="tab:red", lw=1, label=f"{r['point']} (the reference)")
        front = pareto_front(plotted, self.cost, measure)
        if front:
            xs, ys = [_number(r[self.cost]) for r in front], [_number(r[measure]) for r in front]
            ax.step(xs, ys, where="post", c="tab:green", lw=1.5, alpha=0.8, label="Pareto frontier", zorder=2)
        if plotted:
            ax.set_xscale("log")
        header = {name: head for name, head, _ in COLUMNS}
        ax.set_xlabel(f"{header.get(self.cost, self.cost)} (log scale; lower is cheaper)")
        label = header.get(measure, measure)
        ax.set_ylabel(f"adherence: {label}" if measure in ("colour", "shape", "direction", "all") else label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")

    def __repr__(self) -> str:
        front = len(self.frontier())
        failed = sum(r.get("status", "ok") != "ok" for r in self.rows)
        return f"Leaderboard({self.title}: {len(self.rows)} rows, {front} on the frontier, {failed} failed)"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()
