"""Hostile input, lost work and concurrency: every case a hostile user tried (issue 14), each refused with one
message naming the file, the field and the fix (exit 2 from the CLI), and nothing lost."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wanlite.cli import main as cli_main
from wanlite.errors import ConfigError, DestinationExistsError, FormatError, NonFiniteLossError, SpecError
from wanlite.formats import io as wio
from wanlite.formats import load_wan, save_wan
from wanlite.formats.io import read_header
from wanlite.testing import random_wan, tiny_spec
from wanlite.train import DistillConfig, distill, latest_checkpoint
from wanlite.train.data import SyntheticSource
from wanlite.train.rundir import RunLock

# ------------------------------------------------------------------ shared, built once


@pytest.fixture(scope="module")
def model():
    return random_wan(tiny_spec("t2v", num_layers=1), seed=3)


@pytest.fixture(scope="module")
def export(model, tmp_path_factory):
    """A wan-layout export and a ComfyUI file of the same tiny model."""
    root = tmp_path_factory.mktemp("exports")
    save_wan(model, root / "wan")
    save_wan(model, root / "one.safetensors", layout="comfyui", dtype="fp32")
    return root


def run(capsys, *argv) -> tuple[int, str]:
    """The CLI in-process: (exit status, stderr)."""
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file written byte by byte, so its header can lie."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def official_state(model) -> dict:
    from wanlite.formats.keys import to_official

    return {k: v.contiguous() for k, v in to_official(model.state_dict()).items()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ corrupt input that used to pass


def test_overlapping_data_offsets_are_refused_before_any_read(tmp_path, capsys):
    f = raw_safetensors(
        tmp_path / "overlap.safetensors",
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        },
        bytes(24),
    )
    with pytest.raises(FormatError, match="'b'.*overlaps"):
        read_header(f)
    code, err = run(capsys, "convert", f, tmp_path / "out", "--dtype", "bf16")
    assert code == 2 and "overlaps" in err and not (tmp_path / "out").exists()


def test_gap_between_data_offsets_is_refused(tmp_path):
    f = raw_safetensors(
        tmp_path / "gap.safetensors",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
        },
        bytes(20),
    )
    with pytest.raises(FormatError, match="'b'.*gap"):
        read_header(f)


def test_reversed_data_offsets_are_refused(tmp_path):
    f = raw_safetensors(
        tmp_path / "reversed.safetensors", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8)
    )
    with pytest.raises(FormatError, match="reversed data_offsets"):
        read_header(f)


def test_integer_weights_are_refused_not_exported_as_floats(model, tmp_path, capsys):
    state = official_state(model)
    state["head.head.weight"] = (state["head.head.weight"] * 100).to(torch.int32)
    save_file(state, str(tmp_path / "ints.safetensors"))
    code, err = run(capsys, "convert", tmp_path / "ints.safetensors", tmp_path / "out", "--dtype", "fp32")
    assert code == 2 and "head.head.weight" in err and "not floating point" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/etc/outside.safetensors"])
def test_shard_index_naming_a_file_outside_the_model_dir_is_refused(export, tmp_path, escape, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((export / "wan" / "config.json").read_text())
    weights = load_file(str(export / "wan" / "diffusion_pytorch_model.safetensors"))
    save_file(weights, str(tmp_path / "outside.safetensors"))  # a real file outside: it must not be read
    index = {"metadata": {}, "weight_map": {k: escape for k in weights}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    code, err = run(capsys, "inspect", folder)
    assert code == 2 and escape in err and "inside" in err


def test_shard_index_weight_map_that_is_not_an_object_exits_2(export, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((export / "wan" / "config.json").read_text())
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text('{"weight_map": ["a.safetensors"]}')
    code, err = run(capsys, "inspect", folder)
    assert code == 2 and "weight_map" in err and "index.json" in err


# ------------------------------------------------------------------ tracebacks where a message is promised


def test_config_json_that_is_valid_json_but_not_an_object_exits_2(export, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2, 3]")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        (export / "wan" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    code, err = run(capsys, "inspect", folder)
    assert code == 2 and "config.json" in err and "not an object" in err and "Fix:" in err


def test_safetensors_metadata_that_is_not_a_table_of_strings_exits_2(tmp_path, capsys):
    f = raw_safetensors(
        tmp_path / "meta.safetensors",
        {"__metadata__": ["not", "a", "table"], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        bytes(4),
    )
    code, err = run(capsys, "inspect", f)
    assert code == 2 and "__metadata__" in err and str(f) in err


def test_wanlite_spec_metadata_that_is_not_json_exits_2(model, tmp_path, capsys):
    save_file(official_state(model), str(tmp_path / "m.safetensors"), metadata={"wanlite.spec": "{not json"})
    code, err = run(capsys, "inspect", tmp_path / "m.safetensors")
    assert code == 2 and "wanlite.spec" in err and "Fix:" in err


def test_fifo_as_input_exits_2_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    code, err = run(capsys, "inspect", fifo)
    assert code == 2 and "FIFO" in err
    with pytest.raises(FormatError, match="FIFO"):
        read_header(fifo)  # opened directly, it would block forever


def test_device_file_as_input_exits_2(capsys):
    code, err = run(capsys, "convert", "/dev/zero", "/tmp/never-written", "--dtype", "bf16")
    assert code == 2 and "/dev/zero" in err and not Path("/tmp/never-written").exists()


def test_fp8_file_converted_without_dtype_never_tracebacks(model, tmp_path, capsys):
    state = {k: v.to(torch.float8_e4m3fn) for k, v in official_state(model).items()}
    save_file(state, str(tmp_path / "fp8.safetensors"))
    code, err = run(capsys, "convert", tmp_path / "fp8.safetensors", tmp_path / "out")
    if code == 0:  # a reader that dequantises fp8 on load: the export must then load
        assert load_wan(tmp_path / "out") is not None
    else:
        assert code == 2 and "--dtype" in err and "float8" in err


def test_read_only_destination_exits_2(export, capsys):
    code, err = run(capsys, "convert", export / "wan", "/proc/wanlite-cannot-write-here/out")
    assert code == 2 and "could not write" in err and "Fix:" in err


def test_full_disk_exits_2_and_keeps_the_old_export(model, export, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    out = tmp_path / "out"
    save_wan(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    code, err = run(capsys, "convert", export / "wan", out, "--overwrite")
    assert code == 2 and "No space left" in err and "free disk space" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and no temporary left behind


def test_destination_that_is_an_existing_non_safetensors_file_exits_2(export, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for extra in ([], ["--overwrite"]):
        code, err = run(capsys, "convert", export / "wan", notes, "--layout", "comfyui", *extra)
        assert code == 2 and "notes.txt" in err and "Fix:" in err
    assert notes.read_text() == "my notes"


def test_parent_of_destination_is_a_file_exits_2(export, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run(capsys, "convert", export / "wan", tmp_path / "file" / "out")
    assert code == 2 and "Fix:" in err and (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------ exports: nothing else deleted, never lost


def test_overwrite_refuses_a_directory_that_is_not_an_export(export, tmp_path, capsys):
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "config.json").write_text("{}")
    code, err = run(capsys, "convert", export / "wan", mine, "--layout", "wan", "--overwrite")
    assert code == 2 and "thesis.tex" in err and "did not write" in err
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_an_export_wanlite_wrote(model, export, tmp_path, capsys):
    out = tmp_path / "out"
    save_wan(random_wan(tiny_spec("t2v", num_layers=1), seed=9), out)
    code, _ = run(capsys, "convert", export / "wan", out, "--overwrite")
    assert code == 0
    new = load_wan(out).state_dict()
    assert all(torch.equal(v, new[k]) for k, v in model.state_dict().items())


def test_crash_during_the_swap_leaves_the_old_or_the_new_export(model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    old_model = random_wan(tiny_spec("t2v", num_layers=1), seed=9)
    save_wan(old_model, out)

    def killed(*args):
        raise KeyboardInterrupt  # the instant of the swap itself

    with monkeypatch.context() as m:
        m.setattr(wio, "_exchange", killed)
        with pytest.raises(KeyboardInterrupt):
            save_wan(model, out, overwrite=True)
    assert torch.equal(load_wan(out).proj_out.weight, old_model.proj_out.weight)  # the old one, whole

    def dies_after(path, *args, **kwargs):  # killed once the new one is in place, before the old is removed
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(wio.shutil, "rmtree", dies_after)
        with pytest.raises(KeyboardInterrupt):
            save_wan(model, out, overwrite=True)
    assert torch.equal(load_wan(out).proj_out.weight, model.proj_out.weight)  # the new one, whole


def test_crash_between_the_two_renames_of_the_fallback_swap_is_repaired_by_the_next_save(model, tmp_path):
    out = tmp_path / "out"
    save_wan(model, out)
    aside = tmp_path / f".out.wanlite-old-{dead_pid()}-0123abcd"  # what a SIGKILL between the renames leaves
    out.rename(aside)
    with pytest.warns(UserWarning, match="temporaries of killed"):
        save_wan(model, tmp_path / "other.safetensors", layout="comfyui")  # any later save in that folder
    assert not aside.exists() and torch.equal(load_wan(out).proj_out.weight, model.proj_out.weight)


def test_stale_temporaries_of_dead_processes_are_cleaned_and_live_ones_kept(model, tmp_path):
    dead, live = dead_pid(), os.getppid()
    stale_dir = tmp_path / f".out.wanlite-tmp-{dead}-00000000"
    stale_dir.mkdir()
    (stale_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")
    stale_file = tmp_path / f".x.safetensors.wanlite-tmp-{dead}-11111111"
    stale_file.write_bytes(b"partial")
    busy = tmp_path / f".y.wanlite-tmp-{live}-22222222"
    busy.mkdir()
    unrelated = tmp_path / ".my-hidden-notes"
    unrelated.write_text("keep")
    with pytest.warns(UserWarning, match="2 temporaries"):
        save_wan(model, tmp_path / "out")
    assert not stale_dir.exists() and not stale_file.exists()
    assert busy.is_dir() and unrelated.read_text() == "keep"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_get_the_usual_permissions(model, tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_wan(model, tmp_path / "wan")
        save_wan(model, tmp_path / "one.safetensors", layout="comfyui")
    finally:
        os.umask(previous)
    files = [*(tmp_path / "wan").iterdir(), tmp_path / "one.safetensors"]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}
    assert stat.S_IMODE((tmp_path / "wan").stat().st_mode) == 0o777 & ~umask


# ------------------------------------------------------------------ weak messages


def test_symlink_loop_is_called_a_loop(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code, err = run(capsys, "inspect", tmp_path / "a")
    assert code == 2 and "symlink loop" in err


def test_gguf_file_is_named_gguf_not_a_bad_safetensors(tmp_path, capsys):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    with pytest.raises(FormatError, match="GGUF"):
        read_header(f)
    code, err = run(capsys, "inspect", f)
    assert code == 2 and "gguf" in err.lower() and "not a valid safetensors" not in err


def test_inconsistent_comfyui_prefix_is_named_not_blamed_on_add_ons(model, tmp_path, capsys):
    items = enumerate(official_state(model).items())
    state = {("model.diffusion_model." + k if i % 2 else k): v for i, (k, v) in items}
    save_file(state, str(tmp_path / "merged.safetensors"))
    code, err = run(capsys, "inspect", tmp_path / "merged.safetensors")
    assert code == 2 and "prefix and the rest do not" in err and "add-on" not in err


def test_num_heads_error_names_the_config_file_and_the_fix_the_weights_dictate(export, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = json.loads((export / "wan" / "config.json").read_text()) | {"num_heads": 3}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        (export / "wan" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    code, err = run(capsys, "inspect", folder)
    assert code == 2 and str(folder / "config.json") in err and "num_heads" in err
    assert "set num_heads to 2" in err and "dim=" not in err.split("Fix:")[1].split("(")[0]


def test_mixed_dtype_file_is_said_aloud_when_converted(model, tmp_path):
    state = official_state(model)
    state = {k: (v.to(torch.bfloat16) if k.startswith("blocks.") else v) for k, v in state.items()}
    save_file(state, str(tmp_path / "mixed.safetensors"))
    with pytest.warns(UserWarning, match=r"mixes dtypes .*written as"):
        save_wan(load_wan(tmp_path / "mixed.safetensors"), tmp_path / "out")


def test_fp16_overflow_names_the_official_key_and_the_real_value(tmp_path):
    big = random_wan(tiny_spec("t2v", num_layers=1))
    with torch.no_grad():
        big.proj_out.weight[0, 0] = 1e6
    with pytest.raises(SpecError, match=r"head\.head\.weight exceeds the fp16 range \(1e\+06 > 65504\)"):
        save_wan(big, tmp_path / "out", dtype="fp16")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ distillation: run directories

SMALL = dict(
    steps=4,
    batch_size=2,
    val_samples=2,
    lr=1e-3,
    w_feat=0.1,
    log_every=1,
    val_every=0,
    checkpoint_every=1,
    keep_checkpoints=3,
    progress=False,
)


@pytest.fixture(scope="module")
def pair():
    return random_wan(tiny_spec("t2v", num_layers=2), seed=0), random_wan(tiny_spec("t2v", num_layers=1), seed=1)


def small_run(pair, run_dir, resume=False, **changes):
    teacher, student = pair
    cfg = DistillConfig(run_dir=str(run_dir), **{**SMALL, **changes})
    fresh = random_wan(tiny_spec("t2v", num_layers=1), seed=1)  # a checkpoint restores the trained weights
    data = SyntheticSource(n=12, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8)
    return distill(cfg, teacher=teacher, student=fresh, data=data, block_map=[1], resume=resume)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(pair, tmp_path_factory):
    """One finished 4-step run (checkpoints 2, 3, 4), copied by the tests that damage or extend it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    small_run(pair, run_dir)
    return run_dir


def copy_of(run_dir: Path, tmp_path) -> Path:
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def test_second_run_on_a_locked_run_dir_is_refused(pair, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    held = RunLock(tmp_path / "run").acquire()  # another run, alive, holds it
    try:
        with pytest.raises(DestinationExistsError, match=rf"in use by another run .*\"pid\": {os.getpid()}"):
            small_run(pair, tmp_path / "run")
        config = tmp_path / "c.yaml"
        DistillConfig(run_dir=str(tmp_path / "run")).to_yaml(config)
        code, err = run(capsys, "distill", "--config", config)
        assert code == 2 and "in use" in err
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written by either
    finally:
        held.release()
    small_run(pair, tmp_path / "run", steps=1)  # free again: it runs, and releases the lock when done
    assert (tmp_path / "run" / ".lock").read_text() == ""


def test_stale_lock_of_a_dead_process_is_reported_and_taken_over(pair, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": "here"}))
    with pytest.warns(UserWarning, match="stale lock of a run that died"):
        small_run(pair, tmp_path / "run", steps=1)
    assert (tmp_path / "run" / "student").is_dir()


def test_resume_with_set_lr_applies_the_new_lr_and_config_yaml_says_so(pair, finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    small_run(pair, run_dir, resume=True, steps=6, lr=1e-4)
    rows = metrics(run_dir)
    assert [r["lr"] for r in rows if "loss" in r] == pytest.approx([1e-3] * 4 + [1e-4] * 2)
    event = next(r for r in rows if r.get("event") == "resumed")
    assert event["step"] == 4 and event["changed"]["lr"] == [1e-3, 1e-4] and event["changed"]["steps"] == [4, 6]
    saved = DistillConfig.from_yaml(run_dir / "config.yaml")
    assert saved.lr == 1e-4 and saved.steps == 6


def test_resume_with_a_changed_training_field_is_refused(pair, finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"w_feat: 0\.1 -> 0\.5.*Fix: drop those --set"):
        small_run(pair, run_dir, resume=True, steps=6, w_feat=0.5)
    assert (run_dir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbled"])
def test_incomplete_newest_checkpoint_is_skipped_for_the_previous_one(pair, finished, tmp_path, damage):
    run_dir = copy_of(finished, tmp_path)
    weights = run_dir / "checkpoints" / "step-0000004" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:  # the right size, unreadable bytes: found when restoring
        weights.write_bytes(b"\xff" * weights.stat().st_size)
    expected = {
        "missing": r"step-0000004: skipped, incomplete checkpoint \(model.safetensors is missing",
        "truncated": r"step-0000004: skipped, incomplete checkpoint \(model.safetensors is truncated",
        "garbled": r"step-0000004: skipped, cannot be restored",
    }[damage]
    with pytest.warns(UserWarning, match=expected):
        small_run(pair, run_dir, resume=True, steps=5)
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]  # continued from step 3: step 4 re-done once, nothing repeated
    assert latest_checkpoint(run_dir).name == "step-0000005"


def test_resume_with_fewer_steps_than_already_done_is_refused(pair, finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    with pytest.raises(ConfigError, match=r"steps=2, but the run is already at step 4 .*Fix: resume with steps >= 4"):
        small_run(pair, run_dir, resume=True, steps=2)


def test_resume_of_a_dmd_run_with_a_new_lr_is_refused(tmp_path):
    from wanlite.train.rundir import RunDir

    cfg = DistillConfig(run_dir=str(tmp_path / "run"), objective="dmd")
    (tmp_path / "run" / "checkpoints" / "step-0000002").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-0000002" / "progress.json").write_text('{"step": 2, "files": {}}')
    cfg.to_yaml(tmp_path / "run" / "config.yaml")
    with pytest.raises(ConfigError, match=r"changed lr: 1e-05 -> 0\.001"):  # the fake score's lr would stay old
        RunDir(cfg.run_dir, True, "dmd", config=cfg.replace(lr=1e-3))
    RunDir(cfg.run_dir, True, "dmd", config=cfg.replace(steps=2000)).close()  # steps alone may change


def test_resume_with_every_checkpoint_gone_is_refused_not_restarted(pair, finished, tmp_path):
    import shutil

    run_dir = copy_of(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    before = (run_dir / "metrics.jsonl").read_text()
    student = {p.name: p.read_bytes() for p in (run_dir / "student").iterdir()}
    with pytest.raises(ConfigError, match="no intact checkpoint is left.*Fix: choose a new run_dir"):
        small_run(pair, run_dir, resume=True)
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert {p.name: p.read_bytes() for p in (run_dir / "student").iterdir()} == student


def test_run_dir_holding_only_a_student_is_refused_without_resume(pair, model, tmp_path):
    save_wan(model, tmp_path / "run" / "student")
    with pytest.raises(DestinationExistsError, match="already holds a run \\(student\\)"):
        small_run(pair, tmp_path / "run")
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        small_run(pair, tmp_path / "run", resume=True)
    assert torch.equal(load_wan(tmp_path / "run" / "student").proj_out.weight, model.proj_out.weight)


class _Diverge:
    """After the 3rd optimiser step, one weight becomes huge but finite: the checkpoint of step 3 holds weights
    whose loss (step 4) is not finite, as a run blown up by too high an lr does."""

    def __init__(self, make_optimizer, at: int, value: float = 1e30):
        self.make, self.at, self.value = make_optimizer, at, value

    def __call__(self, *args, **kwargs):
        optimizer = self.make(*args, **kwargs)
        calls = {"n": 0}

        def hook(opt, *_):
            calls["n"] += 1
            if calls["n"] == self.at:
                with torch.no_grad():
                    opt.param_groups[0]["params"][-1].fill_(self.value)

        optimizer.register_step_post_hook(hook)
        return optimizer


def test_nan_stop_keeps_a_checkpoint_from_before_the_divergence(pair, tmp_path, monkeypatch):
    import wanlite.train.loop as loop

    with monkeypatch.context() as m:
        m.setattr(loop, "make_optimizer", _Diverge(loop.make_optimizer, at=3))
        with pytest.raises(NonFiniteLossError, match=r"step 4 .*before the divergence is .*step-0000002") as err:
            small_run(pair, tmp_path / "run", steps=6)
    assert "step-0000003 holds the weights that produced it" in str(err.value)
    assert latest_checkpoint(tmp_path / "run").name == "step-0000002"
    assert (tmp_path / "run" / "checkpoints" / "diverged-step-0000003").is_dir()
    result = small_run(pair, tmp_path / "run", resume=True, steps=6, lr=1e-4)  # the message's advice works
    assert all(torch.isfinite(p).all() for p in result.student.parameters())
    losses = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6] and all(r["loss"] < 1e6 for r in losses)


def test_nan_stop_says_plainly_when_no_checkpoint_predates_the_divergence(pair, tmp_path, monkeypatch):
    import wanlite.train.loop as loop

    monkeypatch.setattr(loop, "make_optimizer", _Diverge(loop.make_optimizer, at=1))
    with pytest.raises(NonFiniteLossError, match="no checkpoint from before the divergence exists"):
        small_run(pair, tmp_path / "run", steps=4)
    assert latest_checkpoint(tmp_path / "run") is None
    assert (tmp_path / "run" / ".lock").read_text() == ""  # the lock went with the failed run


def test_weights_that_an_update_made_infinite_are_never_checkpointed(pair, tmp_path, monkeypatch):
    import wanlite.train.loop as loop

    monkeypatch.setattr(loop, "make_optimizer", _Diverge(loop.make_optimizer, at=2, value=float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite in the update of step 2.*step-0000001"):
        small_run(pair, tmp_path / "run", steps=4)
    assert latest_checkpoint(tmp_path / "run").name == "step-0000001"
    assert not (tmp_path / "run" / "checkpoints" / "step-0000002").exists()


def test_run_dir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    config = tmp_path / "c.yaml"
    DistillConfig(run_dir=str(tmp_path / "run")).to_yaml(config)
    code, err = run(capsys, "distill", "--config", config)
    assert code == 2 and "is a file" in err and "Fix:" in err


def test_missing_distill_config_exits_2(tmp_path, capsys):
    code, err = run(capsys, "distill", "--config", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml" in err and "Fix:" in err


def test_unparsable_distill_config_exits_2(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\nlr: {")
    code, err = run(capsys, "distill", "--config", tmp_path / "bad.yaml")
    assert code == 2 and "bad.yaml" in err and "not a YAML" in err


@pytest.mark.parametrize("lr", ["-1", ".nan", "0", "1e-4x"])
def test_negative_nan_zero_or_garbage_lr_exits_2(tmp_path, capsys, lr):
    config = tmp_path / "c.yaml"
    DistillConfig(run_dir=str(tmp_path / "run")).to_yaml(config)
    code, err = run(capsys, "distill", "--config", config, "--set", f"lr={lr}")
    assert code == 2 and "lr" in err and not (tmp_path / "run").exists()


def test_readme_set_lr_1e_4_is_a_float(tmp_path):
    import yaml

    assert yaml.safe_load("1e-4") == "1e-4"  # YAML 1.1 reads it as a string ...
    assert DistillConfig().replace(lr=yaml.safe_load("1e-4")).lr == 1e-4  # ... and the config takes it as a number


def test_set_value_that_is_not_yaml_exits_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    DistillConfig(run_dir=str(tmp_path / "run")).to_yaml(config)
    code, err = run(capsys, "distill", "--config", config, "--set", "recipe={a: [")
    assert code == 2 and "recipe" in err and "Fix:" in err


def test_vae_folder_without_safetensors_exits_2(export, tmp_path, capsys):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    code, err = run(
        capsys, "compare", export / "wan", export / "wan", "--out", tmp_path / "r", "--vae", tmp_path / "vae"
    )
    assert code == 2 and "no .safetensors" in err and "never unpickles" in err and not (tmp_path / "r").exists()


def test_unreadable_input_exits_2_naming_the_file(export, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, err = run(capsys, "inspect", tmp_path / "missing.safetensors")
    assert code == 2 and "missing.safetensors" in err and "Fix:" in err


# ------------------------------------------------------------------ FSDP2 without a GPU: 2 gloo processes on CPU

# accelerate 1.16 enables FSDP only for GPU-like distributed types (its AcceleratorState lists MULTI_GPU, MULTI_XPU,
# ...): on CPU, ACCELERATE_USE_FSDP is ignored and the run is DDP. The driver therefore switches accelerate's state
# to FSDP2 after the Accelerator is built; everything after that (sharding the student with fully_shard, the
# teacher sharded by wanlite, sharded save_state / load_state, the gathered export) is the real FSDP2 code path.
FSDP_DRIVER = """
import os, sys, torch
torch.set_num_threads(1)
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor
import wanlite.train.loop as loop
from wanlite.testing import random_wan, tiny_spec
from wanlite.train import DistillConfig, distill
from wanlite.train.data import SyntheticSource

make, prepare_teacher = loop.make_accelerator, loop.prepare_teacher

def say(line):  # one write per line: the two processes share stdout
    sys.stdout.write(line + chr(10))
    sys.stdout.flush()

def fsdp_accelerator(cfg, run):
    acc = make(cfg, run)
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["WanTransformerBlock"], state_dict_type="SHARDED_STATE_DICT")
    acc.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc

def sharded_teacher(acc, cfg, teacher):
    teacher = prepare_teacher(acc, cfg, teacher)
    say(f"teacher sharded: {all(isinstance(p, DTensor) for p in teacher.parameters())}")
    return teacher

loop.make_accelerator, loop.prepare_teacher = fsdp_accelerator, sharded_teacher
run, resume, steps = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
teacher = random_wan(tiny_spec("t2v", num_layers=2), seed=0)
student = random_wan(tiny_spec("t2v", num_layers=1), seed=1)
cfg = DistillConfig.from_yaml(sys.argv[4]).replace(run_dir=run, steps=steps, batch_size=2)
data = SyntheticSource(n=48, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8)
result = distill(cfg, teacher=teacher, student=student, data=data, block_map=[1], resume=resume)
say(f"student sharded: {isinstance(next(result.student.parameters()), DTensor)}")
"""


def launch(cmd, env, timeout=240) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group, so a hang never leaves its workers behind."""
    import signal

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_fsdp2_on_two_cpu_processes_matches_one_process_through_a_checkpoint_and_resume(pair, tmp_path):
    import socket

    import torch.distributed.checkpoint as dcp

    from wanlite.formats.keys import to_official

    cfg = DistillConfig(
        lr=1e-3, warmup_steps=2, w_feat=0.1, uncond_fraction=0.3, log_every=1, val_every=0, checkpoint_every=2
    ).replace(progress=False)
    (tmp_path / "driver.py").write_text(FSDP_DRIVER)
    cfg.to_yaml(tmp_path / "base.yaml")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    for resume, steps in (("0", 2), ("1", 4)):  # 2 steps, a checkpoint; then a resumed process group to step 4
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        cmd += [str(tmp_path / "driver.py"), str(tmp_path / "fsdp"), resume, str(steps), str(tmp_path / "base.yaml")]
        done = launch(cmd, env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert done.stdout.count("teacher sharded: True") == 2 and done.stdout.count("student sharded: True") == 2
    losses = [r for r in metrics(tmp_path / "fsdp") if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and losses[-1]["samples"] == 16
    assert (tmp_path / "fsdp" / "checkpoints" / "step-0000004" / "pytorch_model_fsdp_0").is_dir()  # sharded state

    teacher, _ = pair
    single = distill(  # one process, the same global batch (2 processes x 2), no interruption
        cfg.replace(run_dir=str(tmp_path / "one"), steps=4, batch_size=4),
        teacher=teacher,
        student=random_wan(tiny_spec("t2v", num_layers=1), seed=1),
        data=SyntheticSource(n=48, latent_shape=(16, 1, 4, 4), text_tokens=4, text_len=8),
        block_map=[1],
    )
    a = load_file(str(single.student_path / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "student" / "diffusion_pytorch_model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert a.keys() == b.keys() and worst < 1e-5, f"FSDP2 (2 processes) differs from 1 process by {worst}"

    # the export gathered from the shards equals the unsharded student rebuilt from the checkpoint's shards
    unsharded = random_wan(tiny_spec("t2v", num_layers=1), seed=5)
    state = {"model": unsharded.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load(
            state, checkpoint_id=str(tmp_path / "fsdp/checkpoints/step-0000004/pytorch_model_fsdp_0"), no_dist=True
        )
    rebuilt = to_official(state["model"])
    assert all(torch.equal(rebuilt[k], b[k]) for k in b)


def test_cache_overwrite_refuses_a_directory_that_is_not_a_cache(tmp_path):
    from wanlite.train.data import ShardWriter

    mine = tmp_path / "clips"
    mine.mkdir()
    (mine / "raw.mp4").write_bytes(b"my only copy")
    with pytest.raises(DestinationExistsError, match="not a wanlite data cache"):
        ShardWriter(mine, overwrite=True)
    assert (mine / "raw.mp4").read_bytes() == b"my only copy"
    with ShardWriter(tmp_path / "cache") as w:
        w.add(latents=torch.zeros(16, 1, 2, 2), context=torch.zeros(4, 8))
    with ShardWriter(tmp_path / "cache", overwrite=True) as w:  # a cache is replaced
        w.add(latents=torch.ones(16, 1, 2, 2), context=torch.zeros(4, 8))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "manifest",
    [
        "{not json",
        '{"format": "wanlite-data"}',
        '{"format": "wanlite-data", "kind": "latents", "shapes": {}, "shards": [{"file": "../x", "count": 1}]}',
    ],
)
def test_corrupt_cache_manifest_is_a_message_not_a_traceback(tmp_path, manifest):
    from wanlite.train.data import CachedSource

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text(manifest)
    with pytest.raises(FormatError, match=r"manifest\.json.*Fix: "):
        CachedSource(tmp_path / "cache")


def test_missing_cache_shard_is_a_message_not_a_traceback(tmp_path):
    from wanlite.train.data import CachedSource, ShardWriter

    with ShardWriter(tmp_path / "cache") as w:
        w.add(latents=torch.zeros(16, 1, 2, 2), context=torch.zeros(4, 8))
    (tmp_path / "cache" / "shard-00000.safetensors").unlink()
    with pytest.raises(FormatError, match=r"shard-00000\.safetensors: unreadable cache shard"):
        CachedSource(tmp_path / "cache")[0]


@pytest.mark.parametrize("key", ["wanlite.pruning", "wanlite.sampling"])
def test_student_record_metadata_that_is_not_an_object_exits_2(model, tmp_path, capsys, key):
    save_file(official_state(model), str(tmp_path / "m.safetensors"), metadata={key: "[1, 2]"})
    code, err = run(capsys, "inspect", tmp_path / "m.safetensors")
    assert code == 2 and key in err and "Fix: re-export" in err


@pytest.mark.parametrize("broken", ["toy.json", "vae.safetensors"])
def test_toy_bundle_with_a_corrupt_file_exits_2(export, tmp_path, capsys, broken):
    import shutil

    import wanlite

    shipped = Path(wanlite.__file__).parent / "assets" / "toy"
    bundle = tmp_path / "bundle"
    shutil.copytree(export / "wan", bundle / "teacher")
    for name in ("toy.json", "vae.safetensors"):
        shutil.copy(shipped / name, bundle / name)
    (bundle / broken).write_bytes(b"[not an object")
    code, err = run(capsys, "compare", bundle / "teacher", export / "wan", "--out", tmp_path / "r")
    assert code == 2 and broken in err and "Fix:" in err
