"""Shared tiny Wan models (built once per session: importing diffusers and building models is the slow part)."""

import pytest
import torch

from wanlite.core.flow import wan_forward
from wanlite.testing import random_inputs, random_wan, tiny_spec


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: tiny models run fastest and reproducibly so, and thread contention on a shared CPU
    makes tiny forwards ~100x slower and noisy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
            out[kind] = (spec, model, inputs, wan_forward(model, **inputs))
    return out


def forward(model, inputs):
    with torch.no_grad():
        return wan_forward(model, **inputs)


def sigkill_once(proc, ready, timeout: float = 180) -> None:
    """SIGKILL `proc` as soon as `ready()` is true (e.g. a checkpoint exists): the crash the resume tests recover
    from. Fails with the process's output if it ends first, or after `timeout` seconds."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, f"not ready after {timeout} s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
