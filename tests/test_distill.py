"""Distillation loop: it learns, it resumes bit-exactly after a SIGKILL, 2 processes = 1, NaNs stop it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sigkill_once
from safetensors.torch import load_file

from wanlite.errors import ConfigError, DestinationExistsError, NonFiniteLossError
from wanlite.testing import random_wan, tiny_spec
from wanlite.train import DistillConfig, distill, latest_checkpoint
from wanlite.train.__main__ import main
from wanlite.train.data import SyntheticSource

ROOT = Path(__file__).resolve().parents[1]

# A subprocess run of the same tiny setup as `_models()` below; `slow` seconds per sample leave time to kill it.
DRIVER = """
import sys, time, torch
torch.set_num_threads(1)
from wanlite.train.data import SyntheticSource
from wanlite.train import DistillConfig, distill
from wanlite.testing import random_wan, tiny_spec
run, resume, slow, batch = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4])
class Slow(SyntheticSource):
    def __getitem__(self, i):
        time.sleep(slow)
        return super().__getitem__(i)
teacher = random_wan(tiny_spec("t2v", num_layers=2), seed=0)
student = random_wan(tiny_spec("t2v", num_layers=1), seed=1)
cfg = DistillConfig.from_yaml(sys.argv[5]).replace(run_dir=run, batch_size=batch)
distill(cfg, teacher=teacher, student=student, data=Slow(n=48, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8),
        block_map=[1], resume=resume)
"""


def _models():
    return random_wan(tiny_spec("t2v", num_layers=2), seed=0), random_wan(tiny_spec("t2v", num_layers=1), seed=1)


def _data(n=48):
    return SyntheticSource(n=n, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8)


def _weights(directory: Path) -> dict:
    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _driver(tmp_path, cfg: DistillConfig) -> tuple[Path, Path]:
    script, config = tmp_path / "driver.py", tmp_path / "base.yaml"
    script.write_text(DRIVER)
    cfg.to_yaml(config)
    return script, config


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_config_yaml_round_trip_and_rejects_bad_keys(tmp_path):
    cfg = DistillConfig(run_dir=str(tmp_path / "r"), steps=7, trackers=["tensorboard"], block_map=[0, 3])
    assert cfg.trackers == ("tensorboard",) and cfg.block_map == (0, 3)
    assert DistillConfig.from_yaml(cfg.to_yaml(tmp_path / "c.yaml")) == cfg
    with pytest.raises(ConfigError, match="no field.*'stpes'"):
        DistillConfig().replace(stpes=10)
    with pytest.raises(ConfigError, match="steps='100'.*expected int"):
        DistillConfig(steps="100")
    with pytest.raises(ConfigError, match="lr=True"):
        DistillConfig(lr=True)
    with pytest.raises(ConfigError, match="pip install"):  # accelerate alone would drop an unknown tracker silently
        distill(cfg.replace(trackers=["no-such-tracker"]))
    (tmp_path / "bad.yaml").write_text("steps: 10\nwarmup: 5\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2  # message printed, no traceback


def test_distillation_learns_and_teacher_stays_frozen(tmp_path):
    teacher, student = _models()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        steps=150,
        batch_size=4,
        lr=1e-3,
        warmup_steps=10,
        w_feat=0.1,
        w_task=0.05,
        log_every=25,
        val_every=75,
        checkpoint_every=0,
        progress=False,
    )
    result = distill(cfg, teacher=teacher, student=student, data=_data(64), block_map=[1])
    rows = result.metrics()
    losses = [r for r in rows if "loss" in r]
    assert {"step", "loss", "out", "feat", "task", "lr", "grad_norm"} <= set(losses[0])
    assert losses[-1]["out"] < 0.2 * losses[0]["out"] and losses[-1]["feat"] < losses[0]["feat"]
    untrained, trained = result.validation[0], result.validation[-1]
    assert untrained["step"] == 0 and trained["step"] == 150
    assert trained["rel_mse"] < 0.12 * untrained["rel_mse"], (untrained, trained)
    assert trained["cosine"] > 0.9 and "rel_mse@0.75-1.00" in trained
    # the teacher: no grads, unchanged, never trainable
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # the run directory: its config, and the exported student equal to the trained one
    assert DistillConfig.from_yaml(tmp_path / "run" / "config.yaml") == cfg
    assert result.student_path is not None and result.student_path.is_dir()
    from wanlite.formats import load_wan

    exported = load_wan(result.student_path)
    trained_sd = result.student.state_dict()
    assert all(torch.equal(v, trained_sd[k]) for k, v in exported.state_dict().items())
    assert "150 steps" in repr(result)


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    cfg = DistillConfig(
        steps=12,
        batch_size=2,
        grad_accum=2,
        lr=1e-3,
        warmup_steps=3,
        lr_scheduler="cosine",
        ema_decay=0.9,
        w_feat=0.1,
        w_task=0.1,
        uncond_fraction=0.3,
        log_every=1,
        val_every=6,
        checkpoint_every=3,
        keep_checkpoints=2,
        progress=False,
    )
    script, config = _driver(tmp_path, cfg)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "0", "0.1", "2", str(config)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sigkill_once(proc, (killed / "checkpoints" / "step-0000006").exists, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "student").exists() and latest_checkpoint(killed).name in ("step-0000006", "step-0000009")
    resumed = subprocess.run(
        [sys.executable, str(script), str(killed), "1", "0", "2", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]

    teacher, student = _models()  # the same run, uninterrupted, in this process
    reference = distill(
        cfg.replace(run_dir=str(tmp_path / "straight")), teacher=teacher, student=student, data=_data(), block_map=[1]
    )
    a, b = _weights(reference.student_path), _weights(killed / "student")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    steps = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 13))  # what the killed run logged past its checkpoint was dropped, not repeated
    assert len(list((killed / "checkpoints").glob("step-*"))) == 2


# The slowest test here (~15-25 s): two processes, each importing torch and diffusers.
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    cfg = DistillConfig(
        steps=6,
        lr=1e-3,
        warmup_steps=2,
        w_feat=0.1,
        uncond_fraction=0.3,
        log_every=1,
        val_every=0,
        checkpoint_every=0,
        progress=False,
    )
    script, config = _driver(tmp_path, cfg)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        str(tmp_path / "ddp"),
        "0",
        "0",
        "2",
        str(config),
    ]
    ddp = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    teacher, student = _models()
    single = distill(
        cfg.replace(run_dir=str(tmp_path / "one"), batch_size=4),
        teacher=teacher,
        student=student,
        data=_data(),
        block_map=[1],
    )
    a, b = _weights(single.student_path), _weights(tmp_path / "ddp" / "student")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"2 processes differ from 1 by {worst}"
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows if "loss" in r] == [4 * s for s in range(1, 7)]  # global batch 2 x 2


def test_non_finite_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    teacher, student = _models()
    calls = {"n": 0}

    def poison(module, args, output):  # the 4th training forward of the teacher returns NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 1 + 4 else output  # call 1 is the validation batch

    teacher.proj_out.register_forward_hook(poison)
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        steps=10,
        batch_size=2,
        val_samples=2,
        lr=1e-3,
        w_feat=0.1,
        checkpoint_every=2,
        log_every=1,
        val_every=0,
        progress=False,
    )
    with pytest.raises(NonFiniteLossError, match=r"step 4 .* in out .*step-0000002") as err:
        distill(cfg, teacher=teacher, student=student, data=_data(), block_map=[1])
    assert err.value.step == 4 and err.value.components == ["out"]
    good = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in good.values())
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "non-finite" and events[-1]["components"] == ["out"]
    with pytest.raises(DestinationExistsError, match="resume=True"):  # never overwrite a run by accident
        distill(cfg, teacher=teacher, student=student, data=_data(), block_map=[1])


def test_command_line_builds_the_student_from_a_recipe_and_resumes_with_one_flag(tmp_path):
    from wanlite.formats import load_wan, save_wan

    teacher, _ = _models()
    save_wan(teacher, tmp_path / "teacher")
    config = tmp_path / "run.yaml"
    DistillConfig(
        run_dir=str(tmp_path / "run"),
        teacher=str(tmp_path / "teacher"),
        steps=4,
        batch_size=2,
        recipe={"num_blocks": 1, "num_heads": 1, "ffn_dim": 256, "width_selection": "magnitude"},
        w_feat=0.1,
        latent_shape=(16, 1, 4, 4),
        synthetic_samples=16,
        checkpoint_every=2,
        val_every=0,
        progress=False,
    ).to_yaml(config)
    assert main(["--config", str(config), "--set", "steps=2", "w_feat=0.2"]) == 0  # several after one --set
    assert DistillConfig.from_yaml(tmp_path / "run" / "config.yaml").w_feat == 0.2
    student = load_wan(tmp_path / "run" / "student")
    assert (student.config.num_layers, student.config.num_attention_heads, student.config.ffn_dim) == (1, 1, 256)
    assert main(["--config", str(config)]) == 2  # the run exists: refuse rather than overwrite
    assert main(["--config", str(tmp_path / "run" / "config.yaml"), "--resume", "--set", "steps=4"]) == 0
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert "recipe" in card and "final_metrics" in card and (tmp_path / "run" / "pruning.json").is_file()


def test_live_plot_redraws_in_place_and_stays_silent_headless(tmp_path, monkeypatch, capsys):
    from unittest import mock

    from wanlite.train import LivePlot

    shown = []

    class Handle:
        def update(self, figure):
            shown.append("update")

    def display(figure, display_id=True):
        shown.append("display")
        return Handle()

    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        steps=4,
        val_every=2,
        log_every=1,
        checkpoint_every=0,
        progress=False,
        latent_shape=(16, 1, 4, 4),
        synthetic_samples=16,
        val_samples=2,
    )
    teacher, student = random_wan(tiny_spec(num_layers=2)), random_wan(tiny_spec(num_layers=1))
    monkeypatch.delenv("WANLITE_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with mock.patch("IPython.display.display", display):
        live = LivePlot(every=2)
        distill(cfg, teacher=teacher, student=student, block_map=[0], on_log=live)
    assert shown[0] == "display" and set(shown[1:]) == {"update"} and len(shown) >= 3
    assert [r["step"] for r in live.rows if "loss" in r] == [1, 2, 3, 4]
    # run the notebook cell again on the finished run: it says so, draws the history and reports the losses
    with mock.patch("IPython.display.display", display):
        again = LivePlot(every=2)
        before = len(shown)
        result = distill(cfg, teacher=teacher, student=student, block_map=[0], on_log=again, resume=True)
    assert "already at step 4 of 4: nothing to train" in capsys.readouterr().out
    assert result.started_at == 4 and "nothing to do" in repr(result) and "loss" in result.losses
    assert shown[before:] == ["display"] and [r["step"] for r in again.rows if "loss" in r] == [1, 2, 3, 4]
    monkeypatch.setenv("WANLITE_HEADLESS", "1")
    quiet = LivePlot()
    quiet({"step": 0, "val/rel_mse": 1.0})
    assert quiet.handle is None and len(shown) >= 3
