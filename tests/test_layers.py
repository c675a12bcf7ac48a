"""The packages form one-way layers: each imports only the layers below it.

core -> preprocess -> convert -> quantize -> eval -> pipeline -> fixtures -> benchmarks
(bottom to top; ``fixtures`` builds the graphs and images that tests and benchmarks use).
``tests`` sits above them all: no package imports it. A module importing a higher layer,
or ``tests``, fails here with the offending import named; so does a cycle of imports
between the modules of one package (imports inside functions included), with its modules
named.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    "core",
    "preprocess",
    "convert",
    "quantize",
    "eval",
    "pipeline",
    "fixtures",
    "benchmarks",
)


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
    """Imports of ``tests`` by any layer."""
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for line, module in _modules(path):
                if _within(module, "tests"):
                    bad.append(f"{path.relative_to(root)}:{line} imports {module} (below tests)")
    return bad


def _package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a package is its __init__)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports_within(name: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of each import of a module in ``known`` by module ``name`` (relative
    imports resolved); ``from a import b`` is the module a.b when there is one, else a."""

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{up}.{base}" if base else up
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            module = module_of(target)
            if module is not None and module != name:
                found.append((node.lineno, module))
    return found


def _cycles(root: Path = ROOT) -> list[str]:
    """One cycle per strongly connected group of each package's modules, as the chain of
    imports that closes it (``file:line imports module``, in order)."""
    bad = []
    for package in LAYERS:
        known = _package_modules(root, package)
        edges: dict[str, dict[str, int]] = {name: {} for name in known}
        for name, path in known.items():
            for line, module in _imports_within(name, path, known):
                edges[name].setdefault(module, line)
        for start in sorted(known):
            chain = _shortest_loop(start, edges)
            if chain and start == min(chain):  # report each loop once, from its first module
                steps = [
                    f"{os.fspath(known[a].relative_to(root))}:{edges[a][b]} imports {b}"
                    for a, b in zip(chain, chain[1:] + chain[:1], strict=True)
                ]
                bad.append(" -> ".join(steps))
    return bad


def _shortest_loop(start: str, edges: dict[str, dict[str, int]]) -> list[str]:
    """The modules of a shortest import chain from ``start`` back to it ([] when none)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(edges[module]):
                if target == start:
                    chain = [module]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return chain[::-1]
                if target not in previous:
                    previous[target] = module
                    following.append(target)
        frontier = following
    return []


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


def test_no_package_imports_tests():
    assert _tests_import_violations() == []


def test_the_check_sees_an_import_of_tests(tmp_path):
    for folder in ("eval", "benchmarks"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "eval" / "bad.py").write_text("from tests.fixtures import images\n")
    (tmp_path / "benchmarks" / "bad.py").write_text("import os\nimport tests.conftest\n")
    assert _tests_import_violations(tmp_path) == [
        "eval/bad.py:1 imports tests.fixtures.images (below tests)",
        "benchmarks/bad.py:2 imports tests.conftest (below tests)",
    ]


def test_no_package_has_an_import_cycle():
    assert _cycles() == []


def test_the_check_sees_a_cycle_also_through_a_function_level_import(tmp_path):
    (tmp_path / "eval" / "sub").mkdir(parents=True)
    (tmp_path / "eval" / "__init__.py").write_text("from eval.a import run\n")
    (tmp_path / "eval" / "a.py").write_text("import os\n\nfrom . import b\n")
    (tmp_path / "eval" / "b.py").write_text("def f():\n    from eval.sub.c import g\n")
    (tmp_path / "eval" / "sub" / "__init__.py").write_text("")
    (tmp_path / "eval" / "sub" / "c.py").write_text("from ..a import run\nfrom .. import b\n")
    (tmp_path / "eval" / "ok.py").write_text("from eval import a\nfrom eval.sub import c\n")
    assert _cycles(tmp_path) == [
        "eval/a.py:3 imports eval.b -> eval/b.py:2 imports eval.sub.c -> "
        "eval/sub/c.py:1 imports eval.a",
        "eval/b.py:2 imports eval.sub.c -> eval/sub/c.py:2 imports eval.b",
    ]


# Each layer is imported in a fresh process: fixtures (TensorFlow and all below) takes 5 s
# alone, several times that on a busy machine.
@pytest.mark.parametrize(
    "layer",
    [pytest.param(n, marks=pytest.mark.slow) if n == "fixtures" else n for n in LAYERS[:-1]],
)
def test_each_layer_imports_without_the_ones_above(layer):
    import subprocess
    import sys

    above = (*LAYERS[LAYERS.index(layer) + 1 :], "tests")
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
