"""A run directory's artifacts, and what a notebook uses when an upstream notebook has not run.

runs/<run>/
  teacher.json          which teacher (01)           calibration/  calibration cache (01)
  student_init/         pruned, untrained (01)        distill/      config, checkpoints, metrics.jsonl (02)
  data/                 latents cache (00 or 02)      distill/student/  distilled student (02)
  export/               wan/, comfyui/, diffusers/ (03)
  compare/              figures, metrics.json, report (05)
Every notebook reads from here and writes here, so they chain under papermill and each also runs alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch

from .evaluate import CompareConfig, Comparison, compare

STUDENT_INIT, DISTILL, EXPORT, COMPARE, DATA = "student_init", "distill", "export", "compare", "data"
STUDENT = f"{DISTILL}/student"  # where distill() exports the trained student


def load_teacher(teacher_path: str = "", run_dir=None, device: str = "cpu", torch_dtype=None, expert=None):
    """The teacher: the shipped toy teacher when `teacher_path` is empty (the embedded default), else any Wan
    layout `load_wan` reads. With a run_dir, the choice is remembered for later notebooks."""
    from . import toy
    from .formats import load_wan

    if run_dir is not None and not teacher_path and (Path(run_dir) / "teacher.json").exists():
        teacher_path = json.loads((Path(run_dir) / "teacher.json").read_text())["teacher_path"]
    if not is_toy(teacher_path):
        model = load_wan(teacher_path, torch_dtype=torch_dtype, device=device, expert=expert)
    else:
        model = toy.teacher(torch_dtype=torch_dtype or torch.float32, device=device)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "teacher.json").write_text(json.dumps({"teacher_path": teacher_path or "toy"}) + "\n")
    return model


def is_toy(teacher_path: str) -> bool:
    return teacher_path in ("", "toy")


def prompt_batch(teacher, teacher_path: str, prompts: int, seed: int = 0, frames: int = 1, size: int = 32) -> dict:
    """Clean latents + text embeddings for calibration or held-out checks: toy-world clips and captions for the
    toy teacher; Gaussian latents with zero-padded random text for a real teacher (bring real latents for better
    scores: see the distillation data caches)."""
    from . import toy
    from .compress import noise_batch
    from .formats import spec_of

    if is_toy(teacher_path):
        caps = toy.captions()
        chosen = [caps[(seed * 7 + i * 5) % len(caps)] for i in range(prompts)]
        return {
            "latents": toy.load_vae().encode(toy.batch(chosen, [seed + i for i in range(prompts)])),
            "context": toy.encode_text(chosen),
        }
    spec = spec_of(teacher)
    g = torch.Generator().manual_seed(seed)
    context = torch.zeros(prompts, spec.text_len, spec.text_dim)
    context[:, :16] = torch.randn(prompts, 16, spec.text_dim, generator=g)
    return noise_batch(spec, context, frames=frames, height=size, width=size, seed=seed)


def load_student(run_dir, teacher_path: str = "", device: str = "cpu", initial: bool = False):
    """The newest student of a run: distilled (02), else pruned (01), else a default half-depth student built
    from the teacher now (so a later notebook runs alone). `initial` skips the distilled one."""
    from .compress import Recipe, WanLiteStudent
    from .formats import spec_of

    run_dir = Path(run_dir)
    for name in (STUDENT_INIT,) if initial else (STUDENT, STUDENT_INIT):
        if (run_dir / name / "config.json").exists():
            return WanLiteStudent.from_pretrained(run_dir / name, device=device)
    teacher = load_teacher(teacher_path, run_dir)
    recipe = Recipe(num_blocks=max(1, spec_of(teacher).num_layers // 2), width_selection="magnitude")
    student = WanLiteStudent.from_teacher(teacher, recipe)
    print(f"no student in {run_dir}: built a default one ({recipe}) from the teacher")
    return student.to(device)


def toy_data(run_dir, samples: int, seed: int = 0) -> Path:
    """A latents cache of toy-world clips (toy-VAE latents, caption and empty-prompt embeddings) in run_dir/data,
    written by `encode` (`wanlite encode --toy`; a re-run with more samples adds the new ones); what distillation
    trains on in the toy world (real latents: the task loss applies)."""
    from .train.data import CachedSource

    out = Path(run_dir) / DATA
    if (out / "manifest.json").exists() and "encode" not in CachedSource(out).meta:
        return out  # an older toy cache
    encode_toy(out, samples, seed=seed, progress=False, log=lambda line: None)
    return out


def toy_encoders():
    """The toy VAE and toy text encoder as `train.encode.Encoders` (the toy teacher's negative prompt is "")."""
    from . import toy
    from .train.encode import Encoders

    vae = toy.load_vae()
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


def encode_toy(out, samples: int = 32, seed: int = 0, **options):
    """`wanlite encode --toy`: toy-world clips through the toy VAE and text encoder into a cache at `out`."""
    from .train.encode import encode

    options.setdefault("batch", 32)
    return encode(out, toy_encoders(), clips=toy_clips(samples, seed), meta={"seed": seed}, **toy_settings(), **options)


def prompt_contexts(teacher, teacher_path: str, prompts: list[str], seed: int = 0):
    """(contexts [P, L, D], the negative context [1, L, D]) for prompts: the toy text encoder for the toy teacher;
    seeded random umT5-shaped embeddings otherwise (bring real umT5 embeddings for a real teacher)."""
    from . import toy
    from .formats import spec_of

    if is_toy(teacher_path):
        return toy.encode_text(prompts), toy.encode_text([""])
    spec = spec_of(teacher)
    g = torch.Generator().manual_seed(seed)
    context = torch.zeros(len(prompts), spec.text_len, spec.text_dim)
    context[:, :16] = torch.randn(len(prompts), 16, spec.text_dim, generator=g)
    return context, torch.zeros_like(context[:1])


# ---------------------------------------------------------------- from paths (`wanlite compare`)
def _encode(prompts: Sequence[str], text_encoder) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(contexts [P, L, 4096], negative context) from captions, with `text_encoder` or the toy world's."""
    if text_encoder is None:
        from .toy.text import encode_text as text_encoder
    return text_encoder(list(prompts)), text_encoder([""])


def _toy_bundle(path) -> Path | None:
    """The toy teacher bundle (toy.json + vae.safetensors + teacher/) that `path` is or lies in, if any."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / "toy.json").is_file() and (folder / "vae.safetensors").is_file():
            return folder
    return None


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


def _random_contexts(teacher, seed: int) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    contexts = torch.zeros(2, 32, teacher.config.text_dim)
    contexts[:, :16] = torch.randn(2, 16, teacher.config.text_dim, generator=g)
    return contexts, ["random context 0", "random context 1"]


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
    Contexts: `contexts` if given; else `prompts` encoded with `text_encoder` (default: the toy world's text
    encoder, for toy models); else two seeded random umT5-shaped contexts (functional fidelity only).
    A toy teacher bundle brings its VAE, its sampling settings and its clip size unless given, and both models'
    prompt adherence over all 48 captions is scored. `student_steps`: sample the student at k steps of its own
    sampler instead of its recorded count (`Sampling.with_steps`), e.g. a 4-step `guided` student at 2 or 8."""
    from .evaluate.vae import load_diffusers_vae
    from .formats import load_wan

    bundle = _toy_bundle(teacher_path)
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
    if contexts is None and prompts:
        contexts, neg = _encode(prompts, text_encoder)
        negative_context = negative_context if negative_context is not None else neg
    elif contexts is None:
        contexts, labels = _random_contexts(teacher, config.seed)
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
    if labels and labels[0].startswith("random context"):
        comp.notes.append("no prompts: seeded random contexts (functional fidelity, not caption following).")
    if student_steps is not None and student_steps != own.steps:
        comp.notes.append(f"the student sampled at {student_steps} steps, not its recorded {own.steps}.")
    if bundle is not None:
        toy.score(comp, teacher, student)
    comp.notes.append(f"teacher: {teacher_path}; student: {student_path}")
    if write:
        comp.save(out_dir)
    return comp


def _toy_run(path) -> bool:
    """Whether `path` lies in a run directory whose teacher is the toy teacher (its teacher.json says so)."""
    for folder in Path(path).resolve().parents:
        if (folder / "teacher.json").is_file():
            return is_toy(json.loads((folder / "teacher.json").read_text()).get("teacher_path", ""))
    return False


def quant_report(
    model_path,
    formats: Sequence[str] | None = None,
    out_dir=None,
    *,
    toy_world: bool | None = None,
    prompts: Sequence[str] | None = None,
    work_dir=None,
):
    """`evaluate.quantization_report` for a model on disk (any Wan layout, loaded in fp32). A toy-world model
    (`toy_world`, default: the path lies in a toy bundle or a run directory of the toy world) is measured on toy
    captions with its own sampling, its clip size and prompt adherence over all 48 captions per format; any other
    model on two seeded random contexts. Writes quant_report.md/.json to `out_dir` when given."""
    from .evaluate.quantization import FORMATS, quantization_report
    from .formats import load_wan

    model = load_wan(model_path, torch_dtype=torch.float32)
    if toy_world is None:
        toy_world = _toy_bundle(model_path) is not None or _toy_run(model_path)
    kwargs = {}
    if toy_world:
        from . import toy

        how = toy.sampling_of(model)
        prompts = list(prompts or toy.captions()[:: len(toy.captions()) // 8][:8])
        kwargs = dict(
            contexts=toy.encode_text(prompts),
            negative_context=toy.encode_text([""]),
            latent_size=toy.load_vae().latent_shape()[1:],
            sampling=how,
            adherence=lambda m: toy.evaluate(m, sampling=how).as_dict(),
        )
    elif prompts:
        from .errors import ConfigError

        raise ConfigError("quant_report: prompts are toy-world captions. Fix: pass toy_world=True (CLI: --toy).")
    report = quantization_report(model, formats or FORMATS, work_dir=work_dir, name=str(model_path), **kwargs)
    if toy_world:
        report.notes.append(
            f"toy world: {len(prompts)} captions for velocities/samples; adherence over all 48 captions"
        )
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
