"""The toy teacher: a real diffusers `WanTransformer3DModel` trained on the toy world with Wan's flow matching.

Head dim 128, text_dim 4096, in/out 16: ComfyUI detects it as Wan2.1 T2V, and every wanlite tool treats it as
any other Wan. Training is Wan's objective -- x_t = (1 - s) x0 + s eps, target eps - x0, timestep s * 1000, with
s drawn uniformly then shifted, s' = shift s / (1 + (shift - 1) s) -- with a fraction of empty captions so that
classifier-free guidance works. Seeded: the same config gives the same weights on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.display import new_figure
from ..core.flow import add_noise, shift_sigma, velocity_target, wan_forward
from ..errors import FormatError, WanliteError
from ..formats.records import Sampling
from ..formats.spec import WanSpec
from .adherence import Adherence, adherence
from .text import LENGTH, encode_text
from .vae import ToyVAE
from .world import WorldConfig, batch, captions

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy"


@dataclass(frozen=True)
class TeacherConfig:
    """How the toy teacher is built and trained; the defaults made the shipped one."""

    dim: int = 256  # hidden width = heads x 128
    num_heads: int = 2  # attention heads of 128
    num_layers: int = 2  # transformer blocks
    ffn_dim: int = 512  # FFN inner width
    steps: int = 3200  # optimiser steps (the run stops earlier only if `minutes` runs out)
    minutes: float | None = None  # wall-clock cap, None = none (a capped run is reproducible only if it ends on steps)
    batch: int = 16  # clips per step
    lr: float = 1e-3  # AdamW peak learning rate
    warmup: int = 200  # linear warm-up steps, then cosine decay to 10%
    weight_decay: float = 0.0  # AdamW weight decay
    ema: float = 0.998  # EMA decay of the exported weights (0 = export the raw weights)
    shift: float = 5.0  # sigma shift for training (and the recommended sampling shift; Wan2.1's default)
    uncond: float = 0.1  # fraction of empty captions (for classifier-free guidance)
    clip_grad: float = 1.0  # gradient norm clip
    seed: int = 0  # seeds the weights, the captions, the jitter, the noise
    threads: int | None = 1  # torch CPU threads (1: reproducible, and fastest on a shared CPU; None = torch's default)
    log_every: int = 100  # steps between log lines

    def spec(self) -> WanSpec:
        return WanSpec(
            model_type="t2v",
            dim=self.dim,
            ffn_dim=self.ffn_dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            in_dim=16,
            out_dim=16,
        )


@dataclass
class TrainResult:
    """What a toy-teacher training run produced."""

    model: object = field(repr=False)  # the trained WanTransformer3DModel (EMA weights if ema > 0), eval mode
    vae: ToyVAE = field(repr=False)
    config: TeacherConfig
    steps: int  # steps actually run
    seconds: float  # wall-clock training time
    losses: list[float] = field(repr=False)  # mean loss per log interval

    def __repr__(self) -> str:
        last = f"{self.losses[-1]:.4f}" if self.losses else "n/a"
        return (
            f"TrainResult({self.steps} steps in {self.seconds / 60:.1f} min, final loss {last}, {self.config.spec()})"
        )

    def plot(self, ax=None):
        ax = ax or new_figure(figsize=(5, 3)).subplots()
        ax.plot([(i + 1) * self.config.log_every for i in range(len(self.losses))], self.losses)
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        return ax.figure


def build(config: TeacherConfig = TeacherConfig(), device: str = "cpu"):
    """A freshly initialised toy teacher (diffusers `WanTransformer3DModel`, seeded)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(config.seed)
    model = WanTransformer3DModel(**config.spec().to_diffusers_config())
    return model.to(device)


def _lr(step: int, config: TeacherConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    config: TeacherConfig = TeacherConfig(),
    vae: ToyVAE | None = None,
    world: WorldConfig = WorldConfig(),
    device: str = "cpu",
    log=print,
) -> TrainResult:
    """Train a toy teacher from scratch on freshly drawn world clips (one loop, top to bottom)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    vae = vae or ToyVAE.fit(config=world)
    model = build(config, device).train()
    ema = {n: p.detach().clone() for n, p in model.named_parameters()} if config.ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(config.seed)
    caps = captions()
    vocab = {c: encode_text([c])[0] for c in caps + [""]}  # the 49 contexts, computed once
    losses, running, start, step = [], 0.0, time.time(), 0
    for step in range(config.steps):
        if config.minutes is not None and time.time() - start > 60 * config.minutes:
            log(f"time cap of {config.minutes} min reached at step {step}")
            break
        # data: random captions and jitter seeds -> clips -> latents; some captions dropped to ""
        idx = torch.randint(len(caps), (config.batch,), generator=g).tolist()
        seeds = torch.randint(1 << 30, (config.batch,), generator=g).tolist()
        names = [caps[i] for i in idx]
        x0 = vae.encode(batch(names, seeds, world))
        drop = torch.rand(config.batch, generator=g) < config.uncond
        context = torch.stack([vocab["" if d else n] for n, d in zip(names, drop.tolist())])
        # flow matching: x_t = (1 - s) x0 + s eps, target eps - x0, timestep s * 1000
        eps = torch.randn(x0.shape, generator=g)
        sigma = shift_sigma(torch.rand(config.batch, generator=g), config.shift)
        xt = add_noise(x0, eps, sigma)
        for group in opt.param_groups:
            group["lr"] = _lr(step, config)
        pred = wan_forward(model, xt, sigma, context)
        loss = torch.nn.functional.mse_loss(pred, velocity_target(x0, eps).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                decay = min(config.ema, (1 + step) / (10 + step))
                for n, p in model.named_parameters():
                    ema[n].lerp_(p.detach(), 1 - decay)
        running += loss.item()
        if (step + 1) % config.log_every == 0:
            losses.append(running / config.log_every)
            running = 0.0
            log(
                f"step {step + 1}/{config.steps}  loss {losses[-1]:.4f}  lr {_lr(step, config):.2e}  "
                f"{time.time() - start:.0f}s"
            )
    else:
        step = config.steps
    if ema is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ema[n])
    return TrainResult(model.eval(), vae, config, step, time.time() - start, losses)


# ------------------------------------------------------------------------------------------- sampling, scoring


TEACHER_SAMPLING = Sampling(steps=20, guidance=4.0, shift=5.0, solver="unipc")  # what the toy teacher was scored with


def sampling_of(model, sampling: Sampling | None = None, **settings) -> Sampling:
    """The sampling to use: `sampling`, else the given settings (steps, guidance, shift, scheduler) on top of the
    toy teacher's, else the model's own record (a few-step student's), else the toy teacher's."""
    if sampling is not None:
        return sampling
    given = {k: v for k, v in settings.items() if v is not None}
    if given:
        given["solver"] = given.pop("scheduler", TEACHER_SAMPLING.solver)
        return dataclasses.replace(TEACHER_SAMPLING, **given)
    return getattr(model, "sampling", None) or TEACHER_SAMPLING


def generate(
    model,
    caps: list[str],
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    scheduler: str | None = None,
    vae: ToyVAE | None = None,
    world: WorldConfig = WorldConfig(),
    sampling: Sampling | None = None,
) -> torch.Tensor:
    """Videos [B, 3, F, H, W] the model draws for `caps` (one noise per caption from `seed`), decoded by the toy VAE.
    It samples the way `sampling_of` says: by default a student with its own settings, the teacher with its."""
    from ..evaluate.sampling import sample

    vae = vae or load_vae()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(caps), *vae.latent_shape(world)), generator=g)
    how = sampling_of(model, sampling, steps=steps, guidance=guidance, shift=shift, scheduler=scheduler)
    result = sample(model, noise, encode_text(caps), encode_text([""] * len(caps)), sampling=how, seed=seed)
    return vae.decode(result.latents)


def evaluate(
    model,
    caps: list[str] | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    scheduler: str | None = None,
    vae: ToyVAE | None = None,
    chunk: int = 16,
    sampling: Sampling | None = None,
) -> Adherence:
    """Prompt adherence of `model`'s samples over `caps` (default: all 48 captions), `chunk` captions per batch."""
    caps = caps if caps is not None else captions()
    how = sampling_of(model, sampling, steps=steps, guidance=guidance, shift=shift, scheduler=scheduler)
    videos = torch.cat(
        [generate(model, caps[i : i + chunk], seed + i, vae=vae, sampling=how) for i in range(0, len(caps), chunk)]
    )
    return adherence(videos, caps)


def score(comparison, teacher, student, caps: list[str] | None = None, vae: ToyVAE | None = None) -> dict:
    """Prompt adherence of teacher and student, each at its own sampling settings (the comparison's), over `caps`
    (default: all 48 captions), decoded by `vae` (the teacher's bundle's; default the shipped one); recorded in
    `comparison.adherence` for its report."""
    comparison.adherence = {
        name: evaluate(model, caps, sampling=how, vae=vae).as_dict()
        for name, model, how in (
            ("teacher", teacher, comparison.teacher_sampling),
            ("student", student, comparison.student_sampling),
        )
    }
    return comparison.adherence


# ------------------------------------------------------------------------------------------------ files


def save(result: TrainResult, out: str | Path, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write a toy teacher bundle: `teacher/` (official Wan layout, bf16), `vae.safetensors`, `toy.json`."""
    from ..formats import save_wan

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "teacher_config": asdict(result.config),
        "world": asdict(WorldConfig()),
        "text_length": LENGTH,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "final_loss": result.losses[-1] if result.losses else None,
        "sampling": {"shift": result.config.shift, "guidance": 4.0, "steps": 20, "scheduler": "unipc"},
        **(extra or {}),
    }
    save_wan(
        result.model,
        out / "teacher",
        layout="wan",
        dtype=torch.bfloat16,
        overwrite=overwrite,
        provenance={"toy": {k: v for k, v in info.items() if k != "adherence"}},
    )
    result.vae.save(out / "vae.safetensors")
    (out / "toy.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def _bundle(path: str | Path | None) -> Path:
    path = Path(path) if path is not None else ASSETS
    if not (path / "teacher" / "config.json").is_file() or not (path / "vae.safetensors").is_file():
        raise WanliteError(
            f"{path}: not a toy teacher bundle (expected teacher/config.json and vae.safetensors). "
            "Fix: `python -m wanlite.toy train --out DIR`, or omit the path for the shipped one."
        )
    return path


def load_vae(path: str | Path | None = None) -> ToyVAE:
    """The toy VAE a toy teacher was trained with (default: the shipped one)."""
    return ToyVAE.load(_bundle(path) / "vae.safetensors")


def teacher(path: str | Path | None = None, torch_dtype: torch.dtype = torch.float32, device=None):
    """The trained toy teacher (default: the one shipped in wanlite/assets/toy), a `WanTransformer3DModel`."""
    from ..formats import load_wan

    return load_wan(_bundle(path) / "teacher", torch_dtype=torch_dtype, device=device)


def info(path: str | Path | None = None) -> dict:
    """toy.json of a bundle: how it was trained, with which world, and what it scored."""
    where = _bundle(path) / "toy.json"
    try:
        found = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"{where}: unreadable toy bundle record ({err}). Fix: retrain the bundle.") from None
    if not isinstance(found, dict):
        raise FormatError(f"{where}: not a JSON object. Fix: retrain the bundle (python -m wanlite.toy train).")
    return found
