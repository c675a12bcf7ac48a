"""The README's Layout is a map that stays true: near the top, and every module it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]


def test_layout_is_a_table_within_the_first_80_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines.index("## Layout") < 80
    assert len(layout_rows()) >= 8


def test_every_package_and_key_module_in_the_layout_exists():
    for package, _, modules, _ in layout_rows():
        folder = ROOT / package.strip("`")
        assert folder.is_dir(), package
        for name in re.findall(r"`([\w/]+\.py|[\w]+/)`", modules):
            assert (folder / name).exists(), f"{package}{name}"
