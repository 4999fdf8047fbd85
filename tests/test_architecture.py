"""The package's shape is a contract: imports point downward only (no sibling imports, no cycles, function-level
imports included), and every notebook starts with the same setup cell."""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wanlite"
# layer of each top-level part of wanlite: a module may import its own layer's package, or lower layers.
LAYERS = {
    "_version": 0,
    "errors": 0,
    "core": 1,
    "formats": 2,
    "compress": 3,
    "evaluate": 3,
    "train": 4,
    "toy": 4,
    "cli": 5,
    "conditioning": 5,
    "pipeline": 5,
    "runs": 5,
    "testing": 5,
    "sweep": 5,
    "__init__": 5,
    "__main__": 5,
}
TOP = 5  # entry points and glue: they may use everything (cycles are still refused)


def _modules() -> dict[str, Path]:
    """'wanlite.formats.load' -> its file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every wanlite module `name` imports, anywhere in the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("wanlite")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("wanlite"):
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            found |= subs or {base}
    return {m for m in found if m in modules and m != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_downward_and_siblings_stay_apart():
    modules = _modules()
    assert set(map(_part, modules)) <= set(LAYERS), "a new part of wanlite needs a layer in LAYERS (and the README)"
    wrong = []
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            a, b = _part(name), _part(target)
            if a != b and LAYERS[b] >= LAYERS[a] and LAYERS[a] < TOP:
                wrong.append(f"{name} imports {target} ({a} is layer {LAYERS[a]}, {b} layer {LAYERS[b]})")
    assert not wrong, "imports must point downward:\n" + "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_notebook_starts_with_the_one_setup_cell():
    from wanlite.runs import COLAB_CELL

    for book in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [c for c in json.loads(book.read_text())["cells"] if c["cell_type"] == "code"]
        assert "".join(code[0]["source"]) == COLAB_CELL, f"{book.name}: the setup cell differs from runs.COLAB_CELL"
