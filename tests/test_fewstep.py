"""Few-step, guidance-free students: the guided, trajectory and dmd objectives on tiny models, the sampling record
that travels with a student (every layout, the model card, ComfyUI workflows), compare at each model's own
settings, and every bad input named in the issue."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sigkill_once

from wanlite.core.flow import euler_step
from wanlite.errors import ConfigError, SpecError
from wanlite.evaluate import CompareConfig, compare, sample
from wanlite.evaluate.sampling import guided_velocity, solve_through
from wanlite.formats import inspect_wan, load_wan, save_wan
from wanlite.formats.records import Sampling, shifted_schedule
from wanlite.testing import random_wan, tiny_spec
from wanlite.train import DistillConfig, distill, latest_checkpoint, write_teacher_targets
from wanlite.train.caches import write_ode
from wanlite.train.data import CachedSource, SyntheticSource, collate
from wanlite.train.objectives import DMD, Guided, Trajectory, model_inputs

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 1, 4, 4)


def _data(n=24):
    return SyntheticSource(n=n, latent_shape=SHAPE, text_tokens=4, text_len=8)


def _teacher():
    return random_wan(tiny_spec("t2v", num_layers=2), seed=0)


def _objective(cls, cfg, teacher, student, source=None):
    return cls(cfg, teacher, student, [0, 1], None, source or _data(), "cpu")


# ---------------------------------------------------------------- the objectives
def test_guided_target_is_the_teachers_cfg_velocity_and_a_teacher_copy_has_zero_loss_at_g1():
    teacher = _teacher()
    batch = collate([_data()[i] for i in range(4)])
    obj = _objective(Guided, DistillConfig(objective="guided", guidance=4.0), teacher, copy.deepcopy(teacher))
    inputs = model_inputs(batch, [0, 1, 2, 3], 0, obj.noising, "cpu")
    with torch.no_grad():
        target = obj.teacher_velocity(inputs)
        expected = torch.stack(
            [
                guided_velocity(
                    teacher,
                    inputs["noisy"][i : i + 1],
                    inputs["sigma"][i],
                    inputs["context"][i : i + 1],
                    inputs["negative"][i : i + 1],
                    4.0,
                )[2][0]
                for i in range(4)
            ]
        )
    assert torch.allclose(target, expected, atol=1e-5)
    assert obj.noising.uncond_fraction == 0  # a guidance-free student has no unconditional branch to learn
    same = _objective(Guided, DistillConfig(objective="guided", guidance=1.0), teacher, copy.deepcopy(teacher))
    with torch.no_grad():
        assert same.loss(same.raw_student, batch, [0, 1, 2, 3]).parts["out"].item() == 0.0


def test_guided_with_student_sigma_sampling_trains_only_where_the_student_samples():
    cfg = DistillConfig(objective="guided", guidance=4.0, student_steps=3, sigma_sampling="student")
    obj = _objective(Guided, cfg, _teacher(), _teacher())
    batch = collate([_data()[i] for i in range(24)])
    sigma = model_inputs(batch, list(range(24)), 0, obj.noising, "cpu")["sigma"]
    visited = torch.tensor(shifted_schedule(3, 5.0)[:-1])
    assert set(sigma.tolist()) == set(visited.tolist())  # every one of the k sigmas, and nothing else
    with pytest.raises(ConfigError, match="sigma_sampling='student'.*for guided"):
        DistillConfig(objective="velocity", sigma_sampling="student")  # a velocity student samples like the teacher


def test_trajectory_targets_are_the_teachers_ode_states_at_the_student_sigmas(tmp_path):
    teacher, sigmas = _teacher(), shifted_schedule(3, 5.0)
    out = write_ode(teacher, _data(4), tmp_path / "ode", sigmas, guidance=3.0, shift=5.0, substeps=6, batch_size=2)
    cache = CachedSource(out)
    assert cache.kind == "ode" and cache.meta["sigmas"] == list(sigmas) and len(cache) == 4
    item, src = cache[1], _data(4)[1]
    noise = item["states"][0][None]
    # an independent solution of the same ODE: 600 small Euler steps through the same sigmas
    x, states = noise.clone(), [noise.clone()]
    with torch.no_grad():
        for a, b in zip(sigmas, sigmas[1:]):
            for j in range(200):
                s, s_next = a + (b - a) * j / 200, a + (b - a) * (j + 1) / 200
                v = guided_velocity(teacher, x, s, src["context"][None], src["negative_context"][None], 3.0)[2]
                x = euler_step(x, v, s, s_next)
            states.append(x.clone())
    errors = [((item["states"][i][None] - ref).norm() / ref.norm()).item() for i, ref in enumerate(states)]
    assert max(errors) < 2e-2, errors  # two solvers of one ODE agree (0.3-1.5% here) ...
    unguided = solve_through(teacher, noise, src["context"][None], src["negative_context"][None], sigmas, 1.0, 5.0, 6)
    assert ((unguided[-1] - states[-1]).norm() / states[-1].norm()).item() > 2 * errors[-1]  # ... another ODE does not
    alone = solve_through(teacher, noise, src["context"][None], src["negative_context"][None], sigmas, 3.0, 5.0, 6)
    assert torch.allclose(alone[:, 0], item["states"], atol=1e-5)  # the cache holds solve_through's states


def test_trajectory_loss_is_zero_when_the_student_lands_on_the_teachers_states(tmp_path):
    teacher = _teacher()
    cfg = DistillConfig(objective="trajectory", student_steps=2, guidance=2.0, w_final=1.0)
    obj = _objective(Trajectory, cfg, teacher, copy.deepcopy(teacher))
    obj.teacher = teacher
    source = obj.data(_data(6), tmp_path, __import__("accelerate").Accelerator(cpu=True))
    batch = collate([source[i] for i in range(3)])
    x, x_next, s, s_next = obj._interval(batch, [0, 1, 2])
    assert torch.allclose(euler_step(x, (x_next - x) / (s_next - s).view(-1, 1, 1, 1, 1), s, s_next), x_next, atol=1e-6)
    with torch.no_grad():
        parts = obj.loss(obj.raw_student, batch, [0, 1, 2]).parts
    assert {"out", "final", "loss"} <= set(parts) and parts["out"] > 0  # a teacher copy does not take 2 steps exactly


def _dmd(fake_init="teacher", guidance=3.0, **changes):
    from accelerate import Accelerator

    teacher, student = _teacher(), random_wan(tiny_spec("t2v", num_layers=1), seed=1)
    cfg = DistillConfig(
        objective="dmd", guidance=guidance, student_steps=2, fake_steps=1, fake_init=fake_init, lr=1e-3, **changes
    )
    obj = _objective(DMD, cfg, teacher, student)
    obj.teacher = teacher.requires_grad_(False)
    obj.prepare(Accelerator(cpu=True))
    return obj, teacher, student


def test_dmd_fake_score_and_generator_steps_change_only_their_own_weights():
    obj, teacher, student = _dmd()
    before = {
        n: {k: v.clone() for k, v in m.state_dict().items()}
        for n, m in (("teacher", teacher), ("student", student), ("fake", obj.fake))
    }
    batch = collate([_data()[i] for i in range(2)])
    parts = obj.loss(student, batch, [0, 1])  # one fake-score update, then the generator's loss
    changed = lambda m, n: any(not torch.equal(v, before[n][k]) for k, v in m.state_dict().items())  # noqa: E731
    assert changed(obj.fake, "fake") and not changed(student, "student") and not changed(teacher, "teacher")
    parts.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in obj.fake.parameters()) and all(p.grad is None for p in teacher.parameters())
    assert {"dmd", "fake", "loss"} <= set(parts.parts)


def test_dmd_generator_gradient_vanishes_when_the_fake_score_is_the_real_one():
    obj, teacher, student = _dmd(fake_init="teacher", guidance=1.0)  # fake = teacher, no CFG: fake == real
    batch = collate([_data()[i] for i in range(2)])
    context, negative = batch["context"], batch["negative_context"]
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    loss = obj.generator_loss(student, noise, context, negative, [0, 1])
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is None or p.grad.abs().max() == 0 for p in student.parameters())
    other, _, student2 = _dmd(fake_init="teacher", guidance=3.0)  # with CFG the real score differs: a gradient
    other.generator_loss(student2, noise, context, negative, [0, 1]).backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in student2.parameters())


# ---------------------------------------------------------------- resume after SIGKILL, bit-exact
DRIVER = """
import sys, time, torch
torch.set_num_threads(1)
from wanlite.train import DistillConfig, distill
from wanlite.train.data import SyntheticSource
from wanlite.testing import random_wan, tiny_spec
run, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
class Slow(SyntheticSource):
    def __getitem__(self, i):
        time.sleep(slow)
        return super().__getitem__(i)
teacher = random_wan(tiny_spec("t2v", num_layers=2), seed=0)
student = random_wan(tiny_spec("t2v", num_layers=1), seed=1)
cfg = DistillConfig.from_yaml(sys.argv[4]).replace(run_dir=run)
distill(cfg, teacher=teacher, student=student, data=Slow(n=24, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8),
        resume=resume)
"""


@pytest.mark.parametrize("objective", ["trajectory", "dmd"])
def test_resume_after_sigkill_is_bit_exact(tmp_path, objective):
    from safetensors.torch import load_file

    cfg = DistillConfig(
        objective=objective,
        steps=8,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        lr_scheduler="cosine",
        guidance=3.0,
        student_steps=2,
        fake_steps=2,
        w_final=0.5 if objective == "trajectory" else 0,
        log_every=1,
        val_every=4,
        checkpoint_every=2,
        keep_checkpoints=2,
        progress=False,
        val_samples=4,
    )
    script, config = tmp_path / "driver.py", tmp_path / "cfg.yaml"
    script.write_text(DRIVER)
    cfg.to_yaml(config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "0", "0.05", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sigkill_once(proc, (killed / "checkpoints" / "step-0000004").exists)
    assert not (killed / "student").exists() and latest_checkpoint(killed) is not None
    resumed = subprocess.run(
        [sys.executable, str(script), str(killed), "1", "0", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    straight = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "straight"), "0", "0", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "student" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(killed / "student" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


# ---------------------------------------------------------------- the sampling record travels
def test_a_few_step_student_carries_its_sampling_through_every_layout(tmp_path):
    teacher = _teacher()
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        objective="trajectory",
        steps=3,
        batch_size=2,
        guidance=3.0,
        student_steps=4,
        val_every=0,
        checkpoint_every=0,
        progress=False,
        val_samples=4,
    )
    result = distill(cfg, teacher=teacher, student=copy.deepcopy(teacher), data=_data())
    want = Sampling(steps=4, guidance=1.0, shift=5.0, solver="euler", objective="trajectory", trained_guidance=3.0)
    assert result.student.sampling == want and load_wan(result.student_path).sampling == want
    assert "euler, simple, 4 steps, cfg 1" in (result.student_path / "README.md").read_text()
    for layout in ("wan", "comfyui", "diffusers"):
        export = save_wan(result.student, tmp_path / layout, layout=layout)
        assert inspect_wan(export.path).sampling == want and load_wan(export.path).sampling == want, layout
    comfy_file = (tmp_path / "comfyui").glob("*.safetensors").__next__()
    ui = json.loads(comfy_file.with_name(comfy_file.stem + ".workflow.json").read_text())
    api = json.loads(comfy_file.with_name(comfy_file.stem + ".api.json").read_text())
    nodes = {n["type"]: n for n in ui["nodes"]}
    assert nodes["UNETLoader"]["widgets_values"][0] == comfy_file.name
    assert nodes["ModelSamplingSD3"]["widgets_values"] == [5.0]
    seed, control, steps, cfg_scale, sampler, scheduler, denoise = nodes["KSampler"]["widgets_values"]
    assert (steps, cfg_scale, sampler, scheduler, denoise) == (4, 1.0, "euler", "simple", 1.0)  # simple = its sigmas
    by_type = {v["class_type"]: v["inputs"] for v in api.values()}
    assert by_type["KSampler"]["steps"] == 4 and by_type["KSampler"]["model"] == ["2", 0]
    assert all(link[3] in {n["id"] for n in ui["nodes"]} for link in ui["links"])


def _comfyui_simple_sigmas(steps: int, shift: float) -> list[float]:
    """ComfyUI's KSampler(scheduler="simple") under ModelSamplingSD3(shift), as comfy/samplers.py simple_scheduler
    and comfy/model_sampling.py ModelSamplingDiscreteFlow compute it: a 1000-entry float32 table, indexed."""
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    table = shift * t / (1 + (shift - 1) * t)  # time_snr_shift
    return [float(table[-(1 + int(x * (len(table) / steps)))]) for x in range(steps)] + [0.0]


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_comfyuis_simple_scheduler_gives_exactly_the_recorded_sigmas(steps):
    how = Sampling(steps=steps, guidance=1.0, shift=5.0, solver="euler")
    assert how.comfyui()["scheduler"] == "simple"
    assert _comfyui_simple_sigmas(steps, 5.0) == pytest.approx(list(how.schedule()), abs=1e-6)
    odd = Sampling(steps=3, guidance=1.0, shift=5.0, solver="euler")  # 1000 / 3 is not whole: the table misses
    assert _comfyui_simple_sigmas(3, 5.0) != pytest.approx(list(odd.schedule()), abs=1e-6)
    assert odd.comfyui()["scheduler"] == "manual sigmas" and odd.comfyui()["sigmas"] == list(odd.schedule())


def test_an_exact_schedule_goes_through_manual_sigmas_and_euler_reproduces_it(tmp_path):
    from wanlite.formats.workflow import api_format, graph

    how = Sampling(steps=3, guidance=1.0, shift=5.0, solver="euler", sigmas=(1.0, 0.8, 0.3, 0.0))
    api = {v["class_type"]: v["inputs"] for v in api_format(graph("s.safetensors", how)).values()}
    assert [float(x) for x in api["ManualSigmas"]["sigmas"].split(",")] == [1.0, 0.8, 0.3, 0.0]
    assert api["KSamplerSelect"]["sampler_name"] == "euler" and api["SamplerCustom"]["cfg"] == 1.0
    teacher = _teacher()
    ctx = _data()[0]["context"][None]
    run = sample(teacher, (1, *SHAPE), ctx, sampling=how, seed=0, return_trajectory=True)
    assert run.sigmas.tolist() == pytest.approx([1.0, 0.8, 0.3, 0.0])
    assert sample(
        teacher, (1, *SHAPE), ctx, steps=4, guidance=1.0, scheduler="euler", seed=0, return_trajectory=True
    ).sigmas.tolist() == pytest.approx(list(shifted_schedule(4, 5.0)))
    lcm = Sampling(steps=2, guidance=1.0, solver="lcm")
    a, b = (sample(teacher, (1, *SHAPE), ctx, sampling=lcm, seed=s).latents for s in (0, 1))
    assert torch.equal(a, sample(teacher, (1, *SHAPE), ctx, sampling=lcm, seed=0).latents) and not torch.equal(a, b)


def test_compare_puts_each_model_at_its_own_settings_and_counts_per_video_cost():
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    student.sampling = Sampling(
        steps=4, guidance=1.0, shift=5.0, solver="euler", objective="guided", trained_guidance=4.0
    )
    ctx = _data()[0]["context"][None]
    comp = compare(
        teacher,
        student,
        ctx,
        config=CompareConfig(steps=20, guidance=4.0, frames=1, height=4, width=4, sigmas=(0.3, 0.7), repeats=2),
    )
    assert comp.teacher_sampling.forwards == 40 and comp.student_sampling.forwards == 4
    assert comp.cost.teacher.forwards == 40 and comp.cost.video_flops_ratio == pytest.approx(10.0)
    assert comp.drift is None and len(comp.student_schedule) == 5 and list(comp.velocity) == ["cfg-free"]
    assert "40 forwards" in repr(comp) and "forwards / video" in repr(comp)
    student.sampling = Sampling(steps=4, guidance=1.0, solver="euler", objective="trajectory", trained_guidance=4.0)
    few = compare(
        teacher,
        student,
        ctx,
        config=CompareConfig(steps=8, guidance=4.0, frames=1, height=4, width=4, measure_cost=False),
    )
    assert few.velocity == {} and any("learns 4 steps" in n for n in few.notes)


def test_compare_samples_a_few_step_student_at_another_step_count_on_request(tmp_path, capsys):
    from wanlite import cli
    from wanlite.runs import compare_paths

    teacher = _teacher()
    student = copy.deepcopy(teacher)
    student.sampling = Sampling(
        steps=4, guidance=1.0, solver="euler", sigmas=shifted_schedule(4, 5.0), objective="guided", trained_guidance=4
    )
    save_wan(teacher, tmp_path / "teacher")
    save_wan(student, tmp_path / "student")
    config = CompareConfig(steps=6, guidance=4.0, frames=1, height=4, width=4, measure_cost=False)
    comp = compare_paths(
        tmp_path / "teacher", tmp_path / "student", out_dir=tmp_path / "r8", config=config, student_steps=8
    )
    assert comp.student_sampling.steps == 8 and comp.student_sampling.forwards == 8
    assert comp.student_sampling.schedule() == shifted_schedule(8, 5.0) and comp.student_sampling.objective == "guided"
    assert any("8 steps, not its recorded 4" in n for n in comp.notes)
    assert json.loads((tmp_path / "r8" / "metrics.json").read_text())["sampling"]["student"]["steps"] == 8
    code = cli.main(["compare", str(tmp_path / "teacher"), str(tmp_path / "student"), "--out", str(tmp_path / "r0"),
                     "--student-steps", "0"])  # fmt: skip
    assert code == 2 and "at least one step" in capsys.readouterr().err and not (tmp_path / "r0").exists()


# ---------------------------------------------------------------- bad input: clear errors, nothing written
def test_bad_few_step_configs_are_refused_clearly(tmp_path):
    teacher = _teacher()
    with pytest.raises(ConfigError, match="objective='fewstep' is not known"):
        DistillConfig(objective="fewstep")
    for guidance in (0.0, -1.0):
        with pytest.raises(ConfigError, match="guidance scale > 0"):
            _objective(Guided, DistillConfig(objective="guided", guidance=guidance), teacher, teacher)
    plain = write_teacher_targets(teacher, _data(8), tmp_path / "plain", batch_size=4)
    with pytest.raises(ConfigError, match="made without guidance .* write_teacher_targets"):
        _objective(Guided, DistillConfig(objective="guided", guidance=4.0), teacher, teacher, CachedSource(plain))
    guided = write_teacher_targets(teacher, _data(8), tmp_path / "guided", batch_size=4, guidance=4.0)
    _objective(Guided, DistillConfig(objective="guided", guidance=4.0), teacher, teacher, CachedSource(guided))
    for sigmas, message in (
        ((1.0, 0.5, 0.6, 0.0), "strictly decreasing"),
        ((0.9, 0.5, 0.2, 0.0), "starts at 1"),
        ((1.0, 0.5, 0.2, 0.1), "ends at 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            _objective(
                Trajectory,
                DistillConfig(objective="trajectory", student_steps=3, student_sigmas=sigmas),
                teacher,
                teacher,
            )
    with pytest.raises(ConfigError, match="at least one step"):
        _objective(Trajectory, DistillConfig(objective="trajectory", student_steps=0), teacher, teacher)
    with pytest.raises(ConfigError, match="w_feat and w_task"):
        _objective(Trajectory, DistillConfig(objective="trajectory", w_feat=0.1), teacher, teacher)
    assert not any(tmp_path.glob("run*"))


def test_resuming_with_another_objective_and_exporting_without_sampling_are_refused(tmp_path):
    teacher = _teacher()
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        checkpoint_every=1,
        val_every=0,
        progress=False,
        val_samples=4,
        export=False,
    )
    distill(cfg, teacher=teacher, student=copy.deepcopy(teacher), data=_data())
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(ConfigError, match="objective 'velocity'; resuming it with 'trajectory'"):
        distill(
            cfg.replace(objective="trajectory", steps=4),
            teacher=teacher,
            student=copy.deepcopy(teacher),
            data=_data(),
            resume=True,
        )
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before  # nothing written
    with pytest.raises(SpecError, match="carries no sampling record"):
        save_wan(teacher, tmp_path / "export", provenance={"objective": "dmd"})
    assert not (tmp_path / "export").exists()
