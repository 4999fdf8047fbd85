"""`wanlite sweep --grid FILE [--jobs N] [--resume]`: which student should I train? Many recipes x objectives x
sampling steps on one toy teacher, each point measured the same way, into one leaderboard and one Pareto figure.

runs/<sweep>/
  grid.yaml                 the points as run (resolved settings)
  data/                     toy-world latents (one cache for every point)
  calibration/              the teacher's importance scores (computed once)
  targets/<objective>-<key>/  the teacher's velocities (guided: at its guidance) and block outputs, made once:
                            velocity and guided points train from them with no teacher loaded
  teacher.json              the teacher's own rows (at its settings and at `teacher_steps`)
  <point>/distill/          the point's run (config.yaml, metrics.jsonl, student/)
  <point>/result.json       its rows, or its error: written last, so --resume skips exactly the finished points
  leaderboard.csv, leaderboard.md, pareto.png

Points call the package (`build_student`, `distill`, `compare`, `toy.evaluate`) directly rather than papermill per
point: the notebooks add figures a sweep does not look at, each would start a kernel and reload diffusers and the
teacher (~15 s each, three notebooks a point), and one process shares the teacher, its calibration and its target
caches in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError, DestinationExistsError, WanliteError, describe

TOP_KEYS = {
    "name": "the sweep's name: outputs go to runs/<name>/ (default: the grid file's name)",
    "teacher": 'a toy teacher bundle directory (teacher/, vae.safetensors, toy.json); "" = the shipped one',
    "samples": "toy-world clips in the shared latents cache",
    "seed": "seeds the clips, the calibration batch and the target caches' noise",
    "calibration_prompts": "clips in the teacher's calibration batch (importance scores)",
    "prompts": "captions compare samples for PSNR, velocity error and cost",
    "repeats": "timed forwards per model in compare",
    "teacher_steps": "reference rows: the teacher itself sampled at these step counts",
    "base": "settings every point starts from",
    "grid": "axes: {axis: {label: settings}}; every combination is a point named label-label-...",
    "points": "explicit points: {name: settings}",
    "exclude": "grid points to leave out (names)",
}
RECIPE_KEYS = ("num_blocks", "blocks", "num_heads", "ffn_dim", "width_selection", "block_score")
FRACTION_KEYS = ("depth", "width")  # kept fractions (Recipe.from_fractions) instead of counts
SWEEP_KEYS = ("sample_steps",)  # extra rows: the trained student sampled at other step counts
RESERVED = ("run_dir", "teacher", "student", "recipe", "data", "block_map", "export")  # the sweep sets these
CACHED = ("velocity", "guided")  # objectives that train from a teacher-target cache (no live teacher)
# under every point's settings; a killed point resumes from its last checkpoint
DEFAULTS = dict(progress=False, checkpoint_every=100, keep_checkpoints=1, lr_scheduler="cosine")
MEASURED = Path(__file__).resolve().parent.parent / "docs" / "sweep-toy"  # the README's sweep (notebook 06's default)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclass
class Grid:
    """A sweep: shared settings and its points, in order (name -> settings)."""

    name: str
    path: str
    teacher: str = ""
    samples: int = 768
    seed: int = 0
    calibration_prompts: int = 16
    prompts: list[str] = field(default_factory=lambda: ["red circle moving left", "blue square moving up"])
    repeats: int = 3
    teacher_steps: list[int] = field(default_factory=list)
    points: dict[str, dict] = field(default_factory=dict)


def _distill_fields() -> set[str]:
    from .train.config import DistillConfig

    return {f.name for f in dataclasses.fields(DistillConfig)} - set(RESERVED)


def _bad(path, where: str, what: str, fix: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {what}. Fix: {fix}")


def load_grid(path) -> Grid:
    """Read and check a grid file; every problem is a ConfigError naming the file, the entry and the fix. Recipe
    feasibility (a recipe wider than the teacher) is the point's own failure, recorded when it runs."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the grid ({err.strerror}). Fix: check the path.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not YAML ({str(err).splitlines()[0]}). Fix: correct the file.") from None
    if not isinstance(raw, dict):
        raise _bad(path, "top level", f"expected a mapping, found {type(raw).__name__}", "see params/sweep-toy.yaml")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _bad(path, f"key(s) {unknown}", "not known", f"use only {sorted(TOP_KEYS)}")
    grid = Grid(name=str(raw.get("name") or path.stem), path=str(path))
    for key, kind in (("teacher", str), ("samples", int), ("seed", int), ("calibration_prompts", int)):
        if key in raw:
            setattr(grid, key, _typed(path, key, raw[key], kind))
    if "repeats" in raw:
        grid.repeats = _typed(path, "repeats", raw["repeats"], int)
    if "prompts" in raw:
        grid.prompts = _list(path, "prompts", raw["prompts"], str)
    if "teacher_steps" in raw:
        grid.teacher_steps = _list(path, "teacher_steps", raw["teacher_steps"], int, positive=True)
    if not NAME.match(grid.name):
        raise _bad(path, "name", f"{grid.name!r} is not a folder name", "letters, digits and _ . = + - only")
    base = _settings(path, "base", raw.get("base") or {})
    points = {}
    axes = raw.get("grid") or {}
    if not isinstance(axes, dict):
        raise _bad(path, "grid", "expected {axis: {label: settings}}", "see params/sweep-toy.yaml")
    options = []
    for axis, labels in axes.items():
        if not isinstance(labels, dict) or not labels:
            raise _bad(
                path, f"grid.{axis}", "expected a non-empty mapping {label: settings}", "give each option a label"
            )
        options.append([(str(label), _settings(path, f"grid.{axis}.{label}", s)) for label, s in labels.items()])
    for combo in itertools.product(*options) if options else []:
        name = "-".join(label for label, _ in combo)
        merged = dict(base)
        for _, settings in combo:
            merged.update(settings)
        points[name] = merged
    exclude = _list(path, "exclude", raw.get("exclude") or [], str)
    missing = [n for n in exclude if n not in points]
    if missing:
        raise _bad(path, "exclude", f"{missing} are not grid points", f"grid points are {sorted(points)}")
    for name in exclude:
        del points[name]
    explicit = raw.get("points") or {}
    if not isinstance(explicit, dict):
        raise _bad(path, "points", "expected {name: settings}", "name each point")
    for name, settings in explicit.items():
        if str(name) in points:
            raise _bad(path, f"points.{name}", "a grid point has this name already", "rename it")
        points[str(name)] = {**base, **_settings(path, f"points.{name}", settings)}
    if not points:
        raise _bad(path, "grid / points", "no points", "give a grid of axes or a list of points")
    for name, settings in points.items():
        if not NAME.match(name) or name == "teacher" or "@" in name:
            raise _bad(path, f"point {name!r}", "not a usable folder name", "letters, digits and _ . = + - only")
        _check_point(path, name, settings)
    grid.points = points
    return grid


def _typed(path, key, value, kind):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(
            path, key, f"{value!r} is not a{'n' if kind is int else ''} {kind.__name__}", f"give a {kind.__name__}"
        )
    return value


def _list(path, key, value, kind, positive=False) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise _bad(path, key, f"{value!r} is not a list of {kind.__name__}", f"write [{kind.__name__}, ...]")
    if positive and not all(v >= 1 for v in value):
        raise _bad(path, key, f"{value!r} has a value below 1", "step counts are >= 1")
    return list(value)


def _settings(path, where: str, settings) -> dict:
    if not isinstance(settings, dict):
        raise _bad(path, where, f"expected a mapping of settings, found {settings!r}", "write {key: value, ...}")
    allowed = set(RECIPE_KEYS) | set(FRACTION_KEYS) | set(SWEEP_KEYS) | _distill_fields()
    unknown = sorted(set(settings) - allowed)
    if unknown:
        reserved = [k for k in unknown if k in RESERVED]
        fix = (
            f"{reserved} are set by the sweep for every point; remove them"
            if reserved
            else "use recipe fields (num_blocks, blocks, num_heads, ffn_dim, width_selection, block_score), "
            "fractions (depth, width), sample_steps, or DistillConfig fields"
        )
        raise _bad(path, where, f"unknown setting(s) {unknown}", fix)
    return dict(settings)


def _check_point(path, name: str, settings: dict) -> None:
    """Types and values that need no teacher: the DistillConfig and the Recipe are constructed once here."""
    from .formats.records import Recipe
    from .train.config import DistillConfig

    where = f"point {name!r}"
    try:
        DistillConfig.from_dict({**DEFAULTS, **_split(settings)[1]})
        recipe = {k: v for k, v in settings.items() if k in RECIPE_KEYS}
        Recipe(**recipe)
    except (WanliteError, TypeError) as err:
        raise _bad(
            path,
            where,
            str(err).split(" Fix")[0].rstrip("."),
            "correct that setting (in base, its grid option or the point)",
        ) from None
    if any(k in settings for k in FRACTION_KEYS) and any(k in settings for k in ("num_blocks", "num_heads", "ffn_dim")):
        raise _bad(path, where, "both fractions (depth/width) and counts", "give depth/width or counts, not both")
    for key in FRACTION_KEYS:
        if key in settings and not (isinstance(settings[key], (int, float)) and 0 < settings[key] <= 1):
            raise _bad(path, f"{where}: {key}", f"{settings[key]!r} is not in (0, 1]", "a kept fraction, e.g. 0.5")
    if "sample_steps" in settings:
        _list(path, f"{where}: sample_steps", settings["sample_steps"], int, positive=True)


def _split(settings: dict) -> tuple[dict, dict, list[int]]:
    """(recipe and fraction settings, DistillConfig fields, extra sampling step counts)."""
    recipe = {k: v for k, v in settings.items() if k in RECIPE_KEYS or k in FRACTION_KEYS}
    extra = list(settings.get("sample_steps", []))
    distill = {k: v for k, v in settings.items() if k not in recipe and k not in SWEEP_KEYS}
    return recipe, distill, extra


# --------------------------------------------------------------------------------- what every point shares
class Shared:
    """The teacher, its toy VAE and settings, the latents cache, the calibration and the target caches of a sweep
    (built on first use; a worker process rebuilds it from the files)."""

    def __init__(self, grid: Grid, out: Path):
        from . import runs, toy

        self.grid, self.out = grid, out
        self.bundle = runs.toy_bundle(grid.teacher) or Path(grid.teacher)  # not a bundle: toy.teacher says so
        self.teacher = toy.teacher(self.bundle).eval()
        self.vae = toy.load_vae(self.bundle)
        self.compare = dataclasses.replace(runs._toy_config(self.bundle), repeats=grid.repeats)
        self.sampling = self.compare.teacher_sampling()
        self.contexts = toy.encode_text(grid.prompts)
        self.negative = toy.encode_text([""])

    def data(self) -> Path:
        """Toy-world latents (encoded with this bundle's VAE), one cache for the whole sweep."""
        from . import runs

        out = self.out / "data"
        if not (out / "manifest.json").exists():
            runs.encode_toy(out, self.grid.samples, self.grid.seed, vae=self.vae, progress=False, log=lambda line: None)
        return out

    def calibration(self):
        from . import runs
        from .compress import calibrate

        batch = runs.toy_batch(self.grid.calibration_prompts, self.grid.seed, vae=self.vae)
        return calibrate(self.teacher, batch, seed=self.grid.seed, cache_dir=self.out / "calibration")

    def targets(self, cfg, feature_blocks) -> Path | None:
        """The teacher-target cache a point of this config trains from (made once, shared), or None when its
        objective needs the live teacher."""
        if cfg.objective not in CACHED:
            return None
        from .train import write_teacher_targets
        from .train.data import CachedSource
        from .train.inputs import Noising
        from .train.objectives.base import student_sampling

        guidance = cfg.guidance if cfg.objective == "guided" else None
        schedule = None
        if cfg.sigma_sampling == "student":
            schedule = tuple(student_sampling(cfg, cfg.objective).schedule()[:-1])
        noising = Noising(cfg.shift, cfg.sigma_sampling, 0.0 if guidance else cfg.uncond_fraction, schedule)
        key = json.dumps([guidance, dataclasses.asdict(noising), sorted(feature_blocks), self.grid.seed])
        out = self.out / "targets" / f"{cfg.objective}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        if not (out / "manifest.json").exists():
            source = CachedSource(self.data())
            write_teacher_targets(
                self.teacher,
                source,
                out,
                noising=noising,
                feature_blocks=feature_blocks,
                seed=self.grid.seed,
                batch_size=16,
                teacher_name=str(self.bundle),
                guidance=guidance,
                overwrite=True,
            )
        return out


# --------------------------------------------------------------------------------------------- measuring
def measure(shared: Shared, model, sampling, name: str, kind: str = "student", reference: bool = False) -> dict:
    """One leaderboard row: `model` sampled with `sampling`, against the teacher at its own settings (compare:
    PSNR, velocity error, cost, on the grid's prompts) and prompt adherence over all 48 captions."""
    from . import toy
    from .evaluate import compare

    config = dataclasses.replace(shared.compare, student_sampling=sampling)
    comp = compare(
        shared.teacher,
        model,
        shared.contexts,
        prompts=shared.grid.prompts,
        negative_context=shared.negative,
        vae=shared.vae,
        config=config,
    )
    s, cost = comp.summary_dict(), comp.cost
    adherence = toy.evaluate(model, sampling=sampling, vae=shared.vae).as_dict()
    velocity = s.get("velocity_guided_rel_mse", s.get("velocity_cfg-free_rel_mse"))
    pruning = getattr(model, "pruning", None)
    c = model.config
    row = {
        "point": name,
        "kind": kind,
        "recipe": f"{len(model.blocks)} blocks x {c.num_attention_heads} heads, ffn {c.ffn_dim}"
        + (f" ({pruning.recipe.blocks}: {pruning.kept_blocks})" if pruning is not None else ""),
        "objective": sampling.objective or ("teacher" if kind == "teacher" else "velocity"),
        "sampling": f"{sampling.solver} {sampling.steps} steps, cfg {sampling.guidance:g}",
        "params": cost.student.params,
        "forwards_per_video": sampling.forwards,
        "flops_per_video": cost.student.flops_per_video,
        "video_flops_ratio": cost.video_flops_ratio,
        "wall_per_video_s": cost.student.sample_s,
        "video_speedup": cost.sample_speedup,
        **{k: adherence[k] for k in ("colour", "shape", "direction", "all")},
        "pixel_psnr_db": None if reference else s.get("pixel_psnr_db"),
        "latent_psnr_db": None if reference else s.get("final_latent_psnr_db"),
        "velocity_rel_mse": None if kind == "teacher" else velocity,  # the teacher against itself: 0, says nothing
        "status": "ok",
    }
    return row


def teacher_rows(shared: Shared, log=print) -> list[dict]:
    """The teacher at its own settings (the reference), and at each of the grid's `teacher_steps`."""
    where = shared.out / "teacher.json"
    settings = {"prompts": shared.grid.prompts, "repeats": shared.grid.repeats, "steps": shared.grid.teacher_steps}
    found = json.loads(where.read_text()) if where.exists() else {}
    if isinstance(found, dict) and found.get("settings") == settings:  # measured with these settings: reused
        return found["rows"]
    rows = [measure(shared, shared.teacher, shared.sampling, "teacher", "teacher", reference=True)]
    for k in shared.grid.teacher_steps:
        how = dataclasses.replace(shared.sampling, steps=k)
        rows.append(measure(shared, shared.teacher, how, f"teacher@{k}", "teacher"))
    _write_json(where, {"settings": settings, "rows": rows})
    for r in rows:
        log(f"  {r['point']}: {_summary(r)}")
    return rows


def run_point(shared: Shared, name: str, settings: dict, log=print) -> dict:
    """Build, distil and measure one point into runs/<sweep>/<point>/; its result (rows, or the error) is
    returned and written to result.json. Any failure is caught and recorded: the sweep goes on."""
    out = shared.out / name
    start = time.perf_counter()
    try:
        rows = _train_and_measure(shared, name, settings, out, log)
        result = {"point": name, "settings": settings, "status": "ok", "rows": rows}
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 -- a failing point is recorded, never fatal to the sweep
        message = f"{type(err).__name__}: {describe(err)}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(traceback.format_exc())
        log(f"  {name}: FAILED ({message}); traceback in {out / 'error.txt'}")
        row = {"point": name, "kind": "student", "status": "failed", "error": message}
        result = {"point": name, "settings": settings, "status": "failed", "error": message, "rows": [row]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(out / "result.json", result)
    return result


def _train_and_measure(shared: Shared, name: str, settings: dict, out: Path, log) -> list[dict]:
    from .compress import WanLiteStudent
    from .formats.records import Recipe
    from .train import DistillConfig, distill

    recipe_fields, distill_fields, extra_steps = _split(settings)
    fractions = {k: recipe_fields.pop(k) for k in FRACTION_KEYS if k in recipe_fields}
    recipe = (
        Recipe.from_fractions(shared.teacher, **fractions, **recipe_fields) if fractions else Recipe(**recipe_fields)
    )
    student = WanLiteStudent.from_teacher(shared.teacher, recipe, shared.calibration())
    cfg = DistillConfig.from_dict({**DEFAULTS, **distill_fields, "run_dir": str(out / "distill")})
    features = list(range(len(shared.teacher.blocks))) if cfg.w_feat > 0 else []
    targets = shared.targets(cfg, features)
    cfg = cfg.replace(data=str(targets or shared.data()))
    log(f"  {name}: {student.spec}; {cfg.objective}, {cfg.steps} steps, from {'targets' if targets else 'teacher'}")
    t0 = time.perf_counter()
    result = distill(cfg, teacher=None if targets else shared.teacher, student=student, resume=True)
    train_s = time.perf_counter() - t0
    model = result.student.eval()
    own = getattr(model, "sampling", None) or shared.sampling
    rows = []
    for k in [own.steps] + [k for k in extra_steps if k != own.steps]:
        how = own if k == own.steps else dataclasses.replace(own, steps=k, sigmas=None)
        label = name if k == own.steps else f"{name}@{k}"
        held_out = {
            "val_rel_mse_start": result.validation[0]["rel_mse"],
            "val_rel_mse_end": result.validation[-1]["rel_mse"],
        }
        rows.append(measure(shared, model, how, label) | held_out | {"train_s": round(train_s, 1)})
        log(f"  {label}: {_summary(rows[-1])}")
    return rows


def _summary(row: dict) -> str:
    return (
        f"colour {row['colour']:.0%} shape {row['shape']:.0%} direction {row['direction']:.0%}, "
        f"{row['forwards_per_video']} forwards, {row['video_flops_ratio']:.2f}x fewer FLOPs/video"
    )


def _write_json(path: Path, obj) -> None:
    from .formats.io import replace_file

    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(obj, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    """Where a sweep wrote, its leaderboard and what each point did."""

    out: Path
    leaderboard: object  # evaluate.leaderboard.Leaderboard
    ran: list[str]
    skipped: list[str]
    failed: list[str]

    def __repr__(self) -> str:
        return (
            f"SweepResult({self.out}: ran {len(self.ran)}, skipped {len(self.skipped)} finished, "
            f"{len(self.failed)} failed{' ' + str(self.failed) if self.failed else ''}; {self.out / 'leaderboard.md'})"
        )


def _worker(grid: Grid, out: str, name: str) -> dict:
    """A point in its own process (--jobs > 1): the shared files exist; the models are loaded again here."""
    return run_point(Shared(grid, Path(out)), name, grid.points[name], log=lambda m: print(m, flush=True))


def run_sweep(grid: Grid | str | Path, runs_dir="runs", jobs: int = 1, resume: bool = False, log=print) -> SweepResult:
    """Run every point of `grid` into runs/<name>/ and write the leaderboard (CSV, Markdown, Pareto figure).
    Without `resume` an existing sweep directory is refused; with it, finished points are skipped (a point whose
    settings changed since is an error) and failed ones run again."""
    from .evaluate.leaderboard import Leaderboard

    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(runs_dir) / grid.name
    if out.exists() and any(out.iterdir()) and not resume:
        raise DestinationExistsError(
            f"{out} holds a sweep already. Fix: --resume to continue it (finished points are skipped), "
            "or set another `name` in the grid."
        )
    done = {}
    for name, settings in grid.points.items():
        found = out / name / "result.json"
        if found.exists():
            previous = json.loads(found.read_text())
            if previous.get("settings") != settings:
                raise ConfigError(
                    f"{grid.path}: point {name!r} changed since {found} was measured "
                    f"(was {previous.get('settings')}). Fix: give the changed point another name, or remove "
                    f"{out / name} to measure it again."
                )
            if previous.get("status") == "ok":
                done[name] = previous
    shared = Shared(grid, out)  # a missing or broken teacher bundle stops here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "grid.json", {"grid": grid.path, "points": grid.points})
    todo = [n for n in grid.points if n not in done]
    log(f"sweep {grid.name}: {len(grid.points)} points, {len(done)} finished, {len(todo)} to run -> {out}")
    log("teacher rows:")
    rows_teacher = teacher_rows(shared, log)
    for cfg_point in todo:  # the shared caches first, in this process, so that workers only read them
        cfg = _config_of(grid.points[cfg_point])
        if cfg is not None:
            features = list(range(len(shared.teacher.blocks))) if cfg.w_feat > 0 else []
            shared.targets(cfg, features)
    shared.data(), shared.calibration()
    results = dict(done)
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(_worker, grid, str(out), name) for name in todo}
            for name, future in futures.items():
                results[name] = future.result()
    else:
        for i, name in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] {name}")
            results[name] = run_point(shared, name, grid.points[name], log)
    rows = rows_teacher + [row for name in grid.points for row in results[name]["rows"]]
    board = Leaderboard(
        rows,
        title=f"sweep {grid.name}: adherence (all three right, 48 captions) vs FLOPs per video",
        notes=[
            f"teacher: {shared.bundle} ({shared.sampling.solver} {shared.sampling.steps} steps, "
            f"cfg {shared.sampling.guidance:g}); PSNR, velocity error and cost from compare on {len(grid.prompts)} "
            "prompt(s), adherence over all 48 captions",
            f"grid: {grid.path}",
        ],
    )
    board.save(out)
    failed = [n for n in grid.points if results[n]["status"] != "ok"]
    return SweepResult(out, board, todo, list(done), failed)


def leaderboard(sweep_dir="", **options):
    """The leaderboard of a finished sweep (`runs/<name>/`, or its leaderboard.csv); empty: the toy sweep measured
    for the README (docs/sweep-toy/). `options`: Leaderboard's quality / cost."""
    from .evaluate.leaderboard import Leaderboard

    path = Path(sweep_dir) if sweep_dir else MEASURED
    path = path / "leaderboard.csv" if path.is_dir() or not path.suffix else path
    if not path.is_file():
        raise ConfigError(
            f"{path}: no leaderboard here. Fix: run `wanlite sweep --grid FILE` first and give its runs/<name>/."
        )
    notes = (
        (path.parent / "leaderboard.md").read_text().splitlines() if (path.parent / "leaderboard.md").is_file() else []
    )
    board = Leaderboard.from_csv(path, **options)
    board.notes = [line[2:] for line in notes if line.startswith("- ")]
    return board


def _config_of(settings: dict):
    from .train.config import DistillConfig

    return DistillConfig.from_dict({**DEFAULTS, **_split(settings)[1]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="wanlite sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", required=True, help="the grid file (e.g. params/sweep-toy.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="points run at once, one process each (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue a sweep: skip its finished points")
    parser.add_argument("--runs-dir", default="runs", help="where runs/<name>/ goes (default runs)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print("wanlite sweep: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run_sweep(
            args.grid, args.runs_dir, jobs=args.jobs, resume=args.resume, log=lambda m: print(m, flush=True)
        )
    except (WanliteError, OSError) as err:
        print(f"wanlite sweep: {describe(err)}", file=sys.stderr)
        return 2
    print(repr(result))
    print(result.leaderboard.to_markdown())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
