"""How close is the student to its teacher, and what does a video cost? `compare` -> `Comparison`.

Both models start from the same noise and prompts, and each samples the way it samples: the teacher at its
settings (e.g. 20 steps, cfg 4), the student at its own (`student.sampling`, e.g. 4 steps, cfg 1). Reported:
forwards, FLOPs and wall time per video; final-sample PSNR/SSIM against the teacher's; per-σ velocity error
on the teacher's own path x_t = (1-σ)·x0 + σ·ε where it means something (a student sampling like its teacher,
or a guidance-free one against the guided teacher; not a few-step student, which learns steps, not tangents);
block-output cosine on the kept channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.flow import BlockOutputs, add_noise, cosine, predict_x0, rel_l2, rel_mse
from ..errors import WanliteError
from ..formats.records import Sampling
from .comparison import Comparison
from .metrics import latent_preview, psnr, ssim
from .sampling import guided_velocity, predict_velocity, sample

__all__ = ["CompareConfig", "Comparison", "compare"]


@dataclass(frozen=True)
class CompareConfig:
    """How a comparison samples and probes. steps/guidance/shift/scheduler are the teacher's sampling (and the
    student's when it has none of its own)."""

    steps: int = 20  # the teacher's sampling steps
    guidance: float = 5.0  # the teacher's classifier-free guidance scale (1 = no unconditional pass)
    shift: float = 5.0  # flow shift of the teacher's schedule (Wan2.1 T2V: 5; ComfyUI default 8)
    scheduler: str = "unipc"  # the teacher's solver: unipc | euler | lcm
    student_sampling: Sampling | None = None  # None: the student's own record (`.sampling`), else the teacher's
    sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # velocity probes
    frames: int = 3  # latent frames (video frames = 4 (F-1) + 1)
    height: int = 16  # latent height (pixels / 8 for Wan2.1)
    width: int = 16  # latent width
    seed: int = 0  # noise of prompt i is drawn from seed + i
    repeats: int = 5  # timed forwards per model (median)
    warmup: int = 1  # untimed forwards per model first
    measure_cost: bool = True  # time forwards and one video each, count FLOPs and memory

    def teacher_sampling(self) -> Sampling:
        return Sampling(steps=self.steps, guidance=self.guidance, shift=self.shift, solver=self.scheduler)


def _contexts(contexts) -> list[torch.Tensor]:
    if isinstance(contexts, torch.Tensor):
        contexts = [contexts] if contexts.ndim == 2 else list(contexts)
    out = []
    for c in contexts:
        c = c[None] if c.ndim == 2 else c
        if c.ndim != 3 or c.shape[0] != 1:
            raise WanliteError(f"a context must be [L, text_dim] or [1, L, text_dim]; got {tuple(c.shape)}.")
        out.append(c.float())
    return out


def _block_map(teacher, student, kept_blocks, kept_channels, notes):
    """(teacher block of each student block or None, teacher channels to compare on or None, comparable?)."""
    pruning = getattr(student, "pruning", None)
    if kept_blocks is None:
        kept_blocks = getattr(pruning, "kept_blocks", None)
    if kept_channels is None:
        kept_channels = getattr(pruning, "kept_channels", None)
    nt, ns = len(teacher.blocks), len(student.blocks)
    width = lambda m: m.config.num_attention_heads * m.config.attention_head_dim  # noqa: E731
    dt, ds = width(teacher), width(student)
    if kept_blocks is None and nt == ns:
        kept_blocks = list(range(ns))
        notes.append("no block map given; student block i is compared with teacher block i (same depth).")
    if kept_blocks is not None and (len(kept_blocks) != ns or max(kept_blocks) >= nt):
        raise WanliteError(
            f"kept_blocks={list(kept_blocks)} does not fit: the student has {ns} blocks, the teacher "
            f"{nt}. Pass the student's Pruning.kept_blocks (teacher index of each student block)."
        )
    if kept_blocks is None:
        notes.append("no block map (kept_blocks) for a student of different depth: only the all-pairs block matrix.")
    kept_blocks = None if kept_blocks is None else [int(i) for i in kept_blocks]
    if dt == ds:
        return kept_blocks, None, True
    if kept_channels is None:
        notes.append(f"widths differ ({dt} vs {ds}) and no kept_channels given: block outputs not compared.")
        return None, None, False
    kept_channels = torch.as_tensor(kept_channels, dtype=torch.long)
    if kept_channels.numel() != ds:
        raise WanliteError(f"kept_channels has {kept_channels.numel()} entries; the student's width is {ds}.")
    return kept_blocks, kept_channels, True


def _describe(model) -> str:
    spec = getattr(model, "spec", None)
    if spec is not None:
        return str(spec)
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return (
        f"{len(model.blocks)} blocks x dim {c.num_attention_heads * c.attention_head_dim} ({c.num_attention_heads} "
        f"heads), ffn {c.ffn_dim}, {n / 1e6:.1f}M params, {next(model.parameters()).dtype}"
    )


@torch.no_grad()
def compare(
    teacher,
    student,
    contexts,
    *,
    prompts: Sequence[str] | None = None,
    negative_context=None,
    vae=None,
    kept_blocks: Sequence[int] | None = None,
    kept_channels=None,
    config: CompareConfig = CompareConfig(),
    image=None,
    run_dir=None,
) -> Comparison:
    """Compare `student` with `teacher` on each context (prompt), each at its own sampling settings.

    `vae`: anything with `decode(latents) -> video [B, 3, F, H, W] in [0, 1]` (the toy VAE, or an adapter around
    diffusers' AutoencoderKLWan); without it frames are a latent-to-RGB preview. `kept_blocks` / `kept_channels`
    map student blocks and channels to the teacher's (default: the student's `pruning`, else identity)."""
    # Long by nature: the comparison's phases in order (inputs, both samplings, probes, blocks, cost), each a call.
    ctxs = _contexts(contexts)
    prompts = list(prompts) if prompts is not None else [f"context {i}" for i in range(len(ctxs))]
    if len(prompts) != len(ctxs):
        raise WanliteError(f"{len(prompts)} prompt labels for {len(ctxs)} contexts; give one label per context.")
    _check_channels(teacher, student)
    teacher.eval(), student.eval()
    notes: list[str] = []
    blocks, channels, comparable = _block_map(teacher, student, kept_blocks, kept_channels, notes)
    t_how = config.teacher_sampling()
    s_how = config.student_sampling or getattr(student, "sampling", None) or t_how
    kinds = _probe_kinds(t_how, s_how, notes)
    decode = (lambda z: vae.decode(z).float().clamp(0, 1).cpu()) if vae is not None else latent_preview
    if vae is None:
        notes.append("no VAE: frames are a fixed linear latent-to-RGB preview; no pixel PSNR/SSIM.")
    same_schedule = t_how.schedule() == s_how.schedule() and t_how.steps == s_how.steps and t_how.solver == s_how.solver
    if not same_schedule:
        notes.append("the two sample on different schedules: no per-step drift; compare the final samples.")
    shape = (1, teacher.config.out_channels, config.frames, config.height, config.width)
    rec = _Record(kinds, vae is not None, comparable and bool(kinds), blocks is not None, same_schedule)
    for p, ctx in enumerate(ctxs):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed + p))
        neg = negative_context if negative_context is not None else torch.zeros_like(ctx)
        runs = {}
        for name, model, how in (("teacher", teacher, t_how), ("student", student, s_how)):
            r = sample(model, noise, ctx, neg, sampling=how, seed=config.seed + p, return_trajectory=True, image=image)
            runs[name] = (r.latents.cpu(), r.trajectory.cpu(), r.sigmas, r.velocities.cpu())
        rec.samples(runs, decode)
        if kinds:
            rec.probes(
                _probe(
                    teacher,
                    student,
                    runs["teacher"][0],
                    noise,
                    ctx,
                    neg,
                    image,
                    config.sigmas,
                    kinds,
                    t_how.guidance,
                    s_how.trained_guidance or t_how.guidance,
                    blocks,
                    channels if comparable else False,
                )
            )
    cost = _cost(teacher, student, ctxs[0], negative_context, shape, image, config, t_how, s_how, notes)
    return Comparison(
        teacher=_describe(teacher),
        student=_describe(student),
        prompts=prompts,
        config=config,
        teacher_sampling=t_how,
        student_sampling=s_how,
        sigmas=list(config.sigmas),
        schedule=rec.schedules[0],
        student_schedule=rec.schedules[1],
        kept_blocks=blocks,
        notes=notes,
        cost=cost,
        run_dir=None if run_dir is None else str(run_dir),
        decoded=vae is not None,
        _decode=decode,
        **rec.fields(),
    )


def _check_channels(teacher, student) -> None:
    for name, m in (("teacher", teacher), ("student", student)):
        if m.config.out_channels != teacher.config.out_channels or m.config.in_channels != teacher.config.in_channels:
            raise WanliteError(
                f"{name} has in/out channels {m.config.in_channels}/{m.config.out_channels}; both "
                f"must share the teacher's {teacher.config.in_channels}/{teacher.config.out_channels}."
            )


def _probe_kinds(teacher: Sampling, student: Sampling, notes: list) -> tuple[str, ...]:
    """Which per-σ velocity comparisons mean something for this student."""
    if student.objective in ("trajectory", "dmd"):
        notes.append(
            f"a {student.objective} student learns {student.steps} steps, not the teacher's velocity at "
            "every σ: per-σ velocity and block probes are left out; the final samples tell."
        )
        return ()
    if student.guidance == 1 and teacher.guidance != 1:
        notes.append(
            f"the student samples without guidance: its velocity is compared with the teacher's guided "
            f"velocity at cfg {student.trained_guidance or teacher.guidance:g}."
        )
        return ("cfg-free",)
    return ("cond", "uncond", "guided") if teacher.guidance != 1 else ("cond",)


class _Record:
    """Collects the per-prompt measurements of `compare`."""

    def __init__(self, kinds, with_pixels: bool, with_blocks: bool, mapped: bool, same_schedule: bool):
        self.kinds, self.with_pixels, self.same_schedule = kinds, with_pixels, same_schedule
        self.velocity = {k: {"rel_mse": [], "cosine": []} for k in kinds}
        self.drift, self.final_psnr, self.final_rel_l2, self.pixel_psnr, self.pixel_ssim = [], [], [], [], []
        self.block_cosine = [] if with_blocks and mapped else None
        self.matrix_sum, self.matrix_n, self.with_blocks = None, 0, with_blocks
        self.videos, self.x0, self.schedules = [], [], None

    def samples(self, runs: dict, decode) -> None:
        (tl, tt, ts, tv), (sl, st, ss, sv) = runs["teacher"], runs["student"]
        self.schedules = (ts.tolist(), ss.tolist())
        if self.same_schedule:
            self.drift.append([rel_l2(a, b) for a, b in zip(st, tt)])
        self.final_psnr.append(psnr(sl, tl))
        self.final_rel_l2.append(rel_l2(sl, tl))
        self.x0.append(
            tuple(predict_x0(traj[:-1, 0], vel[:, 0], sig[:-1]) for traj, vel, sig in ((tt, tv, ts), (st, sv, ss)))
        )
        videos = (decode(tl)[0].cpu(), decode(sl)[0].cpu())
        self.videos.append(videos)
        if self.with_pixels:
            self.pixel_psnr.append(psnr(videos[1][None], videos[0][None], data_range=1.0))
            self.pixel_ssim.append(ssim(videos[1][None], videos[0][None]))

    def probes(self, found: tuple[dict, list, torch.Tensor | None]) -> None:
        per_kind, blocks, matrix = found
        for k in self.kinds:
            for metric in ("rel_mse", "cosine"):
                self.velocity[k][metric].append(per_kind[k][metric])
        if self.block_cosine is not None:
            self.block_cosine.append(blocks)
        if matrix is not None:
            self.matrix_sum = matrix if self.matrix_sum is None else self.matrix_sum + matrix
            self.matrix_n += 1

    def fields(self) -> dict:
        return dict(
            velocity=self.velocity,
            drift=self.drift if self.same_schedule else None,
            final_psnr=self.final_psnr,
            final_rel_l2=self.final_rel_l2,
            pixel_psnr=self.pixel_psnr if self.with_pixels else None,
            pixel_ssim=self.pixel_ssim if self.with_pixels else None,
            block_cosine=self.block_cosine,
            block_matrix=None if self.matrix_sum is None else (self.matrix_sum / self.matrix_n).tolist(),
            _videos=self.videos,
            _x0=self.x0,
        )


def _probe(teacher, student, x0, noise, ctx, neg, image, sigmas, kinds, g_teacher, g_baked, blocks, channels):
    """Velocities (and block outputs) of both models at each probe σ on the teacher's path."""
    per_kind = {k: {"rel_mse": [], "cosine": []} for k in kinds}
    per_block, matrix_sum = [], None
    for sigma in sigmas:
        xt = add_noise(x0, noise, sigma)
        v, outputs = {}, {}
        for name, model in (("teacher", teacher), ("student", student)):
            with BlockOutputs(model, detach=True) as rec:
                vc = predict_velocity(model, xt, sigma, ctx, image)
            outputs[name] = rec.in_order()
            v[name] = {"cond": vc}
            if "guided" in kinds:
                vu = predict_velocity(model, xt, sigma, neg, image)
                v[name] |= {"uncond": vu, "guided": vu + g_teacher * (vc - vu)}
        if "cfg-free" in kinds:  # the student's conditional velocity against the teacher's guided one
            v["teacher"]["cfg-free"] = guided_velocity(teacher, xt, sigma, ctx, neg, g_baked, image)[2]
            v["student"]["cfg-free"] = v["student"]["cond"]
        for k in kinds:
            per_kind[k]["rel_mse"].append(rel_mse(v["student"][k], v["teacher"][k]))
            per_kind[k]["cosine"].append(cosine(v["student"][k], v["teacher"][k]))
        if channels is False:  # widths differ and no channel map: said in the notes, not guessed
            continue
        tb = [o if channels is None else o[..., channels] for o in outputs["teacher"]]
        if blocks is not None:
            per_block.append([cosine(s, tb[j]) for s, j in zip(outputs["student"], blocks)])
        m = torch.tensor([[cosine(s, t) for t in tb] for s in outputs["student"]])
        matrix_sum = m if matrix_sum is None else matrix_sum + m
    return per_kind, per_block, None if matrix_sum is None else matrix_sum / len(sigmas)


def _cost(teacher, student, ctx, negative, shape, image, config, t_how, s_how, notes):
    """Per forward (params, FLOPs, latency, memory) and per video (forwards, FLOPs, one warm video each)."""
    if not config.measure_cost:
        return None
    if image is not None or teacher.config.in_channels != teacher.config.out_channels:
        notes.append("cost: not measured for image-conditioned models.")
        return None
    from .cost import measure_cost, time_interleaved

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed))
    cost = measure_cost(teacher, student, dict(x=noise, sigma=0.5, context=ctx), config.repeats, config.warmup)
    neg = negative if negative is not None else torch.zeros_like(ctx)

    def video(model, how):
        return lambda: sample(model, noise, ctx, neg, sampling=how, seed=config.seed).latents.cpu()

    times = time_interleaved([video(teacher, t_how), video(student, s_how)], repeats=3, warmup=1)
    cost.teacher.sample_s, cost.student.sample_s = times
    cost.teacher.forwards, cost.student.forwards = t_how.forwards, s_how.forwards
    if max(cost.speedup, cost.speedup_best) > 1.25 * min(cost.speedup, cost.speedup_best):
        notes.append(
            f"timings unstable (median forward speedup {cost.speedup:.2f}x vs best-of-{cost.repeats} "
            f"{cost.speedup_best:.2f}x): the machine is busy or the input too small; use more repeats, "
            "more tokens, or torch.set_num_threads(1) on a shared CPU."
        )
    return cost
