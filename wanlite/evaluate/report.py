"""The comparison report: figures (PNG), metrics.json and a page (report.md and report.html) that shows them."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

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


def _tables(comp) -> list[tuple[str, list[tuple]]]:
    """(title, rows) of the page's tables; the first row of each is the header."""
    from .cost import cost_rows

    s = comp.summary_dict()
    fid = [("metric", "value")] + [(k, _fmt(v)) for k, v in s.items() if not k.startswith("speedup")]
    per_prompt = [("prompt", "final latent PSNR (dB)", "final rel-L2", "pixel PSNR (dB)", "pixel SSIM")]
    for i, p in enumerate(comp.prompts):
        per_prompt.append(
            (
                p,
                _fmt(comp.final_psnr[i]),
                _fmt(comp.final_rel_l2[i]),
                _fmt(comp.pixel_psnr[i]) if comp.pixel_psnr else "n/a",
                _fmt(comp.pixel_ssim[i]) if comp.pixel_ssim else "n/a",
            )
        )
    how = [("", "solver", "steps", "cfg", "shift", "forwards / video", "learned by")]
    for name, x in (("teacher", comp.teacher_sampling), ("student", comp.student_sampling)):
        how.append((name, x.solver, x.steps, f"{x.guidance:g}", f"{x.shift:g}", x.forwards, x.objective or "-"))
    tables = [
        ("Sampling: each model its own", how),
        ("Fidelity (means over prompts and sigmas)", fid),
        ("Per prompt", per_prompt),
    ]
    if comp.adherence:
        adh = [("prompt adherence", "clips", "colour", "shape", "direction")]
        adh += [
            (who, a["clips"], f"{a['colour']:.0%}", f"{a['shape']:.0%}", f"{a['direction']:.0%}")
            for who, a in comp.adherence.items()
        ]
        tables.append(("Prompt adherence (toy world)", adh))
    if comp.cost is not None:
        tables.append(
            (f"Cost on {comp.cost.device}", [("", "teacher", "student", "teacher / student")] + cost_rows(comp.cost))
        )
    return tables


def _markdown(comp, images: dict[str, str]) -> str:
    lines = [
        "# wanlite comparison",
        "",
        f"- teacher: {comp.teacher}",
        f"- student: {comp.student}",
        f"- settings: {comp.config}",
        "",
    ]
    lines += [f"> note: {n}" for n in comp.notes] + [""]
    for title, rows in _tables(comp):
        lines += [f"## {title}", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows[1:]] + [""]
    lines += ["## Figures", ""]
    for name, file in images.items():
        lines += [f"### {name}", "", EXPLAIN.get(name.split("_")[0], ""), "", f"![{name}]({file})", ""]
    return "\n".join(lines)


def _html(comp, images: dict[str, str]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>wanlite comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>",
        "<h1>wanlite comparison</h1>",
        f"<p>teacher: {e(comp.teacher)}<br>student: {e(comp.student)}<br>"
        f"settings: <code>{e(str(comp.config))}</code></p>",
    ]
    parts += [f"<p><i>note: {e(n)}</i></p>" for n in comp.notes]
    for title, rows in _tables(comp):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in rows[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:]]
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for name, file in images.items():
        parts.append(f"<h3>{e(name)}</h3><p>{e(EXPLAIN.get(name.split('_')[0], ''))}</p><img src='{e(file)}'>")
    return "\n".join(parts)


def write_report(comp, out_dir) -> Path:
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
