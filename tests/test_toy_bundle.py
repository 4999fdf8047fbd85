"""A toy teacher bundle of your own (`python -m wanlite.toy train --out DIR`, or the shipped deeper one) as the
notebooks' `teacher_path`: every notebook uses that bundle's teacher and its own toy VAE (the one its latents
mean), never the shipped ones. The bundle here is the shipped teacher with a VAE whose means are shifted: the
teacher still works with it, and every latent it encodes differs from the shipped VAE's, so a notebook that
took the shipped VAE would show."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from wanlite import runs, toy
from wanlite.errors import ConfigError
from wanlite.pipeline import run_pipeline


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from wanlite.toy.teacher import ASSETS

    out = tmp_path_factory.mktemp("mine") / "bundle"
    shutil.copytree(ASSETS / "teacher", out / "teacher")
    shutil.copy(ASSETS / "toy.json", out / "toy.json")
    shipped = toy.load_vae()
    shifted = dataclasses.replace(shipped, first_mean=shipped.first_mean + 0.02, group_mean=shipped.group_mean + 0.02)
    shifted.save(out / "vae.safetensors")
    return out


def test_a_bundle_path_names_its_teacher_and_vae_and_a_real_wan_gets_no_toy_vae(bundle, tmp_path):
    from wanlite.toy.teacher import ASSETS

    assert runs.toy_bundle("") == runs.toy_bundle("toy") == ASSETS
    assert runs.toy_bundle(str(bundle)) == bundle and runs.toy_bundle(bundle / "teacher") == bundle
    assert runs.is_toy(str(bundle)) and not runs.is_toy(str(tmp_path))
    torch.testing.assert_close(runs.toy_vae(str(bundle)).group_mean, toy.load_vae().group_mean + 0.02)
    assert runs.teacher_spec(str(bundle)) == runs.teacher_spec("")
    clip = runs.prompt_batch(None, str(bundle), 2, seed=0)
    shipped = runs.toy_batch(2, 0)
    assert not torch.allclose(clip["latents"], shipped["latents"])  # the bundle's VAE encoded them
    torch.testing.assert_close(clip["latents"], runs.toy_batch(2, 0, vae=runs.toy_vae(str(bundle)))["latents"])
    broken = tmp_path / "broken"
    shutil.copytree(bundle / "teacher", broken / "teacher")
    shutil.copy(bundle / "toy.json", broken / "toy.json")
    with pytest.raises(ConfigError, match="holds toy.json.*vae.safetensors is missing. Fix: write the bundle again"):
        runs.load_teacher(str(broken))  # not read as a real Wan (which would blame a missing config.json)
    with pytest.raises(ConfigError, match=f"teacher_path={tmp_path}: not a toy-world teacher.*Fix: give videos"):
        runs.toy_vae(str(tmp_path))  # 00 without videos for a real Wan: toy clips would be another model's latents


def test_the_notebooks_train_and_score_a_bundle_teacher_with_its_own_vae(bundle, tmp_path, monkeypatch):
    from wanlite.train.data import CachedSource

    params = {
        "teacher_path": str(bundle),
        "samples": 8,
        "num_blocks": 1,
        "num_heads": 1,
        "ffn_dim": 256,
        "calibration_prompts": 2,
        "objective": "guided",
        "student_steps": 2,
        "steps": 4,
        "warmup_steps": 1,
        "batch_size": 2,
        "val_every": 2,
        "checkpoint_every": 2,
        "prompts": ["red circle moving left", "blue square moving up"],
        "sample_steps": 4,
        "repeats": 1,
    }
    monkeypatch.chdir(tmp_path)
    result = run_pipeline("mine", params, runs_dir=".", only=["00", "01", "02", "05"])
    run = tmp_path / "mine"
    assert len(result.executed) == 4
    assert json.loads((run / "teacher.json").read_text())["teacher_path"] == str(bundle)
    cache = CachedSource(run / "data")
    sample = cache[0]  # toy clip 0: the first caption, drawn with seed 0
    video = toy.render(toy.captions()[0], 0)[None]
    torch.testing.assert_close(sample["latents"].float(), runs.toy_vae(str(bundle)).encode(video)[0], atol=1e-3, rtol=0)
    assert not torch.allclose(sample["latents"].float(), toy.load_vae().encode(video)[0], atol=1e-3)
    metrics = json.loads((run / "compare" / "metrics.json").read_text())
    assert metrics["adherence"]["teacher"]["clips"] == 48 and metrics["summary"]["forwards_per_video_student"] == 2
    student = runs.load_student(run, str(bundle))
    own = toy.evaluate(student, vae=runs.toy_vae(str(bundle))).as_dict()
    assert metrics["adherence"]["student"] == own  # scored by decoding with the bundle's VAE
