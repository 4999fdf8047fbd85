"""The toy world: deterministic clips, latents and contexts; a VAE that round-trips; a metric that reads ground
truth right and noise at chance; teacher training that runs and is seeded; the shipped teacher that has learned."""

import json

import pytest
import torch

from wanlite import toy
from wanlite.errors import WanliteError
from wanlite.formats.spec import WanSpec


@pytest.fixture(scope="module")
def vae():
    return toy.load_vae()  # the VAE the shipped teacher was trained with


@pytest.fixture(scope="module")
def clips():
    caps = toy.captions()
    return caps, toy.batch(caps, [1000 + i for i in range(len(caps))])


# ---- world ----


def test_captions_cover_the_vocabulary():
    caps = toy.captions()
    assert len(caps) == len(set(caps)) == len(toy.COLOURS) * len(toy.SHAPES) * len(toy.DIRECTIONS) == 48
    assert toy.parse("Red Circle moving LEFT") == toy.Caption("red", "circle", "left")
    with pytest.raises(WanliteError, match="purple.*toy.captions"):
        toy.parse("purple circle moving left")


def test_same_seed_same_clip_other_seed_other_clip():
    a = toy.render("red circle moving left", seed=3)
    assert a.shape == (3, 17, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, toy.render("red circle moving left", seed=3))
    assert not torch.equal(a, toy.render("red circle moving left", seed=4))  # the seed jitters the track
    assert torch.equal(toy.batch(["red circle moving left"], [3])[0], a)


def test_clip_shows_what_the_caption_says():
    clip = toy.render("blue square moving down", seed=None)
    mask = clip.amax(0) > 0.5  # [F, H, W]
    ys = torch.arange(64.0).view(1, -1, 1)
    cy = (mask * ys).flatten(1).sum(1) / mask.flatten(1).sum(1)
    assert cy[-1] - cy[0] == pytest.approx(40, abs=1)  # travels 40 px downwards
    assert clip[:, 8][:, mask[8]].mean(1).tolist() == pytest.approx(list(toy.COLOURS["blue"]), abs=0.01)
    assert mask[8].sum() == pytest.approx(24 * 24, rel=0.05)  # a 24-px square


# ---- VAE ----


def test_vae_shapes_round_trip_and_determinism(vae, clips):
    caps, videos = clips
    z = vae.encode(videos[:4])
    assert z.shape == (4, 16, 5, 8, 8)  # Wan2.1: 16 channels, (17-1)/4+1 frames, /8 spatially
    assert torch.equal(z, vae.encode(videos[:4]))
    assert 0.8 < z.std().item() < 1.2  # whitened: Gaussian noise is the right prior
    assert vae.decode(z).shape == videos[:4].shape
    assert vae.psnr(videos) > 24.0  # measured 25.0 dB on held-out clips


def test_vae_fit_is_deterministic():
    a, b = toy.ToyVAE.fit(clips=8), toy.ToyVAE.fit(clips=8)
    assert torch.equal(a.group_basis, b.group_basis) and torch.equal(a.latent_std, b.latent_std)


def test_vae_rejects_a_wrong_frame_count(vae):
    with pytest.raises(WanliteError, match="4k\\+1"):
        vae.encode(torch.zeros(1, 3, 16, 64, 64))


# ---- text ----


def test_text_context_is_deterministic_and_padded_like_umt5():
    ctx = toy.encode_text(["red circle moving left", "", "red circle moving left"])
    assert ctx.shape == (3, 16, 4096)
    assert torch.equal(ctx[0], ctx[2])
    assert torch.equal(ctx[0], toy.encode_text("red circle moving left")[0])
    assert ctx[0, :5].abs().sum(1).gt(0).all() and ctx[0, 5:].abs().sum() == 0  # 4 words + EOS, then zeros
    assert ctx[1, :1].abs().sum() > 0 and ctx[1, 1:].abs().sum() == 0  # "" = EOS alone: the negative context
    assert torch.equal(ctx[1, 0], ctx[0, 4])
    with pytest.raises(WanliteError, match="at most 15"):
        toy.encode_text(" ".join(["red"] * 20))


# ---- adherence ----


def test_metric_reads_ground_truth_through_the_vae(vae, clips):
    caps, videos = clips
    assert toy.adherence(videos, caps).all == 1.0
    score = toy.adherence(vae.decode(vae.encode(videos)), caps)
    assert (score.colour, score.shape, score.direction) == (1.0, 1.0, 1.0), score.mistakes()


def test_metric_is_at_chance_on_noise(vae, clips):
    caps, _ = clips
    g = torch.Generator().manual_seed(0)
    for videos in (torch.rand(48, 3, 17, 64, 64, generator=g), vae.decode(torch.randn(48, 16, 5, 8, 8, generator=g))):
        score = toy.adherence(videos, caps)
        assert abs(score.colour - 1 / 4) < 0.15 and abs(score.shape - 1 / 3) < 0.15
        assert abs(score.direction - 1 / 4) < 0.15 and score.all < 0.1
    with pytest.raises(WanliteError, match="one caption per clip"):
        toy.adherence(videos[:2], caps[:3])


# ---- teacher ----

SMOKE = toy.TeacherConfig(dim=128, num_heads=1, num_layers=1, ffn_dim=256, steps=3, batch=2, warmup=2, log_every=1)


def test_training_smoke_is_seeded_and_saves_official_wan(vae, tmp_path):
    first = toy.train(SMOKE, vae=vae, log=lambda _: None)
    again = toy.train(SMOKE, vae=vae, log=lambda _: None)
    assert first.steps == 3 and len(first.losses) == 3 and all(loss == loss and loss < 10 for loss in first.losses)
    a, b = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed -> same weights
    assert not torch.equal(a["proj_out.weight"], toy.build(SMOKE).state_dict()["proj_out.weight"])  # it trained
    out = toy.save(first, tmp_path / "bundle")
    cfg = json.loads((out / "teacher" / "config.json").read_text())
    assert cfg["_class_name"] == "WanModel" and cfg["dim"] == 128 and cfg["in_dim"] == cfg["out_dim"] == 16
    loaded = toy.teacher(out)
    assert all(torch.equal(p, a[k].to(torch.bfloat16).float()) for k, p in loaded.state_dict().items())
    assert torch.equal(toy.load_vae(out).group_basis, vae.group_basis)
    with pytest.raises(WanliteError, match="toy teacher bundle"):
        toy.teacher(tmp_path)


def test_shipped_teacher_is_a_comfyui_wan_that_follows_prompts(vae):
    model = toy.teacher()
    spec = WanSpec.from_diffusers_config(dict(model.config))
    assert spec.model_type == "t2v" and spec.head_dim == 128 and spec.comfyui_problems() == []
    measured = toy.info()["adherence"]["teacher"]  # every caption, 20 steps: 100% / 90% / 100%
    assert measured["colour"] >= 0.9 and measured["direction"] >= 0.8 and measured["shape"] >= 0.6
    caps = toy.captions()[::5]  # 10 captions mixing every colour, shape and direction
    score = toy.evaluate(model, caps, steps=10, vae=vae)
    assert score.colour == 1.0 and score.direction >= 0.8 and score.shape >= 0.6, score.mistakes()
    untrained = toy.evaluate(toy.build(toy.TeacherConfig()).eval(), caps, steps=10, vae=vae)
    assert untrained.colour <= 0.5 and untrained.direction <= 0.5  # random weights: chance
