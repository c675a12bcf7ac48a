"""The packages form one-way layers: each imports only the layers below it.

core -> preprocess -> convert -> quantize -> eval -> pipeline -> benchmarks (bottom to
top). A module
importing a higher layer, or a cycle, fails here with the offending import named.

``tests`` sits above them all, with one exception: the benchmarks time the fixture graphs
and images that ``tests.fixtures`` generates, so benchmarks may import ``tests.fixtures``
and nothing else of ``tests``; the other layers import nothing of ``tests``, and
``tests.fixtures`` imports no benchmark (that would be a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "preprocess", "convert", "quantize", "eval", "pipeline", "benchmarks")
FIXTURES = "tests.fixtures"  # the only part of tests a layer (benchmarks) may import


def _modules(path: Path) -> list[tuple[int, str]]:
    """(line, full dotted name) of every absolute import; ``from a import b`` gives a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _tests_import_violations(root: Path = ROOT) -> list[str]:
    """Imports of ``tests`` beyond what the module docstring allows, and fixtures that
    import a benchmark."""
    bad = []
    for layer in LAYERS:
        allowed = FIXTURES if layer == "benchmarks" else None
        rule = f"{layer} may import only {allowed}" if allowed else f"{layer} is below tests"
        for path in sorted((root / layer).rglob("*.py")):
            for line, module in _modules(path):
                if _within(module, "tests") and not (allowed and _within(module, allowed)):
                    bad.append(f"{path.relative_to(root)}:{line} imports {module} ({rule})")
    rule = "fixtures are below benchmarks"
    for path in sorted((root / "tests" / "fixtures").rglob("*.py")):
        for line, module in _modules(path):
            outside = _within(module, "tests") and not _within(module, FIXTURES)
            if outside or _within(module, "benchmarks"):
                bad.append(f"{path.relative_to(root)}:{line} imports {module} ({rule})")
    return bad


def _layer_violations(root: Path = ROOT) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            # One entry per import statement and package (``from a import b, c`` is one).
            for line, package in sorted({(n, m.split(".")[0]) for n, m in _modules(path)}):
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


def test_only_benchmarks_import_tests_and_only_its_fixtures():
    assert _tests_import_violations() == []


def test_the_check_sees_a_forbidden_import_of_tests(tmp_path):
    # Plant each kind of violation in a copy, next to the one allowed import, and find them.
    for folder in ("eval", "benchmarks", "tests/fixtures"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "eval" / "bad.py").write_text("from tests.fixtures import images\n")
    (tmp_path / "benchmarks" / "bad.py").write_text(
        "from tests.fixtures.images import write_val_set\nimport tests.conftest\n"
    )
    (tmp_path / "tests" / "fixtures" / "bad.py").write_text(
        "from tests.fixtures import images\nfrom benchmarks import machine\n"
    )
    assert _tests_import_violations(tmp_path) == [
        "eval/bad.py:1 imports tests.fixtures.images (eval is below tests)",
        "benchmarks/bad.py:2 imports tests.conftest (benchmarks may import only tests.fixtures)",
        "tests/fixtures/bad.py:2 imports benchmarks.machine (fixtures are below benchmarks)",
    ]


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_each_layer_imports_without_the_ones_above(layer):
    import subprocess
    import sys

    above = (*LAYERS[LAYERS.index(layer) + 1 :], "tests")  # only benchmarks may use tests
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
