"""Pruning a teacher into a student: exactness, consistent slicing, importance, recipes, refusals."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch

from wanlite.compress import Calibration, Pruning, Recipe, build_student, calibrate, init_report
from wanlite.errors import RecipeError
from wanlite.testing import random_inputs, random_wan, tiny_spec


@pytest.fixture(autouse=True)
def _no_grad():
    """These tests only run forwards (grad mode restored afterwards: other files train)."""
    with torch.no_grad():
        yield


def inputs(spec, seed=0, timestep=True):
    """random_inputs, with the 512-token text context an image-conditioned Wan needs."""
    r = random_inputs(spec, seed=seed)
    x = {"hidden_states": r["x"], "timestep": r["sigma"] * 1000, "encoder_hidden_states": r["context"]}
    if "image_clip" in r:
        x["encoder_hidden_states_image"] = r["image_clip"]
    if spec.has_image_embedder:
        ctx = x["encoder_hidden_states"]
        x["encoder_hidden_states"] = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], 512 - ctx.shape[1], ctx.shape[2])], 1)
    if not timestep:
        x.pop("timestep")
    return x


def run(model, x):
    return model(**x, return_dict=False)[0]


@functools.lru_cache(maxsize=None)
def tiny_teacher(kind: str):
    return random_wan(tiny_spec(kind, num_layers=3), seed=3)


@pytest.fixture(scope="module", params=["t2v", "i2v", "ti2v"])
def teacher(request):
    return tiny_teacher(request.param)


@pytest.fixture(scope="module")
def t2v():
    return random_wan(tiny_spec("t2v", num_layers=4), seed=5)


@pytest.fixture(scope="module")
def t2v_cal(t2v):
    return calibrate(t2v, inputs(tiny_spec("t2v", num_layers=4), timestep=False), skip_blocks=True)


def spec_of(model):
    from wanlite.formats.spec import WanSpec

    return WanSpec.from_diffusers_config(model.config)


# ---------------------------------------------------------------- exactness
def test_full_recipe_reproduces_teacher_exactly(teacher):
    x = inputs(spec_of(teacher))
    student, pruning = build_student(teacher, Recipe())
    assert (run(student, x) - run(teacher, x)).abs().max().item() == 0.0
    assert pruning.kept_blocks == list(range(3)) and pruning.student == pruning.teacher
    # a copy, not a view: training the student must not touch the teacher
    student.blocks[0].attn1.to_q.weight.add_(1.0)
    assert not torch.equal(student.blocks[0].attn1.to_q.weight, teacher.blocks[0].attn1.to_q.weight)
    assert all(p.requires_grad for p in student.parameters())
    if spec_of(teacher).model_type == "t2v":  # a bf16 teacher: the same, RoPE tables included
        half = copy.deepcopy(teacher).to(torch.bfloat16)
        student, _ = build_student(half, Recipe())
        xb = {k: v.to(torch.bfloat16) for k, v in x.items()}
        assert student.dtype == torch.bfloat16 and torch.equal(run(student, xb), run(half, xb))


@pytest.mark.parametrize(
    "kind, blocks, expected",
    [
        ("t2v", "uniform", [0, 2]),
        ("t2v", "first", [0, 1]),
        ("t2v", (2, 0), [2, 0]),
        ("i2v", "uniform", [0, 2]),
        ("ti2v", (1, 2), [1, 2]),
    ],
)
def test_depth_only_student_equals_teacher_with_blocks_skipped(kind, blocks, expected):
    teacher = tiny_teacher(kind)
    spec = spec_of(teacher)
    x = inputs(spec)
    student, pruning = build_student(
        teacher, Recipe(num_blocks=None if isinstance(blocks, tuple) else 2, blocks=blocks)
    )
    assert pruning.kept_blocks == expected
    reference = copy.deepcopy(teacher)
    reference.blocks = torch.nn.ModuleList([reference.blocks[i] for i in expected])
    assert (run(student, x) - run(reference, x)).abs().max().item() == 0.0
    assert student.config.num_layers == 2  # renumbered 0..1
    assert {k.split(".")[1] for k in student.state_dict() if k.startswith("blocks.")} == {"0", "1"}


def test_width_slices_every_tensor_consistently(teacher):
    spec = spec_of(teacher)
    cal = calibrate(teacher, inputs(spec, timestep=False))
    student, p = build_student(teacher, Recipe(num_blocks=2, blocks="importance", num_heads=1, ffn_dim=200), cal)
    assert (student.config.num_attention_heads, student.config.attention_head_dim, student.config.ffn_dim) == (
        1,
        128,
        200,
    )
    assert p.student.dim == 128 and len(p.kept_channels) == 128 and all(len(f) == 200 for f in p.kept_ffn)
    assert p.kept_channels == sorted(p.kept_channels)
    s, t = student.blocks[1], teacher.blocks[p.kept_blocks[1]]
    c = torch.tensor(p.kept_channels)
    heads = torch.tensor([h * 128 + i for h in p.kept_heads[1] for i in range(128)])
    cross = torch.tensor([h * 128 + i for h in p.kept_cross_heads[1] for i in range(128)])
    ctx = torch.tensor(p.kept_embedding["text_context"])
    assert torch.equal(s.attn1.to_q.weight, t.attn1.to_q.weight[heads][:, c])
    assert torch.equal(s.attn1.norm_q.weight, t.attn1.norm_q.weight[heads])
    assert torch.equal(s.attn1.to_out[0].weight, t.attn1.to_out[0].weight[c][:, heads])
    assert torch.equal(s.attn2.to_k.weight, t.attn2.to_k.weight[cross][:, ctx])
    assert torch.equal(s.norm2.weight, t.norm2.weight[c])
    assert torch.equal(s.ffn.net[0].proj.weight, t.ffn.net[0].proj.weight[torch.tensor(p.kept_ffn[1])][:, c])
    assert torch.equal(s.scale_shift_table, t.scale_shift_table[:, :, c])
    six = torch.cat([c + j * spec.dim for j in range(6)])  # time projection: 6 chunks of dim
    tp, sp = teacher.condition_embedder.time_proj, student.condition_embedder.time_proj
    assert torch.equal(sp.weight, tp.weight[six][:, c]) and torch.equal(sp.bias, tp.bias[six])
    assert torch.equal(student.patch_embedding.weight, teacher.patch_embedding.weight[c])
    assert torch.equal(student.proj_out.weight, teacher.proj_out.weight[:, c])
    assert torch.equal(student.scale_shift_table, teacher.scale_shift_table[:, :, c])
    if spec.has_image_embedder:
        img = torch.tensor(p.kept_embedding["image_context"])
        assert torch.equal(s.attn2.add_k_proj.weight, t.attn2.add_k_proj.weight[cross][:, img])
        assert torch.equal(s.attn2.norm_added_k.weight, t.attn2.norm_added_k.weight[cross])
        ie_s, ie_t = student.condition_embedder.image_embedder, teacher.condition_embedder.image_embedder
        assert torch.equal(ie_s.norm2.weight, ie_t.norm2.weight[img])
    out = run(student, inputs(spec))
    assert out.shape == run(teacher, inputs(spec)).shape and torch.isfinite(out).all()
    assert p.student.comfyui_problems() == []


def test_student_class_and_json_metadata(t2v, t2v_cal):
    from diffusers import WanTransformer3DModel

    class Student(WanTransformer3DModel):
        pass

    student, p = build_student(t2v, Recipe(num_blocks=2, num_heads=1, ffn_dim=256), t2v_cal, cls=Student)
    assert isinstance(student, Student)
    again = Pruning.from_json(p.to_json())
    assert again == p and json.loads(p.to_json())["kept_blocks"] == [0, 3]
    assert "4 -> 2" in repr(p) and "dim 256 -> 128" in repr(p)


# ---------------------------------------------------------------- importance finds what matters
def test_importance_keeps_live_ffn_neurons_exactly():
    teacher = random_wan(tiny_spec("t2v"), seed=7)
    dead = torch.arange(1, 512, 2)  # every other neuron writes nothing
    for blk in teacher.blocks:
        blk.ffn.net[2].weight[:, dead] = 0
    x = inputs(tiny_spec("t2v"))
    cal = calibrate(teacher, inputs(tiny_spec("t2v"), timestep=False))
    for selection in ("importance", "magnitude"):
        student, p = build_student(teacher, Recipe(ffn_dim=256, width_selection=selection), cal)
        assert all(kept == list(range(0, 512, 2)) for kept in p.kept_ffn), selection
        torch.testing.assert_close(run(student, x), run(teacher, x), rtol=1e-5, atol=1e-5)


def test_importance_drops_near_identity_blocks_and_ranks_first():
    teacher = random_wan(tiny_spec("t2v", num_layers=4), seed=11)
    for i in (0, 3):  # these blocks barely change the residual stream
        blk = teacher.blocks[i]
        for lin in (blk.attn1.to_out[0], blk.attn2.to_out[0], blk.ffn.net[2]):
            lin.weight.mul_(1e-3)
            lin.bias.mul_(1e-3)
    spec = tiny_spec("t2v", num_layers=4)
    cal = calibrate(teacher, inputs(spec, seed=1, timestep=False), skip_blocks=True)
    assert set(cal.block_cosine.argsort()[:2].tolist()) == {0, 3}
    assert set(cal.block_skip.argsort()[:2].tolist()) == {0, 3}
    recipes = {name: Recipe(num_blocks=2, blocks=name) for name in ("uniform", "first", "importance")}
    recipes["importance-skip"] = Recipe(num_blocks=2, blocks="importance", block_score="skip")
    report = init_report(teacher, recipes, cal, inputs(spec, seed=2, timestep=False), sigmas=(0.2, 0.8))
    err = {r.name: r.mean_rel_mse for r in report.rows}
    assert report.best in ("importance", "importance-skip")
    assert err["importance"] < err["first"] < err["uniform"], err
    assert [r.pruning.kept_blocks for r in report.rows][2] == [1, 2]
    text = repr(report)
    assert all(name in text for name in recipes) and "err@0.2" in text
    report.plot().savefig(__import__("io").BytesIO(), format="png")


# ---------------------------------------------------------------- calibration object
def test_calibration_scores_repr_plot_save_load_and_cache(t2v, t2v_cal, tmp_path):
    spec = tiny_spec("t2v", num_layers=4)
    s = t2v_cal.scores
    assert s["block_cosine"].shape == (4,) and s["self_heads"].shape == (4, 2) and s["ffn"].shape == (4, 512)
    assert s["channel"].shape == (4, 256) and bool((s["ffn"] >= 0).all()) and bool((s["block_cosine"] > 0).all())
    assert "block importance" in repr(t2v_cal) and "least important first" in repr(t2v_cal)
    t2v_cal.plot().savefig(tmp_path / "cal.png")
    loaded = Calibration.load(t2v_cal.save(tmp_path / "cal.safetensors"))
    assert loaded.spec == t2v_cal.spec and loaded.sigmas == t2v_cal.sigmas and loaded.fingerprint == t2v_cal.fingerprint
    assert all(torch.equal(loaded.scores[k], v) for k, v in s.items())
    assert calibrate(t2v, inputs(spec, timestep=False), skip_blocks=True) is t2v_cal  # in-memory cache
    first = calibrate(t2v, inputs(spec, timestep=False), cache_dir=tmp_path, use_cache=True)
    files = list(tmp_path.glob("calibration-*.safetensors"))
    assert len(files) == 1
    import importlib

    cal_module = importlib.import_module("wanlite.compress.calibrate")

    cal_module._CACHE.clear()
    second = calibrate(t2v, inputs(spec, timestep=False), cache_dir=tmp_path)  # read back from the file
    assert second is not first and torch.equal(second.scores["ffn"], first.scores["ffn"])
    # a different batch is a different calibration
    assert calibrate(t2v, inputs(spec, seed=9, timestep=False)).batch_key != first.batch_key


def test_noise_batch_calibrates_without_latents():
    from wanlite.compress import noise_batch

    spec = tiny_spec("i2v", num_layers=3)
    x = inputs(spec)
    batch = noise_batch(
        spec, x["encoder_hidden_states"], frames=2, height=8, width=8, image=x["encoder_hidden_states_image"]
    )
    cal = calibrate(tiny_teacher("i2v"), batch, sigmas=(0.5,))
    assert cal.sigmas == (0.5,) and cal.tokens == 2 * 4 * 4 and cal.scores["image_context"].shape == (3, 256)


# ---------------------------------------------------------------- recipes
def test_recipe_round_trip_and_fractions():
    r = Recipe(num_blocks=3, blocks=[0, 2, 3], num_heads=1, ffn_dim=256, width_selection="magnitude")
    assert Recipe.from_json(r.to_json()) == r and r.blocks == (0, 2, 3)
    assert json.loads(r.to_json())["blocks"] == [0, 2, 3]  # papermill / JSON parameters
    from wanlite.formats.spec import WanSpec

    big = WanSpec()  # 1.3B shape
    f = Recipe.from_fractions(big, depth=0.5, projection_factor=0.5)
    assert (f.num_blocks, f.num_heads, f.ffn_dim) == (15, 6, 4480)
    assert f.student_spec(big).dim == 768
    with pytest.raises(RecipeError, match="no field"):
        Recipe.from_dict({"num_block": 3})


@pytest.mark.parametrize(
    "recipe, message",
    [
        (dict(num_blocks=5), r"4 blocks.*nearest valid: num_blocks=4"),
        (dict(num_blocks=0), r"nearest valid: num_blocks=1"),
        (dict(blocks=[0, 4]), r"\[4\] out of range.*blocks=\[0\]"),
        (dict(blocks=[-1, 2]), r"out of range"),
        (dict(blocks=[1, 1, 2]), r"\[1\] repeated.*blocks=\[1, 2\]"),
        (dict(num_heads=3), r"only 2 heads.*num_heads=2"),
        (dict(num_heads=0), r"at least one head.*num_heads=1"),
        (dict(dim=200), r"not a multiple of 128.*num_heads=2 \(dim=256\)"),
        (dict(ffn_dim=1024), r"512 wide.*ffn_dim=512"),
        (dict(ffn_dim=[256, 512, 256, 256]), r"per-block FFN widths.*ComfyUI reads ffn_dim from block 0"),
        (dict(blocks="random"), r"uniform.*first.*importance"),
        (dict(width_selection="random"), r"importance.*magnitude"),
    ],
)
def test_bad_recipes_are_refused_with_the_nearest_valid_one(t2v, recipe, message):
    with pytest.raises(RecipeError, match=message):
        build_student(t2v, Recipe(**recipe))


def test_importance_without_calibration_and_foreign_calibration(t2v, t2v_cal):
    with pytest.raises(RecipeError, match="calibration=calibrate"):
        build_student(t2v, Recipe(num_blocks=2, blocks="importance"))
    with pytest.raises(RecipeError, match="width_selection='magnitude'"):
        build_student(t2v, Recipe(num_heads=1))
    other = random_wan(tiny_spec("t2v", num_layers=4), seed=99)
    with pytest.raises(RecipeError, match="measured on another teacher"):
        build_student(other, Recipe(num_heads=1), t2v_cal)
    changed = copy.deepcopy(t2v)
    build_student(changed, Recipe(num_heads=1), t2v_cal)  # same weights: fine
    changed.proj_out.weight.mul_(2)  # trained since calibration: refused
    with pytest.raises(RecipeError, match="measured on another teacher"):
        build_student(changed, Recipe(num_heads=1), t2v_cal)


def test_not_a_wan_teacher():
    with pytest.raises(RecipeError, match="expected a diffusers WanTransformer3DModel.*Linear"):
        build_student(torch.nn.Linear(2, 2), Recipe())
    with pytest.raises(RecipeError, match="load_wan"):
        calibrate(torch.nn.Sequential(), {})


def test_bad_calibration_batches():
    spec = tiny_spec("i2v")
    teacher = random_wan(spec, seed=1)
    good = inputs(spec, timestep=False)
    bad = {
        "channels": ({**good, "hidden_states": torch.randn(1, 16, 2, 8, 8)}, r"\[B, 36, F, H, W\].*\[1, 16, 2, 8, 8\]"),
        "odd size": ({**good, "hidden_states": torch.randn(1, 36, 2, 7, 8)}, r"divisible by the patch"),
        "text dim": ({**good, "encoder_hidden_states": torch.randn(1, 512, 768)}, r"\[B=1, L, 4096\]"),
        "batch": ({**good, "encoder_hidden_states": torch.randn(2, 512, 4096)}, r"\[B=1, L, 4096\]"),
        "short ctx": ({**good, "encoder_hidden_states": torch.randn(1, 16, 4096)}, r"Pad it to 512"),
        "no image": (
            {k: v for k, v in good.items() if k != "encoder_hidden_states_image"},
            r"needs encoder_hidden_states_image",
        ),
        "missing": ({"hidden_states": good["hidden_states"]}, r"missing tensor 'encoder_hidden_states'"),
        "typo": ({**good, "latent": good["hidden_states"]}, r"unknown key\(s\) \['latent'\]"),
        "nan": ({**good, "hidden_states": good["hidden_states"] * float("nan")}, r"NaN"),
        "both": ({**good, "timestep": torch.tensor([500.0])}, r"sigmas were given too"),
    }
    for name, (batch, message) in bad.items():
        with pytest.raises(RecipeError, match=message):
            calibrate(teacher, batch, sigmas=(0.5,) if name == "both" else None)
    t2v_teacher = random_wan(tiny_spec("t2v"), seed=1)
    with pytest.raises(RecipeError, match="has no image embedder"):
        calibrate(
            t2v_teacher,
            {**inputs(tiny_spec("t2v"), timestep=False), "encoder_hidden_states_image": torch.randn(1, 257, 1280)},
        )
