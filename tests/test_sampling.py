"""Sampling: Wan's flow-matching convention, determinism, both schedulers, guidance, i2v conditioning."""

import pytest
import torch

from wanlite.errors import WanliteError
from wanlite.evaluate.sampling import ImageCondition, guided_velocity, sample, schedule
from wanlite.testing import random_inputs, random_wan, tiny_spec

SHAPE = (1, 16, 2, 8, 8)


class Oracle(torch.nn.Module):
    """A 'model' that knows the clean sample x0: it predicts the exact flow velocity (x_t - x0) / sigma,
    reading sigma from the timestep (sigma * 1000). A sampler with Wan's conventions must land on x0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.config = type("Config", (), {"in_channels": x0.shape[1], "out_channels": x0.shape[1], "image_dim": None})

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        sigma = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
        return ((hidden_states - self.x0) / sigma * self.scale,)


@pytest.fixture(scope="module")
def model():
    return random_wan(tiny_spec("t2v"), seed=0)


@pytest.fixture(scope="module")
def context():
    return random_inputs(tiny_spec("t2v"))["context"]


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_oracle_velocity_lands_on_x0(scheduler):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    out = sample(Oracle(x0), SHAPE, torch.zeros(1, 4, 8), steps=8, guidance=1.0, scheduler=scheduler, seed=1)
    assert torch.allclose(out.latents, x0, atol=1e-4), (out.latents - x0).abs().max()


def test_deterministic_for_a_seed_and_schedulers_differ(model, context):
    a = sample(model, SHAPE, context, steps=3, seed=7, return_trajectory=True)
    b = sample(model, SHAPE, context, steps=3, seed=7)
    c = sample(model, SHAPE, context, steps=3, seed=8)
    e = sample(model, SHAPE, context, steps=3, seed=7, scheduler="euler", return_trajectory=True)
    assert torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)
    assert not torch.allclose(a.latents, e.latents)
    assert a.trajectory.shape == (4, *SHAPE) and a.velocities.shape == (3, *SHAPE)
    assert torch.equal(a.trajectory[-1], a.latents) and float(a.sigmas[-1]) == 0.0
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.trajectory[0], noise)  # a shape + seed draws exactly this noise


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_schedules_run_from_noise_to_clean_and_shift_toward_noise(scheduler):
    base, shifted = schedule(6, 1.0, scheduler), schedule(6, 5.0, scheduler)
    for s in (base, shifted):
        assert float(s[0]) == pytest.approx(1.0, abs=1e-3) and float(s[-1]) == 0.0
        assert torch.all(s[1:] < s[:-1])
    assert torch.all(shifted[1:-1] > base[1:-1])  # shift > 1 spends more steps at high noise


def test_guidance_combines_as_wan_does(model, context):
    x = torch.randn(SHAPE)
    neg = torch.randn_like(context)
    vc, vu, v = guided_velocity(model, x, 0.4, context, neg, guidance=3.0)
    assert torch.allclose(v, vu + 3.0 * (vc - vu))
    assert not torch.allclose(vc, vu)
    vc1, vu1, v1 = guided_velocity(model, x, 0.4, context, neg, guidance=1.0)
    assert vu1 is None and torch.equal(v1, vc1) and torch.equal(vc1, vc)


def test_i2v_needs_and_uses_its_image_conditioning():
    spec = tiny_spec("i2v")
    model = random_wan(spec, seed=1)
    inputs = random_inputs(spec, frames=2, height=8, width=8)
    ctx = inputs["context"]
    with pytest.raises(WanliteError, match="ImageCondition"):
        sample(model, SHAPE, ctx, steps=1)
    with pytest.raises(WanliteError, match="CLIP"):
        sample(model, SHAPE, ctx, steps=1, image=torch.zeros(1, 20, 2, 8, 8))
    cond = ImageCondition(torch.randn(1, 20, 2, 8, 8), inputs["image_clip"])
    out = sample(model, SHAPE, ctx, steps=2, seed=0, image=cond)
    other = sample(model, SHAPE, ctx, steps=2, seed=0, image=ImageCondition(torch.zeros(1, 20, 2, 8, 8), cond.clip))
    assert out.latents.shape == SHAPE and not torch.allclose(out.latents, other.latents)


def test_bad_arguments_are_clear(model, context):
    with pytest.raises(WanliteError, match="unipc"):
        sample(model, SHAPE, context, steps=1, scheduler="ddim")
    with pytest.raises(WanliteError, match=r"\[B, 16, F, H, W\]"):
        sample(model, (1, 4, 2, 8, 8), context, steps=1)
