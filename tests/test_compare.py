"""Comparison: metrics on hand-made tensors, an identical student, a depth-halved student, figures and report."""

import dataclasses
import json
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from wanlite.core.flow import cosine, rel_l2, rel_mse  # noqa: E402
from wanlite.errors import WanliteError  # noqa: E402
from wanlite.evaluate import CompareConfig, compare  # noqa: E402
from wanlite.evaluate.cost import measure_cost  # noqa: E402
from wanlite.evaluate.curves import loss_series, read_metrics  # noqa: E402
from wanlite.evaluate.metrics import latent_preview, psnr, ssim  # noqa: E402
from wanlite.evaluate.plots import Explorer, figures, plot_comparison  # noqa: E402
from wanlite.testing import random_inputs, random_wan, tiny_spec  # noqa: E402

SPEC = tiny_spec("t2v", num_layers=4)
FAST = CompareConfig(steps=3, frames=2, height=8, width=8, sigmas=(0.1, 0.5, 0.9), repeats=3, guidance=4.0)
NOCOST = dataclasses.replace(FAST, measure_cost=False)


class TinyVAE:
    """A duck-typed VAE: decode(latents) -> video [B, 3, F, H, W] in [0, 1] (a fixed smooth map)."""

    def decode(self, z):
        return torch.sigmoid(z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2))


def depth_student(teacher, blocks):
    """A student of the teacher's kept blocks (wanlite.compress.build_student; slicing is its job)."""
    from wanlite.compress import Recipe, build_student

    student, pruning = build_student(teacher, Recipe(blocks=tuple(blocks)))
    return student.eval(), pruning


@pytest.fixture(scope="module")
def teacher():
    return random_wan(SPEC, seed=0)


@pytest.fixture(scope="module")
def contexts():
    return torch.cat([random_inputs(SPEC, seed=i)["context"] for i in range(2)])


def test_metrics_on_hand_made_tensors():
    ref = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert rel_mse(ref, ref) == 0 and psnr(ref, ref) == math.inf
    assert rel_mse(torch.zeros_like(ref), ref) == pytest.approx(1.0)  # predicting zeros
    assert rel_mse(2 * ref, ref) == pytest.approx(1.0) and rel_l2(3 * ref, ref) == pytest.approx(2.0)
    assert cosine(2 * ref, ref) == pytest.approx(1.0) and cosine(-ref, ref) == pytest.approx(-1.0)
    assert cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(0.0)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)  # range 1, MSE 0.01
    assert psnr(ref + 0.1, ref, data_range=2.0) == pytest.approx(20 + 20 * math.log10(2))
    video = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim(video, video) == pytest.approx(1.0)
    assert ssim(video.flip(-1), video) < 0.2 < ssim((video + 0.02).clamp(0, 1), video) < 1.0
    rgb = latent_preview(torch.randn(1, 16, 2, 4, 4))
    assert rgb.shape == (1, 3, 2, 4, 4) and 0 <= rgb.min() and rgb.max() <= 1


def test_identical_student_has_zero_error_and_speedup_about_one(teacher, contexts):
    student = random_wan(SPEC, seed=0)
    comp = compare(teacher, student, contexts, prompts=["a", "b"], vae=TinyVAE(), config=FAST)
    for kind in ("cond", "uncond", "guided"):
        assert all(v == 0 for row in comp.velocity[kind]["rel_mse"] for v in row)
        assert all(v == pytest.approx(1.0) for row in comp.velocity[kind]["cosine"] for v in row)
    assert comp.final_psnr == [math.inf, math.inf] and comp.pixel_psnr == [math.inf, math.inf]
    assert comp.pixel_ssim == pytest.approx([1.0, 1.0]) and comp.final_rel_l2 == [0.0, 0.0]
    assert all(d == 0 for row in comp.drift for d in row)
    assert torch.allclose(torch.tensor(comp.block_cosine), torch.tensor(1.0))
    assert comp.cost.teacher.flops == comp.cost.student.flops > 0
    assert comp.cost.teacher.params == comp.cost.student.params and comp.cost.student.sample_s > 0
    # Same work, so about the same time: more tokens and repeats than the fidelity run, a loose band.
    cost = measure_cost(teacher, student, random_inputs(SPEC, frames=2, height=32, width=32), repeats=11)
    assert 0.6 < cost.speedup_best < 1.67, cost  # best-of-repeats: steady under other processes' load
    assert "PSNR inf dB" in repr(comp) and "guided (CFG)" in repr(comp)


def test_depth_halved_student_is_faster_and_mapped(teacher, contexts):
    student, pruning = depth_student(teacher, [0, 2])
    # 4 x 16 x 16 tokens: the blocks, not the embeddings, dominate, so the ratio is robust.
    inputs = random_inputs(SPEC, frames=4, height=32, width=32)
    cost = measure_cost(teacher, student, inputs, repeats=7, warmup=1)
    assert cost.tokens == 1024
    assert cost.teacher.flops / cost.student.flops > 1.6
    assert cost.speedup_best > 1.2, cost
    comp = compare(teacher, student, contexts[:1], config=NOCOST, kept_blocks=pruning.kept_blocks)
    assert comp.kept_blocks == [0, 2]
    per_block = torch.tensor(comp.block_cosine).mean(dim=(0, 1))
    assert per_block[0] == pytest.approx(1.0, abs=1e-5)  # student block 0 is teacher block 0, same input
    assert per_block[1] < 0.999  # its input already lacks teacher block 1
    assert comp.mean(comp.velocity["cond"]["rel_mse"]) > 1e-4 and math.isfinite(comp.final_psnr[0])


def test_block_map_errors_are_clear(teacher, contexts):
    student, _ = depth_student(teacher, [0, 3])
    with pytest.raises(WanliteError, match="kept_blocks"):
        compare(teacher, student, contexts[:1], kept_blocks=[0, 1, 2], config=FAST)
    with pytest.raises(WanliteError, match="one label per context"):
        compare(teacher, student, contexts, prompts=["only one"], config=FAST)


def test_figures_report_and_explorer_render_headless(teacher, contexts, tmp_path):
    student, pruning = depth_student(teacher, [1, 3])
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": i, "loss": 1 / (i + 1), "parts": {"loss_feat": 0.1 / (i + 1)}} for i in range(5)]
    lines += [{"step": 4, "split": "val", "loss": 0.3}, {"step": 4, "val_loss": 0.25}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 5, "lo')  # cut line
    series = loss_series(read_metrics(run))
    assert series["loss"][1] == [1 / (i + 1) for i in range(5)]
    assert series["val/loss"] == ([4], [0.3]) and series["val_loss"] == ([4], [0.25]) and "parts/loss_feat" in series
    comp = compare(teacher, student, contexts, kept_blocks=pruning.kept_blocks, config=FAST, run_dir=run)
    figs = figures(comp)
    assert {"velocity", "drift", "blocks", "cost", "frames_0", "frames_1", "losses"} <= set(figs)
    assert plot_comparison(comp).axes and comp.plot() is not None
    page = comp.save(tmp_path / "report")
    for name in figs:
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["kept_blocks"] == [1, 3] and metrics["summary"]["speedup_forward"] > 0
    assert len(metrics["velocity"]["guided"]["rel_mse"]) == 2 and len(metrics["drift"][0]) == FAST.steps + 1
    assert "velocity.png" in page.read_text() and "blocks.png" in (tmp_path / "report" / "report.md").read_text()
    bundle = Explorer(comp)._repr_mimebundle_()  # no kernel here: the static picture is what shows
    assert "image/png" in bundle and "application/vnd.jupyter.widget-view+json" not in bundle
    t, s = comp.frames(0, step=1)
    assert t.shape == s.shape == (3, 2, 8, 8)


def test_compare_paths_reads_the_block_map_from_the_export(teacher, tmp_path):
    formats = pytest.importorskip("wanlite.formats")
    from wanlite.runs import compare_paths

    student, pruning = depth_student(teacher, [0, 3])
    formats.save_wan(teacher, tmp_path / "teacher")
    formats.save_wan(student, tmp_path / "student", provenance={"kept_blocks": pruning.kept_blocks})
    comp = compare_paths(tmp_path / "teacher", tmp_path / "student", out_dir=tmp_path / "out", config=NOCOST)
    assert comp.kept_blocks == [0, 3] and (tmp_path / "out" / "report.html").exists()
    assert len(comp.prompts) == 2


def test_width_pruned_student_is_compared_on_its_kept_channels(teacher, contexts):
    from wanlite.compress import Recipe, build_student

    student, pruning = build_student(teacher, Recipe(num_heads=1, ffn_dim=256, width_selection="magnitude"))
    comp = compare(teacher, student.eval(), contexts[:1], kept_channels=pruning.kept_channels, config=NOCOST)
    assert len(comp.block_cosine[0][0]) == 4 and torch.tensor(comp.block_matrix).shape == (4, 4)
    assert all(-1 <= c <= 1 for c in comp.block_cosine[0][0])
    carried = compare(teacher, student, contexts[:1], config=NOCOST)  # the student's own record is used
    assert carried.block_cosine == comp.block_cosine
    student.pruning = None
    blind = compare(teacher, student, contexts[:1], config=NOCOST)  # no channel map: said, not guessed
    assert blind.block_cosine is None and blind.block_matrix is None
    assert any("kept_channels" in n for n in blind.notes)
    assert figures(blind)["blocks"].axes  # the figure says why instead of failing


def test_diffusers_wan_vae_adapter_decodes_to_unit_range_videos(tmp_path):
    from diffusers import AutoencoderKLWan

    from wanlite.evaluate.vae import DiffusersWanVAE, load_diffusers_vae

    torch.manual_seed(0)
    vae = DiffusersWanVAE(
        AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        ).eval()
    )
    video = vae.decode(torch.randn(1, 16, 2, 4, 4))
    assert video.shape == (1, 3, 5, 32, 32) and 0 <= float(video.min()) and float(video.max()) <= 1
    z = torch.randn(1, 16, 1, 4, 4)
    cfg = vae.vae.config  # diffusers' Wan pipeline: latents / (1 / std) + mean, then video / 2 + 0.5
    raw = z / (1.0 / torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)) + torch.tensor(cfg.latents_mean).view(
        1, 16, 1, 1, 1
    )
    with torch.no_grad():
        expected = (vae.vae.decode(raw, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(vae.decode(z), expected, atol=1e-6)
    vae.vae.save_pretrained(tmp_path / "pipe" / "vae")  # a pipeline folder: its vae/ is found
    assert torch.allclose(load_diffusers_vae(tmp_path / "pipe").decode(z), expected, atol=1e-6)
    with pytest.raises(WanliteError, match="AutoencoderKLWan"):
        load_diffusers_vae(tmp_path)


def test_heatmap_numbers_fit_their_cells_or_are_left_out():
    from wanlite.core.display import new_figure
    from wanlite.evaluate.plots import _annotate

    small, tall = new_figure(figsize=(5, 3.8)).subplots(), new_figure(figsize=(5, 3.8)).subplots()
    _annotate(small, torch.rand(2, 3), "{:.3f}")
    _annotate(tall, torch.rand(20, 7), "{:.3f}")  # 20 rows of ~10 pt: numbers would overlap
    sizes = {t.get_fontsize() for t in small.texts}
    assert len(small.texts) == 6 and min(sizes) >= 8  # big cells, readable numbers
    assert len(tall.texts) == 0


def test_cpu_peak_memory_is_measured_without_profiler_chatter_on_stderr(capfd):
    from wanlite.evaluate.cost import peak_memory

    peak = peak_memory(lambda: torch.ones(256, 1024) * 2, torch.device("cpu"))  # two 1 MiB tensors alive
    out = capfd.readouterr()
    assert peak is None or peak >= 2 * 256 * 1024 * 4
    assert "profiler_start" not in out.err and "USDT" not in out.err, out.err  # kineto prints these from C++
