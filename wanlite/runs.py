"""A run directory's artifacts, and what a notebook uses when an upstream notebook has not run.

runs/<run>/
  teacher.json          which teacher (01)           calibration/  calibration cache (01)
  recipe.json           what the student is made of (01: a changed recipe is refused, never resumed into)
  student_init/         pruned, untrained (01)        distill/      config, checkpoints, metrics.jsonl (02)
  data/                 latents cache (00 or 02)      distill/student/  distilled student (02)
  distill/origin.json   the student 02 started from  export/       wan/, comfyui/, diffusers/ (03)
  compare/              figures, metrics.json, report (05)
Every notebook reads from here and writes here, so they chain under papermill and each also runs alone.
Also what the notebooks feed the models: the device (`auto_device`), calibration batches (`prompt_batch`) and the
text conditioning (`runs.conditioning`, from wanlite.conditioning: a prompts cache, umT5 run now, or seeded random
contexts that say so).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from .conditioning import (  # noqa: F401  (runs.conditioning & co: the names the notebooks use)
    RANDOM_NOTE,
    Conditioning,
    cache_captions,
    check_sources,
    conditioning,
    fit_text_len,
    is_toy,
    loud,
    open_cache,
    random_conditioning,
    toy_bundle,
)
from .evaluate import CompareConfig, Comparison, compare
from .formats.io import replace_file

STUDENT_INIT, DISTILL, EXPORT, COMPARE, DATA = "student_init", "distill", "export", "compare", "data"
STUDENT = f"{DISTILL}/student"  # where distill() exports the trained student


def load_teacher(teacher_path: str = "", run_dir=None, device: str = "cpu", torch_dtype=None, expert=None):
    """The teacher: the shipped toy teacher when `teacher_path` is empty (the embedded default), a toy bundle's
    (`python -m wanlite.toy train --out DIR`, or the shipped deeper one) when it names one, else any Wan layout
    `load_wan` reads. With a run_dir, the choice is remembered for later notebooks."""
    from . import toy
    from .formats import load_wan

    teacher_path = teacher_of(run_dir, teacher_path)
    bundle = toy_bundle(teacher_path)
    if bundle is None:
        model = load_wan(teacher_path, torch_dtype=torch_dtype, device=device, expert=expert)
    else:
        model = toy.teacher(bundle, torch_dtype=torch_dtype or torch.float32, device=device)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "teacher.json").write_text(json.dumps({"teacher_path": teacher_path or "toy"}) + "\n")
    return model


def teacher_of(run_dir, teacher_path: str = "") -> str:
    """`teacher_path`, or when empty the teacher the run directory's teacher.json remembers ("toy" by default)."""
    if run_dir is not None and not teacher_path and (Path(run_dir) / "teacher.json").exists():
        return json.loads((Path(run_dir) / "teacher.json").read_text())["teacher_path"]
    return teacher_path or "toy"


def teacher_spec(teacher_path: str = "", run_dir=None):
    """The teacher's `WanSpec` without loading its weights (a toy bundle's from its teacher/ folder)."""
    from .formats import inspect_wan

    teacher_path = teacher_of(run_dir, teacher_path)
    bundle = toy_bundle(teacher_path)
    return inspect_wan(bundle / "teacher" if bundle is not None else teacher_path).spec


def toy_batch(prompts: int, seed: int = 0, vae=None) -> dict:
    """`prompts` toy-world clips (captions spread over the 48, from `seed`) as latents of the toy VAE (`vae`:
    another bundle's) and caption embeddings: calibration and held-out batches of a toy teacher."""
    from . import toy

    caps = toy.captions()
    chosen = [caps[(seed * 7 + i * 5) % len(caps)] for i in range(prompts)]
    vae = vae or toy.load_vae()
    return {
        "latents": vae.encode(toy.batch(chosen, [seed + i for i in range(prompts)])),
        "context": toy.encode_text(chosen),
    }


def prompt_batch(
    teacher, teacher_path: str, prompts: int, seed: int = 0, frames: int = 1, size: int = 32, data="", conditioning=None
) -> dict:
    """Clean latents + text embeddings for calibration or held-out checks: toy-world clips and captions for the
    toy teacher; else samples of the latents cache `data` (its latents and their captions' embeddings: samples
    seed*prompts onwards, so seed and seed+1 give disjoint batches); else Gaussian latents with the contexts of
    `conditioning` (a `Conditioning`: a prompts cache, umT5, or seeded random ones, which it announces)."""
    from .compress import noise_batch
    from .formats import spec_of

    if is_toy(teacher_path):
        return toy_batch(prompts, seed, vae=toy_vae(teacher_path))
    spec = spec_of(teacher)
    if data:
        cache = open_cache(data, ("latents",), "data", spec)
        picked = [cache[(seed * prompts + i) % len(cache)] for i in range(min(prompts, len(cache)))]
        return {
            "latents": torch.stack([s["latents"].float() for s in picked]),
            "context": fit_text_len(torch.stack([s["context"].float() for s in picked]), spec, f"data={data}"),
        }
    if conditioning is None:
        conditioning = random_conditioning(spec, prompts, seed)
        conditioning.announce()
    context = conditioning.contexts[[i % len(conditioning.contexts) for i in range(prompts)]]  # cycled if fewer
    return noise_batch(spec, context, frames=frames, height=size, width=size, seed=seed)


def check_data(path, field: str, teacher):
    """02: the cache it trains on (`data` or `prompts_cache`), opened and checked against the teacher (text width,
    latent channels) before any model is trained on it; a ConfigError naming the parameter and the fix if not."""
    from .formats import spec_of
    from .train.data import KINDS

    return open_cache(path, KINDS, field, spec_of(teacher))


def load_student(run_dir, teacher_path: str = "", device="cpu", initial: bool = False, torch_dtype=None):
    """The newest student of a run: distilled (02), else pruned (01), else a default half-depth student built
    from the teacher now (so a later notebook runs alone). `initial` skips the distilled one."""
    from .compress import Recipe, WanLiteStudent
    from .formats import spec_of

    run_dir = Path(run_dir)
    for name in (STUDENT_INIT,) if initial else (STUDENT, STUDENT_INIT):
        if (run_dir / name / "config.json").exists():
            return WanLiteStudent.from_pretrained(run_dir / name, device=device, torch_dtype=torch_dtype)
    if (run_dir / RECIPE).is_file():  # 01 claimed this run for its recipe: a default student would not be it
        from .errors import ConfigError

        raise ConfigError(
            f"{run_dir / RECIPE} records this run's recipe, but {run_dir / STUDENT_INIT} holds no student (01 was "
            "interrupted, or it was removed): a default student here would run under that recipe's name. Fix: run "
            "01 again (it builds student_init/), or use a new run name."
        )
    teacher = load_teacher(teacher_path, run_dir, torch_dtype=torch_dtype)
    recipe = Recipe(num_blocks=max(1, spec_of(teacher).num_layers // 2), width_selection="magnitude")
    student = WanLiteStudent.from_teacher(teacher, recipe)
    print(f"no student in {run_dir}: built a default one ({recipe}) from the teacher")
    return student.to(device)


def initial_student(run_dir, teacher_path: str = "", start_from: str = "", device="cpu", torch_dtype=None):
    """The student 02 trains: 01's student_init, or `start_from`, a distilled student of the same recipe (e.g. a
    `guided` one that `dmd` refines: a two-stage recipe). A student of another recipe is refused: its weights
    would not be what this run's recipe.json, pruning record and comparisons describe."""
    from .compress import WanLiteStudent
    from .errors import ConfigError

    student = load_student(run_dir, teacher_path, device=device, initial=True, torch_dtype=torch_dtype)
    if not start_from:
        return student
    if not (Path(start_from) / "config.json").is_file():
        raise ConfigError(
            f"start_from={start_from}: no student there (no config.json). Fix: give a run's student/ "
            "directory, e.g. runs/<run>/student, or leave start_from empty to start from 01's student_init."
        )
    given = WanLiteStudent.from_pretrained(start_from, device=device, torch_dtype=torch_dtype)
    if given.pruning != student.pruning:
        raise ConfigError(
            f"start_from={start_from}: that student was pruned differently ({given.pruning}) from this run's "
            f"({student.pruning}). Fix: start from a student of this run's recipe, or run its recipe under "
            "its own run name."
        )
    print(f"starting from {start_from} ({given.sampling or 'no sampling record'})")
    return given


RECIPE, ORIGIN = "recipe.json", "origin.json"  # run_dir/recipe.json (01), run_dir/distill/origin.json (02)
# what a recipe's student made (an overwrite replaces recipe.json in place); distill/, what is resumed into, first
DERIVED = (DISTILL, STUDENT_INIT, EXPORT, COMPARE, "init_report.json")
REMOVING = ".overwrite-removing"  # run_dir/REMOVING: what an overwrite moved aside, deleted at once (or next time)


def claim_recipe(run_dir, asked: dict, overwrite: bool = False) -> bool:
    """01: tie the run directory to what its student is made of (`asked`: teacher, recipe and calibration
    settings) in run_dir/recipe.json. True: build student_init/ now; False: it already holds this recipe's student
    (kept, never silently replaced, `overwrite` or not). A different recipe under the same run is refused (its
    checkpoints would be resumed into the new student); with `overwrite` the old recipe's student, distillation,
    exports and comparison are removed first (so a leftover `overwrite: true` never wipes a run of the same recipe;
    nothing else in the run directory is touched). The removal first moves them aside in one rename each, so an
    interrupted overwrite leaves either the old run or nothing of it, never half a distillation to resume."""
    from .errors import DestinationExistsError

    run = Path(run_dir)
    if (run / REMOVING).exists():  # an overwrite interrupted after moving things aside: finish deleting them
        shutil.rmtree(run / REMOVING)
    record = run / RECIPE
    before = json.loads(record.read_text()).get("asked") if record.is_file() else None
    held = [name for name in (STUDENT_INIT, DISTILL) if (run / name).exists()]
    if before == asked and (run / STUDENT_INIT / "config.json").is_file():  # even with overwrite: nothing changed
        print(f"{run / STUDENT_INIT} already holds this recipe's student: kept")
        return False
    if held and before != asked and not overwrite:
        changed = sorted(k for k in set(asked) | set(before or {}) if (before or {}).get(k) != asked.get(k))
        diffs = ", ".join(f"{k}: {(before or {}).get(k)!r} -> {asked.get(k)!r}" for k in changed)
        raise DestinationExistsError(
            f"{run}: this run was made with another recipe ({diffs or 'no recipe.json recorded'}); it holds "
            f"{', '.join(held)} of that recipe, which a later notebook would resume into the new student. Fix: "
            "a new run name (--run NAME, or run_dir), or overwrite=True to delete that run's student_init/, "
            "distill/, export/ and compare/ and start over."
        )
    removed = [name for name in DERIVED if overwrite and before != asked and (run / name).exists()]
    if removed:
        (run / REMOVING).mkdir()
        for name in removed:  # one rename each: atomic, and instant even for a distillation of many GB
            (run / name).rename(run / REMOVING / name)
    run.mkdir(parents=True, exist_ok=True)
    replace_file(record, json.dumps({"asked": asked}, indent=1) + "\n")  # until 01 ends: no student to load
    if removed:
        shutil.rmtree(run / REMOVING)
        print(f"overwrite: removed {', '.join(removed)} of {run}")
    return True


def record_student(run_dir, recipe) -> None:
    """01: the recipe the init report chose, beside what was asked (run_dir/recipe.json)."""
    record = Path(run_dir) / RECIPE
    replace_file(record, json.dumps({**json.loads(record.read_text()), "chosen": recipe.to_dict()}, indent=1) + "\n")


def claim_distill(run_dir, student) -> None:
    """02: a distillation belongs to the student it started from (its pruning record's hash, in
    distill/origin.json; for a run older than origin.json, the pruning.json `distill` wrote); a run whose student
    has changed since is refused, never resumed into."""
    from .errors import DestinationExistsError
    from .formats import Pruning

    folder = Path(run_dir) / DISTILL
    pruning = getattr(student, "pruning", None)
    origin = {"student": pruning.sha256() if pruning is not None else None, "spec": str(student.spec)}
    saved, record = folder / ORIGIN, folder / "pruning.json"
    before = json.loads(saved.read_text()) if saved.is_file() else None
    if before is None and record.is_file():  # a distillation begun before origin.json existed
        sha = Pruning.from_json(record.read_text()).sha256()
        before = origin if sha == origin["student"] else {"student": sha, "spec": "the student of its pruning.json"}
    if before is not None and before != origin:
        raise DestinationExistsError(
            f"{folder}: this distillation started from another student ({before['spec']}; now {origin['spec']}); "
            "resuming would load its checkpoints into a different network. Fix: a new run name (--run NAME, or "
            "run_dir), or rebuild with 01's overwrite=True (it removes distill/)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    replace_file(saved, json.dumps(origin) + "\n")


def toy_vae(teacher_path: str = ""):
    """The toy VAE of a toy teacher (`teacher_path`: empty for the shipped one, or a bundle): the one it was
    trained with, which its latents, decoded strips and adherence scores need."""
    from . import toy
    from .errors import ConfigError

    bundle = toy_bundle(teacher_path)
    if bundle is None:
        raise ConfigError(
            f"teacher_path={teacher_path}: not a toy-world teacher, and toy-world clips are latents of a toy "
            "teacher's VAE. Fix: give videos (and models: a Diffusers Wan directory) to encode your own clips, or "
            "leave teacher_path empty (the shipped toy teacher) or name a toy bundle (toy.json, vae.safetensors)."
        )
    return toy.load_vae(bundle)


def toy_data(run_dir, samples: int, seed: int = 0, teacher_path: str = "") -> Path:
    """A latents cache of toy-world clips (latents of the toy teacher's VAE -- `teacher_path`'s bundle, default the
    shipped one -- caption and empty-prompt embeddings) in run_dir/data, written by `encode` (`wanlite encode
    --toy`; a re-run with more samples adds the new ones); what distillation trains on in the toy world (real
    latents: the task loss applies)."""
    from .train.data import CachedSource

    out = Path(run_dir) / DATA
    if (out / "manifest.json").exists() and "encode" not in CachedSource(out).meta:
        return out  # an older toy cache
    encode_toy(out, samples, seed=seed, vae=toy_vae(teacher_path), progress=False, log=lambda line: None)
    return out


def toy_encoders(vae=None):
    """The toy VAE (default: the shipped one; a bundle's own for another toy teacher) and toy text encoder as
    `train.encode.Encoders` (the toy teacher's negative prompt is "")."""
    from . import toy
    from .train.encode import Encoders

    vae = vae or toy.load_vae()
    return Encoders(vae=vae, text=toy.encode_text, negative="", stride=8, name="wanlite toy world")


def toy_clips(samples: int, seed: int = 0) -> list:
    """`samples` toy-world clips as `encode` sources: captions in turn, clip i drawn with seed + i, at 16 fps."""
    from . import toy
    from .train.encode import Clip
    from .train.video import Probe

    caps, config = toy.captions(), toy.WorldConfig()

    def clip(i: int):
        caption = caps[(seed + i) % len(caps)]
        times = torch.arange(config.frames, dtype=torch.float64) / 16
        return Clip(
            path=f"toy:{seed + i}",
            caption=caption,
            record={"path": f"toy world clip {seed + i}", "size": 0, "mtime": 0},
            load=lambda seconds: (toy.render(caption, seed + i, config).permute(1, 2, 3, 0), times),
            info=lambda: Probe(config.height, config.width, 16.0, config.frames / 16),
        )

    return [clip(i) for i in range(samples)]


def toy_settings() -> dict:
    """`encode`'s clip settings for toy-world clips: their own size, length and frame rate (nothing resampled)."""
    from .toy import WorldConfig

    config = WorldConfig()
    return {"size": (config.height, config.width), "frames": config.frames, "fps": 16.0}


def encode_toy(out, samples: int = 32, seed: int = 0, vae=None, **options):
    """`wanlite encode --toy`: toy-world clips through the toy VAE (`vae`: another bundle's) and text encoder into
    a cache at `out`."""
    from .train.encode import encode

    options.setdefault("batch", 32)
    clips = toy_clips(samples, seed)
    return encode(out, toy_encoders(vae), clips=clips, meta={"seed": seed}, **toy_settings(), **options)


def video_size(spec, toy_world: bool, device, frames: int = 0, height: int = 0, width: int = 0, guidance=1.0, steps=1):
    """The latent grid (F, H, W) of the videos 05 compares, from pixels: `frames` (4k+1), `height` and `width`
    (multiples of 16 px; 32 for a 48-channel Wan2.2 VAE). 0 picks the default: the toy world's 17 x 64 x 64; for a
    real teacher 33 frames at 480 x 832 on a GPU, 9 frames at 128 x 128 on a CPU. Prints the cost per video."""
    from .errors import ConfigError

    default = (17, 64, 64) if toy_world else (33, 480, 832) if torch.device(device).type == "cuda" else (9, 128, 128)
    frames, height, width = frames or default[0], height or default[1], width or default[2]
    stride = 16 if spec.in_dim == 48 else 8  # pixels per latent: Wan2.2's VAE is 16, Wan2.1's 8
    if (frames - 1) % 4 or height % (2 * stride) or width % (2 * stride):
        raise ConfigError(
            f"frames={frames}, height={height}, width={width}: Wan videos have 4k+1 frames and sides that are "
            f"multiples of {2 * stride} px. Fix: e.g. frames=33, height=480, width=832."
        )
    grid = ((frames - 1) // 4 + 1, height // stride, width // stride)
    tokens = grid[0] * (grid[1] // spec.patch_size[1]) * (grid[2] // spec.patch_size[2])
    forwards = steps * (2 if guidance != 1 else 1)
    print(
        f"videos of {frames} frames at {height}x{width} px: latents {grid[0]}x{grid[1]}x{grid[2]}, {tokens:,} tokens "
        f"per forward; the teacher needs {forwards} forwards per video (Wan 480p x 81 frames: 32,760 tokens)"
    )
    return grid


def auto_device() -> tuple[torch.device, torch.dtype]:
    """Where the notebooks run: the GPU in bf16 when there is one, else the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------- from paths (`wanlite compare`)
def _encode(prompts: Sequence[str], text_encoder) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(contexts [P, L, 4096], negative context) from captions, with `text_encoder` or the toy world's."""
    if text_encoder is None:
        from .toy.text import encode_text as text_encoder
    return text_encoder(list(prompts)), text_encoder([""])


def _toy_config(bundle: Path) -> CompareConfig:
    """A toy bundle's own sampling settings and clip size."""
    from . import toy

    info = toy.info(bundle)
    world, samp = info.get("world", {}), info.get("sampling", {})
    return CompareConfig(
        steps=samp.get("steps", 20),
        guidance=samp.get("guidance", 4.0),
        shift=samp.get("shift", 3.0),
        scheduler=samp.get("scheduler", "unipc"),
        frames=(world.get("frames", 17) - 1) // 4 + 1,
        height=world.get("height", 64) // 8,
        width=world.get("width", 64) // 8,
    )


def compare_paths(
    teacher_path,
    student_path,
    prompts: Sequence[str] | None = None,
    out_dir="report",
    *,
    vae=None,
    contexts: torch.Tensor | None = None,
    negative_context: torch.Tensor | None = None,
    text_encoder=None,
    prompts_cache=None,
    run_dir=None,
    config: CompareConfig | None = None,
    kept_blocks: Sequence[int] | None = None,
    device=None,
    torch_dtype=torch.float32,
    write: bool = True,
    overrides: dict | None = None,
    student_steps: int | None = None,
) -> Comparison:
    """Load teacher and student (any Wan layout), compare them (each at its own sampling settings) and write the
    report to `out_dir`.

    `vae`: an object with `decode`, or the path of a local diffusers AutoencoderKLWan (pixel PSNR/SSIM).
    Contexts: `contexts` if given; else the embeddings of a prompts cache `prompts_cache` (`wanlite encode
    --prompts`; those of `prompts`, or all); else `prompts` encoded with `text_encoder` (a callable, or the path /
    Hub id of umT5: a Diffusers Wan directory; default for toy models: the toy world's text encoder); else two
    seeded random umT5-shaped contexts, labelled "random context #i" (functional fidelity only, said loudly).
    A toy teacher bundle brings its VAE, its sampling settings and its clip size unless given, and both models'
    prompt adherence over all 48 captions is scored. `student_steps`: sample the student at k steps of its own
    sampler instead of its recorded count (`Sampling.with_steps`), e.g. a 4-step `guided` student at 2 or 8."""
    from .evaluate.vae import load_diffusers_vae
    from .formats import load_wan, spec_of

    bundle = toy_bundle(teacher_path)
    toy_text = text_encoder is None and not prompts_cache and contexts is None and prompts
    if toy_text and bundle is None and _toy_run(teacher_path) is None:  # a real Wan would get the toy world's text
        from .errors import ConfigError

        raise ConfigError(
            f"--prompts {list(prompts)}: {teacher_path} is not a toy-world teacher, and a real Wan follows umT5 "
            "embeddings only (the toy text encoder's would not be these prompts). Fix: add --prompts-cache DIR "
            "(`wanlite encode --prompts FILE`) or --text-encoder (a Diffusers Wan directory or Hub id), or drop "
            "--prompts (seeded random contexts, labelled so)."
        )
    if bundle is not None:
        from . import toy

        teacher_path = bundle / "teacher"
        vae = vae if vae is not None else toy.load_vae(bundle)
        config = config if config is not None else _toy_config(bundle)
    config = config if config is not None else CompareConfig()
    if overrides:  # e.g. the CLI's --steps: on top of the toy bundle's settings, not instead of them
        config = dataclasses.replace(config, **overrides)
    if isinstance(vae, (str, Path)):
        vae = load_diffusers_vae(vae, device=device)
    teacher = load_wan(teacher_path, torch_dtype=torch_dtype, device=device)
    student = load_wan(student_path, torch_dtype=torch_dtype, device=device)  # carries .pruning and .sampling
    if student_steps is not None:
        own = config.student_sampling or getattr(student, "sampling", None) or config.teacher_sampling()
        config = dataclasses.replace(config, student_sampling=own.with_steps(student_steps))
    labels = list(prompts) if prompts else None
    random, notes = False, []
    if contexts is None and (prompts_cache or isinstance(text_encoder, (str, Path))):
        made = conditioning(
            teacher, str(teacher_path), prompts or (), prompts_cache or "", text_encoder or "", config.seed
        )
        contexts, labels = made.contexts, made.labels
        negative_context = negative_context if negative_context is not None else made.negative
        notes.append(f"prompts: {made.source}")
    elif contexts is None and prompts:
        contexts, neg = _encode(prompts, text_encoder)
        negative_context = negative_context if negative_context is not None else neg
        if text_encoder is None and bundle is None:
            notes.append("prompts embedded by the toy world's text encoder (a toy-world teacher).")
    elif contexts is None:
        made = random_conditioning(spec_of(teacher), 2, config.seed)
        made.announce()
        contexts, labels, random = made.contexts, made.labels, True
    comp = compare(
        teacher,
        student,
        contexts,
        prompts=labels,
        negative_context=negative_context,
        vae=vae,
        kept_blocks=kept_blocks,
        config=config,
        run_dir=run_dir,
    )
    comp.notes += notes + ([RANDOM_NOTE] if random else [])
    if student_steps is not None and student_steps != own.steps:
        comp.notes.append(f"the student sampled at {student_steps} steps, not its recorded {own.steps}.")
    if bundle is not None:
        toy.score(comp, teacher, student)
    comp.notes.append(f"teacher: {teacher_path}; student: {student_path}")
    if write:
        comp.save(out_dir)
    return comp


def _toy_run(path) -> Path | None:
    """The toy bundle of the run directory `path` lies in, when its teacher is a toy teacher (teacher.json)."""
    for folder in Path(path).resolve().parents:
        if (folder / "teacher.json").is_file():
            return toy_bundle(json.loads((folder / "teacher.json").read_text()).get("teacher_path", ""))
    return None


def quant_report(
    model_path,
    formats: Sequence[str] | None = None,
    out_dir=None,
    *,
    toy_world: bool | None = None,
    prompts: Sequence[str] | None = None,
    work_dir=None,
    conditioning: Conditioning | None = None,
    device=None,
):
    """`evaluate.quantization_report` for a model on disk (any Wan layout, loaded in fp32). A toy-world model
    (`toy_world`, default: the path lies in a toy bundle or a run directory of the toy world) is measured on toy
    captions with its own sampling, its clip size and prompt adherence over all 48 captions per format; any other
    model on the contexts of `conditioning` (a `Conditioning`), else on two seeded random contexts (said in the
    notes). Runs on `device` (default the CPU) in fp32. Writes quant_report.md/.json to `out_dir` when given."""
    from .evaluate.quantization import FORMATS, quantization_report
    from .formats import load_wan

    model = load_wan(model_path, torch_dtype=torch.float32, device=device)
    bundle = toy_bundle(model_path) or _toy_run(model_path)
    if toy_world is None:
        toy_world = bundle is not None
    kwargs = {}
    if toy_world:
        from . import toy

        vae = toy.load_vae(bundle)  # the run's toy teacher's VAE (default: the shipped one)
        how = toy.sampling_of(model)
        prompts = list(prompts or toy.captions()[:: len(toy.captions()) // 8][:8])
        kwargs = dict(
            contexts=toy.encode_text(prompts),
            negative_context=toy.encode_text([""]),
            latent_size=vae.latent_shape()[1:],
            sampling=how,
            adherence=lambda m: toy.evaluate(m, sampling=how, vae=vae).as_dict(),
        )
    elif prompts:
        from .errors import ConfigError

        raise ConfigError("quant_report: prompts are toy-world captions. Fix: pass toy_world=True (CLI: --toy).")
    elif conditioning is not None:
        kwargs = dict(contexts=conditioning.contexts, negative_context=conditioning.negative)
    report = quantization_report(model, formats or FORMATS, work_dir=work_dir, name=str(model_path), **kwargs)
    if toy_world:
        report.notes.append(
            f"toy world: {len(prompts)} captions for velocities/samples; adherence over all 48 captions"
        )
    elif conditioning is None or conditioning.random:
        report.notes.append("contexts: seeded RANDOM ones, not prompt embeddings (errors of the weights alone)")
    else:
        report.notes.append(f"contexts: {len(conditioning.labels)} prompts from {conditioning.source}")
    if out_dir is not None:
        report.save(out_dir)
    return report


# ---------------------------------------------------------------- the notebooks' first cell
# Every notebook starts with this cell, word for word (tests/test_notebooks.py checks it): on Colab it installs
# wanlite from the one setting WANLITE_INSTALL; everywhere else it does nothing.
COLAB_CELL = """import os
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab: install wanlite from WANLITE_INSTALL (see the README, "Colab")
    source = os.environ.get("WANLITE_INSTALL", "")
    if not source:
        raise RuntimeError(
            "Set WANLITE_INSTALL to your copy of wanlite, a git URL or a folder on your Drive, e.g. "
            "%env WANLITE_INSTALL=git+https://github.com/YOU/wanlite, then run this cell again."
        )
    spec = f"wanlite[notebooks] @ {source}" if "://" in source else f"{source}[notebooks]"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)"""
