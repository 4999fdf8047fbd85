"""The config vocabulary and the key map: the contracts with ComfyUI, diffusers and the official code."""

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from wanlite.errors import FormatError, SpecError
from wanlite.formats import keys
from wanlite.formats.spec import OFFICIAL_FIELDS, WanSpec
from wanlite.testing import random_wan, tiny_spec

RELEASES = {  # wan-formats.md section 1
    "Wan2.1-T2V-1.3B": WanSpec("t2v", 1536, 8960, 12, 30, 16, 16),
    "Wan2.1-T2V-14B": WanSpec("t2v", 5120, 13824, 40, 40, 16, 16),
    "Wan2.1-I2V-14B": WanSpec("i2v", 5120, 13824, 40, 40, 36, 16, image_dim=1280),
    "Wan2.2-TI2V-5B": WanSpec("ti2v", 3072, 14336, 24, 30, 48, 48),
}


def test_key_map_covers_every_key_both_ways_and_matches_diffusers_converter(models, kind):
    _, model, _, _ = models[kind]
    state = model.state_dict()
    official = keys.to_official(state)
    assert len(official) == len(state)
    assert "head.modulation" in official and "blocks.1.norm3.weight" in official
    assert not any(k.startswith(("condition_embedder", "proj_out", "scale_shift_table")) for k in official)
    assert keys.to_diffusers(official).keys() == state.keys()
    converted = convert_wan_transformer_to_diffusers(dict(official))  # diffusers' own official -> diffusers
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


def test_flf2v_pos_embed_is_mapped():  # diffusers' converter drops it; our map must not
    assert keys.official_name("condition_embedder.image_embedder.pos_embed") == "img_emb.emb_pos"
    assert keys.diffusers_name("img_emb.emb_pos") == "condition_embedder.image_embedder.pos_embed"
    assert keys.official_name("blocks.7.norm2.weight") == "blocks.7.norm3.weight"  # the swap


def test_unknown_keys_are_refused():
    with pytest.raises(FormatError, match="not diffusers Wan transformer keys"):
        keys.to_official({"encoder.conv_in.weight": 0})


def test_official_config_has_exactly_the_official_fields():
    cfg = RELEASES["Wan2.1-T2V-1.3B"].to_official_config()
    assert set(cfg) == {"_class_name", "_diffusers_version", *OFFICIAL_FIELDS}
    assert cfg["_class_name"] == "WanModel"
    assert WanSpec.from_official_config(cfg) == RELEASES["Wan2.1-T2V-1.3B"]


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_specs_are_comfyui_clean_and_round_trip(name):
    spec = RELEASES[name]
    assert spec.comfyui_problems() == []
    assert WanSpec.from_diffusers_config(spec.to_diffusers_config()) == spec
    assert WanSpec.from_official_config(spec.to_official_config()) == spec


def test_param_count_of_1_3b():
    assert abs(RELEASES["Wan2.1-T2V-1.3B"].num_params() / 1e9 - 1.42) < 0.01


def test_num_params_matches_the_model(models, kind):
    spec, model, _, _ = models[kind]
    assert spec.num_params() == sum(p.numel() for p in model.parameters())


def test_as_comfyui_infers_matches_the_true_spec(models, kind):
    spec, model, _, _ = models[kind]
    shapes = {k: tuple(v.shape) for k, v in keys.to_official(model.state_dict()).items()}
    assert WanSpec.as_comfyui_infers(shapes) == spec
    assert WanSpec.from_shapes(shapes) == spec


def test_comfyui_infers_wrong_heads_when_head_dim_is_not_128():
    spec = tiny_spec("t2v", num_heads=4)  # 4 heads of 64
    shapes = {k: tuple(v.shape) for k, v in keys.to_official(random_wan(spec).state_dict()).items()}
    assert WanSpec.as_comfyui_infers(shapes).num_heads == 2  # ComfyUI: dim // 128
    [problem] = spec.comfyui_problems()
    assert problem.field == "num_heads" and "dim=512" in problem.fix


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(text_dim=2048), "text_dim"),
        (dict(freq_dim=128), "freq_dim"),
        (dict(patch_size=(1, 4, 4)), "patch_size"),
        (dict(out_dim=4, in_dim=4), "out_dim"),
        (dict(in_dim=20), "in_dim"),
        (dict(eps=1e-5), "eps"),
        (dict(dim=64, num_heads=1), "dim"),
        (dict(text_len=77), "text_len"),
    ],
)
def test_each_comfyui_rule_names_field_and_fix(change, field):
    problems = tiny_spec("t2v").replace(**change).comfyui_problems()
    assert [p.field for p in problems] == [field]
    assert problems[0].fix
    with pytest.raises(SpecError, match=field):
        tiny_spec("t2v").replace(**change).check_comfyui()


def test_spec_rejects_nonsense():
    with pytest.raises(SpecError, match="not divisible"):
        WanSpec(dim=300, num_heads=7)
    with pytest.raises(SpecError, match="model_type"):
        WanSpec(model_type="vace")
    with pytest.raises(SpecError, match="no field"):
        WanSpec().replace(hidden_size=3)
