"""LoRAs that follow the student: remapped through the pruning record, merge-then-prune equals prune-then-merge,
in every format; loaded by diffusers and checked by the ComfyUI-like loader; bad inputs get clear errors."""

import copy

import pytest
import torch
from conftest import forward
from safetensors.torch import save_file

from wanlite import comfy
from wanlite.cli import main
from wanlite.compress import Recipe, WanLiteStudent, build_student
from wanlite.compress import lora as loras
from wanlite.compress.prune import _sliced_state, kept_of
from wanlite.errors import FormatError
from wanlite.formats import keys as keymap
from wanlite.formats import save_wan
from wanlite.testing import random_inputs, random_wan, tiny_spec

TEACHER = tiny_spec("t2v", num_layers=4)
RECIPES = {
    "depth": Recipe(num_blocks=2, width_selection="magnitude"),
    "width": Recipe(num_heads=1, ffn_dim=256, width_selection="magnitude"),
    "both": Recipe(num_blocks=2, blocks=(0, 3), num_heads=1, ffn_dim=192, width_selection="magnitude"),
}
BLOCK_MODULES = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
GLOBAL_MODULES = ["patch_embedding", "text_embedding.0", "text_embedding.2", "time_projection.1", "head.head"]


@pytest.fixture(scope="module")
def teacher():
    return random_wan(TEACHER, seed=5)


def official_lora(model, rank=4, full=True, seed=0) -> dict:
    """A LoRA in official (ComfyUI) names on `model`: every block projection, and with `full` the embedders, the
    head and full deltas (`.diff`, `.diff_b`, `.diff_m`)."""
    g = torch.Generator().manual_seed(seed)
    weights = keymap.to_official(dict(model.state_dict()))
    lora = {}
    modules = [f"blocks.{i}.{m}" for i in range(len(model.blocks)) for m in BLOCK_MODULES]
    for module in modules + (GLOBAL_MODULES if full else []):
        w = weights[f"{module}.weight"]
        lora[f"diffusion_model.{module}.lora_down.weight"] = 0.1 * torch.randn(rank, *w.shape[1:], generator=g)
        up_shape = (w.shape[0], rank, *([1] * (w.ndim - 2)))
        lora[f"diffusion_model.{module}.lora_up.weight"] = 0.1 * torch.randn(*up_shape, generator=g)
        lora[f"diffusion_model.{module}.alpha"] = torch.tensor(2.0)
    if full:
        dim = weights["head.modulation"].shape[-1]
        for i in range(len(model.blocks)):
            lora[f"diffusion_model.blocks.{i}.self_attn.o.diff_b"] = 0.01 * torch.randn(dim, generator=g)
            lora[f"diffusion_model.blocks.{i}.norm3.diff"] = 0.01 * torch.randn(dim, generator=g)
            lora[f"diffusion_model.blocks.{i}.modulation.diff_m"] = 0.01 * torch.randn(1, 6, dim, generator=g)
        lora["diffusion_model.head.modulation.diff"] = 0.01 * torch.randn(1, 2, dim, generator=g)
    return lora


def kohya(lora: dict) -> dict:
    """musubi-tuner's names for the same LoRA."""
    out = {}
    for key, t in lora.items():
        module, _, suffix = key.removeprefix("diffusion_model.").partition(".lora_")
        if suffix:
            out[f"lora_unet_{module.replace('.', '_')}.lora_{suffix}"] = t
        else:
            module, _, suffix = key.removeprefix("diffusion_model.").rpartition(".")
            out[f"lora_unet_{module.replace('.', '_')}.{suffix}"] = t
    return out


def pruned_like(model, pruning, spec):
    """`model` cut by exactly the same record (not re-scored: a merged LoRA changes the magnitudes)."""
    student = random_wan(spec)
    student.load_state_dict(_sliced_state(model, pruning.teacher, kept_of(pruning)))
    return student


@pytest.mark.parametrize("cut", list(RECIPES))
def test_merge_then_prune_equals_prune_then_merge_remapped(teacher, cut, tmp_path):
    student, pruning = build_student(teacher, RECIPES[cut])
    lora = official_lora(teacher)
    merged_then_pruned = pruned_like(loras.merge(copy.deepcopy(teacher), lora), pruning, pruning.student)
    result = loras.remap(lora, student, out=tmp_path / "student_lora.safetensors")
    pruned_then_merged = loras.merge(copy.deepcopy(student), tmp_path / "student_lora.safetensors")
    a, b = merged_then_pruned.state_dict(), pruned_then_merged.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    inputs = random_inputs(pruning.student)
    assert (forward(merged_then_pruned, inputs) - forward(pruned_then_merged, inputs)).abs().max() <= 1e-5
    assert (forward(pruned_then_merged, inputs) - forward(student, inputs)).abs().max() > 1e-3  # it does something
    dropped = sorted(set(range(TEACHER.num_layers)) - set(pruning.kept_blocks))
    assert result.dropped_blocks == dropped and (result.dropped_share > 0) == bool(dropped)
    assert (result.width_share > 1e-9) == (cut != "depth") and 0 <= result.dropped_share + result.width_share < 1
    assert "% of the LoRA's update" in repr(result)


def test_every_format_in_and_out_gives_the_same_student_lora(teacher, tmp_path):
    student, pruning = build_student(teacher, RECIPES["both"])
    lora = official_lora(teacher, full=False)  # projections only: every format (diffusers too) names them
    reference = loras.merge(copy.deepcopy(student), loras.remap(lora, student).state)
    inputs = random_inputs(pruning.student)
    for given in (lora, kohya(lora)):
        for fmt in ("comfyui", "kohya", "diffusers"):
            result = loras.remap(given, student, format=fmt)
            assert result.out_format == fmt
            if fmt == "kohya":
                assert all(k.startswith("lora_unet_blocks_") for k in result.state)
            if fmt == "diffusers":
                assert all(k.startswith("transformer.blocks.") and ".alpha" not in k for k in result.state)
            again = loras.merge(copy.deepcopy(student), result.state)
            assert (forward(again, inputs) - forward(reference, inputs)).abs().max() <= 1e-5, fmt
    kohya_in = loras.remap(kohya(lora), student)
    assert kohya_in.format == "kohya" and all(k.startswith("lora_unet_") for k in kohya_in.state)


def test_remapped_lora_loads_in_diffusers_and_the_comfyui_loader(teacher, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    student, pruning = build_student(teacher, RECIPES["both"], cls=WanLiteStudent)
    file = tmp_path / "student_lora.safetensors"
    loras.remap(official_lora(teacher, full=False), student, out=file)
    merged = loras.merge(copy.deepcopy(student), file)
    inputs = random_inputs(pruning.student)

    pipe = WanPipeline(None, None, None, FlowMatchEulerDiscreteScheduler(), transformer=copy.deepcopy(student))
    pipe.load_lora_weights(file)
    assert (forward(pipe.transformer, inputs) - forward(merged, inputs)).abs().max() <= 1e-5

    model_file = save_wan(student, tmp_path / "student.safetensors", layout="comfyui", dtype="fp32").path
    report = comfy.check_lora(model_file, file)
    assert report.ok and report.applied == len(pruning.kept_blocks) * len(BLOCK_MODULES)
    teacher_lora = tmp_path / "teacher_lora.safetensors"
    save_file(official_lora(teacher, full=False), teacher_lora)
    report = comfy.check_lora(model_file, teacher_lora)  # the un-remapped LoRA: what ComfyUI would log
    assert not report.ok and any("blocks.3." in k for k in report.not_loaded)
    assert any("does not fit" in m for m in report.mismatched)  # kept blocks, pruned widths
    assert "lora key not loaded" in repr(report)


def test_bad_inputs_say_what_is_wrong(teacher, tmp_path):
    student, _ = build_student(teacher, RECIPES["both"])
    other = random_wan(tiny_spec("t2v", num_heads=4, dim=512, ffn_dim=1024, num_layers=2))  # another base
    with pytest.raises(FormatError, match=r"(?s)another base.*dim 512, ffn_dim 1024.*no Wan release"):
        loras.remap(official_lora(other, full=False), student)
    on_student = official_lora(student, full=False)  # a LoRA trained on the student already
    with pytest.raises(FormatError, match="fit the student itself"):
        loras.remap(on_student, student)
    plain = random_wan(TEACHER)
    with pytest.raises(FormatError, match="no pruning record.*WanLiteStudent.from_teacher"):
        loras.remap(official_lora(teacher, full=False), plain)
    with pytest.raises(FormatError, match="unknown LoRA format.*kohya/musubi"):
        loras.remap({"unet.down_blocks.0.lora.up.weight": torch.zeros(2, 2)}, student)
    half = official_lora(teacher, full=False)
    del half["diffusion_model.blocks.0.ffn.0.lora_up.weight"]
    with pytest.raises(FormatError, match="only one LoRA factor.*incomplete"):
        loras.remap(half, student)
    (tmp_path / "x.ckpt").write_bytes(b"0")
    with pytest.raises(FormatError, match="never loaded"):
        loras.remap(tmp_path / "x.ckpt", student)


def test_cli_lora_remap(teacher, tmp_path, capsys):
    student, _ = build_student(teacher, RECIPES["depth"], cls=WanLiteStudent)
    student.save_pretrained(tmp_path / "student")
    save_file(kohya(official_lora(teacher, full=False)), tmp_path / "style.safetensors")
    out = tmp_path / "style_student.safetensors"
    args = ["lora", "remap", str(tmp_path / "style.safetensors"), "--student", str(tmp_path / "student")]
    assert main([*args, "--out", str(out)]) == 0
    assert "dropped with teacher blocks [1, 2]" in capsys.readouterr().out
    assert loras.read(out)[2] and all(k.startswith("lora_unet_") for k in loras.read(out)[0])
    assert main([*args, "--out", str(out)]) == 2  # exists: nothing overwritten without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--overwrite", "--format", "diffusers"]) == 0
