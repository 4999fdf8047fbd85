"""A run directory's artifacts, and what a notebook uses when an upstream notebook has not run.

runs/<run>/
  teacher.json          which teacher (01)           calibration/  calibration cache (01)
  student_init/         pruned, untrained (01)        distill/      config, checkpoints, metrics.jsonl (02)
  data/                 toy-world latents cache (02)  distill/student/  distilled student (02)
  export/               wan/, comfyui/, diffusers/ (03)
  compare/              figures, metrics.json, report (05)
Every notebook reads from here and writes here, so they chain under papermill and each also runs alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STUDENT_INIT, DISTILL, EXPORT, COMPARE, DATA = "student_init", "distill", "export", "compare", "data"
STUDENT = f"{DISTILL}/student"  # where distill() exports the trained student


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


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
    from .calibrate import noise_batch
    from .formats import spec_of

    if is_toy(teacher_path):
        caps = toy.captions()
        chosen = [caps[(seed * 7 + i * 5) % len(caps)] for i in range(prompts)]
        return {"latents": toy.load_vae().encode(toy.batch(chosen, [seed + i for i in range(prompts)])),
                "context": toy.encode_text(chosen)}
    spec = spec_of(teacher)
    g = torch.Generator().manual_seed(seed)
    context = torch.zeros(prompts, spec.text_len, spec.text_dim)
    context[:, :16] = torch.randn(prompts, 16, spec.text_dim, generator=g)
    return noise_batch(spec, context, frames=frames, height=size, width=size, seed=seed)


def load_student(run_dir, teacher_path: str = "", device: str = "cpu", initial: bool = False):
    """The newest student of a run: distilled (02), else pruned (01), else a default half-depth student built
    from the teacher now (so a later notebook runs alone). `initial` skips the distilled one."""
    from .formats import spec_of
    from .prune import Recipe
    from .student import WanLiteStudent

    run_dir = Path(run_dir)
    for name in (STUDENT_INIT,) if initial else (STUDENT, STUDENT_INIT):
        if (run_dir / name / "config.json").exists():
            return WanLiteStudent.from_pretrained(run_dir / name, device=device)
    teacher = load_teacher(teacher_path, run_dir)
    recipe = Recipe(num_blocks=max(1, spec_of(teacher).num_layers // 2), width_selection="magnitude")
    student = WanLiteStudent.from_teacher(teacher, recipe)
    print(f"no student in {run_dir}: built a default one ({recipe}) from the teacher")
    return student.to(device)


def pruning_of(student, run_dir=None):
    """The student's `Pruning` (kept blocks and channels): from memory, its export metadata, or the run's pruned
    student (a distilled student keeps the structure it started with); None if unknown."""
    from .formats import inspect_wan
    from .prune import Pruning

    pruning = getattr(student, "pruning", None)
    recorded = getattr(student, "provenance", None) or {}
    if pruning is None and isinstance(recorded.get("pruning"), dict):
        pruning = Pruning.from_dict(recorded["pruning"])
    init = Path(run_dir or ".") / STUDENT_INIT
    if pruning is None and run_dir is not None and (init / "config.json").exists():
        saved = inspect_wan(init).provenance.get("pruning")
        pruning = Pruning.from_dict(saved) if isinstance(saved, dict) else None
    return pruning


def toy_data(run_dir, samples: int, seed: int = 0) -> Path:
    """A latents cache of toy-world clips (toy-VAE latents, caption and empty-prompt embeddings) in run_dir/data,
    written once; what distillation trains on in the toy world (real latents: the task loss applies)."""
    from . import toy
    from .data import ShardWriter

    out = Path(run_dir) / DATA
    if (out / "manifest.json").exists():
        return out
    caps, vae = toy.captions(), toy.load_vae()
    chosen = [caps[(seed + i) % len(caps)] for i in range(samples)]
    latents = torch.cat([vae.encode(toy.batch(chosen[i:i + 32], [seed + j for j in range(i, min(i + 32, samples))]))
                         for i in range(0, samples, 32)])
    contexts, negative = toy.encode_text(chosen), toy.encode_text([""])[0]
    with ShardWriter(out, kind="latents", meta={"source": "wanlite toy world", "seed": seed}, overwrite=True) as w:
        for x0, context in zip(latents, contexts):
            w.add(latents=x0, context=context, negative_context=negative)
    return out


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
