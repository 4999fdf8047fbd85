"""`wanlite sweep`: a small sweep on the shipped toy teacher, end to end -- the leaderboard's numbers and files, the
teacher-target caches the points train from, --resume, a failing point recorded, bad grid files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from wanlite import sweep
from wanlite.errors import ConfigError, DestinationExistsError
from wanlite.evaluate.leaderboard import COLUMNS, Leaderboard, pareto_front

SMOKE = {
    "name": "smoke",
    "samples": 24,
    "calibration_prompts": 4,
    "prompts": ["red circle moving left"],
    "repeats": 1,
    "teacher_steps": [4],
    "base": {"steps": 3, "batch_size": 4, "lr": 5e-4, "val_samples": 4, "val_every": 0, "guidance": 4.0},
    "points": {
        "half-guided": {"num_heads": 1, "ffn_dim": 256, "objective": "guided", "student_steps": 2, "sample_steps": [1]},
        "depth1-velocity": {"num_blocks": 1, "blocks": "importance", "objective": "velocity", "w_feat": 0.1},
        "too-wide": {"num_heads": 5, "objective": "guided"},  # the teacher has 2 heads: this point fails
    },
}


def _grid(folder: Path, content) -> Path:
    path = folder / "grid.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    grid = _grid(folder, SMOKE)
    lines = []
    result = sweep.run_sweep(grid, runs_dir=folder / "runs", log=lines.append)
    return result, grid, folder / "runs", lines


def _rows(out: Path) -> dict[str, dict]:
    board = Leaderboard.from_csv(out / "leaderboard.csv")
    return {r["point"]: r for r in board.rows}


def test_the_leaderboard_holds_every_column_and_row(swept):
    result, _, runs, _ = swept
    out = runs / "smoke"
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert [name for name, _, _ in COLUMNS] == header[: len(COLUMNS)]
    rows = _rows(out)
    assert list(rows) == ["teacher", "teacher@4", "half-guided", "half-guided@1", "depth1-velocity", "too-wide"]
    assert result.failed == ["too-wide"] and sorted(result.ran) == sorted(SMOKE["points"])
    for name in ("teacher", "teacher@4", "half-guided", "half-guided@1", "depth1-velocity"):
        row = rows[name]
        assert row["status"] == "ok"
        assert all(0 <= row[k] <= 1 for k in ("colour", "shape", "direction", "all")), row
        assert row["params"] > 0 and row["flops_per_video"] > 0 and row["wall_per_video_s"] > 0
    md = (out / "leaderboard.md").read_text()
    assert all(f"| {name} |" in md for name in rows) and "48 captions" in md


def test_the_numbers_are_the_measured_ones(swept):
    from wanlite import toy

    rows = _rows(swept[2] / "smoke")
    own = toy.evaluate(toy.teacher()).as_dict()  # the teacher scored on its own, at its settings (seed 0)
    assert {k: rows["teacher"][k] for k in ("colour", "shape", "direction", "all")} == {
        k: pytest.approx(own[k]) for k in ("colour", "shape", "direction", "all")
    }
    # forwards follow each model's sampling: teacher UniPC 20 x cfg 4, guided student k Euler steps at cfg 1
    assert [rows[n]["forwards_per_video"] for n in ("teacher", "teacher@4", "half-guided", "half-guided@1")] == [
        40,
        8,
        2,
        1,
    ]
    assert rows["depth1-velocity"]["forwards_per_video"] == 40  # a velocity student samples like its teacher
    # FLOPs per video = FLOPs per forward x forwards: the same student at 2 steps costs twice its 1-step self
    assert rows["half-guided"]["flops_per_video"] == pytest.approx(2 * rows["half-guided@1"]["flops_per_video"])
    assert rows["teacher"]["flops_per_video"] == pytest.approx(5 * rows["teacher@4"]["flops_per_video"])
    assert rows["teacher"]["video_flops_ratio"] == pytest.approx(1.0)
    half_width = rows["teacher"]["flops_per_video"] / rows["half-guided"]["flops_per_video"]
    assert rows["half-guided"]["video_flops_ratio"] == pytest.approx(half_width, rel=1e-6) and half_width > 20
    assert 1 < rows["teacher"]["params"] / rows["depth1-velocity"]["params"] < 2  # one of two blocks kept
    assert rows["teacher"]["pixel_psnr_db"] is None  # the reference has no PSNR against itself
    assert rows["teacher@4"]["pixel_psnr_db"] > 10 and rows["half-guided"]["velocity_rel_mse"] > 0
    assert rows["half-guided"]["val_rel_mse_start"] > 0 and rows["half-guided"]["val_rel_mse_end"] > 0
    assert rows["half-guided@1"]["val_rel_mse_end"] == rows["half-guided"]["val_rel_mse_end"]  # one training
    assert "[1]" in rows["depth1-velocity"]["recipe"] or "[0]" in rows["depth1-velocity"]["recipe"]


def test_points_train_from_the_shared_teacher_targets(swept):
    out = swept[2] / "smoke"
    caches = sorted(p.name for p in (out / "targets").iterdir())
    assert [c.split("-")[0] for c in caches] == ["guided", "velocity"]  # one each, made once, shared
    for name, kind in (("half-guided", "guided"), ("depth1-velocity", "velocity")):
        config = yaml.safe_load((out / name / "distill" / "config.yaml").read_text())
        assert Path(config["data"]).parent == out / "targets" and Path(config["data"]).name.startswith(kind)
        assert (out / name / "distill" / "student" / "config.json").exists()
        manifest = json.loads((Path(config["data"]) / "manifest.json").read_text())
        assert manifest["kind"] == "targets"
    guided = json.loads((out / "targets" / caches[0] / "manifest.json").read_text())
    assert guided["meta"]["guidance"] == 4.0


def test_a_failing_point_is_recorded_and_the_sweep_finishes(swept):
    out = swept[2] / "smoke"
    row = _rows(out)["too-wide"]
    assert row["status"] == "failed" and "RecipeError" in row["error"] and "num_heads" in row["error"]
    assert "Traceback" in (out / "too-wide" / "error.txt").read_text()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (
        out / "pareto.png"
    ).stat().st_size > 10_000
    assert any("FAILED" in line for line in swept[3])


def test_the_frontier_read_back_from_the_csv_is_the_one_written(swept):
    result, _, runs, _ = swept
    again = sweep.leaderboard(runs / "smoke")
    assert [r["point"] for r in again.frontier()] == [r["point"] for r in result.leaderboard.frontier()]
    assert "teacher" in [r["point"] for r in again.frontier()]  # nothing is as good as the 40-forward teacher here


def test_resume_skips_finished_points_and_reruns_failed_ones(swept):
    _, grid, runs, _ = swept
    out = runs / "smoke"
    before = {n: (out / n / "result.json").stat().st_mtime_ns for n in ("half-guided", "depth1-velocity")}
    with pytest.raises(DestinationExistsError, match="--resume"):
        sweep.run_sweep(grid, runs_dir=runs)
    lines = []
    result = sweep.run_sweep(grid, runs_dir=runs, resume=True, log=lines.append)
    assert sorted(result.skipped) == ["depth1-velocity", "half-guided"] and result.ran == ["too-wide"]
    assert {n: (out / n / "result.json").stat().st_mtime_ns for n in before} == before
    assert "2 finished, 1 to run" in lines[0]
    assert list(_rows(out)) == ["teacher", "teacher@4", "half-guided", "half-guided@1", "depth1-velocity", "too-wide"]


def test_a_point_changed_since_it_ran_is_refused_on_resume(swept, tmp_path):
    _, grid, runs, _ = swept
    changed = yaml.safe_load(grid.read_text())
    changed["points"]["half-guided"]["student_steps"] = 3
    with pytest.raises(ConfigError, match="half-guided.*changed"):
        sweep.run_sweep(_grid(tmp_path, changed), runs_dir=runs, resume=True)


BAD = {
    "unknown key": ({**SMOKE, "pionts": {}}, "pionts"),
    "unknown setting": ({**SMOKE, "points": {"a": {"num_head": 1}}}, "num_head"),
    "reserved setting": ({**SMOKE, "points": {"a": {"run_dir": "x"}}}, "set by the sweep"),
    "wrong type": ({**SMOKE, "points": {"a": {"steps": "many"}}}, "DistillConfig.steps"),
    "bad recipe value": ({**SMOKE, "points": {"a": {"blocks": "random"}}}, "Recipe.blocks"),
    "bad fraction": ({**SMOKE, "points": {"a": {"depth": 1.5}}}, "depth"),
    "no points": ({"name": "x"}, "no points"),
    "bad name": ({**SMOKE, "points": {"a/b": {}}}, "folder name"),
    "bad steps": ({**SMOKE, "teacher_steps": [0]}, "teacher_steps"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
    "not yaml": ("points: {a: [\n", "not YAML"),
}


@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "-"))
def test_a_bad_grid_exits_2_naming_the_file_and_writes_nothing(tmp_path, capsys, case):
    content, words = BAD[case]
    path = _grid(tmp_path, content)
    code = sweep.main(["--grid", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and words in err and "Fix:" in err, err
    assert not (tmp_path / "runs").exists()


def test_the_wanlite_command_runs_sweep_and_a_missing_grid_exits_2(tmp_path, capsys):
    from wanlite.cli import main

    assert main(["sweep", "--grid", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_pareto_front_keeps_only_the_undominated():
    rows = [
        {"point": "a", "c": 1, "q": 0.2},
        {"point": "b", "c": 2, "q": 0.1},  # dearer and worse than a
        {"point": "c", "c": 4, "q": 0.9},
        {"point": "d", "c": 4, "q": 0.5},  # as dear as c, worse
        {"point": "e", "c": 8, "q": 0.9},  # dearer than c, not better
        {"point": "f", "c": None, "q": 1.0},  # not measured: left out
    ]
    assert [r["point"] for r in pareto_front(rows, "c", "q")] == ["a", "c"]
