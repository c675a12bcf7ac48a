"""Validation listings: val_map.txt and synset folders, detection, limit, errors."""

from __future__ import annotations

import pytest

from core.errors import UserError
from fixtures.images import write_val_set
from preprocess.dataset import list_dataset


def test_val_map_listing_keeps_line_order_and_labels(tmp_path):
    entries = write_val_set(tmp_path, 5, layout="val_map", seed=3, sizes=[(40, 50)])
    listing = list_dataset(tmp_path)
    assert list(zip(listing.files, listing.labels, strict=True)) == entries
    assert listing.root == tmp_path
    # Line order is query order, even when it is not sorted.
    (tmp_path / "val_map.txt").write_text("ILSVRC2012_val_00000003.JPEG 7\n\nsub dir/x y.JPEG 0\n")
    listing = list_dataset(tmp_path)
    assert listing.files == ["ILSVRC2012_val_00000003.JPEG", "sub dir/x y.JPEG"]
    assert listing.labels == [7, 0]


@pytest.mark.parametrize("subdir", ["val", ""])
def test_synset_folders_label_by_sorted_folder_index(tmp_path, subdir):
    entries = write_val_set(
        tmp_path, 12, layout="synset", num_classes=4, subdir=subdir, sizes=[(40, 50)]
    )
    (tmp_path / subdir / "n01440764" / "notes.txt").write_text("not an image")
    listing = list_dataset(tmp_path)
    assert listing.root == tmp_path / subdir
    prefix = f"{subdir}/" if subdir else ""
    assert [
        (prefix + f, lab) for f, lab in zip(listing.files, listing.labels, strict=True)
    ] == entries
    assert listing.files == sorted(listing.files)
    assert set(listing.labels) <= {0, 1, 2, 3}


def test_explicit_val_map_elsewhere_and_limit(tmp_path):
    entries = write_val_set(tmp_path / "data", 6, sizes=[(40, 50)])
    other = tmp_path / "maps" / "mine.txt"
    other.parent.mkdir()
    other.write_text("".join(f"{f} {lab}\n" for f, lab in reversed(entries)))
    listing = list_dataset(tmp_path / "data", val_map=other, limit=4)
    assert listing.files == [f for f, _ in reversed(entries)][:4]
    assert listing.source == str(other)
    assert len(list_dataset(tmp_path / "data", limit=100)) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.JPEG 1\nb.JPEG\n", r"val_map.txt line 2 is not 'relative/path label'"),
        ("a.JPEG 1\n\nb.JPEG two\n", r"val_map.txt line 3 is not"),
        ("a.JPEG 1000\n", r"line 1 has label 1000, outside 0-999"),
        ("a.JPEG -1\n", r"line 1 has label -1, outside 0-999"),
        ("\n\n", r"holds no images"),
    ],
)
def test_val_map_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "val_map.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        list_dataset(tmp_path)


def test_missing_or_unrecognised_data_dirs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match="neither val_map.txt nor synset folders"):
        list_dataset(tmp_path)
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        list_dataset(tmp_path)
    with pytest.raises(UserError, match="val map .*missing.txt does not exist"):
        list_dataset(tmp_path, val_map=tmp_path / "missing.txt")
    with pytest.raises(UserError, match="--limit must be at least 1"):
        list_dataset(tmp_path, limit=0)


def test_too_many_synset_folders(tmp_path):
    for k in range(1001):
        (tmp_path / f"n{k:08d}").mkdir()
    with pytest.raises(UserError, match="1001 synset folders"):
        list_dataset(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.JPEG 1\nb.JPEG 2\n./a.JPEG 3\n", r"lines 1 and 3 both list a.JPEG"),
        ("a.JPEG 1\n\nsub/../b.JPEG 2\nb.JPEG 4\n", r"lines 3 and 4 both list b.JPEG"),
        ("a.JPEG 1\n../x.JPEG 2\n", r"line 2 has a path outside the data dir: '../x.JPEG'"),
        ("sub/../../x.JPEG 2\n", r"line 1 has a path outside the data dir"),
        ("a.JPEG 1\n/etc/x.JPEG 2\n", r"line 2 has an absolute path '/etc/x.JPEG'"),
    ],
)
def test_val_map_refuses_duplicates_and_paths_outside(tmp_path, text, message):
    (tmp_path / "val_map.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        list_dataset(tmp_path)


def test_val_map_bom_is_stripped_and_paths_normalised(tmp_path):
    (tmp_path / "val_map.txt").write_bytes("\ufeffa.JPEG 1\n./sub//b.JPEG 2\n".encode())
    listing = list_dataset(tmp_path)
    assert listing.files == ["a.JPEG", "sub/b.JPEG"]
    assert listing.labels == [1, 2]
