"""Notebook hygiene: numbered, no stored outputs, exactly one tagged parameters cell, thin, smoke defaults.

(nbval executes them: `make test` runs `pytest --nbval-lax --nbval-current-env notebooks/` after this suite.)"""

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [
    "00_prepare_data",
    "01_init_from_teacher",
    "02_distill",
    "03_save",
    "04_reload_comfyui_loader",
    "05_compare",
    "06_sweep",
]


def _cells(book):
    return json.loads(book.read_text())["cells"]


def _parameters(book) -> dict:
    [cell] = [c for c in _cells(book) if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.AnnAssign)}


def test_the_notebooks_are_numbered_in_order():
    assert [b.stem for b in BOOKS] == NAMES


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_no_outputs_one_parameters_cell_no_defs(book):
    cells = _cells(book)
    assert not [c for c in cells if c.get("outputs") or c.get("execution_count")], "commit notebooks without outputs"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert not [c for c in cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells[0]["cell_type"] == "markdown", "start with what the notebook does, reads and writes"
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    tree = ast.parse(code)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], "logic lives in wanlite"
    assert "import *" not in code
    assert any(isinstance(n, ast.Assert) for n in ast.walk(tree)), "end with asserts that check the results"
    params = _parameters(book)
    assert "run_dir" in params and all(isinstance(v, (str, int, float, bool, list)) for v in params.values())


def test_smoke_params_are_the_notebook_defaults():
    """nbval runs the notebooks' own defaults; params/smoke.yaml must say the same (papermill smoke runs)."""
    smoke = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    defaults = {}
    for book in BOOKS:
        defaults.update(_parameters(book))
    for name, value in smoke.items():
        assert name in defaults, f"params/smoke.yaml: {name} is declared by no notebook"
        assert defaults[name] == value, f"{name}: notebook default {defaults[name]!r} vs smoke {value!r}"


@pytest.mark.parametrize("params", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_only_name_declared_parameters(params):
    if params.name.startswith(("distill-", "accelerate", "sweep-")):
        pytest.skip("not a notebook parameters file")
    declared = set()
    for book in BOOKS:
        declared |= set(_parameters(book))
    unknown = set(yaml.safe_load(params.read_text())) - declared
    assert not unknown, f"{params.name}: parameters no notebook declares: {sorted(unknown)}"
