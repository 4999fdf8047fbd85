"""Build a student from a teacher by keeping whole blocks, heads, FFN neurons and channels (`build_student`).

A `Recipe` says how many of each to keep and how to choose them; a `Pruning` records exactly which teacher
indices were kept (the student carries it as `.pruning`); `init_report` ranks recipes by how close each
student is to the teacher before any training. The scores come from `calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..core.display import new_figure
from ..core.flow import cosine, rel_mse, wan_forward
from ..errors import RecipeError
from ..formats.records import Pruning, Recipe
from ..formats.spec import WanSpec
from .calibrate import Calibration, calibrate, magnitude_scores, prepare_batch
from .spaces import PER_BLOCK, check_teacher, param_axes, teacher_fingerprint

__all__ = ["Recipe", "Pruning", "build_student", "init_report", "InitReport", "calibrate", "Calibration"]
REPORT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


# ---------------------------------------------------------------- selection
def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, ascending (teacher order kept: full width reproduces the teacher)."""
    order = torch.argsort(scores.double(), descending=True, stable=True)[:k]
    return sorted(order.tolist())


def select(teacher_spec: WanSpec, recipe: Recipe, calibration: Calibration | None, magnitude=None) -> dict:
    """Teacher indices kept along every axis: kept_blocks plus one list per channel space (per block where needed)."""
    spec = recipe.student_spec(teacher_spec)
    n, k = teacher_spec.num_layers, spec.num_layers

    def need(what):
        if calibration is None:
            raise RecipeError(
                f"Recipe: {what} needs importance scores; pass calibration=calibrate(teacher, batch)"
                + (", or use width_selection='magnitude'." if "width" in what else ".")
            )
        return calibration.scores

    if isinstance(recipe.blocks, tuple):
        blocks = list(recipe.blocks)
    elif recipe.blocks == "first":
        blocks = list(range(k))
    elif recipe.blocks == "uniform":
        blocks = [0] if k == 1 else [int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]  # half up
    elif k == n:
        blocks = list(range(n))
    else:
        scores = need("blocks='importance'")
        key = "block_cosine" if recipe.block_score == "cosine" else "block_skip"
        if key not in scores:
            raise RecipeError("Recipe.block_score='skip' needs calibrate(teacher, batch, skip_blocks=True).")
        blocks = _top(scores[key], k)
    full = spec.dim == teacher_spec.dim and spec.ffn_dim == teacher_spec.ffn_dim
    if full:
        everything = list(range(teacher_spec.dim))
        kept = {
            "channel": everything,
            "text_context": everything,
            "image_context": everything,
            "text_hidden": everything,
            "time_hidden": everything,
        }
        per_block = {
            "self_heads": [list(range(spec.num_heads)) for _ in blocks],
            "cross_heads": [list(range(spec.num_heads)) for _ in blocks],
            "ffn": [list(range(spec.ffn_dim)) for _ in blocks],
        }
        return {"spec": spec, "blocks": blocks, **kept, **per_block}
    s = need("width_selection='importance'") if recipe.width_selection == "importance" else magnitude
    kept = {
        "channel": _top(s["channel_global"] + s["channel"][blocks].sum(0), spec.dim),
        "text_context": _top(s["text_context"][blocks].sum(0), spec.dim),
        "text_hidden": _top(s["text_hidden"], spec.dim),
        "time_hidden": _top(s["time_hidden"], spec.dim),
    }
    if "image_context" in s:
        kept["image_context"] = _top(s["image_context"][blocks].sum(0), spec.dim)
    per_block = {
        "self_heads": [_top(s["self_heads"][b], spec.num_heads) for b in blocks],
        "cross_heads": [_top(s["cross_heads"][b], spec.num_heads) for b in blocks],
        "ffn": [_top(s["ffn"][b], spec.ffn_dim) for b in blocks],
    }
    return {"spec": spec, "blocks": blocks, **kept, **per_block}


# ---------------------------------------------------------------- build
def kept_of(pruning: Pruning) -> dict:
    """A Pruning record as `select`'s kept-index dict (what `axis_indices` reads)."""
    return {
        "blocks": pruning.kept_blocks,
        "channel": pruning.kept_channels,
        "self_heads": pruning.kept_heads,
        "cross_heads": pruning.kept_cross_heads,
        "ffn": pruning.kept_ffn,
        **pruning.kept_embedding,
    }


def axis_indices(kept: dict, tspec: WanSpec, space: str | None, block: int | None) -> torch.Tensor | None:
    """Teacher indices kept along one axis of channel space `space` (in teacher block `block` for per-block
    spaces; heads expand to their head_dim channels); None keeps the axis whole."""
    if space is None:
        return None
    if space == "channel6":
        return torch.cat([torch.tensor(kept["channel"]) + j * tspec.dim for j in range(6)])
    if space in PER_BLOCK:
        idx = kept[space][kept["blocks"].index(block)]
        if space != "ffn":  # heads -> their 128 channels
            idx = [h * tspec.head_dim + c for h in idx for c in range(tspec.head_dim)]
        return torch.tensor(idx)
    return torch.tensor(kept[space])


def slice_param(p: torch.Tensor, name: str, kept: dict, tspec: WanSpec, axes=None) -> torch.Tensor:
    """Teacher parameter (or a tensor shaped like it) `name` cut to the student: every leading axis sliced by its
    channel space (`spaces.SPACES`); `axes` overrides which spaces (e.g. one axis of a LoRA factor)."""
    block = int(name.split(".")[1]) if name.startswith("blocks.") else None
    for axis, space in enumerate(param_axes(name) if axes is None else axes):
        idx = axis_indices(kept, tspec, space, block)
        if idx is not None:
            p = p.index_select(axis, idx.to(p.device))
    return p


def _sliced_state(teacher, tspec: WanSpec, kept: dict) -> dict[str, torch.Tensor]:
    """The teacher's kept weights under the student's names: kept blocks renumbered 0..K-1, every axis sliced by
    its channel space (`spaces.SPACES`), copies (never views: training the student must not touch the teacher)."""
    blocks = kept["blocks"]
    teacher_params = dict(teacher.named_parameters())
    renames = {n: n for n in teacher_params if not n.startswith("blocks.")}
    for s, t in enumerate(blocks):
        for n, _ in teacher.blocks[t].named_parameters(prefix=f"blocks.{t}"):
            renames[n] = f"blocks.{s}." + n.split(".", 2)[2]
    state = {}
    with torch.no_grad():
        for name, new_name in renames.items():
            p = slice_param(teacher_params[name].detach(), name, kept, tspec)
            state[new_name] = p.clone() if p.data_ptr() == teacher_params[name].data_ptr() else p.contiguous()
    return state


def build_student(teacher, recipe: Recipe, calibration: Calibration | None = None, cls=None):
    """(student, Pruning): a `cls` model (default diffusers WanTransformer3DModel) holding the teacher's kept
    weights. Built on the meta device and filled tensor by tensor: peak memory is teacher + student."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    tspec = check_teacher(teacher)
    if not isinstance(recipe, Recipe):
        raise RecipeError(
            f"build_student: recipe must be a wanlite Recipe, got {type(recipe).__name__}; "
            "use Recipe(**params) or Recipe.from_json(text)."
        )
    fp = teacher_fingerprint(teacher) if calibration is not None else ""
    if calibration is not None and (calibration.spec != tspec or calibration.fingerprint != fp):
        raise RecipeError(
            f"calibration was measured on another teacher ({calibration.fingerprint}, {calibration.spec}); "
            f"this teacher is {fp} ({tspec}). Run calibrate(teacher, batch) on this teacher."
        )
    spec = recipe.student_spec(tspec)
    needs_magnitude = recipe.width_selection == "magnitude" and (spec.dim, spec.ffn_dim) != (tspec.dim, tspec.ffn_dim)
    kept = select(tspec, recipe, calibration, magnitude_scores(teacher) if needs_magnitude else None)
    blocks = kept["blocks"]
    state = _sliced_state(teacher, tspec, kept)
    cls = WanTransformer3DModel if cls is None else cls
    with init_empty_weights():
        student = cls(**spec.to_diffusers_config())
    expected = set(student.state_dict())
    if expected != set(state):
        raise RecipeError(
            f"build_student: {cls.__name__} expects parameters the slicing did not produce (or vice versa): "
            f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}."
        )
    for name, tensor in student.state_dict().items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise RecipeError(
                f"build_student: {name} sliced to {list(state[name].shape)}, {cls.__name__} expects "
                f"{list(tensor.shape)}."
            )
    student.load_state_dict(state, strict=True, assign=True)
    teacher_buffers = dict(teacher.named_buffers())
    for name, buf in list(student.named_buffers()):  # RoPE tables: the teacher's (same device and dtype)
        if name in teacher_buffers and teacher_buffers[name].shape == buf.shape:
            module, _, attr = name.rpartition(".")
            student.get_submodule(module)._buffers[attr] = teacher_buffers[name].clone()
    student.to(next(teacher.parameters()).device)
    student.train(teacher.training)
    student.pruning = pruning = Pruning(
        tspec,
        spec,
        recipe,
        blocks,
        kept["self_heads"],
        kept["cross_heads"],
        kept["channel"],
        kept["ffn"],
        {
            k: kept[k]
            for k in ("text_hidden", "time_hidden", "text_context", "image_context")
            if k != "image_context" or tspec.has_image_embedder
        },
        fp or teacher_fingerprint(teacher),
        calibration.batch_key if calibration is not None else "",
    )
    return student, pruning


# ---------------------------------------------------------------- init-quality report
@dataclass
class InitRow:
    """One recipe's student vs the teacher, before training."""

    name: str  # the recipe's name in the report
    pruning: Pruning  # what was kept
    rel_mse: list[float]  # ||v_s - v_t||^2 / ||v_t||^2 per sigma (1.0 = as good as predicting zero)
    cosine: list[float]  # cos(v_s, v_t) per sigma

    @property
    def mean_rel_mse(self) -> float:
        return sum(self.rel_mse) / len(self.rel_mse)


@dataclass
class InitReport:
    """Recipes ranked by how close their untrained students are to the teacher on held-out inputs."""

    sigmas: tuple[float, ...]  # noise levels measured
    rows: list[InitRow] = field(default_factory=list)  # one per recipe, in the order given

    @property
    def best(self) -> str:
        return min(self.rows, key=lambda r: r.mean_rel_mse).name

    def __repr__(self) -> str:
        w = max([len(r.name) for r in self.rows] + [6])
        head = (
            f"{'recipe':<{w}}  params  blocks heads   ffn  "
            + "  ".join(f"err@{s:<5.2g}" for s in self.sigmas)
            + "  mean err  mean cos"
        )
        lines = [
            "InitReport: relative velocity error ||v_s - v_t||^2/||v_t||^2 vs the teacher (lower is better; "
            "1.0 = predicting zero)",
            head,
        ]
        for r in sorted(self.rows, key=lambda r: r.mean_rel_mse):
            s = r.pruning.student
            lines.append(
                f"{r.name:<{w}}  {s.num_params() / 1e6:5.1f}M  {s.num_layers:>6} {s.num_heads:>5} {s.ffn_dim:>5}  "
                + "  ".join(f"{e:9.4f}" for e in r.rel_mse)
                + f"  {r.mean_rel_mse:8.4f}  {sum(r.cosine) / len(r.cosine):8.4f}"
            )
        return "\n".join(lines)

    def plot(self):
        """Relative error per sigma, one line per recipe: a matplotlib Figure (headless-safe)."""
        fig = new_figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
        styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # recipes that agree still show apart
        for i, r in enumerate(self.rows):
            marker, line = styles[i % len(styles)]
            twin = next((q.name for q in self.rows[:i] if q.rel_mse == r.rel_mse), None)
            ax.plot(
                self.sigmas,
                r.rel_mse,
                marker=marker,
                ls=line,
                ms=7 - 1.5 * (i % len(styles)),
                mfc="none" if i % 2 else None,
                label=f"{r.name} ({r.pruning.student.num_params() / 1e6:.1f}M, mean {r.mean_rel_mse:.3g})"
                + (f": the same student as {twin}" if twin else ""),
            )
        ax.set(
            xlabel="sigma (noise level)",
            ylabel="||v_s - v_t||^2 / ||v_t||^2",
            yscale="log",
            title="student vs teacher before training (lower is better)",
        )
        ax.legend(fontsize=8)
        return fig


@torch.no_grad()
def init_report(
    teacher,
    recipes: Mapping[str, Recipe],
    calibration: Calibration | None,
    heldout: Mapping,
    sigmas: Sequence[float] | None = None,
    seed: int = 1,
    cls=None,
) -> InitReport:
    """Build each recipe's student in turn (one at a time in memory) and measure its velocity error vs the
    teacher on held-out inputs (same format as the calibration batch) at each sigma (default 0.1 ... 0.9;
    a held-out batch with its own timestep is used as given)."""
    spec = check_teacher(teacher)
    if sigmas is None and "timestep" not in heldout:
        sigmas = REPORT_SIGMAS
    runs = prepare_batch(spec, heldout, sigmas, seed, where="held-out batch")
    targets = [wan_forward(teacher, **kw) for _, kw in runs]
    report = InitReport(tuple(s if s is not None else float("nan") for s, _ in runs))
    for name, recipe in recipes.items():
        student, pruning = build_student(teacher, recipe, calibration, cls=cls)
        predictions = [wan_forward(student, **kw) for _, kw in runs]
        report.rows.append(
            InitRow(
                name,
                pruning,
                [rel_mse(vs, vt) for vs, vt in zip(predictions, targets)],
                [cosine(vs, vt) for vs, vt in zip(predictions, targets)],
            )
        )
        del student
    return report
