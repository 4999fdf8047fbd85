"""load_wan / save_wan: every layout both ways, bit-exact; every bad input a clear error that writes nothing."""

import json
import os

import pytest
import torch
from conftest import forward
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from wanlite.errors import DestinationExistsError, FormatError, SpecError
from wanlite.formats import inspect_wan, keys, load_wan, save_wan
from wanlite.formats.load import INDEX
from wanlite.formats.spec import OFFICIAL_FIELDS
from wanlite.testing import random_inputs, random_wan, tiny_spec


def _out(tmp_path, layout):
    return tmp_path / (f"{layout}.safetensors" if layout == "comfyui" else layout)


@pytest.mark.parametrize("layout", ["wan", "comfyui", "diffusers"])
def test_round_trip_every_layout(models, kind, layout, tmp_path):
    spec, model, inputs, reference = models[kind]
    export = save_wan(model, _out(tmp_path, layout), layout=layout, dtype="fp32")
    source = inspect_wan(export.path)
    assert source.spec == spec
    loaded = load_wan(export.path)
    assert type(loaded) is WanTransformer3DModel
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6


def test_official_layout_files_and_config(models, tmp_path):
    spec, model, _, _ = models["t2v"]
    export = save_wan(model, tmp_path / "wan", provenance={"teacher": "Wan-AI/Wan2.1-T2V-1.3B", "kept_blocks": [0, 5]})
    assert sorted(os.listdir(export.path)) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((export.path / "config.json").read_text())
    assert set(cfg) == {"_class_name", "_diffusers_version", *OFFICIAL_FIELDS} and cfg["_class_name"] == "WanModel"
    source = inspect_wan(export.path)
    assert set(source.tensors) == set(keys.to_official(model.state_dict()))  # official names on disk
    assert source.metadata["format"] == "pt"
    assert source.provenance == {"teacher": "Wan-AI/Wan2.1-T2V-1.3B", "kept_blocks": [0, 5]}
    card = (export.path / "README.md").read_text()
    assert card.startswith("---\nbase_model: Wan-AI/Wan2.1-T2V-1.3B\nlibrary_name: diffusers")
    assert "ComfyUI" in card and "WanModel.from_pretrained" in card


def test_sharded_official_directory(models, tmp_path):
    spec, model, inputs, reference = models["t2v"]
    export = save_wan(model, tmp_path / "sharded", max_shard_size="4MB")
    index = json.loads((export.path / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    assert (forward(load_wan(export.path), inputs) - reference).abs().max() <= 1e-6
    os.remove(export.path / shards[1])
    with pytest.raises(FormatError, match=f"names shard '{shards[1]}', which is missing"):
        load_wan(export.path)


def test_diffusers_from_single_file_loads_our_comfyui_file(models, tmp_path):
    spec, model, inputs, reference = models["t2v"]
    file = save_wan(model, tmp_path / "student.safetensors", layout="comfyui", dtype="fp32").path
    config_dir = save_wan(model, tmp_path / "diffusers", layout="diffusers").path
    loaded = WanTransformer3DModel.from_single_file(str(file), config=str(config_dir), torch_dtype=torch.float32)
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6


def test_comfyui_prefix_pipeline_dir_and_a14b_experts(models, tmp_path):
    spec, model, inputs, reference = models["t2v"]
    official = keys.to_official(model.state_dict())
    save_file({f"model.diffusion_model.{k}": v for k, v in official.items()}, tmp_path / "prefixed.safetensors")
    assert (forward(load_wan(tmp_path / "prefixed.safetensors"), inputs) - reference).abs().max() <= 1e-6

    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    save_wan(model, pipe / "transformer", layout="diffusers")
    assert (forward(load_wan(pipe), inputs) - reference).abs().max() <= 1e-6

    other = random_wan(spec, seed=9)
    release = tmp_path / "Wan2.2-A14B"
    save_wan(model, release / "high_noise_model")
    save_wan(other, release / "low_noise_model")
    with pytest.raises(FormatError, match="expert='high_noise' or expert='low_noise'"):
        load_wan(release)
    assert (forward(load_wan(release, expert="high_noise"), inputs) - reference).abs().max() <= 1e-6
    assert (forward(load_wan(release, expert="low_noise"), inputs) - forward(other, inputs)).abs().max() <= 1e-6


def test_legacy_seed_layout(models, tmp_path):
    spec, model, inputs, reference = models["t2v"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "student_config.json").write_text(
        json.dumps({"model_type": "WanLiteStudent", "hidden_size": 256, "depth": 2, "num_heads": 2, "num_channels": 16})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, legacy / "diffusion_model.safetensors")
    assert inspect_wan(legacy).layout == "legacy"
    assert (forward(load_wan(legacy), inputs) - reference).abs().max() <= 1e-6
    save_file(
        {"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "final_layer.weight": torch.zeros(2, 2)},
        legacy / "diffusion_model.safetensors",
    )
    with pytest.raises(FormatError, match="legacy layout, but these weights are not a Wan transformer"):
        load_wan(legacy)


def test_dtype_conversion_on_load_keeps_fp32_modules(models, tmp_path):
    spec, model, inputs, reference = models["t2v"]
    export = save_wan(model, tmp_path / "wan")
    loaded = load_wan(export.path, torch_dtype="bf16")
    assert loaded.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert loaded.scale_shift_table.dtype == torch.float32  # diffusers' _keep_in_fp32_modules
    comfy_file = save_wan(model, tmp_path / "c.safetensors", layout="comfyui")  # bf16 by default
    assert set(inspect_wan(comfy_file.path).dtypes) == {"bf16"}
    assert load_wan(comfy_file.path, torch_dtype=torch.float32).proj_out.weight.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def wan_dir(models, tmp_path):
    return save_wan(models["t2v"][1], tmp_path / "good").path


def test_missing_path(tmp_path):
    with pytest.raises(FormatError, match="no such file or directory"):
        load_wan(tmp_path / "nope")


def test_truncated_and_random_bytes(wan_dir, tmp_path):
    data = (wan_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated"):
        load_wan(tmp_path / "trunc.safetensors")
    (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="not a valid safetensors file"):
        load_wan(tmp_path / "random.safetensors")


def test_a_vae_is_not_a_wan_transformer(tmp_path):
    save_file(
        {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)},
        tmp_path / "vae.safetensors",
    )
    with pytest.raises(FormatError, match="not a Wan transformer.*looks like a VAE"):
        load_wan(tmp_path / "vae.safetensors")


def test_missing_block_keys_and_gaps(models, tmp_path):
    official = keys.to_official(models["t2v"][1].state_dict())
    partial = {k: v.contiguous() for k, v in official.items() if k != "blocks.1.norm3.weight"}
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(FormatError, match=r"1 missing \(e.g. \['blocks.1.norm3.weight'\]\)"):
        load_wan(tmp_path / "partial.safetensors")
    gap = {k.replace("blocks.1.", "blocks.2."): v.contiguous() for k, v in official.items()}
    save_file(gap, tmp_path / "gap.safetensors")
    with pytest.raises(FormatError, match=r"not contiguous 0..N-1: \[0, 2\]"):
        load_wan(tmp_path / "gap.safetensors")


def test_config_disagreeing_with_weights(wan_dir):
    cfg = json.loads((wan_dir / "config.json").read_text())
    cfg["ffn_dim"] = 1024
    (wan_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="ffn_dim: config 1024 vs weights 512"):
        load_wan(wan_dir)


def test_pickle_is_refused_never_unpickled(tmp_path):
    bomb = tmp_path / "model.pth"
    bomb.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(FormatError, match="never loaded.*unpickling runs arbitrary code"):
        load_wan(bomb)
    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_spec().to_official_config()))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FormatError, match="never loaded"):
        load_wan(folder)


def test_unsupported_dtype(models, tmp_path):
    with pytest.raises(FormatError, match="unsupported dtype 'int8'.*fp32, bf16, fp16"):
        save_wan(models["t2v"][1], tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def test_destination_exists_and_interrupted_save_keeps_previous(models, wan_dir, monkeypatch):
    before = {p.name: p.read_bytes() for p in wan_dir.iterdir()}
    with pytest.raises(DestinationExistsError, match="already exists.*overwrite=True"):
        save_wan(models["t2v"][1], wan_dir)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_wan(models["i2v"][1], wan_dir, overwrite=True)
    assert {p.name: p.read_bytes() for p in wan_dir.iterdir()} == before
    assert sorted(p.name for p in wan_dir.parent.iterdir()) == ["good"]  # no temp leftovers


def test_refuses_non_comfyui_specs_unless_allowed(tmp_path):
    model = random_wan(tiny_spec("t2v", num_heads=4))  # head_dim 64
    with pytest.raises(SpecError, match="num_heads=4.*runs 2 heads of 128"):
        save_wan(model, tmp_path / "h64")
    assert not (tmp_path / "h64").exists()
    export = save_wan(model, tmp_path / "h64", allow_non_comfyui=True)
    inputs = random_inputs(tiny_spec("t2v"))
    assert (forward(load_wan(export.path), inputs) - forward(model, inputs)).abs().max() <= 1e-6  # config keeps 4 heads


def test_fp16_overflow_is_refused(tmp_path):
    model = random_wan(tiny_spec())
    with torch.no_grad():
        model.proj_out.weight[0, 0] = 1e6
    with pytest.raises(SpecError, match="exceeds the fp16 range"):
        save_wan(model, tmp_path / "f.safetensors", layout="comfyui", dtype="fp16")


def test_comfyui_default_name_and_root(models, tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    export = save_wan(models["t2v"][1], None, layout="comfyui", comfyui_root=root)
    assert export.path == root / "models" / "diffusion_models" / "wanlite_t2v_3M_bf16.safetensors"
    with pytest.raises(FormatError, match="not a ComfyUI install"):
        save_wan(models["t2v"][1], None, layout="comfyui", comfyui_root=tmp_path)
