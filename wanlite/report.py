"""The comparison report: figures (PNG), metrics.json and a page (report.md and report.html) that shows them,
and `compare_paths`, what `wanlite compare TEACHER STUDENT --out DIR` runs."""

from __future__ import annotations

import dataclasses

import html
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from .compare import CompareConfig, Comparison, compare
from .errors import WanliteError

EXPLAIN = {
    "velocity": "Velocity relative MSE (||v_s - v_t||² / ||v_t||²; 0 = identical, 1 = as far as predicting zero) and "
                "cosine, per noise level sigma, on the teacher's own path x_t = (1-σ)x0 + σε (x0 = the teacher's sample "
                "from the same noise). Conditional, unconditional and guidance-combined velocities.",
    "drift": "Relative L2 between student and teacher latents after each sampling step, from the same noise and "
             "context, with the same scheduler and sigmas. Errors compound along the trajectory: this is what the "
             "final sample inherits.",
    "blocks": "Cosine between each student block's output hidden states and the teacher block it was taken from "
              "(on the kept channels when widths differ), per sigma; right: every student block against every teacher "
              "block, the kept pairs boxed.",
    "cost": "Student cost as a fraction of the teacher's on the same input. Latency is the median of interleaved "
            "repeats; memory is the peak above the resident weights (CUDA allocator on GPU, live tensor bytes on CPU).",
    "losses": "Loss curves of the distillation run (training lines; validation as markers).",
}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "inf" if v == math.inf else f"{v:.4g}"
    return str(v)


def _tables(comp: Comparison) -> list[tuple[str, list[tuple]]]:
    """(title, rows) of the page's tables; the first row of each is the header."""
    from .cost import cost_rows

    s = comp.summary_dict()
    fid = [("metric", "value")] + [(k, _fmt(v)) for k, v in s.items() if not k.startswith("speedup")]
    per_prompt = [("prompt", "final latent PSNR (dB)", "final rel-L2", "pixel PSNR (dB)", "pixel SSIM")]
    for i, p in enumerate(comp.prompts):
        per_prompt.append((p, _fmt(comp.final_psnr[i]), _fmt(comp.final_rel_l2[i]),
                           _fmt(comp.pixel_psnr[i]) if comp.pixel_psnr else "n/a",
                           _fmt(comp.pixel_ssim[i]) if comp.pixel_ssim else "n/a"))
    tables = [("Fidelity (means over prompts and sigmas)", fid), ("Per prompt", per_prompt)]
    if comp.cost is not None:
        tables.append((f"Cost on {comp.cost.device}", [("", "teacher", "student", "teacher / student")]
                       + cost_rows(comp.cost)))
    return tables


def _markdown(comp: Comparison, images: dict[str, str]) -> str:
    lines = ["# wanlite comparison", "", f"- teacher: {comp.teacher}", f"- student: {comp.student}",
             f"- settings: {comp.config}", ""]
    lines += [f"> note: {n}" for n in comp.notes] + [""]
    for title, rows in _tables(comp):
        lines += [f"## {title}", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows[1:]] + [""]
    lines += ["## Figures", ""]
    for name, file in images.items():
        lines += [f"### {name}", "", EXPLAIN.get(name.split("_")[0], ""), "", f"![{name}]({file})", ""]
    return "\n".join(lines)


def _html(comp: Comparison, images: dict[str, str]) -> str:
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>wanlite comparison</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>",
             "<h1>wanlite comparison</h1>", f"<p>teacher: {e(comp.teacher)}<br>student: {e(comp.student)}<br>"
             f"settings: <code>{e(str(comp.config))}</code></p>"]
    parts += [f"<p><i>note: {e(n)}</i></p>" for n in comp.notes]
    for title, rows in _tables(comp):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in rows[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:]]
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for name, file in images.items():
        parts.append(f"<h3>{e(name)}</h3><p>{e(EXPLAIN.get(name.split('_')[0], ''))}</p><img src='{e(file)}'>")
    return "\n".join(parts)


def write_report(comp: Comparison, out_dir) -> Path:
    """Write `out_dir/{*.png, metrics.json, report.md, report.html}`; return the path of report.html."""
    from .plots import figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, fig in figures(comp).items():
        fig.savefig(out / f"{name}.png", dpi=110)
        images[name] = f"{name}.png"
    (out / "metrics.json").write_text(json.dumps(comp.to_dict(), indent=1, allow_nan=False) + "\n")
    (out / "report.md").write_text(_markdown(comp, images))
    page = out / "report.html"
    page.write_text(_html(comp, images))
    return page


# ---------------------------------------------------------------- from paths (the CLI)
def _pruning_info(source, model) -> tuple[list[int] | None, torch.Tensor | None]:
    """kept_blocks / kept_channels from a student's provenance (safetensors `wanlite.*` metadata or attribute)."""
    prov = dict(getattr(source, "provenance", None) or {}) | dict(getattr(model, "provenance", None) or {})
    for key in ("pruning", "recipe"):
        if isinstance(prov.get(key), dict):
            prov = prov[key] | prov
    blocks, channels = prov.get("kept_blocks"), prov.get("kept_channels")
    return (list(blocks) if blocks is not None else None), (torch.tensor(channels) if channels is not None else None)


def _encode(prompts: Sequence[str], text_encoder) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(contexts [P, L, 4096], negative context) from captions, with `text_encoder` or the toy world's."""
    if text_encoder is None:
        try:
            from .toy.text import encode_text as text_encoder
        except ImportError:
            raise WanliteError("prompts were given as text but no text encoder is available: pass text_encoder= "
                               "(captions -> [P, L, 4096]) or contexts= tensors.") from None
    return text_encoder(list(prompts)), text_encoder([""])


def load_diffusers_vae(path, device=None):
    """A local diffusers `AutoencoderKLWan` (a VAE folder, or a pipeline folder with `vae/`), safetensors only,
    wrapped as the `decode(latents) -> [0, 1] video` that `compare` uses."""
    from diffusers import AutoencoderKLWan

    from .compare import DiffusersWanVAE

    path = Path(path)
    sub = "vae" if (path / "vae" / "config.json").is_file() else None
    if not (path / (sub or "") / "config.json").is_file():
        raise WanliteError(f"{path}: no diffusers VAE here (expected config.json, or vae/config.json in a pipeline "
                           "folder). Fix: point --vae at an AutoencoderKLWan folder, e.g. Wan2.1-T2V-1.3B-Diffusers/vae.")
    vae = AutoencoderKLWan.from_pretrained(path, subfolder=sub, torch_dtype=torch.float32, use_safetensors=True)
    return DiffusersWanVAE(vae.to(device) if device is not None else vae)


def _toy_bundle(path) -> Path | None:
    """The toy teacher bundle (toy.json + vae.safetensors + teacher/) that `path` is or lies in, if any."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / "toy.json").is_file() and (folder / "vae.safetensors").is_file():
            return folder
    return None


def compare_paths(teacher_path, student_path, prompts: Sequence[str] | None = None, out_dir="report", *, vae=None,
                  contexts: torch.Tensor | None = None, negative_context: torch.Tensor | None = None, text_encoder=None,
                  run_dir=None, config: CompareConfig | None = None, kept_blocks: Sequence[int] | None = None,
                  device=None, torch_dtype=torch.float32, write: bool = True, overrides: dict | None = None) -> Comparison:
    """Load teacher and student (any Wan layout), compare them and write the report to `out_dir`.

    `vae`: an object with `decode`, or the path of a local diffusers AutoencoderKLWan (pixel PSNR/SSIM).
    Contexts: `contexts` if given; else `prompts` encoded with `text_encoder` (default: the toy world's text
    encoder, for toy models); else two seeded random umT5-shaped contexts (functional fidelity only).
    A toy teacher bundle brings its VAE, its sampling settings and its clip size unless given."""
    from .formats import inspect_wan, load_wan

    bundle = _toy_bundle(teacher_path)
    if bundle is not None:
        from . import toy

        info = toy.info(bundle)
        teacher_path = bundle / "teacher"
        vae = vae if vae is not None else toy.load_vae(bundle)
        if config is None:
            world, samp = info.get("world", {}), info.get("sampling", {})
            config = CompareConfig(steps=samp.get("steps", 20), guidance=samp.get("guidance", 4.0),
                                   shift=samp.get("shift", 3.0), scheduler=samp.get("scheduler", "unipc"),
                                   frames=(world.get("frames", 17) - 1) // 4 + 1, height=world.get("height", 64) // 8,
                                   width=world.get("width", 64) // 8)
    config = config if config is not None else CompareConfig()
    if overrides:  # e.g. the CLI's --steps: on top of the toy bundle's settings, not instead of them
        config = dataclasses.replace(config, **overrides)
    if isinstance(vae, (str, Path)):
        vae = load_diffusers_vae(vae, device=device)
    sources = {name: inspect_wan(p) for name, p in (("teacher", teacher_path), ("student", student_path))}
    teacher = load_wan(sources["teacher"], torch_dtype=torch_dtype, device=device)
    student = load_wan(sources["student"], torch_dtype=torch_dtype, device=device)
    blocks, channels = _pruning_info(sources["student"], student)
    labels = list(prompts) if prompts else None
    if contexts is None and prompts:
        contexts, neg = _encode(prompts, text_encoder)
        negative_context = negative_context if negative_context is not None else neg
    elif contexts is None:
        g = torch.Generator().manual_seed(config.seed)
        text_dim = teacher.config.text_dim
        contexts = torch.zeros(2, 32, text_dim)
        contexts[:, :16] = torch.randn(2, 16, text_dim, generator=g)
        labels = ["random context 0", "random context 1"]
    comp = compare(teacher, student, contexts, prompts=labels, negative_context=negative_context, vae=vae,
                   kept_blocks=kept_blocks if kept_blocks is not None else blocks, kept_channels=channels,
                   config=config, run_dir=run_dir)
    if prompts is None and contexts is not None and labels and labels[0].startswith("random"):
        comp.notes.append("no prompts: seeded random contexts (functional fidelity, not caption following).")
    comp.notes.append(f"teacher: {teacher_path}; student: {student_path}")
    if write:
        comp.save(out_dir)
    return comp
