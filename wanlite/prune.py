"""Build a student from a teacher by keeping whole blocks, heads, FFN neurons and channels (`build_student`).

A `Recipe` says how many of each to keep and how to choose them; a `Pruning` records exactly which teacher
indices were kept (for the export's metadata); `init_report` ranks recipes by how close each student is to
the teacher before any training. The scores come from `wanlite.calibrate`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .calibrate import (PER_BLOCK, Calibration, calibrate, check_teacher, forward, magnitude_scores, param_axes,
                        prepare_batch, teacher_fingerprint)
from .errors import RecipeError
from .spec import COMFY_HEAD_DIM, WanSpec

__all__ = ["Recipe", "Pruning", "build_student", "init_report", "InitReport", "calibrate", "Calibration"]
DEPTH_SELECTIONS = ("uniform", "first", "importance")
WIDTH_SELECTIONS = ("importance", "magnitude")
BLOCK_SCORES = ("cosine", "skip")
REPORT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Recipe:
    """How to cut a teacher into a student. None keeps the teacher's value. JSON- and papermill-friendly."""

    num_blocks: int | None = None  # K blocks kept of the teacher's N (None: all, or len(blocks) when a list)
    blocks: str | tuple[int, ...] = "uniform"  # uniform (evenly spaced, first+last) | first | importance | indices
    num_heads: int | None = None  # heads kept per attention; student dim = num_heads * 128
    ffn_dim: int | None = None  # FFN width, one for every block (ComfyUI reads it from block 0)
    width_selection: str = "importance"  # which heads / neurons / channels: importance (calibrated) | magnitude
    block_score: str = "cosine"  # depth importance: cosine (ShortGPT 1-cos) | skip (output change, calibrate(skip_blocks=True))
    dim: int | None = None  # alternative to num_heads: must equal num_heads * 128

    def __post_init__(self):
        if isinstance(self.blocks, (list, tuple)):
            object.__setattr__(self, "blocks", tuple(self.blocks))
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.blocks):
                raise RecipeError(f"Recipe.blocks: explicit block indices must be integers; got {list(self.blocks)}.")
        elif self.blocks not in DEPTH_SELECTIONS:
            raise RecipeError(f"Recipe.blocks must be one of {DEPTH_SELECTIONS} or a list of teacher block indices; "
                              f"got {self.blocks!r}.")
        if isinstance(self.ffn_dim, (list, tuple)):
            widths = sorted(set(self.ffn_dim))
            raise RecipeError(f"Recipe.ffn_dim: per-block FFN widths {list(self.ffn_dim)} are not loadable: ComfyUI "
                              f"reads ffn_dim from block 0 and builds every block with it. Use one width, e.g. "
                              f"ffn_dim={widths[-1]} (the widest) or {int(sum(self.ffn_dim) / len(self.ffn_dim))} (the mean).")
        for name in ("num_blocks", "num_heads", "ffn_dim", "dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise RecipeError(f"Recipe.{name} must be an integer or None; got {v!r}.")
        if self.width_selection not in WIDTH_SELECTIONS:
            raise RecipeError(f"Recipe.width_selection must be one of {WIDTH_SELECTIONS}; got {self.width_selection!r}.")
        if self.block_score not in BLOCK_SCORES:
            raise RecipeError(f"Recipe.block_score must be one of {BLOCK_SCORES}; got {self.block_score!r}.")

    @classmethod
    def from_fractions(cls, teacher, depth: float = 1.0, width: float | None = None, ffn: float | None = None,
                       projection_factor: float | None = None, **fields) -> "Recipe":
        """Kept fractions -> counts: blocks round(N*depth), heads round(H*width), ffn round(F*ffn) (ffn defaults
        to width). `teacher`: its WanSpec or the model. `projection_factor` is the seeds' name for `width`."""
        teacher = teacher if isinstance(teacher, WanSpec) else check_teacher(teacher)
        if projection_factor is not None:
            if width is not None and width != projection_factor:
                raise RecipeError(f"width={width} and projection_factor={projection_factor} disagree; give one.")
            width = projection_factor
        width = 1.0 if width is None else width
        ffn = width if ffn is None else ffn
        for name, v in (("depth", depth), ("width", width), ("ffn", ffn)):
            if not 0 < v <= 1:
                raise RecipeError(f"Recipe.from_fractions: {name}={v} must be in (0, 1].")
        return cls(num_blocks=max(1, round(teacher.num_layers * depth)), num_heads=max(1, round(teacher.num_heads * width)),
                   ffn_dim=max(1, round(teacher.ffn_dim * ffn)), **fields)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks) if isinstance(self.blocks, tuple) else self.blocks
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> "Recipe":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RecipeError(f"Recipe has no field(s) {sorted(unknown)}; fields: {[f.name for f in dataclasses.fields(cls)]}.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    def student_spec(self, teacher: WanSpec) -> WanSpec:
        """The student's WanSpec; a RecipeError (with the nearest valid recipe) when it cannot be built/loaded."""
        n, h, f = teacher.num_layers, teacher.num_heads, teacher.ffn_dim
        k = self.num_blocks
        if isinstance(self.blocks, tuple):
            bad = [i for i in self.blocks if not 0 <= i < n]
            if bad:
                raise RecipeError(f"Recipe.blocks: index(es) {bad} out of range; the teacher has blocks 0..{n - 1}. "
                                  f"Nearest valid: blocks={[i for i in self.blocks if 0 <= i < n]}.")
            repeated = sorted({i for i in self.blocks if self.blocks.count(i) > 1})
            if repeated:
                raise RecipeError(f"Recipe.blocks: block(s) {repeated} repeated; each teacher block can be kept once. "
                                  f"Nearest valid: blocks={list(dict.fromkeys(self.blocks))}.")
            if k is not None and k != len(self.blocks):
                raise RecipeError(f"Recipe: num_blocks={k} but {len(self.blocks)} explicit blocks; drop num_blocks.")
            k = len(self.blocks)
        k = n if k is None else k
        if not 1 <= k <= n:
            raise RecipeError(f"Recipe.num_blocks={k}: the teacher has {n} blocks; keep between 1 and {n} "
                              f"(nearest valid: num_blocks={min(max(k, 1), n)}).")
        heads = self.num_heads
        if self.dim is not None:
            nearest = max(1, round(self.dim / COMFY_HEAD_DIM))
            if self.dim % COMFY_HEAD_DIM or self.dim <= 0:
                raise RecipeError(f"Recipe.dim={self.dim} is not a multiple of 128: ComfyUI runs dim // 128 heads of 128 "
                                  f"and would mis-load it. Nearest valid: num_heads={nearest} (dim={nearest * 128}).")
            if heads is not None and heads * COMFY_HEAD_DIM != self.dim:
                raise RecipeError(f"Recipe: dim={self.dim} and num_heads={heads} disagree (dim = num_heads * 128); give one.")
            heads = self.dim // COMFY_HEAD_DIM
        heads = h if heads is None else heads
        if heads < 1:
            raise RecipeError(f"Recipe.num_heads={heads}: a student needs at least one head (ComfyUI divides by "
                              f"dim // 128). Nearest valid: num_heads=1 (dim={teacher.head_dim}).")
        if heads > h:
            raise RecipeError(f"Recipe.num_heads={heads}: the teacher has only {h} heads; pruning cannot add heads. "
                              f"Nearest valid: num_heads={h}.")
        ffn = f if self.ffn_dim is None else self.ffn_dim
        if not 1 <= ffn <= f:
            raise RecipeError(f"Recipe.ffn_dim={ffn}: the teacher's FFN is {f} wide; keep between 1 and {f} "
                              f"(nearest valid: ffn_dim={min(max(ffn, 1), f)}).")
        student = teacher.replace(num_layers=k, num_heads=heads, dim=heads * teacher.head_dim, ffn_dim=ffn)
        new = [p for p in student.comfyui_problems() if p.field not in {q.field for q in teacher.comfyui_problems()}]
        if new:
            raise RecipeError("Recipe: ComfyUI would mis-load this student:\n" + "\n".join(f"  - {p}" for p in new))
        return student


@dataclass
class Pruning:
    """Exactly what was kept, as teacher indices (heads, channels and neurons ascending): reproducible, JSON
    for the export's metadata (`to_json`)."""

    teacher: WanSpec  # the teacher's architecture
    student: WanSpec  # the student's architecture
    recipe: Recipe  # what was asked
    kept_blocks: list[int]  # teacher block index of each student block
    kept_heads: list[list[int]]  # per student block: teacher self-attention heads kept
    kept_cross_heads: list[list[int]]  # per student block: teacher cross-attention heads kept
    kept_channels: list[int]  # teacher residual-stream channels kept (len = student dim)
    kept_ffn: list[list[int]]  # per student block: teacher FFN neurons kept
    kept_embedding: dict[str, list[int]]  # text_hidden, time_hidden, text_context[, image_context] channels kept
    teacher_fingerprint: str = ""  # weights hash of the teacher (wanlite.calibrate.teacher_fingerprint)
    calibration: str = ""  # cache key of the calibration used ("" = none needed)

    def to_dict(self) -> dict:
        from .calibrate import _spec_json

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(teacher=_spec_json(self.teacher), student=_spec_json(self.student), recipe=self.recipe.to_dict())
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> "Pruning":
        d = dict(d)
        d.update(teacher=WanSpec(**d["teacher"]), student=WanSpec(**d["student"]), recipe=Recipe.from_dict(d["recipe"]))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Pruning":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        t, s = self.teacher, self.student
        blocks = self.kept_blocks if len(self.kept_blocks) <= 16 else self.kept_blocks[:16] + ["..."]
        return (f"Pruning({t.num_params() / 1e6:.1f}M -> {s.num_params() / 1e6:.1f}M params: blocks {t.num_layers} -> "
                f"{s.num_layers} {blocks}; heads {t.num_heads} -> {s.num_heads} (dim {t.dim} -> {s.dim}); "
                f"ffn {t.ffn_dim} -> {s.ffn_dim}; blocks by {self.recipe.blocks if isinstance(self.recipe.blocks, str) else 'list'}"
                f", width by {self.recipe.width_selection})")


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
            raise RecipeError(f"Recipe: {what} needs importance scores; pass calibration=calibrate(teacher, batch)"
                              + (", or use width_selection='magnitude'." if "width" in what else "."))
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
        kept = {"channel": everything, "text_context": everything, "image_context": everything,
                "text_hidden": everything, "time_hidden": everything}
        per_block = {"self_heads": [list(range(spec.num_heads)) for _ in blocks],
                     "cross_heads": [list(range(spec.num_heads)) for _ in blocks],
                     "ffn": [list(range(spec.ffn_dim)) for _ in blocks]}
        return {"spec": spec, "blocks": blocks, **kept, **per_block}
    s = need("width_selection='importance'") if recipe.width_selection == "importance" else magnitude
    kept = {"channel": _top(s["channel_global"] + s["channel"][blocks].sum(0), spec.dim),
            "text_context": _top(s["text_context"][blocks].sum(0), spec.dim),
            "text_hidden": _top(s["text_hidden"], spec.dim), "time_hidden": _top(s["time_hidden"], spec.dim)}
    if "image_context" in s:
        kept["image_context"] = _top(s["image_context"][blocks].sum(0), spec.dim)
    per_block = {"self_heads": [_top(s["self_heads"][b], spec.num_heads) for b in blocks],
                 "cross_heads": [_top(s["cross_heads"][b], spec.num_heads) for b in blocks],
                 "ffn": [_top(s["ffn"][b], spec.ffn_dim) for b in blocks]}
    return {"spec": spec, "blocks": blocks, **kept, **per_block}


# ---------------------------------------------------------------- build
def build_student(teacher, recipe: Recipe, calibration: Calibration | None = None, cls=None):
    """(student, Pruning): a `cls` model (default diffusers WanTransformer3DModel) holding the teacher's kept
    weights. Built on the meta device and filled tensor by tensor: peak memory is teacher + student."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    tspec = check_teacher(teacher)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"build_student: recipe must be a wanlite Recipe, got {type(recipe).__name__}; "
                          "use Recipe(**params) or Recipe.from_json(text).")
    fp = teacher_fingerprint(teacher) if calibration is not None else ""
    if calibration is not None and (calibration.spec != tspec or calibration.fingerprint != fp):
        raise RecipeError(f"calibration was measured on another teacher ({calibration.fingerprint}, {calibration.spec}); "
                          f"this teacher is {fp} ({tspec}). Run calibrate(teacher, batch) on this teacher.")
    spec = recipe.student_spec(tspec)
    needs_magnitude = recipe.width_selection == "magnitude" and (spec.dim, spec.ffn_dim) != (tspec.dim, tspec.ffn_dim)
    kept = select(tspec, recipe, calibration, magnitude_scores(teacher) if needs_magnitude else None)
    blocks = kept["blocks"]
    hd = tspec.head_dim

    def indices(space: str, block: int | None) -> torch.Tensor | None:
        if space is None:
            return None
        if space == "channel6":
            return torch.cat([torch.tensor(kept["channel"]) + j * tspec.dim for j in range(6)])
        if space in PER_BLOCK:
            idx = kept[space][blocks.index(block)]
            if space != "ffn":  # heads -> their 128 channels
                idx = [h * hd + c for h in idx for c in range(hd)]
            return torch.tensor(idx)
        return torch.tensor(kept[space])

    teacher_params = dict(teacher.named_parameters())
    names = [n for n in teacher_params if not n.startswith("blocks.")]
    renames = {n: n for n in names}
    for s, t in enumerate(blocks):
        for n, _ in teacher.blocks[t].named_parameters(prefix=f"blocks.{t}"):
            renames[n] = f"blocks.{s}." + n.split(".", 2)[2]
    state = {}
    with torch.no_grad():
        for name, new_name in renames.items():
            p = teacher_params[name].detach()
            block = int(name.split(".")[1]) if name.startswith("blocks.") else None
            for axis, space in enumerate(param_axes(name)):
                idx = indices(space, block)
                if idx is not None:
                    p = p.index_select(axis, idx.to(p.device))
            state[new_name] = p.clone() if p.data_ptr() == teacher_params[name].data_ptr() else p.contiguous()
    cls = WanTransformer3DModel if cls is None else cls
    with init_empty_weights():
        student = cls(**spec.to_diffusers_config())
    expected = set(student.state_dict())
    if expected != set(state):
        raise RecipeError(f"build_student: {cls.__name__} expects parameters the slicing did not produce (or vice versa): "
                          f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}.")
    for name, tensor in student.state_dict().items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise RecipeError(f"build_student: {name} sliced to {list(state[name].shape)}, {cls.__name__} expects "
                              f"{list(tensor.shape)}.")
    student.load_state_dict(state, strict=True, assign=True)
    teacher_buffers = dict(teacher.named_buffers())
    for name, buf in list(student.named_buffers()):  # RoPE tables: the teacher's (same device and dtype)
        if name in teacher_buffers and teacher_buffers[name].shape == buf.shape:
            module, _, attr = name.rpartition(".")
            student.get_submodule(module)._buffers[attr] = teacher_buffers[name].clone()
    student.to(next(teacher.parameters()).device)
    student.train(teacher.training)
    pruning = Pruning(tspec, spec, recipe, blocks, kept["self_heads"], kept["cross_heads"], kept["channel"], kept["ffn"],
                      {k: kept[k] for k in ("text_hidden", "time_hidden", "text_context", "image_context")
                       if k != "image_context" or tspec.has_image_embedder},
                      fp or teacher_fingerprint(teacher), calibration.batch_key if calibration is not None else "")
    return student, pruning


# ---------------------------------------------------------------- init-quality report
@dataclass
class InitRow:
    """One recipe's student vs the teacher, before training."""

    name: str  # the recipe's name in the report
    pruning: Pruning  # what was kept
    rel_error: list[float]  # ||v_s - v_t||^2 / ||v_t||^2 per sigma (1.0 = as good as predicting zero)
    cosine: list[float]  # cos(v_s, v_t) per sigma

    @property
    def mean_error(self) -> float:
        return sum(self.rel_error) / len(self.rel_error)


@dataclass
class InitReport:
    """Recipes ranked by how close their untrained students are to the teacher on held-out inputs."""

    sigmas: tuple[float, ...]  # noise levels measured
    rows: list[InitRow] = field(default_factory=list)  # one per recipe, in the order given

    @property
    def best(self) -> str:
        return min(self.rows, key=lambda r: r.mean_error).name

    def __repr__(self) -> str:
        w = max([len(r.name) for r in self.rows] + [6])
        head = (f"{'recipe':<{w}}  params  blocks heads   ffn  " + "  ".join(f"err@{s:<5.2g}" for s in self.sigmas)
                + "  mean err  mean cos")
        lines = ["InitReport: relative velocity error ||v_s - v_t||^2/||v_t||^2 vs the teacher (lower is better; "
                 "1.0 = predicting zero)", head]
        for r in sorted(self.rows, key=lambda r: r.mean_error):
            s = r.pruning.student
            lines.append(f"{r.name:<{w}}  {s.num_params() / 1e6:5.1f}M  {s.num_layers:>6} {s.num_heads:>5} {s.ffn_dim:>5}  "
                         + "  ".join(f"{e:9.4f}" for e in r.rel_error)
                         + f"  {r.mean_error:8.4f}  {sum(r.cosine) / len(r.cosine):8.4f}")
        return "\n".join(lines)

    def plot(self):
        """Relative error per sigma, one line per recipe: a matplotlib Figure (headless-safe)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
        for r in self.rows:
            ax.plot(self.sigmas, r.rel_error, "o-", label=f"{r.name} ({r.pruning.student.num_params() / 1e6:.1f}M)")
        ax.set(xlabel="sigma (noise level)", ylabel="||v_s - v_t||^2 / ||v_t||^2", yscale="log",
               title="student vs teacher before training (lower is better)")
        ax.legend(fontsize=8)
        return fig


@torch.no_grad()
def init_report(teacher, recipes: Mapping[str, Recipe], calibration: Calibration | None, heldout: Mapping,
                sigmas: Sequence[float] | None = None, seed: int = 1, cls=None) -> InitReport:
    """Build each recipe's student in turn (one at a time in memory) and measure its velocity error vs the
    teacher on held-out inputs (same format as the calibration batch) at each sigma (default 0.1 ... 0.9;
    a held-out batch with its own timestep is used as given)."""
    spec = check_teacher(teacher)
    if sigmas is None and "timestep" not in heldout:
        sigmas = REPORT_SIGMAS
    runs = prepare_batch(spec, heldout, sigmas, seed, where="held-out batch")
    targets = [forward(teacher, kw).double() for _, kw in runs]
    report = InitReport(tuple(s if s is not None else float("nan") for s, _ in runs))
    for name, recipe in recipes.items():
        student, pruning = build_student(teacher, recipe, calibration, cls=cls)
        errors, cosines = [], []
        for (_, kw), vt in zip(runs, targets):
            vs = forward(student, kw).double()
            errors.append(float((vs - vt).pow(2).sum() / vt.pow(2).sum().clamp_min(1e-30)))
            cosines.append(float(torch.nn.functional.cosine_similarity(vs.flatten(), vt.flatten(), dim=0)))
        report.rows.append(InitRow(name, pruning, errors, cosines))
        del student
    return report
