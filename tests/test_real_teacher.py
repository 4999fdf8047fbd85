"""A real teacher through the notebooks: a tiny random Wan on disk (not the toy branch), a tiny random umT5 and Wan
VAE built from config, real caches written by `wanlite encode`; 01 -> 05 run by the pipeline. Checks what a user
with real weights relies on: contexts are the encoder's embeddings of the given prompts, 05 decodes through the
VAE, the exports carry a small provenance, a changed recipe under the same run is refused, the console shows
progress. Also: the pruning record of a width-pruned student with thousands of kept indices stays out of the
metadata and still comes back exactly from every layout."""

from __future__ import annotations

import json
import os

import pytest
import torch

from wanlite import runs
from wanlite.pipeline import run_pipeline
from wanlite.testing import random_wan, tiny_spec, tiny_wan_encoders

PROMPTS = ["a red cat walking on grass", "the city street at night rain"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny teacher in the official layout, its encoders, a latents cache and a prompts cache."""
    from wanlite.formats import save_wan
    from wanlite.train.encode import encode, load_encoders

    root = tmp_path_factory.mktemp("real")
    models = tiny_wan_encoders(root / "wan")
    save_wan(random_wan(tiny_spec(num_layers=2), seed=3), root / "teacher")
    encoders = load_encoders(models, device="cpu", text_length=16)
    quiet = dict(progress=False, log=lambda line: None)
    encode(root / "data", encoders, clips=runs.toy_clips(6), **runs.toy_settings(), **quiet)  # 17 x 64 x 64 clips
    encode(root / "prompts", encoders, prompts=PROMPTS, **quiet)
    return {"root": root, "models": models, "teacher": root / "teacher", "encoders": encoders}


def _params(real, **more) -> dict:
    return {
        "teacher_path": str(real["teacher"]),
        "data": str(real["root"] / "data"),
        "prompts_cache": str(real["root"] / "prompts"),
        "vae": str(real["models"] / "vae"),
        "prompts": PROMPTS,
        "num_blocks": 1,
        "num_heads": 1,
        "ffn_dim": 256,
        "calibration_prompts": 2,
        "steps": 4,
        "warmup_steps": 1,
        "batch_size": 2,
        "val_every": 2,
        "checkpoint_every": 2,
        "frames": 5,
        "height": 32,
        "width": 32,
        "sample_steps": 2,
        "repeats": 1,
        **more,
    }


def test_contexts_are_the_encoders_embeddings_of_each_prompt(real, capsys):
    from wanlite.formats import load_wan

    teacher = load_wan(real["teacher"])
    path = str(real["teacher"])
    cached = runs.conditioning(teacher, path, PROMPTS, prompts_cache=real["root"] / "prompts")
    direct = real["encoders"].text(PROMPTS)  # the cache was encoded with 16 tokens, the teacher takes 512
    assert cached.contexts.shape == (2, 512, 4096) and cached.negative.shape == (1, 512, 4096)
    torch.testing.assert_close(cached.contexts[:, :16], direct)
    assert not cached.contexts[:, 16:].any()  # zero padding, as Wan's pipelines pad umT5's output
    assert cached.labels == PROMPTS and not cached.random
    assert not torch.allclose(cached.contexts[0], cached.contexts[1])  # each prompt its own embedding
    one = runs.conditioning(teacher, path, PROMPTS[::-1], prompts_cache=real["root"] / "prompts")
    torch.testing.assert_close(one.contexts, cached.contexts.flip(0))  # picked by caption, not by position

    live = runs.conditioning(teacher, path, ["a blue dog on sand", "a cat"], text_encoder=str(real["models"]))
    assert live.contexts.shape[1] == 512  # padded to the teacher's text_len, as Wan's pipelines do
    from wanlite.train.encode import WAN_NEGATIVE, load_encoders

    full = load_encoders(real["models"], device="cpu", need_vae=False)  # 512 tokens, like the teacher's text_len
    torch.testing.assert_close(live.contexts, full.text(["a blue dog on sand", "a cat"]))
    torch.testing.assert_close(live.negative, full.text([WAN_NEGATIVE]))
    torch.testing.assert_close(cached.contexts, full.text(PROMPTS))  # the padded cache = umT5 at 512 tokens
    other = runs.conditioning(teacher, path, ["the street", "rain at night"], text_encoder=str(real["models"]))
    assert not torch.allclose(live.contexts, other.contexts)  # two prompt lists of one length differ

    from wanlite.errors import ConfigError

    with pytest.raises(ConfigError, match="no embedding for \\['a dog'\\].*wanlite encode --prompts"):
        runs.conditioning(teacher, path, ["a dog"], prompts_cache=real["root"] / "prompts")
    capsys.readouterr()
    made = runs.conditioning(teacher, path, PROMPTS)  # nothing to embed with: random, and it says so
    assert made.random and made.labels == ["random context #0", "random context #1"]
    assert "WARNING" in capsys.readouterr().out


def test_the_notebooks_run_a_real_teacher_end_to_end(real, tmp_path, capsys, monkeypatch):
    from wanlite.errors import WanliteError
    from wanlite.formats import inspect_wan

    params = _params(real)
    monkeypatch.chdir(tmp_path)  # a relative runs_dir, as `python -m wanlite.pipeline` uses (runs/)
    params["data"] = os.path.relpath(params["data"], tmp_path)  # relative to here, not to notebooks/
    result = run_pipeline("tiny", params, runs_dir=".", only=["01", "02", "03", "04", "05"], progress_every=1)
    out = capsys.readouterr().out
    run = tmp_path / "tiny"
    assert len(result.executed) == 5

    # the console shows progress while a notebook runs: which one, and 02's step out of its total
    assert "   02_distill: " in out and "/4" in out, out
    assert "parameters no notebook declares" not in out

    # 01 calibrated on the latents cache and recorded the recipe
    asked = json.loads((run / "recipe.json").read_text())["asked"]
    assert asked["data"] == str(real["root"] / "data") and asked["num_heads"] == 1  # made absolute for the kernel
    executed01 = (run / "01_init_from_teacher.ipynb").read_text()
    assert "calibration batch: latents of" in executed01 and "WARNING" not in executed01

    # 05: the prompts' own embeddings (rows labelled by them), decoded through the VAE, where it measured
    metrics = json.loads((run / "compare" / "metrics.json").read_text())
    assert metrics["prompts"] == PROMPTS
    assert "pixel_psnr_db" in metrics["summary"]
    assert any("measured on cpu in float32" in n for n in metrics["notes"])
    assert any("prompts cache" in n for n in metrics["notes"])

    # exports: small provenance, the full record beside them; 04 left no fp32 copy behind
    for layout in ("wan", "diffusers"):
        assert (run / "export" / layout / "pruning.json").is_file()
    [comfy] = (run / "export" / "comfyui").glob("*.safetensors")
    meta = inspect_wan(comfy).metadata
    assert sum(map(len, meta.values())) < 20_000, {k: len(v) for k, v in meta.items()}
    assert not list(run.glob(".comfyui_fp32-*")) and not (run / "export" / "comfyui_fp32").exists()

    # the same recipe again: 01 keeps its student; another recipe under this run: refused, naming the fix
    before = (run / "student_init" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    run_pipeline("tiny", params, runs_dir=tmp_path, only=["01"])
    assert (run / "student_init" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(WanliteError, match="01_init_from_teacher.ipynb failed"):
        run_pipeline("tiny", {**params, "num_heads": 2}, runs_dir=tmp_path, only=["01"])
    failed = (run / "01_init_from_teacher.ipynb").read_text()
    assert "another recipe" in failed and "num_heads: 1 -> 2" in failed and "overwrite=True" in failed
    assert inspect_wan(run / "student_init").spec.num_heads == 1  # untouched
    assert (run / "distill" / "checkpoints").is_dir()  # and the old run's checkpoints are still there

    # overwrite with a mistyped prompts cache: refused before the old run is cleared, not after
    typo = {**params, "num_heads": 2, "overwrite": True, "data": "", "prompts_cache": str(tmp_path / "typo")}
    with pytest.raises(WanliteError, match="01_init_from_teacher.ipynb failed.*ConfigError"):
        run_pipeline("tiny", typo, runs_dir=tmp_path, only=["01"])
    assert "prompts_cache=" in (run / "01_init_from_teacher.ipynb").read_text()
    assert inspect_wan(run / "student_init").spec.num_heads == 1 and (run / "distill" / "checkpoints").is_dir()
    assert json.loads((run / "recipe.json").read_text())["asked"] == asked


def test_a_distillation_of_another_student_is_refused(tmp_path):
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.errors import DestinationExistsError

    teacher = random_wan(tiny_spec(num_layers=2), seed=0)
    first = WanLiteStudent.from_teacher(teacher, Recipe(num_blocks=1, width_selection="magnitude"))
    runs.claim_distill(tmp_path, first)
    runs.claim_distill(tmp_path, first)  # the same student again: fine (a resume)
    other = WanLiteStudent.from_teacher(teacher, Recipe(num_blocks=2, width_selection="magnitude"))
    with pytest.raises(DestinationExistsError, match="another student.*Fix: a new run name"):
        runs.claim_distill(tmp_path, other)
    # a distillation begun before origin.json existed: the pruning.json `distill` wrote tells whose it is
    (tmp_path / "distill" / "origin.json").unlink()
    (tmp_path / "distill" / "pruning.json").write_text(first.pruning.to_json())
    with pytest.raises(DestinationExistsError, match="another student.*pruning.json"):
        runs.claim_distill(tmp_path, other)
    runs.claim_distill(tmp_path, first)
    assert json.loads((tmp_path / "distill" / "origin.json").read_text())["student"] == first.pruning.sha256()


def test_02_starts_from_a_distilled_student_of_the_same_recipe_only(tmp_path):
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.errors import ConfigError

    teacher = random_wan(tiny_spec(num_layers=2), seed=0)
    recipe = Recipe(num_blocks=1, width_selection="magnitude")
    init = WanLiteStudent.from_teacher(teacher, recipe)
    init.save_pretrained(tmp_path / "run" / runs.STUDENT_INIT)
    trained = WanLiteStudent.from_teacher(teacher, recipe)
    with torch.no_grad():
        trained.proj_out.weight.add_(1.0)  # stands for a distilled student of the same recipe
    trained.save_pretrained(tmp_path / "guided")
    assert torch.equal(runs.initial_student(tmp_path / "run").proj_out.weight, init.proj_out.weight)
    started = runs.initial_student(tmp_path / "run", start_from=str(tmp_path / "guided"))
    assert torch.equal(started.proj_out.weight, trained.proj_out.weight)
    other = WanLiteStudent.from_teacher(teacher, Recipe(num_blocks=2, width_selection="magnitude"))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="pruned differently.*Fix: start from a student of this run's recipe"):
        runs.initial_student(tmp_path / "run", start_from=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="no student there"):
        runs.initial_student(tmp_path / "run", start_from=str(tmp_path / "nothing"))


def test_overwrite_replaces_the_old_recipes_artifacts(tmp_path):
    from wanlite.errors import DestinationExistsError

    assert runs.claim_recipe(tmp_path, {"num_blocks": 1})
    for name in ("student_init", "distill/checkpoints", "export/wan"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "student_init" / "config.json").write_text("{}")
    assert not runs.claim_recipe(tmp_path, {"num_blocks": 1})  # same recipe: kept
    with pytest.raises(DestinationExistsError, match="num_blocks: 1 -> 2"):
        runs.claim_recipe(tmp_path, {"num_blocks": 2})
    assert (tmp_path / "distill" / "checkpoints").is_dir()
    assert not runs.claim_recipe(tmp_path, {"num_blocks": 1}, overwrite=True)  # same recipe: overwrite wipes nothing
    assert (tmp_path / "distill" / "checkpoints").is_dir()
    assert runs.claim_recipe(tmp_path, {"num_blocks": 2}, overwrite=True)
    assert not (tmp_path / "distill").exists() and not (tmp_path / "student_init").exists()
    assert json.loads((tmp_path / "recipe.json").read_text())["asked"] == {"num_blocks": 2}


def test_provenance_stays_small_for_thousands_of_kept_indices(tmp_path, capsys):
    """A width-pruned student of a teacher with a 1.3B-like FFN (8960 neurons, 4 blocks): ~18k kept indices. The
    metadata holds a summary and hash (plus the compact record only under 64 KB), the full record sits beside the
    weights, and every layout loads `student.pruning` back exactly."""
    from wanlite.cli import main
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.formats import inspect_wan, load_wan, save_wan
    from wanlite.formats.records import INLINE_LIMIT

    teacher = random_wan(tiny_spec(num_layers=4, ffn_dim=8960), seed=0)
    student = WanLiteStudent.from_teacher(
        teacher, Recipe(num_blocks=4, num_heads=1, ffn_dim=4480, width_selection="magnitude")
    )
    pruning = student.pruning
    assert sum(map(len, pruning.kept_ffn)) == 4 * 4480
    assert len(pruning.to_json()) > 80_000  # the plain record: every index written out
    paths = {
        "wan": save_wan(student, tmp_path / "wan").path,
        "diffusers": save_wan(student, tmp_path / "diffusers", layout="diffusers").path,
        "comfyui": save_wan(student, tmp_path / "c.safetensors", layout="comfyui").path,
    }
    for layout, path in paths.items():
        source = inspect_wan(path)
        assert sum(len(k) + len(v) for k, v in source.metadata.items()) < INLINE_LIMIT, layout
        assert source.pruning == pruning, layout
        assert load_wan(path).pruning == pruning, layout
        assert WanLiteStudent.from_pretrained(path).pruning == pruning, layout
    assert json.loads((tmp_path / "wan" / "pruning.json").read_text())["kept_ffn"][0][:3] == pruning.kept_ffn[0][:3]
    assert main(["inspect", str(paths["wan"])]) == 0
    short = capsys.readouterr().out
    assert len(short) < 4000 and "ffn 8960 -> 4480" in short
    assert main(["inspect", str(paths["wan"]), "--full"]) == 0
    assert len(capsys.readouterr().out) > len(pruning.to_json())  # --full: the whole record


def test_a_record_over_the_limit_travels_beside_the_comfyui_file(tmp_path, monkeypatch):
    """Above INLINE_LIMIT (a width-pruned 14B student's compact record is ~100 KB) the single file holds a
    summary, the hash and a pointer; `NAME.pruning.json` beside it holds the record, and loads check the hash."""
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.errors import FormatError
    from wanlite.formats import inspect_wan, load_wan, records, save_wan

    monkeypatch.setattr(records, "INLINE_LIMIT", 500)  # this student's compact record is ~1 KB
    teacher = random_wan(tiny_spec(num_layers=2), seed=0)
    student = WanLiteStudent.from_teacher(teacher, Recipe(num_heads=1, ffn_dim=256, width_selection="magnitude"))
    export = save_wan(student, tmp_path / "s.safetensors", layout="comfyui")
    sidecar = tmp_path / "s.pruning.json"
    assert sidecar.name in export.files and sidecar.is_file()
    entry = json.loads(inspect_wan(export.path).metadata["wanlite.pruning"])
    assert entry["file"] == sidecar.name and "record" not in entry and entry["summary"]["ffn"] == "512 -> 256"
    assert load_wan(export.path).pruning == student.pruning
    other = WanLiteStudent.from_teacher(teacher, Recipe(num_heads=1, ffn_dim=128, width_selection="magnitude"))
    sidecar.write_text(other.pruning.to_json())  # a record of another export
    with pytest.raises(FormatError, match="does not match the pruning hash"):
        load_wan(export.path)


def test_progress_lines_name_the_notebook_step_total_and_eta(tmp_path):
    import time

    from wanlite.pipeline import Progress

    metrics = tmp_path / "metrics.jsonl"
    watch = Progress("02_distill", metrics, 100, every=60)
    assert watch.line().endswith("running")  # no metrics yet
    metrics.write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")
    assert "step 10/100" in watch.line()
    time.sleep(0.05)
    metrics.write_text(json.dumps({"step": 10}) + "\n" + json.dumps({"step": 30}) + "\n")
    line = watch.line()
    assert "step 30/100 (30%)" in line and "steps/s, ETA " in line, line


def test_latest_full_checkpoint_plus_weights_only_snapshots(tmp_path):
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.formats import load_wan
    from wanlite.train import DistillConfig, distill

    teacher = random_wan(tiny_spec(num_layers=2), seed=0)
    student = WanLiteStudent.from_teacher(teacher, Recipe(num_blocks=1, width_selection="magnitude"))
    cfg = DistillConfig(
        run_dir=str(tmp_path / "run"), steps=3, batch_size=1, val_samples=1, val_every=0, checkpoint_every=1,
        keep_checkpoints=1, snapshot_weights=True, progress=False, latent_shape=(16, 1, 4, 4), synthetic_samples=4,
    )  # fmt: skip
    result = distill(cfg, teacher=teacher, student=student)
    run = tmp_path / "run"
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["step-0000003"]  # only the latest full one
    snapshots = sorted(p.name for p in (run / "snapshots").glob("*.safetensors"))
    assert snapshots == [f"step-000000{i}.safetensors" for i in (1, 2, 3)]
    last = load_wan(run / "snapshots" / snapshots[-1])
    for (name, a), b in zip(result.student.state_dict().items(), last.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), msg=name)  # the weights of that step, exactly
    assert last.pruning == student.pruning
    first = load_wan(run / "snapshots" / snapshots[0])
    assert not torch.equal(first.proj_out.weight, last.proj_out.weight)  # a history, not one file three times


def test_compare_cli_takes_a_prompts_cache_and_labels_random_contexts_as_such(real, tmp_path, capsys):
    from wanlite.cli import main
    from wanlite.compress import Recipe, WanLiteStudent

    student = WanLiteStudent.from_teacher(real["teacher"], Recipe(num_blocks=1, width_selection="magnitude"))
    student.save_pretrained(tmp_path / "student")
    common = [str(real["teacher"]), str(tmp_path / "student"), "--steps", "2", "--repeats", "1"]
    cache = ["--prompts-cache", str(real["root"] / "prompts"), "--vae", str(real["models"] / "vae")]
    assert main(["compare", *common, *cache, "--out", str(tmp_path / "cached")]) == 0
    metrics = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert metrics["prompts"] == PROMPTS and "pixel_psnr_db" in metrics["summary"]
    assert main(["compare", *common, "--out", str(tmp_path / "random")]) == 0
    assert "WARNING" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "random" / "metrics.json").read_text())
    assert metrics["prompts"] == ["random context #0", "random context #1"]
    assert any(n.startswith("WARNING: no prompt embeddings") for n in metrics["notes"])
    assert "random context #0" in (tmp_path / "random" / "report.md").read_text()


# ---------------------------------------------------------------- hostile input: clear errors, nothing written
def test_a_cache_that_does_not_fit_the_teacher_is_refused_naming_it(real, tmp_path):
    import re

    from wanlite import toy
    from wanlite.errors import ConfigError
    from wanlite.formats import load_wan
    from wanlite.train.encode import encode, load_encoders

    teacher, path = load_wan(real["teacher"]), str(real["teacher"])
    prompts, data = real["root"] / "prompts", real["root"] / "data"
    narrow = random_wan(tiny_spec(text_dim=2048))  # a teacher of another text width
    with pytest.raises(ConfigError, match="prompts_cache=.*4096 wide.*text_dim is 2048.*Fix: write one"):
        runs.conditioning(narrow, "teacher", PROMPTS, prompts_cache=prompts)
    with pytest.raises(ConfigError, match="data=.*4096 wide.*text_dim is 2048"):
        runs.prompt_batch(narrow, "teacher", 2, data=data)
    with pytest.raises(ConfigError, match="prompts_cache=.*4096 wide.*text_dim is 2048"):
        runs.check_data(prompts, "prompts_cache", narrow)  # 02, before training on it
    assert len(runs.check_data(data, "data", teacher)) == 6
    with pytest.raises(ConfigError, match="data=.*16 channels.*takes 48.*another VAE"):
        runs.prompt_batch(random_wan(tiny_spec("ti2v")), "teacher", 2, data=data)  # Wan2.2's 48-channel latents
    with pytest.raises(ConfigError, match="data=.*a 'prompts' cache.*give it as prompts_cache"):
        runs.prompt_batch(teacher, path, 2, data=prompts)  # a prompts cache holds no latents
    for nothing in (tmp_path / "nothing", real["models"]):  # no such folder; a model folder, not a cache
        with pytest.raises(ConfigError, match=re.escape(f"prompts_cache={nothing}: ") + ".*no manifest.json"):
            runs.conditioning(teacher, path, PROMPTS, prompts_cache=nothing)

    # a latents cache carries its captions' embeddings: usable as prompts_cache, rows named by its captions
    from_data = runs.conditioning(teacher, path, [], prompts_cache=data)
    assert from_data.labels == toy.captions()[:6] and from_data.contexts.shape == (6, 512, 4096)
    batch = runs.prompt_batch(teacher, path, 2, data=data)
    torch.testing.assert_close(batch["context"], from_data.contexts[:2])  # calibration sees the same contexts

    # longer than the teacher's 512 tokens: cut only when what goes is padding
    encoders = load_encoders(real["models"], device="cpu", need_vae=False, text_length=520)
    long = tmp_path / "long"
    encode(long, encoders, prompts=["a cat", " ".join(["rain"] * 515)], progress=False, log=lambda line: None)
    fits = runs.conditioning(teacher, path, ["a cat"], prompts_cache=long)
    torch.testing.assert_close(fits.contexts, encoders.text(["a cat"])[:, :512])
    with pytest.raises(ConfigError, match="tokens past 512.*Fix: encode them again with --text-length 512"):
        runs.conditioning(teacher, path, [], prompts_cache=long)

    with pytest.raises(ConfigError, match="text_encoder=.*no such folder, and not a Hub id.*Fix:"):
        runs.conditioning(teacher, path, PROMPTS, text_encoder=str(tmp_path / "no" / "umt5"))
    with pytest.raises(ConfigError, match="prompts is empty.*Fix: give the prompts"):
        runs.conditioning(teacher, path, [], text_encoder=str(real["models"]))
    with pytest.raises(ConfigError, match="prompts='a cat': expected a list of prompts.*Fix: a YAML list"):
        runs.conditioning(teacher, path, "a cat", prompts_cache=prompts)  # `--set prompts="a cat"`: not 5 letters

    # 01 checks the same, from the teacher's spec alone, before it claims the run
    spec = runs.teacher_spec(path)
    runs.check_sources(spec, data=data)
    runs.check_sources(spec, prompts_cache=prompts, prompts=PROMPTS)
    for bad, message in (
        (dict(data=prompts), "a 'prompts' cache"),
        (dict(prompts_cache=prompts, prompts=["a dog"]), "no embedding for"),
        (dict(text_encoder=str(tmp_path / "no" / "umt5"), prompts=PROMPTS), "no such folder"),
        (dict(text_encoder=str(real["models"])), "prompts is empty"),
    ):
        with pytest.raises(ConfigError, match=message):
            runs.check_sources(spec, **bad)


def test_compare_cli_refuses_bad_conditioning_with_exit_2_and_writes_nothing(real, tmp_path, capsys):
    from wanlite.cli import main
    from wanlite.compress import Recipe, WanLiteStudent

    student = WanLiteStudent.from_teacher(real["teacher"], Recipe(num_blocks=1, width_selection="magnitude"))
    student.save_pretrained(tmp_path / "student")
    common = [str(real["teacher"]), str(tmp_path / "student"), "--steps", "2", "--repeats", "1"]
    cases = {
        "a cache that is not there": (["--prompts-cache", str(tmp_path / "nope")], "prompts_cache="),
        "a prompt the cache lacks": (
            ["--prompts-cache", str(real["root"] / "prompts"), "--prompts", "a dog"],
            "no embedding for ['a dog']",
        ),
        "no umT5 there": (["--text-encoder", str(tmp_path / "no-umt5"), "--prompts", "a cat"], "no such folder"),
        "prompts for a real Wan, nothing to embed them": (["--prompts", "a cat"], "not a toy-world teacher"),
    }
    for case, (extra, message) in cases.items():
        out = tmp_path / "report"
        assert main(["compare", *common, *extra, "--out", str(out)]) == 2, case
        err = capsys.readouterr().err
        assert message in err and "Fix:" in err, (case, err)
        assert not out.exists(), case


def test_overwrite_removes_only_the_runs_stage_outputs_and_an_interrupted_one_is_never_resumed(tmp_path, monkeypatch):
    import shutil

    from wanlite.errors import ConfigError

    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        assert runs.claim_recipe(folder, {"num_blocks": 1})
        for name in ("student_init", "distill/checkpoints/step-1", "export/wan", "compare", "data"):
            (folder / name).mkdir(parents=True)
        (folder / "student_init" / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / "my_videos").mkdir()
    (run / "export" / "shared").symlink_to(other / "export", target_is_directory=True)  # a link to another run
    assert runs.claim_recipe(run, {"num_blocks": 2}, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["data", "my_videos", "notes.txt", "recipe.json"]
    assert (other / "export" / "wan").is_dir() and (other / "distill" / "checkpoints" / "step-1").is_dir()
    assert (other / "student_init" / "config.json").is_file()

    # an overwrite interrupted while deleting: the old distillation is already out of the way, never resumed
    (run / "distill" / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "student_init").mkdir()
    (run / "student_init" / "config.json").write_text("{}")

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", interrupted)
        with pytest.raises(KeyboardInterrupt):
            runs.claim_recipe(run, {"num_blocks": 3}, overwrite=True)
    assert not (run / "distill").exists() and not (run / "student_init").exists()
    assert json.loads((run / "recipe.json").read_text())["asked"] == {"num_blocks": 3}
    with pytest.raises(ConfigError, match="recipe.json records this run's recipe.*Fix: run 01 again"):
        runs.load_student(run, initial=True)  # 02 now: refused, not a default student under this recipe's name
    assert runs.claim_recipe(run, {"num_blocks": 3})  # 01 again: finishes deleting, then builds its student
    assert not (run / runs.REMOVING).exists() and (run / "notes.txt").read_text() == "mine"


def test_a_missing_or_edited_pruning_sidecar_is_a_clear_error_and_comfyui_still_loads_the_file(
    tmp_path, monkeypatch, capsys
):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from wanlite.cli import main
    from wanlite.compress import Recipe, WanLiteStudent
    from wanlite.errors import FormatError
    from wanlite.formats import comfy, load_wan, records, save_wan

    monkeypatch.setattr(records, "INLINE_LIMIT", 500)  # this student's compact record is ~1 KB: a sidecar
    teacher = random_wan(tiny_spec(num_layers=2), seed=0)
    student = WanLiteStudent.from_teacher(teacher, Recipe(num_heads=1, ffn_dim=256, width_selection="magnitude"))
    export = save_wan(student, tmp_path / "s.safetensors", layout="comfyui")
    sidecar = tmp_path / "s.pruning.json"
    record = sidecar.read_text()

    sidecar.unlink()  # the weights copied alone
    with pytest.raises(FormatError, match=r"s\.pruning\.json beside the weights.*missing\. Fix: copy s\.pruning"):
        load_wan(export.path)
    assert comfy.check(export.path).ok  # ComfyUI never reads it: the file still loads as Wan
    assert main(["inspect", str(export.path)]) == 2
    out, err = capsys.readouterr()
    assert "512 -> 256" in out and "ComfyUI" in out  # the summary and the verdict still show
    assert "s.pruning.json" in err and "Fix:" in err

    sidecar.write_text(record[: len(record) // 2])  # cut short
    with pytest.raises(FormatError, match=r"s\.pruning\.json is not a valid pruning record.*Fix: restore"):
        load_wan(export.path)

    sidecar.write_text(record)
    with safe_open(str(export.path), framework="pt") as f:
        metadata = f.metadata()
    entry = json.loads(metadata["wanlite.pruning"])
    (tmp_path / "sub").mkdir()
    save_file(
        load_file(export.path),
        tmp_path / "sub" / "t.safetensors",
        {**metadata, "wanlite.pruning": json.dumps({**entry, "file": "../s.pruning.json"})},
    )
    with pytest.raises(FormatError, match="not a file name beside the weights"):  # never read from elsewhere
        load_wan(tmp_path / "sub" / "t.safetensors")


def test_bad_progress_intervals_and_unknown_notebooks_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    from wanlite.errors import ConfigError
    from wanlite.pipeline import Progress, main

    monkeypatch.chdir(tmp_path)
    for bad in ("0", "-5", "nan", "inf"):
        assert main(["--run", "x", "--progress-every", bad]) == 2, bad
        assert "--progress-every" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="a number above 0"):
        run_pipeline("x", {}, runs_dir=tmp_path / "runs", progress_every=0)
    assert main(["--run", "x", "--only", "07"]) == 2
    assert "--only 07: no notebook" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

    metrics = tmp_path / "metrics.jsonl"
    watch = Progress("02_distill", metrics, 100, every=60)
    assert watch.line().endswith("running")  # no metrics.jsonl yet
    metrics.write_bytes(b'{"step": 3}\n{"step": 4, "note": "\xc3')  # a line being written, cut mid-character
    assert "step 3/100" in watch.line()
    metrics.write_bytes(b"")
    assert watch.line().endswith("running")
