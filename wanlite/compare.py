"""How close is the student to its teacher, and what does it cost? Metrics, measurements and `Comparison`.

Every fidelity number is taken on identical inputs for both models: the same noise, context and sigma (and
for trajectories the same schedule). Velocity probes sit on the teacher's own path x_t = (1-s) x0 + s eps,
with x0 the teacher's sample from that noise, so they measure the student where it will actually be used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import WanliteError
from .sampling import SampleResult, predict_velocity, sample

# ComfyUI's Wan 2.1 latent -> RGB preview factors (comfy/latent_formats.py, class Wan21), for model-space latents.
WAN21_RGB = torch.tensor([
    [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747], [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665], [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364], [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950], [0.1984, 0.0913, 0.1861]])
WAN21_RGB_BIAS = torch.tensor([-0.1835, -0.0868, -0.3360])


# ---------------------------------------------------------------- metrics on tensors
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(x.shape[0], -1)


def relative_mse(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """||pred - ref||^2 / ||ref||^2 over the whole batch: 0 is perfect, 1 is as wrong as predicting zeros."""
    p, r = _flat(pred), _flat(ref)
    return float(((p - r) ** 2).sum() / (r ** 2).sum().clamp_min(1e-30))


def relative_l2(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """||pred - ref|| / ||ref|| (the square root of `relative_mse`)."""
    return math.sqrt(relative_mse(pred, ref))


def cosine(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of each sample's flattened tensor, averaged over the batch."""
    return float(F.cosine_similarity(_flat(pred), _flat(ref), dim=1, eps=1e-12).clamp(-1, 1).mean())


def psnr(pred: torch.Tensor, ref: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; `inf` for identical tensors. Without `data_range` the reference's
    max - min is the peak (right for latents, which have no fixed range); pixels in [0, 1] use 1."""
    mse = float(((pred.detach().float() - ref.detach().float()) ** 2).mean())
    if mse == 0:
        return math.inf
    peak = float(ref.max() - ref.min()) if data_range is None else data_range
    return 10 * math.log10(peak ** 2 / mse)


def ssim(pred: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian 11x11 window, sigma 1.5) over every frame of videos [B, C, F, H, W]
    (or images [B, C, H, W]); computed per channel and averaged, like scikit-image's channel_axis mode."""
    if pred.shape != ref.shape:
        raise WanliteError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(ref.shape)}.")
    x, y = pred.detach().float(), ref.detach().float()
    if x.ndim == 5:  # [B, C, F, H, W] -> [B*F, C, H, W]
        x, y = (t.permute(0, 2, 1, 3, 4).reshape(-1, t.shape[1], t.shape[3], t.shape[4]) for t in (x, y))
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2]) | 1
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    blur = lambda t: F.conv2d(t, kernel, groups=c)  # noqa: E731 (valid region only, as scikit-image crops)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def latent_preview(latents: torch.Tensor) -> torch.Tensor:
    """A cheap RGB look at latents [B, C, F, H, W] -> [B, 3, F, H, W] in [0, 1] by a fixed linear map of the
    channels: ComfyUI's Wan 2.1 preview factors for 16 channels, a fixed seeded projection otherwise."""
    x = latents.detach().float()
    if x.shape[1] == 16:
        weight, bias = WAN21_RGB, WAN21_RGB_BIAS
    else:
        weight = torch.randn(x.shape[1], 3, generator=torch.Generator().manual_seed(0)) / math.sqrt(x.shape[1])
        bias = torch.zeros(3)
    weight, bias = weight.to(x.device), bias.to(x.device)
    rgb = torch.einsum("bcfhw,cr->brfhw", x, weight) + bias[None, :, None, None, None]
    return ((rgb + 1) / 2).clamp(0, 1)



class DiffusersWanVAE:
    """Adapter: a diffusers `AutoencoderKLWan` as the `decode(latents) -> [B, 3, F, H, W] in [0, 1]` that
    `compare` expects. Latents are the transformer's normalised ones; this undoes the per-channel
    normalisation (`latents_mean` / `latents_std` of the VAE config) the way diffusers' Wan pipelines do."""

    def __init__(self, vae):
        self.vae = vae
        z = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = latents.to(p.device, torch.float32) * self.std.to(p.device) + self.mean.to(p.device)
        video = self.vae.decode(z.to(p.dtype), return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float() / 2 + 0.5).clamp(0, 1)

# ---------------------------------------------------------------- block outputs
class BlockRecorder:
    """Context manager that keeps each transformer block's output hidden states [B, L, D] of every forward."""

    def __init__(self, model):
        self.model, self.outputs, self._hooks = model, [], []

    def __enter__(self):
        self.outputs = []

        def hook(i):
            def fn(_module, _inp, out):
                out = out[0] if isinstance(out, tuple) else out
                self.outputs.append((i, out.detach()))  # model dtype: cosine upcasts per pair
            return fn
        self._hooks = [b.register_forward_hook(hook(i)) for i, b in enumerate(self.model.blocks)]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

    def last(self) -> list[torch.Tensor]:
        """The outputs of the most recent forward, one per block."""
        n = len(self.model.blocks)
        return [o for _, o in self.outputs[-n:]]


# ---------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class CompareConfig:
    """How a comparison samples and probes; the same settings are used for teacher and student."""

    steps: int = 20  # sampling steps of the trajectory comparison
    guidance: float = 5.0  # classifier-free guidance scale (1 = no unconditional pass)
    shift: float = 5.0  # flow shift of the schedule (Wan2.1 T2V: 5; ComfyUI default 8)
    scheduler: str = "unipc"  # unipc | euler
    sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # velocity probes
    frames: int = 3  # latent frames (video frames = 4 (F-1) + 1)
    height: int = 16  # latent height (pixels / 8 for Wan2.1)
    width: int = 16  # latent width
    seed: int = 0  # noise of prompt i is drawn from seed + i
    repeats: int = 5  # timed forwards per model (median)
    warmup: int = 1  # untimed forwards per model first
    measure_cost: bool = True  # time forwards and a sampling run, count FLOPs and memory


@dataclass
class Comparison:
    """Teacher vs student on identical inputs. `repr` is the summary table; `.plot()` draws everything;
    `.explore()` is the interactive view; `.save(out_dir)` writes figures, metrics.json and a report page."""

    teacher: str  # description of the teacher architecture
    student: str  # description of the student architecture
    prompts: list[str]  # one label per context
    config: CompareConfig
    sigmas: list[float]  # velocity probe sigmas
    velocity: dict  # {"cond"|"uncond"|"guided": {"rel_mse"|"cosine": [prompt][sigma]}}
    schedule: list[float]  # sigma of each trajectory state (steps + 1)
    drift: list[list[float]]  # [prompt][state] relative L2 of student vs teacher trajectory states
    final_psnr: list[float]  # [prompt] final-latent PSNR, dB (peak = teacher's range)
    final_rel_l2: list[float]  # [prompt]
    pixel_psnr: list[float] | None = None  # [prompt] decoded-video PSNR, dB (data range 1), with a VAE
    pixel_ssim: list[float] | None = None  # [prompt] decoded-video SSIM, with a VAE
    kept_blocks: list[int] | None = None  # teacher block of each student block
    block_cosine: list | None = None  # [prompt][sigma][student block] cosine to its teacher block's output
    block_matrix: list | None = None  # [student block][teacher block] cosine, mean over prompts and sigmas
    notes: list[str] = field(default_factory=list)  # what was assumed or skipped, in words
    cost: object | None = None  # wanlite.cost.Cost
    run_dir: str | None = None  # a distillation run whose loss curves belong in the report
    decoded: bool = False  # frames come from a VAE (else a latent-to-RGB preview)
    _videos: list = field(default_factory=list, repr=False)  # [prompt] (teacher, student) [3, F, H, W] in [0, 1]
    _x0: list = field(default_factory=list, repr=False)  # [prompt] (teacher, student) x0 predictions [steps, C, F, H, W]
    _decode: object = field(default=None, repr=False)

    # ---- numbers ----
    def mean(self, values) -> float:
        flat = torch.tensor(values, dtype=torch.float64).flatten()
        return float(flat.mean()) if flat.numel() else math.nan

    def to_dict(self) -> dict:
        """Every number, JSON-ready (inf PSNR is written as the string "inf")."""
        import dataclasses

        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v
        out = {k: getattr(self, k) for k in ("teacher", "student", "prompts", "sigmas", "velocity", "schedule", "drift",
                                            "final_psnr", "final_rel_l2", "pixel_psnr", "pixel_ssim", "kept_blocks",
                                            "block_cosine", "block_matrix", "notes", "run_dir", "decoded")}
        out["config"] = dataclasses.asdict(self.config)
        out["summary"] = self.summary_dict()
        if self.cost is not None:
            out["cost"] = dataclasses.asdict(self.cost) | {"speedup": self.cost.speedup, "speedup_best": self.cost.speedup_best,
                                                          "sample_speedup": self.cost.sample_speedup}
        return clean(out)

    def summary_dict(self) -> dict:
        s = {f"velocity_{k}_{m}": self.mean(self.velocity[k][m]) for k in self.velocity for m in ("rel_mse", "cosine")}
        s |= {"final_latent_psnr_db": self.mean(self.final_psnr), "final_latent_rel_l2": self.mean(self.final_rel_l2),
              "final_drift": self.mean([d[-1] for d in self.drift])}
        if self.pixel_psnr is not None:
            s |= {"pixel_psnr_db": self.mean(self.pixel_psnr), "pixel_ssim": self.mean(self.pixel_ssim)}
        if self.block_cosine is not None:
            per_block = torch.tensor(self.block_cosine, dtype=torch.float64).mean(dim=(0, 1))
            s |= {"block_cosine_min": float(per_block.min()), "block_cosine_mean": float(per_block.mean())}
        if self.cost is not None:
            s |= {"speedup_forward": self.cost.speedup, "speedup_forward_best": self.cost.speedup_best,
                  "speedup_sampling": self.cost.sample_speedup}
        return s

    def __repr__(self) -> str:
        from .cost import cost_rows

        fmt = lambda v: "inf" if v == math.inf else f"{v:.4g}"  # noqa: E731
        lines = [f"Comparison over {len(self.prompts)} prompt(s), {len(self.sigmas)} probe sigmas, "
                 f"{self.config.steps} {self.config.scheduler} steps (shift {self.config.shift}, guidance {self.config.guidance})",
                 f"  teacher: {self.teacher}", f"  student: {self.student}", "  fidelity (mean)         rel-MSE    cosine"]
        for k in self.velocity:
            lines.append(f"    velocity {k:<13} {fmt(self.mean(self.velocity[k]['rel_mse'])):>9}  "
                         f"{fmt(self.mean(self.velocity[k]['cosine'])):>8}")
        s = self.summary_dict()
        lines.append(f"    final latent: PSNR {fmt(s['final_latent_psnr_db'])} dB, rel-L2 {fmt(s['final_latent_rel_l2'])}")
        if "pixel_psnr_db" in s:
            lines.append(f"    decoded video: PSNR {fmt(s['pixel_psnr_db'])} dB, SSIM {fmt(s['pixel_ssim'])}")
        if "block_cosine_min" in s:
            lines.append(f"    block output cosine: mean {fmt(s['block_cosine_mean'])}, worst block {fmt(s['block_cosine_min'])}")
        if self.cost is not None:
            lines.append(f"  {'cost on ' + self.cost.device:<32} {'teacher':>10} {'student':>10} {'teacher/student':>16}")
            lines += [f"    {a:<30} {b:>10} {c:>10} {d:>16}" for a, b, c, d in cost_rows(self.cost)]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    # ---- pictures (see wanlite.plots) ----
    def frames(self, prompt: int = 0, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher, student) videos [3, F, H, W] in [0, 1]: the final sample, or the x0 predicted at `step`."""
        if step is None or step >= len(self._x0[prompt][0]):
            return self._videos[prompt]
        t, s = self._x0[prompt]
        return self._decode(t[step:step + 1])[0], self._decode(s[step:step + 1])[0]

    def plot(self):
        from .plots import plot_comparison
        return plot_comparison(self)

    def explore(self):
        from .plots import explore
        return explore(self)

    def save(self, out_dir) -> Path:
        """Write figures (PNG), metrics.json and report.md / report.html into `out_dir`; return the page."""
        from .report import write_report
        return write_report(self, out_dir)


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
        kept_blocks = getattr(pruning, "kept_blocks", None) or getattr(student, "kept_blocks", None)
    if kept_channels is None:
        kept_channels = getattr(pruning, "kept_channels", None)
    nt, ns = len(teacher.blocks), len(student.blocks)
    width = lambda m: m.config.num_attention_heads * m.config.attention_head_dim  # noqa: E731
    dt, ds = width(teacher), width(student)
    if kept_blocks is None and nt == ns:
        kept_blocks = list(range(ns))
        notes.append("no block map given; student block i is compared with teacher block i (same depth).")
    if kept_blocks is not None and (len(kept_blocks) != ns or max(kept_blocks) >= nt):
        raise WanliteError(f"kept_blocks={list(kept_blocks)} does not fit: the student has {ns} blocks, the teacher "
                           f"{nt}. Pass the student's Pruning.kept_blocks (teacher index of each student block).")
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
    return (f"{len(model.blocks)} blocks x dim {c.num_attention_heads * c.attention_head_dim} ({c.num_attention_heads} "
            f"heads), ffn {c.ffn_dim}, {n / 1e6:.1f}M params, {next(model.parameters()).dtype}")


@torch.no_grad()
def compare(teacher, student, contexts, *, prompts: Sequence[str] | None = None, negative_context=None, vae=None,
            kept_blocks: Sequence[int] | None = None, kept_channels=None, config: CompareConfig = CompareConfig(),
            image=None, run_dir=None) -> Comparison:
    """Compare `student` with `teacher` on each context (prompt): velocities, trajectories, blocks, pixels, cost.

    `vae`: anything with `decode(latents) -> video [B, 3, F, H, W] in [0, 1]` (the toy VAE, or an adapter around
    diffusers' AutoencoderKLWan); without it frames are a latent-to-RGB preview. `kept_blocks` / `kept_channels`
    map student blocks and channels to the teacher's (default: the student's `pruning`, else identity)."""
    ctxs = _contexts(contexts)
    prompts = list(prompts) if prompts is not None else [f"context {i}" for i in range(len(ctxs))]
    if len(prompts) != len(ctxs):
        raise WanliteError(f"{len(prompts)} prompt labels for {len(ctxs)} contexts; give one label per context.")
    for name, m in (("teacher", teacher), ("student", student)):
        if m.config.out_channels != teacher.config.out_channels or m.config.in_channels != teacher.config.in_channels:
            raise WanliteError(f"{name} has in/out channels {m.config.in_channels}/{m.config.out_channels}; both models "
                               f"must share the teacher's {teacher.config.in_channels}/{teacher.config.out_channels}.")
    teacher.eval(), student.eval()
    notes: list[str] = []
    kept_blocks, channels, comparable = _block_map(teacher, student, kept_blocks, kept_channels, notes)
    cfg, g = config, config.guidance
    decode = (lambda z: vae.decode(z).float().clamp(0, 1).cpu()) if vae is not None else latent_preview
    if vae is None:
        notes.append("no VAE: frames are a fixed linear latent-to-RGB preview; no pixel PSNR/SSIM.")
    kinds = ("cond", "uncond", "guided") if g != 1.0 else ("cond",)
    velocity = {k: {"rel_mse": [], "cosine": []} for k in kinds}
    shape = (1, teacher.config.out_channels, cfg.frames, cfg.height, cfg.width)
    out = dict(drift=[], final_psnr=[], final_rel_l2=[], pixel_psnr=[] if vae else None, pixel_ssim=[] if vae else None,
               block_cosine=[] if kept_blocks is not None else None)
    matrix_sum, matrix_n = None, 0
    cost, times = None, {}
    for p, ctx in enumerate(ctxs):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed + p))
        neg = negative_context if negative_context is not None else torch.zeros_like(ctx)
        if p == 0 and cfg.measure_cost:
            from .cost import measure_cost
            inputs = dict(hidden_states=noise, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx)
            if image is None and teacher.config.in_channels == teacher.config.out_channels:
                cost = measure_cost(teacher, student, inputs, cfg.repeats, cfg.warmup)
            else:
                notes.append("cost: forward latency not measured for image-conditioned models.")
        runs = {}
        for name, model in (("teacher", teacher), ("student", student)):
            r = sample(model, noise, ctx, neg, cfg.steps, g, cfg.shift, cfg.scheduler, return_trajectory=True,
                       image=image)
            runs[name] = SampleResult(r.latents.cpu(), r.trajectory.cpu(), r.sigmas, r.velocities.cpu())
        if cost is not None and not times:  # one more run each, warm now, interleaved: the sampling cost
            from .cost import time_interleaved

            def run(model):
                return lambda: sample(model, noise, ctx, neg, cfg.steps, g, cfg.shift, cfg.scheduler).latents.cpu()
            times = dict(zip(("teacher", "student"), time_interleaved([run(teacher), run(student)], 1, 0)))
        tr, sr = runs["teacher"], runs["student"]
        out["drift"].append([relative_l2(s, t) for s, t in zip(sr.trajectory, tr.trajectory)])
        out["final_psnr"].append(psnr(sr.latents, tr.latents))
        out["final_rel_l2"].append(relative_l2(sr.latents, tr.latents))
        x0s = [(r.trajectory[:-1, 0] - r.sigmas[:-1, None, None, None, None] * r.velocities[:, 0]) for r in (tr, sr)]
        videos = (decode(tr.latents)[0].cpu(), decode(sr.latents)[0].cpu())
        if vae is not None:
            out["pixel_psnr"].append(psnr(videos[1][None], videos[0][None], data_range=1.0))
            out["pixel_ssim"].append(ssim(videos[1][None], videos[0][None]))
        per_prompt = {k: {"rel_mse": [], "cosine": []} for k in kinds}
        blocks_p = []
        x0 = tr.latents
        for sigma in cfg.sigmas:
            xt = (1 - sigma) * x0 + sigma * noise
            v, rec = {}, {}
            for name, model in (("teacher", teacher), ("student", student)):
                with BlockRecorder(model) as r:
                    vc = predict_velocity(model, xt, sigma, ctx, image)
                rec[name] = r.last()
                v[name] = {"cond": vc}
                if g != 1.0:
                    vu = predict_velocity(model, xt, sigma, neg, image)
                    v[name] |= {"uncond": vu, "guided": vu + g * (vc - vu)}
            for k in kinds:
                per_prompt[k]["rel_mse"].append(relative_mse(v["student"][k], v["teacher"][k]))
                per_prompt[k]["cosine"].append(cosine(v["student"][k], v["teacher"][k]))
            if not comparable:
                continue
            tb = [o if channels is None else o[..., channels] for o in rec["teacher"]]
            if kept_blocks is not None:
                blocks_p.append([cosine(s, tb[j]) for s, j in zip(rec["student"], kept_blocks)])
            m = torch.tensor([[cosine(s, t) for t in tb] for s in rec["student"]])
            matrix_sum, matrix_n = (m if matrix_sum is None else matrix_sum + m), matrix_n + 1
        for k in kinds:
            for metric in ("rel_mse", "cosine"):
                velocity[k][metric].append(per_prompt[k][metric])
        if out["block_cosine"] is not None:
            out["block_cosine"].append(blocks_p)
        out.setdefault("_x0", []).append((x0s[0].cpu(), x0s[1].cpu()))
        out.setdefault("_videos", []).append(videos)
    if cost is not None:
        cost.teacher.sample_s, cost.student.sample_s = times["teacher"], times["student"]
        if max(cost.speedup, cost.speedup_best) > 1.25 * min(cost.speedup, cost.speedup_best):
            notes.append(f"timings unstable (median speedup {cost.speedup:.2f}x vs best-of-{cost.repeats} "
                         f"{cost.speedup_best:.2f}x): the machine is busy or the input too small; use more repeats, "
                         "more tokens, or torch.set_num_threads(1) on a shared CPU.")
    return Comparison(teacher=_describe(teacher), student=_describe(student), prompts=prompts, config=cfg,
                      sigmas=list(cfg.sigmas), velocity=velocity, schedule=tr.sigmas.tolist(),
                      kept_blocks=kept_blocks, notes=notes, cost=cost,
                      block_matrix=None if matrix_sum is None else (matrix_sum / matrix_n).tolist(),
                      run_dir=None if run_dir is None else str(run_dir), decoded=vae is not None, _decode=decode, **out)


def compare_paths(teacher_path, student_path, prompts=None, out_dir="report", **options) -> Comparison:
    """Load both models from any Wan layout, compare, write the report (see `wanlite.report.compare_paths`)."""
    from .report import compare_paths as run

    return run(teacher_path, student_path, prompts, out_dir, **options)
