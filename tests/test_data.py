"""Data caches round-trip exactly (safetensors only), batches are resumable and world-size independent,
teacher trajectories and the teacher-target cache hold what the teacher computed."""

from __future__ import annotations

import pytest
import torch

from wanlite.core.flow import BlockOutputs, wan_forward
from wanlite.errors import DestinationExistsError, FormatError, WanliteError
from wanlite.testing import random_wan, tiny_spec
from wanlite.train.caches import write_teacher_targets, write_trajectories
from wanlite.train.data import Batches, CachedSource, ShardWriter, SyntheticSource, collate, split
from wanlite.train.objectives import Noising


def test_latent_cache_round_trips_exactly_and_only_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(7):
        ctx = torch.zeros(32, 4096, dtype=torch.bfloat16)
        ctx[: 1 + i] = torch.randn(1 + i, 4096, generator=g).bfloat16()  # real tokens, then umT5's zero padding
        neg = torch.zeros(32, 4096, dtype=torch.bfloat16)
        neg[0] = 1.5
        samples.append(dict(latents=torch.randn(16, 2, 4, 4, generator=g), context=ctx, negative_context=neg))
    with ShardWriter(tmp_path / "cache", kind="latents", shard_size=3, meta={"vae": "Wan2.1"}) as w:
        for s in samples:
            w.add(**s)
    src = CachedSource(tmp_path / "cache")
    assert len(src) == 7 and src.kind == "latents" and src.meta == {"vae": "Wan2.1"}
    for i, s in enumerate(samples):
        got = src[i]
        assert got.keys() == s.keys()
        assert all(got[k].dtype == s[k].dtype and torch.equal(got[k], s[k]) for k in s), i
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    # contexts are stored without their padding: 1+2+...+7 token rows, not 7 x 32
    from safetensors import safe_open

    rows = sum(safe_open(str(tmp_path / "cache" / f), "pt").get_slice("context").get_shape()[0] for f in files[1:])
    assert rows == sum(range(1, 8))
    # and a run trains from it on the CPU (fp32 models, bf16 embeddings in the cache), task loss included
    from wanlite.train import DistillConfig, distill

    teacher, student = random_wan(tiny_spec("t2v"), seed=0), random_wan(tiny_spec("t2v", num_layers=1), seed=1)
    result = distill(
        DistillConfig(
            run_dir=str(tmp_path / "run"),
            data=str(tmp_path / "cache"),
            steps=2,
            batch_size=2,
            val_samples=2,
            w_task=0.1,
            export=False,
            progress=False,
        ),
        teacher=teacher,
        student=student,
        block_map=[1],
    )
    assert {"out", "task"} <= set(result.losses)


def test_cache_errors_name_the_problem(tmp_path):
    with pytest.raises(FormatError, match="no manifest.json"):
        CachedSource(tmp_path)
    w = ShardWriter(tmp_path / "c")
    w.add(latents=torch.zeros(16, 1, 4, 4), context=torch.ones(4, 8))
    with pytest.raises(WanliteError, match="one cache per resolution"):
        w.add(latents=torch.zeros(16, 1, 8, 8), context=torch.ones(4, 8))
    w.close()
    with pytest.raises(DestinationExistsError):
        ShardWriter(tmp_path / "c")


def test_batches_resume_and_do_not_depend_on_process_count():
    src = SyntheticSource(n=20, latent_shape=(16, 1, 2, 2), text_tokens=1, text_len=2, text_dim=8)
    train, val = split(len(src), 4, seed=3)
    assert not set(train) & set(val) and len(train) == 16
    one = Batches(src, train, batch_size=4, seed=3)
    two = [Batches(src, train, batch_size=2, seed=3, rank=r, world=2) for r in range(2)]
    whole = list(one.iterate(0, 9))  # 4 batches per epoch: crosses two epoch boundaries
    for k, batch in whole:
        halves = [dict(b.iterate(k, k + 1))[k] for b in two]
        assert torch.equal(batch["latents"], torch.cat([h["latents"] for h in halves]))
        assert one.keys(k) == two[0].keys(k) + two[1].keys(k)
    resumed = list(one.iterate(5, 9))
    assert all(torch.equal(a[1]["latents"], b[1]["latents"]) for a, b in zip(whole[5:], resumed))
    epoch0 = torch.cat([b["latents"] for _, b in whole[:4]])
    epoch1 = torch.cat([b["latents"] for _, b in whole[4:8]])
    assert not torch.equal(epoch0, epoch1)  # reshuffled each epoch, same samples
    assert sorted(epoch0.flatten().tolist()) == sorted(epoch1.flatten().tolist())


def test_trajectory_cache_holds_the_teacher_sampling_path(tmp_path):
    from wanlite.evaluate.sampling import sample

    teacher = random_wan(tiny_spec("t2v"), seed=0)
    contexts = torch.zeros(2, 8, 4096)
    contexts[:, :3] = torch.randn(2, 3, 4096)
    out = write_trajectories(teacher, contexts, tmp_path / "traj", latent_shape=(16, 1, 4, 4), steps=3, guidance=1.0)
    src = CachedSource(out)
    assert src.kind == "trajectory" and len(src) == 2 * 3
    noise = torch.randn((1, 16, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    ref = sample(teacher, noise, contexts[:1], steps=3, guidance=1.0, return_trajectory=True)
    for i in range(3):
        assert torch.equal(src[i]["noisy"], ref.trajectory[i, 0]) and src[i]["sigma"].item() == ref.sigmas[i].item()
        assert torch.equal(src[i]["context"], contexts[0])
    assert src[0]["sigma"].item() > src[2]["sigma"].item() > 0


def test_teacher_target_cache_matches_the_teacher_and_trains_without_it(tmp_path):
    from wanlite.train import DistillConfig, distill

    teacher = random_wan(tiny_spec("t2v", num_layers=2), seed=0)
    data = SyntheticSource(n=24, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8)
    out = write_teacher_targets(
        teacher, data, tmp_path / "targets", Noising(uncond_fraction=0.5), feature_blocks=[1], batch_size=5
    )
    cache = CachedSource(out)
    assert cache.kind == "targets" and len(cache) == 24 and cache.meta["feature_blocks"] == [1]
    batch = collate([cache[i] for i in range(6)])
    with torch.no_grad(), BlockOutputs(teacher, [1]) as cap:
        v = wan_forward(teacher, batch["noisy"], batch["sigma"], batch["context"])
    assert torch.allclose(v, batch["v_teacher"], atol=1e-5) and torch.allclose(
        cap.outputs[1], batch["feat.1"], atol=1e-5
    )
    assert torch.allclose(
        batch["v_task"],
        (batch["noisy"] - (1 - batch["sigma"].view(-1, 1, 1, 1, 1)) * collate([data[i] for i in range(6)])["latents"])
        / batch["sigma"].view(-1, 1, 1, 1, 1)
        - collate([data[i] for i in range(6)])["latents"],
        atol=1e-4,
    )
    negatives = sum(torch.equal(cache[i]["context"], data[i]["negative_context"]) for i in range(24))
    assert 3 <= negatives <= 21  # about half the samples distil the unconditional branch

    student = random_wan(tiny_spec("t2v", num_layers=1), seed=1)
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"),
        data=str(out),
        steps=40,
        batch_size=4,
        lr=1e-3,
        w_feat=0.1,
        val_every=0,
        checkpoint_every=0,
        export=False,
        progress=False,
    )
    result = distill(cfg, student=student, block_map=[1])  # no teacher anywhere
    assert result.validation[-1]["rel_mse"] < 0.36 * result.validation[0]["rel_mse"]
