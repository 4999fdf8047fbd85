"""Hub ids (`org/name`) like every diffusers model: from a Hugging Face cache laid out in a temp dir, offline, and
with only the transformer's files fetched. Nothing here reaches a network."""

import shutil
from pathlib import Path

import huggingface_hub
import pytest
from conftest import forward
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

from wanlite.cli import main
from wanlite.compress import WanLiteStudent
from wanlite.errors import FormatError
from wanlite.formats import load_wan, save_wan
from wanlite.runs import load_teacher

COMMIT, OLD = "a" * 40, "b" * 40


def pipeline_repo(folder: Path, model, sharded_and_fp16: bool = False) -> Path:
    """A diffusers pipeline repository: model_index.json, transformer/, and big files a loader must not fetch."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline", "transformer": ["diffusers", "x"]}')
    save_wan(model, folder / "transformer", layout="diffusers", max_shard_size="1MB" if sharded_and_fp16 else "10GB")
    if sharded_and_fp16:  # and an fp16-named variant beside the sharded weights
        fp16 = save_wan(model, folder / "fp16", layout="diffusers", variant="fp16").path
        shutil.move(fp16 / "diffusion_pytorch_model.fp16.safetensors", folder / "transformer")
        shutil.rmtree(fp16)
    for other in (
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/spiece.model",
    ):
        (folder / other).parent.mkdir(parents=True, exist_ok=True)
        (folder / other).write_bytes(b"not for the transformer")
    return folder


def cache_repo(cache: Path, repo: str, snapshots: dict) -> None:
    """Lay out `cache/models--org--name` as huggingface_hub does: refs/<branch> -> commit, snapshots/<commit>/."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    for (ref, commit), source in snapshots.items():
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
        shutil.copytree(source, storage / "snapshots" / commit)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import by huggingface_hub


def test_hub_ids_resolve_offline_from_the_cache_with_revision_and_subfolder(models, tmp_path, offline, monkeypatch):
    spec, model, inputs, reference = models["t2v"]
    _, other, _, other_reference = models["ti2v"]
    cache = tmp_path / "hub"
    cache_repo(
        cache,
        "org/wan-tiny",
        {
            ("main", COMMIT): pipeline_repo(tmp_path / "new", model),
            ("v0", OLD): pipeline_repo(tmp_path / "old", other),
        },
    )
    loaded = load_wan("org/wan-tiny", cache_dir=cache)
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6
    old = load_wan("org/wan-tiny", cache_dir=cache, revision="v0")
    assert old.config.out_channels == 48
    student = WanLiteStudent.from_pretrained("org/wan-tiny", subfolder="transformer", cache_dir=cache)
    assert type(student) is WanLiteStudent and (forward(student, inputs) - reference).abs().max() <= 1e-6
    assert student.config._name_or_path == "org/wan-tiny"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # what HF_HOME / HF_HUB_CACHE set
    assert load_teacher("org/wan-tiny").config.num_layers == spec.num_layers  # the notebooks' teacher_path
    assert main(["inspect", "org/wan-tiny", "--revision", "v0"]) == 0
    out = tmp_path / "old.safetensors"
    assert (
        main(["convert", "org/wan-tiny", str(out), "--layout", "comfyui", "--revision", "v0", "--dtype", "fp32"]) == 0
    )
    assert (forward(load_wan(out), models["ti2v"][2]) - other_reference).abs().max() <= 1e-6
    a14b = tmp_path / "a14b"  # Wan2.2 A14B: two experts in one repository
    for expert, kind in (("high_noise_model", "t2v"), ("low_noise_model", "ti2v")):
        save_wan(models[kind][1], a14b / expert)
    cache_repo(cache, "org/a14b", {("main", COMMIT): a14b})
    assert load_wan("org/a14b", cache_dir=cache, expert="low_noise").config.out_channels == 48
    with pytest.raises(FormatError, match="two experts"):
        load_wan("org/a14b", cache_dir=cache)
    with pytest.raises(FormatError, match="not .*in the local cache.*HF_HUB_OFFLINE"):
        load_wan("org/not-cached", cache_dir=cache)
    with pytest.raises(FormatError, match="not .*in the local cache"):
        WanLiteStudent.from_pretrained("org/wan-tiny", cache_dir=cache, local_files_only=True, revision="v9")


def test_only_the_transformers_files_are_fetched(models, tmp_path, monkeypatch):
    """A stand-in for the Hub that serves a local folder and honours allow_patterns exactly as huggingface_hub."""
    model, inputs, reference = models["t2v"][1:]
    remote = pipeline_repo(tmp_path / "remote", model, sharded_and_fp16=True)
    served = []

    def snapshot_download(repo_id, allow_patterns, cache_dir, **_):
        local = Path(cache_dir) / repo_id
        files = [str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote / name, local / name)
            served.append(name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = load_wan("org/big", cache_dir=tmp_path / "cache")
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6
    assert not [n for n in served if not n.startswith("transformer/") and n != "model_index.json"]
    assert not [n for n in served if ".fp16." in n]  # another variant's weights are not fetched
    assert any("-of-" in n for n in served)  # the shards are
    served.clear()
    load_wan("org/big", cache_dir=tmp_path / "cache2", variant="fp16")
    assert {n for n in served if n.endswith(".safetensors")} == {"transformer/diffusion_pytorch_model.fp16.safetensors"}
    served.clear()
    file = "transformer/diffusion_pytorch_model.fp16.safetensors"  # one file of a repository, as ComfyUI ships them
    one = load_wan("org/big", cache_dir=tmp_path / "c3", subfolder=file)
    assert (forward(one, inputs) - reference).abs().max() <= 1e-6
    assert served == [file]
