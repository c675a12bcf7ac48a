"""``python -m preprocess --calibration-list FILE``: a cache of exactly the listed images.

The list is MLPerf's format (file names relative to the data dir, no labels); each image
takes its label from the data dir's own listing, and ``mlperf`` names the shipped list.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import UserError
from fixtures.images import textured_image, write_image, write_val_set
from preprocess import build_cache, load_cache
from preprocess.calibration import MLPERF_LIST, mlperf_list
from tests.preprocess.mlperf_reference import reference_crop

SIZES = [(120, 160), (160, 120), (90, 70)]


def write_list(path, names) -> str:
    path.write_text("".join(f"{name}\n" for name in names) + "\n")  # a blank line is ignored
    return str(path)


def cli_args(data, cache_dir, calibration_list, *extra) -> list[str]:
    return ["--model", "mobilenet_v1", "--data-dir", str(data), "--cache-dir", str(cache_dir),
            "--calibration-list", calibration_list, "--quiet", *extra]  # fmt: skip


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("layout", ["val_map", "synset"])
def test_the_cache_holds_exactly_the_listed_images_in_list_order(
    tmp_path, run_preprocess_cli, layout
):
    data = tmp_path / "data"
    entries = write_val_set(data, 6, layout=layout, seed=4, sizes=SIZES, subdir="")
    chosen = [entries[4], entries[1], entries[2]]  # not the listing's order
    listed = write_list(tmp_path / "cal.txt", [name for name, _ in chosen])
    cache_dir = tmp_path / "cal-cache"

    proc = run_preprocess_cli(*cli_args(data, cache_dir, listed))
    assert proc.returncode == 0, proc.stderr
    assert "3 images cached" in proc.stdout
    cache = load_cache(cache_dir, "mobilenet_v1")
    assert cache.files == [name for name, _ in chosen]
    assert cache.labels.tolist() == [label for _, label in chosen]
    for row, (name, _) in enumerate(chosen):
        assert np.array_equal(cache.images[row], reference_crop(data / name, "mobilenet_v1"))
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["listing_source"] == listed


def test_a_name_the_data_dir_lacks_is_one_sentence(tmp_path, run_preprocess_cli):
    data = tmp_path / "data"
    entries = write_val_set(data, 3, seed=4, sizes=SIZES)
    listed = write_list(tmp_path / "cal.txt", [entries[0][0], "ILSVRC2012_val_00000099.JPEG"])
    cache_dir = tmp_path / "cal-cache"

    proc = run_preprocess_cli(*cli_args(data, cache_dir, listed))
    assert proc.returncode != 0
    assert error_lines(proc) == [
        f"error: 1 of the 2 images in calibration list {listed} are not in the listing of "
        f"{data / 'val_map.txt'} (first: ILSVRC2012_val_00000099.JPEG); give a list of images "
        "from this data dir"
    ]
    assert not cache_dir.exists()  # refused before anything was written


def test_mlperf_names_the_shipped_list(tmp_path, run_preprocess_cli):
    """A data dir listing every image of MLPerf's list: --limit 3 crops the first three, in
    the list's order (only those files need to exist)."""
    names = mlperf_list().names
    data = tmp_path / "imagenet"
    data.mkdir()
    labels = {name: (7 * i) % 1000 for i, name in enumerate(sorted(names))}
    (data / "val_map.txt").write_text("".join(f"{n} {labels[n]}\n" for n in sorted(names)))
    for k, name in enumerate(names[:3]):
        write_image(data / name, textured_image(100 + 10 * k, 130, seed=k))
    cache_dir = tmp_path / "cal-cache"

    proc = run_preprocess_cli(*cli_args(data, cache_dir, "mlperf", "--limit", "3"))
    assert proc.returncode == 0, proc.stderr
    cache = load_cache(cache_dir, "mobilenet_v1")
    assert cache.files == names[:3]
    assert cache.labels.tolist() == [labels[name] for name in names[:3]]
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["listing_source"] == str(MLPERF_LIST)


def test_mlperf_on_a_data_dir_without_its_images_says_so(tmp_path, run_preprocess_cli):
    data = tmp_path / "data"
    write_val_set(data, 3, seed=4, sizes=SIZES)
    cache_dir = tmp_path / "cal-cache"

    proc = run_preprocess_cli(*cli_args(data, cache_dir, "mlperf"))
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith(
        f"error: 500 of the 500 images in MLPerf's calibration list {MLPERF_LIST} are not in "
        f"the listing of {data / 'val_map.txt'}"
    )
    assert line.endswith("it names ImageNet validation images, so give the ImageNet val data "
                         "dir or a list of your own")  # fmt: skip
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ILSVRC2012_val_00000001.JPEG 65\n", "looks like a val_map line"),
        ("a.JPEG\nb.JPEG\na.JPEG\n", "lines 1 and 3 both list a.JPEG"),
        ("\n\n", "names no images"),
        (None, "cannot read calibration list"),
    ],
)
def test_a_bad_list_is_one_sentence_and_writes_nothing(tmp_path, text, message):
    data = tmp_path / "data"
    write_val_set(data, 2, seed=4, sizes=SIZES)
    listed = tmp_path / "cal.txt"
    if text is not None:
        listed.write_text(text)
    with pytest.raises(UserError, match=message):
        build_cache("resnet50", data, tmp_path / "c", calibration_list=listed, quiet=True)
    assert not (tmp_path / "c").exists()


def test_limit_keeps_the_first_listed_images_and_is_checked(tmp_path):
    data = tmp_path / "data"
    entries = write_val_set(data, 4, seed=4, sizes=SIZES)
    listed = write_list(tmp_path / "cal.txt", [entries[3][0], entries[0][0], entries[2][0]])
    summary = build_cache(
        "resnet50", data, tmp_path / "c", calibration_list=listed, limit=2, quiet=True
    )
    assert summary.images == 2
    assert load_cache(tmp_path / "c", "resnet50").files == [entries[3][0], entries[0][0]]
    with pytest.raises(UserError, match="--limit must be at least 1, got 0"):
        build_cache("resnet50", data, tmp_path / "d", calibration_list=listed, limit=0)
