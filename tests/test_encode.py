"""`wanlite encode`: videos written here with PyAV, tiny random Wan VAEs (16 and 48 channels) and a tiny umT5 built
in code -> a cache that `distill` reads; the latents are a direct VAE encode of the same frames; resume; skips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from wanlite.cli import main
from wanlite.errors import ConfigError, FormatError
from wanlite.testing import tiny_wan_encoders
from wanlite.train import video as videoio
from wanlite.train.data import CachedSource
from wanlite.train.encode import WAN_NEGATIVE, conform, encode, gather, load_encoders

SIZE, FRAMES, FPS = (32, 32), 5, 8.0


@pytest.fixture(scope="module")
def wan16(tmp_path_factory):
    return tiny_wan_encoders(tmp_path_factory.mktemp("wan16"))


def _frames(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """A moving smooth pattern, uint8 [n, H, W, 3] (compresses well, so mp4 keeps it close)."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(3, generator=g) * 6.28
    y = torch.linspace(0, 3, height).view(1, -1, 1, 1)
    x = torch.linspace(0, 3, width).view(1, 1, -1, 1)
    t = torch.arange(n).view(-1, 1, 1, 1) * 0.3
    rgb = 0.5 + 0.4 * torch.sin(x + y * phase.view(1, 1, 1, 3) + t + phase)
    return (rgb * 255).round().to(torch.uint8)


def _clip(folder: Path, name: str, caption: str | None, n: int = 12, size=(32, 48), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = videoio.write(folder / name, _frames(n, *size, seed=seed), fps=FPS)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def _run(videos, models, out, *more) -> int:
    size = f"{SIZE[0]}x{SIZE[1]}"
    common = ["--size", size, "--frames", str(FRAMES), "--fps", str(FPS), "--text-length", "16"]
    return main(["encode", "--videos", str(videos), "--models", str(models), "--out", str(out), *common, *more])


def test_encode_writes_a_cache_that_distill_trains_on(tmp_path, wan16):
    from wanlite.testing import random_wan, tiny_spec
    from wanlite.train import DistillConfig, distill

    captions = ["a red cat walking on grass", "a blue dog running", "the city street at night", "rain on sand"]
    for i, caption in enumerate(captions[:2]):
        _clip(tmp_path / "clips", f"clip{i}.mp4", caption, seed=i)
    _clip(tmp_path / "clips", "clip2.gif", captions[2], seed=2)
    frames = tmp_path / "clips" / "clip3"  # a folder of frames, its caption beside it
    frames.mkdir()
    for k, frame in enumerate(_frames(12, 32, 48, seed=3)):
        Image.fromarray(frame.numpy()).save(frames / f"{k:04d}.png")
    (tmp_path / "clips" / "clip3.txt").write_text(captions[3])
    out = tmp_path / "cache"
    assert _run(tmp_path / "clips", wan16, out, "--batch", "2") == 0
    cache = CachedSource(out)
    assert cache.kind == "latents" and len(cache) == 4
    assert cache.shapes == {"latents": [16, 2, 4, 4], "context": [16, 4096], "negative_context": [16, 4096]}
    records = [r for shard in cache.manifest["shards"] for r in shard["records"]]
    assert [r["caption"] for r in records] == captions and all(r["size"] > 0 and r["mtime"] for r in records)
    assert json.loads(json.dumps(cache.meta))["encode"]["negative"] == WAN_NEGATIVE
    assert (out / "skipped.jsonl").read_text() == ""

    teacher, student = random_wan(tiny_spec("t2v", num_layers=2), seed=0), random_wan(tiny_spec(num_layers=1), seed=1)
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"), data=str(out), steps=3, batch_size=2, val_samples=1, val_every=0,
        checkpoint_every=-1, progress=False, w_task=0.1,
    )  # fmt: skip
    result = distill(cfg, teacher=teacher, student=student, block_map=[1])
    losses = [r for r in result.metrics() if "loss" in r]
    assert losses and all(math.isfinite(r["loss"]) and r["task"] > 0 for r in losses)


@pytest.mark.parametrize("channels", [16, 48])
def test_latents_and_contexts_equal_a_direct_encode_of_the_same_frames(tmp_path, wan16, channels):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    models = wan16 if channels == 16 else tiny_wan_encoders(tmp_path / "wan48", channels=48)
    clip = _clip(tmp_path / "clips", "one.mp4", "a red cat on sand", n=9, size=(40, 64))
    encoders = load_encoders(models, device="cpu", text_length=16)
    assert encoders.stride == (8 if channels == 16 else 16)
    clips, skipped = gather(tmp_path / "clips")
    result = encode(tmp_path / "cache", encoders, clips=clips, size=SIZE, frames=FRAMES, fps=FPS, progress=False)
    assert result.encoded == 1 and not skipped
    item = CachedSource(tmp_path / "cache")[0]

    frames, times = videoio.read(clip)  # the same frames, resized/cropped the same way, encoded by hand
    pixels = conform(frames, times, FPS, FRAMES, SIZE)
    assert pixels.shape == (3, FRAMES, *SIZE)
    vae = AutoencoderKLWan.from_pretrained(models / "vae")
    with torch.no_grad():
        z = vae.encode(pixels[None] * 2 - 1).latent_dist.mean[0]
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)
    expected = (z - mean) / std
    assert item["latents"].shape == (channels, 2, SIZE[0] // encoders.stride, SIZE[1] // encoders.stride)
    torch.testing.assert_close(item["latents"], expected, rtol=1e-4, atol=1e-5)

    tokenizer, umt5 = (
        AutoTokenizer.from_pretrained(models / "tokenizer"),
        UMT5EncoderModel.from_pretrained(models / "text_encoder"),
    )
    ids = tokenizer(["a red cat on sand"], return_tensors="pt").input_ids  # 5 words + </s>
    with torch.no_grad():
        hidden = umt5(ids).last_hidden_state[0]
    torch.testing.assert_close(item["context"][:6], hidden, rtol=1e-4, atol=1e-5)
    assert item["context"][6:].abs().sum() == 0 and item["negative_context"].abs().sum() > 0


def test_resume_after_an_interrupt_skips_finished_clips(tmp_path, wan16):
    for i in range(5):
        _clip(tmp_path / "clips", f"c{i}.mp4", f"a cat number {i}", seed=i)
    encoders = load_encoders(wan16, device="cpu", text_length=16)
    real, calls = encoders.vae.encode, []

    def dies_on_the_fourth(video):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C; a SIGKILL leaves the same files (shards are renamed into place)
        return real(video)

    encoders.vae.encode = dies_on_the_fourth
    clips, _ = gather(tmp_path / "clips")
    opts = dict(size=SIZE, frames=FRAMES, fps=FPS, shard_size=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        encode(tmp_path / "cache", encoders, clips=clips, **opts)
    assert len(CachedSource(tmp_path / "cache")) == 3  # the finished shards survive
    (tmp_path / "cache" / ".shard-00003.safetensors.part").write_bytes(b"half a shard")  # what a kill leaves
    encoders.vae.encode = real
    _clip(tmp_path / "clips", "new.mp4", "a new dog", seed=9)  # added meanwhile
    clips, _ = gather(tmp_path / "clips")
    result = encode(tmp_path / "cache", encoders, clips=clips, **opts)
    assert (result.encoded, result.already) == (3, 3)
    cache = CachedSource(tmp_path / "cache")
    paths = [Path(r["path"]).name for s in cache.manifest["shards"] for r in s["records"]]
    assert sorted(paths) == ["c0.mp4", "c1.mp4", "c2.mp4", "c3.mp4", "c4.mp4", "new.mp4"] and len(cache) == 6
    assert all(cache[i]["latents"].abs().sum() > 0 for i in range(6))
    again = encode(tmp_path / "cache", encoders, clips=clips, **opts)  # nothing left to do
    assert (again.encoded, again.already) == (0, 6)
    _clip(tmp_path / "clips", "new.mp4", "a new dog", seed=10)  # rewritten: a new version of the same path
    lines = []
    changed = encode(tmp_path / "cache", encoders, clips=gather(tmp_path / "clips")[0], log=lines.append, **opts)
    assert (changed.encoded, changed.already) == (1, 5) and any("new.mp4: changed since encoded" in x for x in lines)
    with pytest.raises(ConfigError, match="other settings.*frames.*--overwrite"):
        encode(tmp_path / "cache", encoders, clips=clips, **{**opts, "frames": 1})
    clips, _ = gather(tmp_path / "clips")
    fresh = encode(tmp_path / "cache", encoders, clips=clips, overwrite=True, **{**opts, "frames": 1})
    assert fresh.encoded == 6 and CachedSource(tmp_path / "cache").shapes["latents"][1] == 1


def test_each_bad_input_is_skipped_with_its_reason(tmp_path, wan16, capsys):
    clips = tmp_path / "clips"
    _clip(clips, "good.mp4", "a red cat")
    _clip(clips, "wide.mp4", "a blue dog", size=(16, 96))  # 6:1, no bucket near it
    _clip(clips, "short.mp4", "a cat", n=2)
    _clip(clips, "uncaptioned.mp4", None)
    _clip(clips, "blank.mp4", "  \n")
    (clips / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 20)
    (clips / "corrupt.txt").write_text("a dog")
    out = tmp_path / "cache"
    assert _run(clips, wan16, out, "--bucket", "--size", "32x48") == 0
    lines = capsys.readouterr()
    text = lines.out + lines.err
    reasons = {Path(s["path"]).name: s["reason"] for s in map(json.loads, (out / "skipped.jsonl").open())}
    assert set(reasons) == {"wide.mp4", "short.mp4", "uncaptioned.mp4", "blank.mp4", "corrupt.mp4"}
    assert "no caption" in reasons["uncaptioned.mp4"] and "uncaptioned.txt" in reasons["uncaptioned.mp4"]
    assert "empty caption" in reasons["blank.mp4"]
    assert "too short" in reasons["short.mp4"] and "needs 5" in reasons["short.mp4"]
    assert "no bucket" in reasons["wide.mp4"] and "unreadable" in reasons["corrupt.mp4"]
    for name, reason in reasons.items():  # one line each, naming the file and the reason
        assert any(name in line and reason in line for line in text.splitlines()), (name, text)
    assert "encoded 1 samples" in text and "skipped 5" in text
    [bucket] = [p for p in out.iterdir() if p.is_dir()]
    assert bucket.name == "32x48" and len(CachedSource(bucket)) == 1


def test_clear_errors_for_mixed_sizes_missing_encoders_and_pickles(tmp_path, wan16, capsys):
    _clip(tmp_path / "mixed", "a.mp4", "a cat", size=(32, 48))
    _clip(tmp_path / "mixed", "b.mp4", "a dog", size=(48, 32))
    assert _run(tmp_path / "mixed", wan16, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "mixed resolutions" in err and "a.mp4" in err and "b.mp4" in err and "--bucket" in err
    assert not (tmp_path / "out" / "manifest.json").exists()

    partial = tmp_path / "partial"
    (partial / "vae").mkdir(parents=True)
    (partial / "vae" / "config.json").write_text("{}")
    assert _run(tmp_path / "mixed", partial, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "missing the text encoder" in err and str(partial / "text_encoder") in err
    assert main(["encode", "--prompts", str(tmp_path / "p.txt"), "--models", str(tmp_path), "--out", "x"]) == 2
    assert "missing the text encoder" in capsys.readouterr().err

    official = tmp_path / "Wan2.1-T2V-1.3B"  # the Wan-AI layout: pickled VAE and umT5
    official.mkdir()
    (official / "Wan2.1_VAE.pth").write_bytes(b"not unpickled")
    with pytest.raises(ConfigError, match="missing the VAE.*official Wan layout.*-Diffusers"):
        load_encoders(official, device="cpu")
    pth = tmp_path / "wan_2.1_vae.pth"
    pth.write_bytes(b"not unpickled")
    with pytest.raises(FormatError, match="never unpickles.*wan_2.1_vae.safetensors"):
        load_encoders(wan16, vae=pth, device="cpu")


def test_a_single_file_vae_offline_says_what_it_needs(tmp_path, wan16, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    comfy = tmp_path / "wan_2.1_vae.safetensors"  # what diffusers recognises as a Wan VAE; its config is on the Hub
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1)}, str(comfy))
    with pytest.raises(FormatError, match="single-file VAE.*Fix: pass --vae a Diffusers vae/ folder"):
        load_encoders(wan16, vae=comfy, device="cpu")


def test_prompts_make_an_embeddings_only_cache(tmp_path, wan16):
    (tmp_path / "p.txt").write_text("a red cat\n\nthe city street at night\n")
    out = tmp_path / "prompts"
    args = ["encode", "--prompts", str(tmp_path / "p.txt"), "--models", str(wan16), "--out", str(out)]
    assert main([*args, "--text-length", "16", "--negative", "rain"]) == 0
    cache = CachedSource(out)
    assert cache.kind == "prompts" and len(cache) == 2 and set(cache.shapes) == {"context", "negative_context"}
    encoders = load_encoders(wan16, device="cpu", text_length=16, need_vae=False)
    torch.testing.assert_close(cache[1]["context"], encoders.text(["the city street at night"])[0])
    torch.testing.assert_close(cache[0]["negative_context"], encoders.text(["rain"])[0])
    assert [json.loads(line)["reason"] for line in (out / "skipped.jsonl").open()] == ["empty prompt"]

    from wanlite.testing import random_wan, tiny_spec
    from wanlite.train import DistillConfig, distill

    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"), data=str(out), objective="dmd", steps=2, batch_size=1, val_samples=1,
        val_every=0, checkpoint_every=-1, progress=False, latent_shape=(16, 1, 4, 4), student_steps=2,
    )  # fmt: skip
    teacher, student = random_wan(tiny_spec("t2v", num_layers=2), seed=0), random_wan(tiny_spec(num_layers=1), seed=1)
    losses = [r for r in distill(cfg, teacher=teacher, student=student).metrics() if "loss" in r]
    assert losses and all(math.isfinite(r["loss"]) for r in losses)  # data-free: prompts are all it needs


def test_models_from_a_hub_id_offline(tmp_path, wan16, monkeypatch):
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "repo"
    shutil.copytree(wan16, repo)
    (repo / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    storage = tmp_path / "hub" / "models--org--wan-tiny"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text("a" * 40)
    shutil.copytree(repo, storage / "snapshots" / ("a" * 40))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    encoders = load_encoders("org/wan-tiny", device="cpu", text_length=16)
    direct = load_encoders(wan16, device="cpu", text_length=16)
    torch.testing.assert_close(encoders.text(["a red cat"]), direct.text(["a red cat"]))
    with pytest.raises(FormatError, match="not .*in the local cache"):
        load_encoders("org/not-cached", device="cpu")


def test_toy_encode_is_the_toy_world_cache(tmp_path):
    from wanlite import runs, toy

    assert main(["encode", "--toy", "6", "--out", str(tmp_path / "toy"), "--shard-size", "4"]) == 0
    cache = CachedSource(tmp_path / "toy")
    caps = toy.captions()
    expected = toy.load_vae().encode(toy.batch(caps[:6], list(range(6))))
    torch.testing.assert_close(torch.stack([cache[i]["latents"] for i in range(6)]), expected)
    torch.testing.assert_close(cache[5]["context"], toy.encode_text([caps[5]])[0])
    torch.testing.assert_close(cache[0]["negative_context"], toy.encode_text([""])[0])
    assert runs.toy_data(tmp_path / "run", 6) == tmp_path / "run" / "data"  # what notebook 02 trains on: the same
    assert all(torch.equal(CachedSource(tmp_path / "run" / "data")[i]["latents"], cache[i]["latents"]) for i in [0, 5])


def test_conform_resamples_resizes_and_crops_like_the_arithmetic_says():
    frames = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 32, 48, 3).clone()
    frames[:, :, :8] = 255  # a left band the centre crop to 32x32 removes
    times = torch.arange(12, dtype=torch.float64) / 16  # 16 fps source
    clip = conform(frames, times, fps=8.0, n=5, size=(32, 32))  # 8 fps: every other frame
    assert clip.shape == (3, 5, 32, 32)
    torch.testing.assert_close(clip[0, :, 0, 0] * 255, torch.tensor([0.0, 2, 4, 6, 8]))
    assert clip.max() * 255 < 9  # the band is cropped away: 48 wide -> 32, 8 px each side
    later = conform(frames, times, fps=8.0, n=1, size=(32, 32), start=5)
    assert round(float(later[0, 0, 0, 0]) * 255) == 10
    from wanlite.train.encode import windows

    assert windows(times, 8.0, 5) == (1, 6) and windows(times, 8.0, 3, split=9) == (2, 6)


def test_split_cuts_a_long_clip_into_samples(tmp_path, wan16):
    _clip(tmp_path / "clips", "long.mp4", "a red cat", n=21)  # 21 frames at 8 fps: 4 samples of 5
    encoders = load_encoders(wan16, device="cpu", text_length=16)
    clips, _ = gather(tmp_path / "clips")
    result = encode(tmp_path / "c", encoders, clips=clips, size=SIZE, frames=FRAMES, fps=FPS, split=8, progress=False)
    cache = CachedSource(tmp_path / "c")
    assert result.encoded == 4 and [r["window"] for r in cache.manifest["shards"][0]["records"]] == [0, 1, 2, 3]
    frames, times = videoio.read(clips[0].path)
    third = encoders.vae.encode(conform(frames, times, FPS, FRAMES, SIZE, start=2 * FRAMES)[None])[0]
    torch.testing.assert_close(cache[2]["latents"], third)
    assert not torch.allclose(cache[1]["latents"], cache[2]["latents"])


KILLED = """
import sys, time, torch
torch.set_num_threads(1)
from wanlite import runs
from wanlite.train.encode import encode
encoders = runs.toy_encoders()
real = encoders.vae.encode
def slow(video):
    time.sleep(0.15)
    return real(video)
encoders.vae.encode = slow
encode(sys.argv[1], encoders, clips=runs.toy_clips(40), batch=1, shard_size=1, progress=False, **runs.toy_settings())
"""


def test_a_sigkilled_run_keeps_its_finished_shards_and_the_next_run_continues(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from wanlite import runs

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(out)], env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.json").is_file() and CachedSource(out).manifest["count"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the encoder ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(CachedSource(out))
    assert 3 <= kept < 40
    result = runs.encode_toy(out, 40, progress=False, log=lambda line: None)
    assert (result.already, result.encoded) == (kept, 40 - kept)
    cache = CachedSource(out)
    paths = [r["path"] for s in cache.manifest["shards"] for r in s["records"]]
    assert paths == [f"toy world clip {i}" for i in range(40)]  # each clip once, in order
    fresh = runs.encode_toy(tmp_path / "fresh", 40, progress=False, log=lambda line: None)
    assert all(torch.equal(cache[i]["latents"], CachedSource(fresh.out)[i]["latents"]) for i in range(0, 40, 7))
