"""Shared tiny Wan models (built once per session: importing diffusers and building models is the slow part)."""

import pytest
import torch

from wanlite.testing import random_inputs, random_wan, tiny_spec


@pytest.fixture(scope="session", params=["t2v", "i2v", "ti2v"])
def kind(request):
    return request.param


@pytest.fixture(scope="session")
def models():
    """kind -> (spec, model, inputs, reference output)."""
    out = {}
    for kind in ("t2v", "i2v", "ti2v"):
        spec = tiny_spec(kind)
        model = random_wan(spec, seed=1)
        inputs = random_inputs(spec, seed=2)
        with torch.no_grad():
            out[kind] = (spec, model, inputs, model(**inputs).sample)
    return out


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample
