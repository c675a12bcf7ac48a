"""build_cache / load_cache: exact crops, no-op reruns, staleness, bad input, --skip-bad."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from core.errors import UserError
from core.profiles import PROFILES
from fixtures.images import (
    textured_image,
    write_bad_files,
    write_cmyk_jpeg,
    write_image,
    write_val_set,
)
from preprocess import build_cache, load_cache, mlperf_preprocess, normalize
from tests.preprocess.conftest import MODELS
from tests.preprocess.mlperf_reference import reference_crop, reference_preprocess

SMALL_SIZES = [(120, 160), (160, 120), (256, 256), (90, 70), (131, 257)]


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    """A val_map set with awkward files mixed in: grayscale, RGBA PNG, CMYK JPEG."""
    root = tmp_path_factory.mktemp("valset")
    entries = write_val_set(root, 16, sizes=SMALL_SIZES, seed=1)
    write_image(root / "extra" / "gray.JPEG", textured_image(150, 210, 11, channels=1))
    rgba = np.dstack([textured_image(140, 190, 12), textured_image(140, 190, 13, channels=1)])
    write_image(root / "extra" / "rgba.png", rgba)
    write_cmyk_jpeg(root / "extra" / "cmyk.jpg", textured_image(170, 230, 14))
    entries += [("extra/gray.JPEG", 5), ("extra/rgba.png", 999), ("extra/cmyk.jpg", 0)]
    (root / "val_map.txt").write_text("".join(f"{f} {lab}\n" for f, lab in entries))
    return root, entries


def copy_set(val_set, tmp_path):
    root, entries = val_set
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data", list(entries)


@pytest.mark.parametrize("model", MODELS)
def test_cache_plus_normalize_equals_mlperf(val_set, tmp_path, model):
    root, entries = val_set
    summary = build_cache(model, root, tmp_path / "cache", workers=2, quiet=True)
    assert (summary.images, summary.processed, summary.already_complete) == (19, 19, False)
    assert summary.skipped == () and summary.images_per_second > 0

    cache = load_cache(tmp_path / "cache", model)
    assert len(cache) == 19
    assert cache.images.shape == (19, 224, 224, 3) and cache.images.dtype == np.uint8
    assert not cache.images.flags.writeable
    assert cache.labels.dtype == np.int64
    assert cache.labels.tolist() == [lab for _, lab in entries]
    assert cache.files == [f for f, _ in entries]
    assert cache.fingerprint == summary.fingerprint and len(cache.fingerprint) == 64
    assert cache.manifest["complete"] and cache.manifest["count"] == 19
    for i, (name, _) in enumerate(entries):
        assert np.array_equal(cache.images[i], reference_crop(root / name, model)), name
        floats = normalize(cache.images[i : i + 1], model)[0]
        assert np.array_equal(floats, reference_preprocess(root / name, model)), name
        assert np.array_equal(floats, mlperf_preprocess(root / name, model)), name
    assert np.array_equal(cache.normalized(3, 7), normalize(cache.images[3:7], model))
    assert cache.profile is PROFILES[model]
    assert len(load_cache(tmp_path / "cache", cache.profile)) == 19  # a profile or its name
    record = summary.to_json()
    assert (record["model_name"], record["cache_dir"]) == (model, str(tmp_path / "cache"))
    assert json.loads(json.dumps(record)) == record


def test_rerun_on_complete_cache_does_no_work(val_set, tmp_path):
    root, _ = val_set
    first = build_cache("resnet50", root, tmp_path / "c", workers=2, quiet=True)

    def stamps_of(folder):  # the lock file records each run's holder: not cache content
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != ".lock"}

    stamps = stamps_of(tmp_path / "c")
    again = build_cache("resnet50", root, tmp_path / "c", workers=2, quiet=True)
    assert again.already_complete and again.processed == 0 and again.images == 19
    assert again.seconds < 1.0
    assert again.fingerprint == first.fingerprint
    assert stamps_of(tmp_path / "c") == stamps
    assert "nothing to do" in again.line()


def test_changed_limit_listing_or_model_reuses_crops_or_rebuilds(val_set, tmp_path, caplog):
    """A shorter listing or new labels reuse the crops; another model's recipe redoes all."""
    data, entries = copy_set(val_set, tmp_path)
    cache_dir = tmp_path / "c"
    caplog.set_level(logging.INFO, logger="preprocess")
    fingerprints = {build_cache("resnet50", data, cache_dir, workers=1, quiet=True).fingerprint}

    limited = build_cache("resnet50", data, cache_dir, limit=5, workers=1, quiet=True)
    assert (limited.processed, limited.images) == (0, 5)
    assert limited.changes == {"changed": 0, "added": 0, "removed": 14, "damaged": 0}
    assert "re-cropped 0 changed images, 0 added, 14 removed" in limited.line()
    assert load_cache(cache_dir, "resnet50").files == [f for f, _ in entries[:5]]
    fingerprints.add(limited.fingerprint)

    name, label = entries[2]
    entries[2] = (name, (label + 1) % 1000)
    (data / "val_map.txt").write_text("".join(f"{f} {lab}\n" for f, lab in entries))
    relabelled = build_cache("resnet50", data, cache_dir, limit=5, workers=1, quiet=True)
    assert relabelled.processed == 0 and not relabelled.already_complete
    assert load_cache(cache_dir, "resnet50").labels[2] == entries[2][1]
    fingerprints.add(relabelled.fingerprint)

    caplog.clear()
    other = build_cache("mobilenet_v1", data, cache_dir, limit=5, workers=1, quiet=True)
    assert other.processed == 5 and "recipe" in caplog.text
    fingerprints.add(other.fingerprint)
    assert len(fingerprints) == 4
    with pytest.raises(UserError, match="built for mobilenet_v1, not resnet50"):
        load_cache(cache_dir, "resnet50")
    cache = load_cache(cache_dir, "mobilenet_v1")
    assert np.array_equal(cache.images[4], reference_crop(data / entries[4][0], "mobilenet_v1"))
    back = build_cache("mobilenet_v1", data, cache_dir, workers=1, quiet=True)
    assert back.processed == 14 and back.changes["added"] == 14


def test_load_cache_errors(tmp_path, val_set):
    with pytest.raises(UserError, match="no preprocessed cache"):
        load_cache(tmp_path / "absent", "resnet50")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable manifest.json"):
        load_cache(tmp_path / "empty", "resnet50")
    data, _ = copy_set(val_set, tmp_path)
    (data / "extra" / "cmyk.jpg").unlink()
    with pytest.raises(UserError):
        build_cache("resnet50", data, tmp_path / "c", workers=2, quiet=True)
    with pytest.raises(UserError, match=r"incomplete \(0 of 19 images done\)"):
        load_cache(tmp_path / "c", "resnet50")


@pytest.mark.parametrize("kind", ["empty", "not an image", "truncated", "missing"])
def test_each_kind_of_bad_file_fails_with_exit_code_2(val_set, tmp_path, kind):
    data, entries = copy_set(val_set, tmp_path)
    name = {v: k for k, v in write_bad_files(data / "bad").items()}[kind]
    entries.insert(7, (f"bad/{name}", 3))
    (data / "val_map.txt").write_text("".join(f"{f} {lab}\n" for f, lab in entries))
    with pytest.raises(UserError) as err:
        build_cache("resnet50", data, tmp_path / "c", workers=2, quiet=True)
    assert err.value.exit_code == 2
    assert str(data / "bad" / name) in str(err.value)
    assert str(err.value).startswith("1 listed image(s) cannot be read")
    assert not (tmp_path / "c" / "images.npy").exists()


def test_all_bad_files_counted_then_skip_bad(val_set, tmp_path, run_preprocess_cli):
    data, entries = copy_set(val_set, tmp_path)
    bad_names = list(write_bad_files(data / "bad"))
    good = list(entries)
    for k, name in enumerate(bad_names):
        entries.insert(3 + 4 * k, (f"bad/{name}", k))
    (data / "val_map.txt").write_text("".join(f"{f} {lab}\n" for f, lab in entries))
    cache_dir = tmp_path / "c"
    args = ["--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(cache_dir)]

    failed = run_preprocess_cli(*args, "--quiet")
    assert failed.returncode == 2
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: 4 listed image(s) cannot be read, the first being {data / 'bad' / bad_names[0]} "
        f"(empty file): fix or remove them, or rerun with --skip-bad to leave them out"
    ]
    assert "Traceback" not in failed.stderr

    skipped = run_preprocess_cli(*args, "--quiet", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "19 images cached" in skipped.stdout and "skipped 4 unreadable" in skipped.stdout
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert [s["file"] for s in manifest["skipped"]] == [f"bad/{n}" for n in bad_names]
    cache = load_cache(cache_dir, "resnet50")
    assert cache.files == [f for f, _ in good]
    assert cache.labels.tolist() == [lab for _, lab in good]
    for i, (name, _) in enumerate(good):
        assert np.array_equal(cache.images[i], reference_crop(data / name, "resnet50")), name

    # Reusing that cache without --skip-bad still reports the files it left out...
    with pytest.raises(
        UserError, match="4 listed image.*left out of the cache by --skip-bad"
    ) as err:
        build_cache("resnet50", data, cache_dir, quiet=True)
    assert err.value.exit_code == 2
    again = build_cache("resnet50", data, cache_dir, skip_bad=True, quiet=True)
    assert again.already_complete and len(again.skipped) == 4
    # ...and once they are fixed, the cache is rebuilt with them.
    for name in bad_names:
        write_image(data / "bad" / name, textured_image(100, 130, 21), quality=95)
    fixed = build_cache("resnet50", data, cache_dir, workers=2, quiet=True)
    assert (fixed.images, fixed.skipped) == (23, ())
    assert fixed.fingerprint != again.fingerprint


def test_synset_layout_through_cli_with_limit(tmp_path, run_preprocess_cli):
    entries = write_val_set(
        tmp_path / "data", 14, layout="synset", num_classes=3, sizes=SMALL_SIZES
    )
    cache_dir = tmp_path / "c"
    result = run_preprocess_cli(
        "--model", "mobilenet_v1", "--data-dir", str(tmp_path / "data"),
        "--cache-dir", str(cache_dir), "--limit", "9", "--workers", "2", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("preprocess mobilenet_v1: 9 images cached in")
    # --quiet: no bar, no info logs; the warning about a partial synset set remains.
    assert "img/s" not in result.stderr and "INFO" not in result.stderr
    assert "3 synset folders, not 1000" in result.stderr
    cache = load_cache(cache_dir, "mobilenet_v1")
    assert ["val/" + f for f in cache.files] == [f for f, _ in entries[:9]]
    assert cache.labels.tolist() == [lab for _, lab in entries[:9]]
    for i, (name, _) in enumerate(entries[:9]):
        want = reference_preprocess(tmp_path / "data" / name, "mobilenet_v1")
        assert np.array_equal(cache.normalized(i, i + 1)[0], want)


def test_argument_errors(val_set, tmp_path, run_preprocess_cli):
    root, _ = val_set
    with pytest.raises(UserError, match="--workers must be at least 1"):
        build_cache("resnet50", root, tmp_path / "c", workers=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create cache dir"):
        build_cache("resnet50", root, tmp_path / "file" / "cache")
    with pytest.raises(UserError, match="unknown model"):
        build_cache("vgg16", root, tmp_path / "c")
    missing = tmp_path / "nope"
    result = run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(missing), "--cache-dir", str(tmp_path / "c")
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: data dir {tmp_path / 'nope'} does not exist or is not a folder"
    )
