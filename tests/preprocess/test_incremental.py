"""Reruns redo exactly what changed: edited, added or deleted images, damaged crops.

Each case ends with the cache equal, byte for byte, to a fresh build of the same data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

import preprocess.build as build_module
from core.errors import UserError
from fixtures.images import textured_image, write_image, write_val_set
from preprocess import build_cache, load_cache
from preprocess.cache import content_fingerprint, record_damage
from preprocess.dataset import list_dataset
from preprocess.incremental import stat_listing
from tests.preprocess.mlperf_reference import reference_crop

SIZES = [(120, 160), (160, 120), (256, 256), (90, 70)]
CONTENT = ("images.npy", "digests.npy", "labels.npy", "files.txt")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    write_val_set(root / "data", 12, sizes=SIZES, seed=4)
    return root / "data"


@pytest.fixture
def data(small_set, tmp_path):
    shutil.copytree(small_set, tmp_path / "data")
    return tmp_path / "data"


def build(data, cache_dir, **kwargs):
    return build_cache("resnet50", data, cache_dir, workers=2, quiet=True, **kwargs)


def assert_same_as_fresh_build(data, cache_dir, tmp_path):
    fresh = build(data, tmp_path / "fresh", force=True)
    for name in CONTENT:
        assert (cache_dir / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert load_cache(cache_dir, "resnet50").fingerprint == fresh.fingerprint


def test_unchanged_rerun_reads_no_image_and_keeps_the_fingerprint(data, tmp_path):
    first = build(data, tmp_path / "c")
    again = build(data, tmp_path / "c")
    assert (again.already_complete, again.processed) == (True, 0)
    assert again.fingerprint == first.fingerprint
    assert load_cache(tmp_path / "c", "resnet50").fingerprint == first.fingerprint


def test_an_overwritten_image_is_the_only_one_recropped(data, tmp_path, caplog):
    cache_dir = tmp_path / "c"
    first = build(data, cache_dir)
    before = np.load(cache_dir / "images.npy").copy()
    # Another photo under the same name:
    edited = data / "ILSVRC2012_val_00000005.JPEG"
    write_image(edited, textured_image(200, 150, seed=999))
    caplog.set_level(logging.INFO, logger="preprocess")
    again = build(data, cache_dir)
    assert again.processed == 1 and not again.already_complete
    assert again.changes == {"changed": 1, "added": 0, "removed": 0, "damaged": 0}
    assert "re-cropped 1 changed image, 0 added, 0 removed; 1 processed" in again.line()
    assert again.fingerprint != first.fingerprint
    after = load_cache(cache_dir, "resnet50")
    assert np.array_equal(after.read(4, 5)[0], reference_crop(edited, "resnet50"))
    unchanged = [i for i in range(12) if i != 4]
    assert np.array_equal(after.read(0, 12)[unchanged], before[unchanged])
    assert "copying" not in caplog.text  # same rows: updated in place, not copied
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_same_size_and_mtime_swap_is_caught_by_ctime_and_inode(data, tmp_path):
    """Two files of one archive can share size and mtime; a swap by rename is still seen."""
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    a, b = data / "ILSVRC2012_val_00000001.JPEG", data / "ILSVRC2012_val_00000002.JPEG"
    b.write_bytes(a.read_bytes()[:-2] + b"\xff\xd9")  # same size as a, other content
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    a_sig = stat_listing(list_dataset(data))[0]
    os.replace(b, a)
    os.utime(a, ns=(int(a_sig[1]), int(a_sig[1])))  # mtime and size as recorded for a
    write_image(b, textured_image(120, 160, seed=77))
    again = build(data, cache_dir)
    assert again.changes["changed"] == 2 and again.processed == 2
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_deleted_and_added_images(data, tmp_path):
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    lines = (data / "val_map.txt").read_text().splitlines()
    (data / lines[3].split()[0]).unlink()
    write_image(data / "new_a.JPEG", textured_image(140, 200, seed=50))
    write_image(data / "new_b.JPEG", textured_image(200, 140, seed=51))
    lines = lines[:3] + lines[4:7] + ["new_a.JPEG 17"] + lines[7:] + ["new_b.JPEG 18"]
    (data / "val_map.txt").write_text("\n".join(lines) + "\n")
    again = build(data, cache_dir)
    assert again.changes == {"changed": 0, "added": 2, "removed": 1, "damaged": 0}
    assert again.processed == 2 and again.images == 13
    assert "re-cropped 0 changed images, 2 added, 1 removed" in again.line()
    cache = load_cache(cache_dir, "resnet50")
    assert cache.files[6] == "new_a.JPEG" and cache.labels[6] == 17
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_a_deleted_listed_image_is_an_error_that_leaves_a_resumable_cache(data, tmp_path):
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    (data / "ILSVRC2012_val_00000007.JPEG").unlink()
    with pytest.raises(UserError, match=r"1 listed image\(s\) cannot be read.*missing") as err:
        build(data, cache_dir)
    assert err.value.exit_code == 2
    with pytest.raises(UserError, match="incomplete"):
        load_cache(cache_dir, "resnet50")
    write_image(data / "ILSVRC2012_val_00000007.JPEG", textured_image(99, 120, seed=5))
    again = build(data, cache_dir)
    assert again.processed == 1
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_zeroed_images_npy_fails_to_read_then_the_next_build_repairs_it(data, tmp_path):
    cache_dir = tmp_path / "c"
    first = build(data, cache_dir)
    cache = load_cache(cache_dir, "resnet50")
    images = np.load(cache_dir / "images.npy", mmap_mode="r+")
    images[:] = 0  # someone wrote into the cache
    images.flush()
    del images
    with pytest.raises(UserError) as err:
        load_cache(cache_dir, "resnet50").read(0, 4)
    assert str(err.value) == (
        f"the cache at {cache_dir} is damaged: image 0 ({cache.files[0]}) no longer matches "
        f"the digest written when it was cropped; rerun preprocess to re-crop it"
    )
    again = build(data, cache_dir)
    assert not again.already_complete and again.processed == 12
    assert again.changes["damaged"] == 12 and again.fingerprint == first.fingerprint
    assert not (cache_dir / "damaged.json").exists()
    assert_same_as_fresh_build(data, cache_dir, tmp_path)
    assert build(data, cache_dir).already_complete


def test_damage_that_keeps_mtime_is_recorded_by_read_and_recropped(data, tmp_path):
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    path = cache_dir / "images.npy"
    stamp = path.stat()
    images = np.load(path, mmap_mode="r+")
    images[7, 100, 100, 0] ^= 1  # one flipped bit, as a bad disk could
    images.flush()
    del images
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert build(data, cache_dir).already_complete  # size and mtime alone cannot see it
    cache = load_cache(cache_dir, "resnet50")
    assert cache.read(0, 7).shape == (7, 224, 224, 3)  # rows before it read fine
    with pytest.raises(UserError, match=r"image 7 \(ILSVRC2012_val_00000008.JPEG\)"):
        cache.normalized(5, 9)
    recorded = json.loads((cache_dir / "damaged.json").read_text())["rows"]
    assert [(r["index"], r["file"]) for r in recorded] == [(7, "ILSVRC2012_val_00000008.JPEG")]
    again = build(data, cache_dir)
    assert again.processed == 1 and again.changes["damaged"] == 1
    assert not (cache_dir / "damaged.json").exists()
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_damage_a_reader_records_during_an_update_is_kept_for_the_next(data, tmp_path, monkeypatch):
    """Readers take no lock: damage recorded after the build read damaged.json must outlive
    that build (which only clears the stale entry it read), so the next one re-crops it."""
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    path = cache_dir / "images.npy"
    stamp = path.stat()
    images = np.load(path, mmap_mode="r+")
    images[7, 100, 100, 0] ^= 1
    images.flush()
    del images
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    record_damage(cache_dir, [{"index": 3, "file": "gone.JPEG", "digest": "00"}])  # stale
    load_previous = build_module.load_previous

    def load_then_a_reader_finds_damage(*args):
        previous = load_previous(*args)
        with pytest.raises(UserError, match=r"image 7 \("):
            load_cache(cache_dir, "resnet50").read(7, 8)
        return previous

    monkeypatch.setattr(build_module, "load_previous", load_then_a_reader_finds_damage)
    assert build(data, cache_dir).already_complete
    monkeypatch.undo()
    again = build(data, cache_dir)
    assert again.processed == 1 and again.changes["damaged"] == 1
    assert not (cache_dir / "damaged.json").exists()
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_read_into_a_given_buffer_and_argument_checks(data, tmp_path):
    build(data, tmp_path / "c")
    cache = load_cache(tmp_path / "c", "resnet50")
    out = np.full((3, 224, 224, 3), 7, dtype=np.uint8)
    assert cache.read(2, 5, out=out) is out
    assert np.array_equal(out, cache.images[2:5])
    assert cache.read(4, 4).shape == (0, 224, 224, 3)
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        cache.read(0, 2, out=out)
    with pytest.raises(IndexError):
        cache.read(10, 13)


def test_fingerprint_is_the_content_not_the_place(data, tmp_path):
    first = build(data, tmp_path / "c1")
    shutil.copytree(data, tmp_path / "moved", copy_function=shutil.copy)
    moved = build_cache("resnet50", tmp_path / "moved", tmp_path / "c2", workers=2, quiet=True)
    assert moved.fingerprint == first.fingerprint
    cache = load_cache(tmp_path / "c1", "resnet50")
    assert cache.fingerprint == content_fingerprint(
        cache.manifest["config"], cache.digests, cache.labels, cache.files
    )
    other = build_cache("mobilenet_v1", data, tmp_path / "c3", workers=2, quiet=True)
    assert other.fingerprint != first.fingerprint


def test_edited_labels_or_digests_file_is_refused_on_load(data, tmp_path):
    cache_dir = tmp_path / "c"
    build(data, cache_dir)
    labels = np.load(cache_dir / "labels.npy")
    labels[0] = (labels[0] + 1) % 1000
    np.save(cache_dir / "labels.npy", labels)
    with pytest.raises(UserError, match="digests, labels or file names do not match"):
        load_cache(cache_dir, "resnet50")
    again = build(data, cache_dir)  # an untrustworthy cache is rebuilt whole
    assert again.processed == 12
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_force_recrops_everything(data, tmp_path):
    build(data, tmp_path / "c")
    forced = build(data, tmp_path / "c", force=True)
    assert forced.processed == 12 and forced.changes is None


def test_left_out_file_is_rechecked_and_replaced_file_recropped(data, tmp_path):
    cache_dir = tmp_path / "c"
    (data / "bad.JPEG").write_text("not an image")
    with open(data / "val_map.txt", "a") as f:
        f.write("bad.JPEG 3\n")
    first = build(data, cache_dir, skip_bad=True)
    assert first.skipped == ("bad.JPEG",) and first.images == 12
    assert build(data, cache_dir, skip_bad=True).already_complete
    with pytest.raises(UserError, match="left out of the cache by --skip-bad"):
        build(data, cache_dir)
    write_image(data / "bad.JPEG", textured_image(130, 170, seed=8))
    fixed = build(data, cache_dir, skip_bad=True)
    assert fixed.processed == 1 and fixed.images == 13 and fixed.skipped == ()
    assert_same_as_fresh_build(data, cache_dir, tmp_path)


def test_rerun_of_a_cache_holding_no_image_is_a_no_op(tmp_path, run_preprocess_cli):
    """Every listed image unreadable: --skip-bad leaves all out, and the same command again
    finds nothing to do instead of failing on the empty cache."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"bad{i}.JPEG").write_text("not an image")
    (data / "val_map.txt").write_text("".join(f"bad{i}.JPEG {i}\n" for i in range(3)))
    args = ["--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c")]
    first = run_preprocess_cli(*args, "--quiet", "--skip-bad")
    assert first.returncode == 0, first.stderr
    assert "0 images cached" in first.stdout and "skipped 3 unreadable" in first.stdout
    again = run_preprocess_cli(*args, "--quiet", "--skip-bad")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert again.stdout.strip().endswith(
        f"0 images already cached in {tmp_path / 'c'}, nothing to do"
    )
