"""The built-in sample: committed files parse, decode, carry valid labels and are reproducible."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.cli import run_cli
from core.errors import UserError
from pipeline.sample import (
    SAMPLE_DESCRIPTION,
    SAMPLE_IMAGES,
    main,
    sample_dir,
    sample_pairs,
    sample_readme,
)


def _manifest() -> dict:
    return json.loads((sample_dir() / "manifest.json").read_text())


def test_val_map_lists_every_image_with_a_valid_label():
    pairs = sample_pairs()
    assert pairs == [(image.file, image.label) for image in SAMPLE_IMAGES]
    assert 4 <= len(pairs) <= 8
    assert len({file for file, _ in pairs}) == len(pairs)
    for file, label in pairs:
        assert 0 <= label <= 999
        assert (sample_dir() / file).is_file()


def test_known_classes_match_the_ilsvrc_numbering():
    # Spot checks against the sorted ILSVRC2012 synset list (0 = tench n01440764).
    expected = {
        "n02123045": (281, "tabby"),
        "n07920052": (967, "espresso"),
        "n04266014": (812, "space shuttle"),
        "n04485082": (872, "tripod"),
    }
    for image in SAMPLE_IMAGES:
        label, name = expected[image.synset]
        assert image.label == label and image.class_name.startswith(name)


def test_every_image_decodes_as_mlperf_reads_it():
    total_bytes = 0
    for file, _label in sample_pairs():
        path = sample_dir() / file
        total_bytes += path.stat().st_size
        pixels = cv2.imread(str(path))  # MLPerf's call: default flags, 3-channel BGR
        assert pixels is not None, file
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert min(pixels.shape[:2]) >= 150  # large enough for a 224 crop after resizing
        assert pixels.std() > 20  # a photograph, not a flat placeholder
    assert total_bytes < 1_000_000


def test_committed_files_match_the_manifest():
    manifest = _manifest()
    assert [entry["file"] for entry in manifest["images"]] == [i.file for i in SAMPLE_IMAGES]
    for entry in manifest["images"]:
        data = (sample_dir() / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]


def test_description_is_honest_about_what_the_sample_is():
    assert f"{len(SAMPLE_IMAGES)} real photographs" in SAMPLE_DESCRIPTION
    assert "not ImageNet" in SAMPLE_DESCRIPTION and "MLPerf accuracy" in SAMPLE_DESCRIPTION


def test_regeneration_reproduces_the_committed_files(tmp_path):
    pytest.importorskip("skimage")
    assert run_cli(main, ["--regenerate", "--out", str(tmp_path), "--quiet"]) == 0
    same_opencv = _manifest()["opencv"] == cv2.__version__
    for image in SAMPLE_IMAGES:
        committed = (sample_dir() / image.file).read_bytes()
        rebuilt = (tmp_path / image.file).read_bytes()
        if same_opencv:
            assert rebuilt == committed, image.file  # JPEG encoding is deterministic
        a = cv2.imdecode(np.frombuffer(committed, np.uint8), cv2.IMREAD_UNCHANGED)
        b = cv2.imdecode(np.frombuffer(rebuilt, np.uint8), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 1.0, image.file
    assert (tmp_path / "val_map.txt").read_text() == (sample_dir() / "val_map.txt").read_text()
    # The README names the library versions that encoded the files: the regenerated one
    # names today's, the committed one those its manifest records, in the same words.
    rebuilt_manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert rebuilt_manifest["opencv"] == cv2.__version__
    for folder, manifest in ((tmp_path, rebuilt_manifest), (sample_dir(), _manifest())):
        expected = sample_readme(manifest["opencv"], manifest["scikit_image"])
        assert (folder / "README.md").read_text() == expected, folder


def test_malformed_val_map_is_one_sentence(tmp_path):
    bad = tmp_path / "val_map.txt"
    bad.write_text("a.jpg 1\nb.jpg cat\n")
    with pytest.raises(UserError, match="line 2 is not 'relative/path label'"):
        sample_pairs(bad)


def test_sample_does_not_need_scikit_image_at_run_time():
    # Block skimage in a fresh interpreter: listing and reading the sample must still work.
    code = (
        "import sys; sys.modules['skimage'] = None\n"
        "from pipeline.sample import sample_pairs, sample_dir\n"
        "print(len(sample_pairs()), (sample_dir() / sample_pairs()[0][0]).is_file())\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(SAMPLE_IMAGES)), "True"]
