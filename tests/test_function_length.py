"""No function in the project's packages is longer than 50 lines: a longer one is split into
named steps, which the reader can follow and the tests can reach one at a time."""

import ast
from pathlib import Path

from tests.test_layers import LAYERS as PACKAGES  # the project's packages, bottom to top

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 50


def long_functions(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line name (lines)`` for each function in ``path`` over MAX_LINES, counted from
    the ``def`` line to the last line (decorators excluded), nested functions and methods too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                where = path.relative_to(root)
                found.append(f"{where}:{node.lineno} {node.name} ({lines})")
    return found


def test_long_functions_finds_one_over_the_limit(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # def + 50 = 51 lines
    # Exactly 50 lines from its def, 51 with its decorator: within the limit.
    short = "@decorator\ndef short():\n" + "\n".join(["    pass"] * (MAX_LINES - 1))
    source = tmp_path / "probe.py"
    source.write_text(f"{short}\n\n\ndef too_long():\n{body}\n")
    assert long_functions(source, tmp_path) == ["probe.py:54 too_long (51)"]


def test_no_function_in_the_packages_is_longer_than_50_lines():
    offenders = [
        offender
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for offender in long_functions(path)
    ]
    assert not offenders, "functions over 50 lines:\n" + "\n".join(offenders)
