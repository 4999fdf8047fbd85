"""The ComfyUI-like loader, WanLiteStudent's conventions, and the CLI."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import forward
from safetensors.torch import save_file

from wanlite import comfy, keys
from wanlite.cli import main
from wanlite.compress import WanLiteStudent
from wanlite.errors import FormatError, SpecError
from wanlite.formats import inspect_wan, save_wan
from wanlite.formats.spec import OFFICIAL_FIELDS
from wanlite.testing import random_inputs, random_wan, tiny_spec

CLASSES = {
    "t2v": ("WAN21_T2V", "Wan21 (16 channels)"),
    "i2v": ("WAN21_I2V", "Wan21 (16 channels)"),
    "ti2v": ("WAN22_T2V", "Wan22 (48 channels)"),
}


def test_comfy_loader_detects_class_and_matches(models, kind, tmp_path):
    spec, model, inputs, reference = models[kind]
    file = save_wan(model, tmp_path / "m.safetensors", layout="comfyui", dtype="fp32").path
    loaded, report = comfy.load(file)
    assert (report.model_class, report.latent_format) == CLASSES[kind]
    assert report.ok and not report.warnings and report.spec == spec
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6


def test_comfy_prefix_and_diffusers_names(models, tmp_path):
    model = models["t2v"][1]
    official = keys.to_official(model.state_dict())
    save_file({f"model.diffusion_model.{k}": v for k, v in official.items()}, tmp_path / "p.safetensors")
    assert comfy.check(tmp_path / "p.safetensors").prefix == "model.diffusion_model."
    save_file({f"diffusion_model.{k}": v for k, v in official.items()}, tmp_path / "bare.safetensors")
    with pytest.raises(FormatError, match="(?s)Could not detect model type.*bare 'diffusion_model.' prefix"):
        comfy.check(tmp_path / "bare.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "diffusers.safetensors")
    with pytest.raises(
        FormatError, match=r"(?s)Could not detect model type.*diffusers-named.*wanlite convert .*--layout comfyui"
    ):
        comfy.check(tmp_path / "diffusers.safetensors")
    # ...and the suggested conversion works
    assert (
        main(
            [
                "convert",
                str(tmp_path / "diffusers.safetensors"),
                str(tmp_path / "fixed.safetensors"),
                "--layout",
                "comfyui",
            ]
        )
        == 0
    )
    assert comfy.check(tmp_path / "fixed.safetensors").ok


def test_comfy_warns_about_silent_head_mismatch(tmp_path):
    model = random_wan(tiny_spec("t2v", num_heads=4))  # 4 heads of 64: ComfyUI runs 2 of 128
    out = save_wan(model, tmp_path / "h64", allow_non_comfyui=True).path
    report = comfy.check(out / "diffusion_pytorch_model.safetensors")
    assert report.ok and report.spec.num_heads == 2
    assert any("metadata says 4 heads" in w for w in report.warnings)
    assert any("config.json beside the file says 4 heads" in w for w in report.warnings)
    loaded, _ = comfy.load(out / "diffusion_pytorch_model.safetensors")
    inputs = random_inputs(tiny_spec("t2v"))
    assert (forward(loaded, inputs) - forward(model, inputs)).abs().max() > 1e-3  # what ComfyUI would compute


def test_comfy_missing_norm3_and_uneven_ffn_are_errors(models, tmp_path):
    official = {k: v.contiguous() for k, v in keys.to_official(models["t2v"][1].state_dict()).items()}
    no_norm3 = {k: v for k, v in official.items() if "norm3" not in k}
    save_file(no_norm3, tmp_path / "a.safetensors")
    report = comfy.check(tmp_path / "a.safetensors")
    assert not report.ok and "blocks.0.norm3.weight" in report.missing and any("NaN" in w for w in report.warnings)
    with pytest.raises(FormatError, match="ComfyUI would mis-load"):
        comfy.load(tmp_path / "a.safetensors")
    uneven = dict(
        official,
        **{
            "blocks.1.ffn.0.weight": torch.zeros(384, 256),
            "blocks.1.ffn.0.bias": torch.zeros(384),
            "blocks.1.ffn.2.weight": torch.zeros(256, 384),
        },
    )
    save_file(uneven, tmp_path / "b.safetensors")
    report = comfy.check(tmp_path / "b.safetensors")
    assert report.mismatched and any("per-block FFN widths differ" in w for w in report.warnings)


def test_comfy_refuses_directories(tmp_path):
    with pytest.raises(FormatError, match="takes one file"):
        comfy.check(tmp_path)


# ------------------------------------------------------------------------------------------- WanLiteStudent


def test_student_is_a_diffusers_wan_and_saves_as_wan(tmp_path, capsys):
    from diffusers import ModelMixin, WanTransformer3DModel
    from diffusers.configuration_utils import ConfigMixin

    spec = tiny_spec("t2v")
    student = WanLiteStudent.from_spec(spec)
    assert isinstance(student, (WanTransformer3DModel, ModelMixin, ConfigMixin)) and student.spec == spec
    inputs = random_inputs(spec)
    student.save_pretrained(tmp_path / "s", verbose=True)
    printed = capsys.readouterr().out
    assert f"✓ Model saved successfully to: {tmp_path / 's'}" in printed and "config.json" in printed
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert set(cfg) == {"_class_name", "_diffusers_version", *OFFICIAL_FIELDS}
    for layout, path in (("comfyui", tmp_path / "s.safetensors"), ("diffusers", tmp_path / "d")):
        student.save_pretrained(path, layout=layout, dtype="fp32", verbose=False)
    for path in (tmp_path / "s", tmp_path / "s.safetensors", tmp_path / "d"):
        back = WanLiteStudent.from_pretrained(path)
        assert type(back) is WanLiteStudent
        assert (forward(back, inputs) - forward(student, inputs)).abs().max() <= 1e-6


def test_seed_conventions():
    old = WanLiteStudent(
        {
            "model_type": "WanLiteStudent",
            "hidden_size": 256,
            "depth": 2,
            "num_heads": 2,
            "num_channels": 16,
            "ffn_dim": 512,
            "text_max_length": 512,
            "image_size": 480,
            "patch_size": 2,
            "text_encoder_output_dim": 4096,
        },
        device="cpu",
    )
    new = WanLiteStudent(hidden_size=256, depth=2, num_heads=2, num_channels=16, ffn_dim=512)
    assert old.spec == new.spec == tiny_spec("t2v")
    with pytest.raises(SpecError, match="image_size=100 must be a positive multiple of 16"):
        WanLiteStudent(hidden_size=256, depth=2, num_heads=2, image_size=100)
    with pytest.raises(SpecError, match="unknown field"):
        WanLiteStudent({"hidden_sise": 256})


def test_seed_example_gets_a_clear_error():
    with pytest.raises(SpecError) as err:
        WanLiteStudent(
            model_type="WanLiteStudent",
            hidden_size=1024,
            depth=16,
            num_heads=16,
            num_channels=4,
            image_size=1024,
            patch_size=16,
            text_max_length=77,
            text_encoder_output_dim=4096,
        )
    message = str(err.value)
    for needle in (
        "head_dim is 64",
        "runs 8 heads of 128",
        "patch_size=(1, 16, 16)",
        "out_dim=4",
        "hidden_size=1024, num_heads=8",
        "num_channels=16",
    ):
        assert needle in message


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_inspect_convert_and_errors(models, tmp_path, capsys):
    src = save_wan(models["i2v"][1], tmp_path / "wan").path
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "wan layout" in out and "Wan i2v" in out and "ComfyUI-compatible shapes" in out
    assert main(["convert", str(src), str(tmp_path / "c.safetensors"), "--layout", "comfyui", "--dtype", "fp16"]) == 0
    assert inspect_wan(tmp_path / "c.safetensors").dtypes == {"fp16": 87}
    assert main(["inspect", str(tmp_path / "c.safetensors")]) == 0
    assert "WAN21_I2V" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "c.safetensors"), "--layout", "comfyui"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err


def test_cli_as_a_process(tmp_path):
    """`python -m wanlite` is the console script: a bad file exits non-zero with one short message."""
    (tmp_path / "x.safetensors").write_bytes(b"garbage!" * 4)
    run = subprocess.run(
        [sys.executable, "-m", "wanlite", "inspect", str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "not a valid safetensors file" in run.stderr and "Traceback" not in run.stderr


def test_from_teacher_and_the_seeds_teacher_checkpoint_form(tmp_path):
    from wanlite.compress import Recipe

    teacher = random_wan(tiny_spec("t2v", num_layers=4, num_heads=4, dim=512), seed=3)
    recipe = Recipe(num_blocks=2, num_heads=2, ffn_dim=256, width_selection="magnitude")
    student = WanLiteStudent.from_teacher(teacher, recipe)
    assert student.spec == tiny_spec("t2v", ffn_dim=256) and student.pruning.kept_blocks == [0, 3]
    export = student.save_pretrained(tmp_path / "s", verbose=False)
    assert inspect_wan(export.path).pruning == student.pruning  # the record travels with the export
    for layout in ("wan", "comfyui", "diffusers"):  # ... in every layout, back onto the loaded student
        path = save_wan(student, tmp_path / f"s-{layout}", layout=layout, dtype="fp32").path
        assert WanLiteStudent.from_pretrained(path).pruning == student.pruning
    teacher_dir = save_wan(teacher, tmp_path / "teacher").path
    seeds = WanLiteStudent(
        hidden_size=256, depth=2, num_heads=2, ffn_dim=256, teacher_checkpoint_path=str(teacher_dir), device="cpu"
    )
    inputs = random_inputs(student.spec)
    assert torch.equal(forward(seeds, inputs), forward(student, inputs))
    with pytest.raises(SpecError, match="the recipe builds .* but this student was declared"):
        WanLiteStudent(
            hidden_size=256,
            depth=2,
            num_heads=2,
            ffn_dim=256,
            teacher_checkpoint_path=str(teacher_dir),
            recipe=Recipe(num_blocks=3, num_heads=2, ffn_dim=256, width_selection="magnitude"),
        )
