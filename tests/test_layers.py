"""The packages form one-way layers: each imports only the layers below it.

core -> preprocess -> convert -> eval -> pipeline -> benchmarks (bottom to top). A module
importing a higher layer, or a cycle, fails here with the offending import named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "preprocess", "convert", "eval", "pipeline", "benchmarks")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _layer_violations(root: Path = ROOT) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for line, package in _imports(path):
                if package in rank and rank[package] > rank[layer]:
                    bad.append(
                        f"{path.relative_to(root)}:{line} imports {package} ({layer} is lower)"
                    )
    return bad


def test_no_package_imports_a_higher_layer():
    assert _layer_violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    # The check itself must be able to fail: plant an upward import in a copy and find it.
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "planted.py").write_text("import os\n\nfrom pipeline.run import main\n")
    assert _layer_violations(tmp_path) == ["core/planted.py:3 imports pipeline (core is lower)"]


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_each_layer_imports_without_the_ones_above(layer):
    import subprocess
    import sys

    above = LAYERS[LAYERS.index(layer) + 1 :]
    code = (
        f"import importlib, pkgutil, sys\n"
        f"import {layer}\n"
        f"for m in pkgutil.walk_packages({layer}.__path__, '{layer}.'):\n"
        f"    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"loaded = sorted({{n.split('.')[0] for n in sys.modules}} & {set(above)!r})\n"
        f"print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
