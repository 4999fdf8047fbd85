"""`Comparison`: what `compare` measured, teacher vs student, each sampling the way it samples — the numbers
(`summary_dict`, `to_dict`), a readable summary (`repr`), frames for figures, and `.plot()` / `.explore()` /
`.save()`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

KIND_LABELS = {
    "cond": "conditional",
    "uncond": "unconditional",
    "guided": "guided (CFG)",
    "cfg-free": "student cfg 1 vs teacher CFG",
}


@dataclass
class Comparison:
    """Teacher vs student on identical inputs (same noise, prompts; each at its own sampling settings)."""

    teacher: str  # description of the teacher architecture
    student: str  # description of the student architecture
    prompts: list[str]  # one label per context
    config: object  # the CompareConfig
    teacher_sampling: object  # the teacher's Sampling
    student_sampling: object  # the student's Sampling (its own record, or the teacher's)
    sigmas: list[float]  # velocity probe sigmas
    velocity: dict  # {kind: {"rel_mse"|"cosine": [prompt][sigma]}}; {} where per-σ velocities mean nothing
    schedule: list[float]  # sigma of each teacher trajectory state (steps + 1)
    student_schedule: list[float]  # sigma of each student trajectory state
    drift: list[list[float]] | None  # [prompt][state] rel-L2 of student vs teacher states (same schedule only)
    final_psnr: list[float]  # [prompt] final-latent PSNR, dB (peak = teacher's range)
    final_rel_l2: list[float]  # [prompt]
    pixel_psnr: list[float] | None = None  # [prompt] decoded-video PSNR, dB (data range 1), with a VAE
    pixel_ssim: list[float] | None = None  # [prompt] decoded-video SSIM, with a VAE
    kept_blocks: list[int] | None = None  # teacher block of each student block
    block_cosine: list | None = None  # [prompt][sigma][student block] cosine to its teacher block's output
    block_matrix: list | None = None  # [student block][teacher block] cosine, mean over prompts and sigmas
    notes: list[str] = field(default_factory=list)  # what was assumed or skipped, in words
    cost: object | None = None  # wanlite.evaluate.cost.Cost
    adherence: dict | None = None  # toy world: {"teacher": {...}, "student": {...}} over the captions scored
    run_dir: str | None = None  # a distillation run whose loss curves belong in the report
    decoded: bool = False  # frames come from a VAE (else a latent-to-RGB preview)
    _videos: list = field(default_factory=list, repr=False)  # [prompt] (teacher, student) [3, F, H, W] in [0, 1]
    _x0: list = field(default_factory=list, repr=False)  # [prompt] (teacher, student) x0 per step [steps, C, F, H, W]
    _decode: object = field(default=None, repr=False)

    # ---- numbers ----
    def mean(self, values) -> float:
        flat = torch.tensor(values, dtype=torch.float64).flatten()
        return float(flat.mean()) if flat.numel() else math.nan

    def summary_dict(self) -> dict:
        s = {f"velocity_{k}_{m}": self.mean(v[m]) for k, v in self.velocity.items() for m in ("rel_mse", "cosine")}
        s |= {"final_latent_psnr_db": self.mean(self.final_psnr), "final_latent_rel_l2": self.mean(self.final_rel_l2)}
        if self.drift is not None:
            s["final_drift"] = self.mean([d[-1] for d in self.drift])
        if self.pixel_psnr is not None:
            s |= {"pixel_psnr_db": self.mean(self.pixel_psnr), "pixel_ssim": self.mean(self.pixel_ssim)}
        if self.block_cosine is not None:
            per_block = torch.tensor(self.block_cosine, dtype=torch.float64).mean(dim=(0, 1))
            s |= {"block_cosine_min": float(per_block.min()), "block_cosine_mean": float(per_block.mean())}
        s |= {
            "forwards_per_video_teacher": self.teacher_sampling.forwards,
            "forwards_per_video_student": self.student_sampling.forwards,
        }
        if self.cost is not None:
            s |= {
                "speedup_forward": self.cost.speedup,
                "speedup_forward_best": self.cost.speedup_best,
                "speedup_video": self.cost.sample_speedup,
                "video_flops_ratio": self.cost.video_flops_ratio,
            }
        for who, a in (self.adherence or {}).items():
            s |= {f"adherence_{who}_{k}": a[k] for k in ("colour", "shape", "direction")}
        return s

    def to_dict(self) -> dict:
        """Every number, JSON-ready (inf PSNR is written as the string "inf")."""
        names = (
            "teacher",
            "student",
            "prompts",
            "sigmas",
            "velocity",
            "schedule",
            "student_schedule",
            "drift",
            "final_psnr",
            "final_rel_l2",
            "pixel_psnr",
            "pixel_ssim",
            "kept_blocks",
            "block_cosine",
            "block_matrix",
            "notes",
            "adherence",
            "run_dir",
            "decoded",
        )
        out = {k: getattr(self, k) for k in names}
        out["config"] = dataclasses.asdict(self.config)
        out["sampling"] = {"teacher": self.teacher_sampling.to_dict(), "student": self.student_sampling.to_dict()}
        out["summary"] = self.summary_dict()
        if self.cost is not None:
            out["cost"] = dataclasses.asdict(self.cost) | {
                "speedup": self.cost.speedup,
                "speedup_best": self.cost.speedup_best,
                "video_speedup": self.cost.sample_speedup,
                "video_flops_ratio": self.cost.video_flops_ratio,
            }
        return _clean(out)

    def __repr__(self) -> str:
        from .cost import cost_rows

        s = self.summary_dict()
        lines = [
            f"Comparison over {len(self.prompts)} prompt(s), same noise and prompts",
            f"  teacher: {self.teacher}\n           samples {self.teacher_sampling}",
            f"  student: {self.student}\n           samples {self.student_sampling}",
        ]
        if self.velocity:
            lines.append(f"  velocity at {len(self.sigmas)} probe sigmas     rel-MSE    cosine")
            lines += [
                f"    {KIND_LABELS[k]:<30} {_fmt(s[f'velocity_{k}_rel_mse']):>9}  {_fmt(s[f'velocity_{k}_cosine']):>8}"
                for k in self.velocity
            ]
        lines.append(
            f"  final sample vs the teacher's: latent PSNR {_fmt(s['final_latent_psnr_db'])} dB, "
            f"rel-L2 {_fmt(s['final_latent_rel_l2'])}"
        )
        if "pixel_psnr_db" in s:
            lines.append(f"    decoded video: PSNR {_fmt(s['pixel_psnr_db'])} dB, SSIM {_fmt(s['pixel_ssim'])}")
        if "block_cosine_min" in s:
            lines.append(
                f"  block output cosine: mean {_fmt(s['block_cosine_mean'])}, worst block {_fmt(s['block_cosine_min'])}"
            )
        for who, a in (self.adherence or {}).items():
            lines.append(
                f"  adherence ({who}, {a['clips']} clips): colour {a['colour']:.0%}, shape {a['shape']:.0%}, "
                f"direction {a['direction']:.0%}"
            )
        if self.cost is not None:
            lines.append(
                f"  {'cost on ' + self.cost.device:<38} {'teacher':>10} {'student':>10} {'teacher/student':>16}"
            )
            lines += [f"    {a:<36} {b:>10} {c:>10} {d:>16}" for a, b, c, d in cost_rows(self.cost)]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    # ---- pictures (see plots.py) ----
    def frames(self, prompt: int = 0, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher, student) videos [3, F, H, W] in [0, 1]: the final samples, or the x0 each predicts at teacher
        step `step` (the student at the same point of its own, shorter, schedule)."""
        teacher_x0, student_x0 = self._x0[prompt]
        if step is None or step >= len(teacher_x0):
            return self._videos[prompt]
        j = min(len(student_x0) - 1, round(step * len(student_x0) / len(teacher_x0)))
        return self._decode(teacher_x0[step : step + 1])[0], self._decode(student_x0[j : j + 1])[0]

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


def _fmt(v) -> str:
    return "inf" if v == math.inf else ("n/a" if v is None else f"{v:.4g}")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v
