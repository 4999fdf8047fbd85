"""What the executed notebooks show: `make test` runs the five notebooks (papermill, smoke defaults) into
runs/notebooks/, then this file checks the copies. Not collected by `pytest tests` (nothing to check before they run).

Every figure a cell returns must be an image in the saved notebook (a bare `<Figure ...>` line is the bug this
guards), and a normal run writes nothing to stderr (red boxes: profiler chatter, progress bars on stderr).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = Path(os.environ.get("WANLITE_EXECUTED", ROOT / "runs" / "notebooks"))
PLOTTING = (".plot(", ".explore(")
BOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("0*_*.ipynb"))


def _cells(name: str) -> list[dict]:
    path = EXECUTED / name
    assert path.exists(), f"{path} missing: run the notebooks first (make test does: python -m wanlite.pipeline)"
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", BOOKS)
def test_every_plotting_cell_shows_an_image(name):
    cells = [c for c in _cells(name) if any(p in "".join(c["source"]) for p in PLOTTING)]
    blank = [
        "".join(c["source"]).strip().splitlines()[-1]
        for c in cells
        if not any("image/png" in o.get("data", {}) for o in c["outputs"])
    ]
    assert not blank, f"{name}: these cells return a figure but the executed notebook holds no image: {blank}"


def test_the_figure_notebooks_have_figures():
    for name in ("01", "02", "05"):
        book = next(b for b in BOOKS if b.startswith(name))
        assert any("image/png" in o.get("data", {}) for c in _cells(book) for o in c["outputs"]), book


@pytest.mark.parametrize("name", BOOKS)
def test_no_stderr_in_a_normal_run(name):
    stray = [
        "".join(o["text"])[:200]
        for c in _cells(name)
        for o in c["outputs"]
        if o["output_type"] == "stream" and o["name"] == "stderr"
    ]
    assert not stray, f"{name} writes to stderr: {stray}"
