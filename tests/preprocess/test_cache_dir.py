"""Cache dirs that cannot be meant: the data dir itself, a folder above it, someone else's
folder, a read-only one. Each is refused in one sentence before anything is written."""

from __future__ import annotations

import os

import pytest

from core.errors import UserError
from fixtures.images import write_val_set
from preprocess import build_cache, load_cache
from tests.conftest import mounted_tmpfs


@pytest.fixture
def data(tmp_path):
    write_val_set(tmp_path / "data", 4, sizes=[(90, 120)], seed=2)
    return tmp_path / "data"


def error_of(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    return result.stderr.strip()


def test_cache_dir_equal_to_the_data_dir_is_refused(data, run_preprocess_cli):
    before = sorted(p.name for p in data.iterdir())
    result = run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(data)
    )  # fmt: skip
    assert error_of(result) == (
        f"error: cache dir {data} is the data dir {data}: give the cache a folder of its own"
    )
    assert sorted(p.name for p in data.iterdir()) == before


def test_cache_dir_above_the_data_dir_is_refused(data, tmp_path, run_preprocess_cli):
    result = run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(tmp_path)
    )  # fmt: skip
    assert error_of(result) == (
        f"error: cache dir {tmp_path} contains the data dir {data}: give the cache a folder "
        f"of its own"
    )


def test_a_folder_of_other_files_is_refused_naming_one(data, tmp_path, run_preprocess_cli):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "files.txt").write_text("my list")
    result = run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(mine)
    )  # fmt: skip
    assert error_of(result) == (
        f"error: cache dir {mine} holds notes.txt, which preprocess did not write: choose an "
        f"empty or new folder for the cache"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["files.txt", "notes.txt"]


def test_empty_new_or_own_folders_are_fine(data, tmp_path):
    (tmp_path / "empty").mkdir()
    build_cache("resnet50", data, tmp_path / "empty", quiet=True)
    build_cache("resnet50", data, tmp_path / "new" / "deeper", quiet=True)
    (tmp_path / "empty" / "README").write_text("a note beside our cache is left alone")
    assert build_cache("resnet50", data, tmp_path / "empty", quiet=True).already_complete
    assert len(load_cache(tmp_path / "new" / "deeper", "resnet50")) == 4
    killed = tmp_path / "killed"  # what a first build killed while writing leaves
    killed.mkdir()
    (killed / ".lock").write_text("")
    (killed / ".manifest.json.ab12cd34.tmp").write_text("half")
    assert build_cache("resnet50", data, killed, quiet=True).images == 4
    assert not list(killed.glob("*.tmp"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write: a read-only tmpfs as root (who ignores permissions),
    a chmod 555 folder otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, 1, read_only=True):
        yield folder


def test_read_only_cache_dir_is_refused_before_any_work(data, read_only_dir, run_preprocess_cli):
    result = run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(read_only_dir)
    )  # fmt: skip
    assert error_of(result).startswith(f"error: cache dir {read_only_dir} is not writable:")


# ------------------------------------------------------------------ a damaged manifest

DAMAGED = '{"format_version": 2, "config": '  # cut short, as by a full disk or an editor


def damaged_cache(data, folder):
    build_cache("resnet50", data, folder, quiet=True)
    (folder / "manifest.json").write_text(DAMAGED)
    return folder


def test_a_damaged_manifest_is_one_sentence_naming_force(data, tmp_path, run_preprocess_cli):
    cache = damaged_cache(data, tmp_path / "cache")
    args = ["--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(cache)]
    result = run_preprocess_cli(*args)
    assert error_of(result) == (
        f"error: the manifest.json of cache dir {cache} is damaged: rerun with --force to "
        f"rebuild the cache"
    )
    assert (cache / "manifest.json").read_text() == DAMAGED  # nothing touched
    forced = run_preprocess_cli(*args, "--force", "--quiet")
    assert forced.returncode == 0, forced.stderr
    assert "4 images cached" in forced.stdout and len(load_cache(cache, "resnet50")) == 4


def test_repair_rebuilds_a_damaged_manifest_and_leaves_a_sound_cache(data, tmp_path):
    cache = damaged_cache(data, tmp_path / "cache")
    summary = build_cache("resnet50", data, cache, quiet=True, repair=True)
    assert (summary.images, summary.processed) == (4, 4)
    assert len(load_cache(cache, "resnet50")) == 4
    assert build_cache("resnet50", data, cache, quiet=True, repair=True).already_complete
    # A manifest that parses but lacks what a finished cache has counts as damaged too.
    (cache / "manifest.json").write_text(
        '{"format_version": 2, "config": {"recipe": {}}, "complete": true, "count": 4}'
    )
    assert build_cache("resnet50", data, cache, quiet=True, repair=True).processed == 4


@pytest.mark.parametrize("how", [{"force": True}, {"repair": True}])
def test_a_damaged_manifest_beside_other_files_is_still_refused(data, tmp_path, how):
    cache = damaged_cache(data, tmp_path / "cache")
    (cache / "notes.txt").write_text("keep me")
    with pytest.raises(UserError) as refused:
        build_cache("resnet50", data, cache, quiet=True, **how)
    assert str(refused.value) == (
        f"cache dir {cache} holds notes.txt, which preprocess did not write: choose an "
        f"empty or new folder for the cache"
    )
    assert (cache / "manifest.json").read_text() == DAMAGED
    assert (cache / "notes.txt").read_text() == "keep me"
