"""File names a hostile data set can hold: not UTF-8, NUL, line breaks, U+2028 and kin.

Each is either cached and read back exactly (a rerun has nothing to do) or refused in
one sentence naming the file, by the real ``python -m preprocess`` process. Also: decoding
from the file's bytes gives exactly ``cv2.imread``'s pixels on every kind of file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fixtures.images import textured_image, write_image
from preprocess import build_cache, crop_uint8, load_cache
from preprocess.cache import FILES_NAME
from preprocess.recipes import decode
from tests.preprocess.conftest import REPO_ROOT

SYNSET = "n01440764"
NOT_UTF8 = os.fsdecode(b"bad\xff.JPEG")  # what os.scandir gives for that name
# Names str.splitlines() would cut in two; all are legal on Linux.
LINE_LIKE = ["a\u2028b.JPEG", "c\u2029d.JPEG", "e\x85f.JPEG", "g\x1ch.JPEG", "i\rj.JPEG"]


def cli(run_preprocess_cli, data: Path, cache: Path, *extra: str):
    return run_preprocess_cli(
        "--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(cache), "--quiet",
        *extra,
    )  # fmt: skip


def error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def synset_set(root: Path, names: list[str]) -> Path:
    """A one-synset torchvision folder holding ``names`` (str, surrogate-escaped allowed)."""
    folder = root / "data" / SYNSET
    for k, name in enumerate(names):
        write_image(folder / f"tmp{k}.JPEG", textured_image(120 + k, 150, seed=k))
        # cv2.imwrite cannot take such names either: rename with the bytes path.
        os.rename(folder / f"tmp{k}.JPEG", os.fsencode(folder) + b"/" + os.fsencode(name))
    return root / "data"


# ------------------------------------------------------------------ not UTF-8


def test_a_name_that_is_not_utf8_is_cached_and_read_back(tmp_path, run_preprocess_cli):
    data = synset_set(tmp_path, [NOT_UTF8, "ok.JPEG"])
    first = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert first.returncode == 0, first.stderr  # cv2.imread(path) died with SIGSEGV here
    again = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    cache = load_cache(tmp_path / "cache", "resnet50")
    assert cache.files == [f"{SYNSET}/{NOT_UTF8}", f"{SYNSET}/ok.JPEG"]
    # files.txt holds the name's own bytes.
    written = (tmp_path / "cache" / FILES_NAME).read_bytes()
    assert written == b"n01440764/bad\xff.JPEG\nn01440764/ok.JPEG\n"
    assert np.array_equal(cache.read(0, 1)[0], crop_uint8(data / SYNSET / NOT_UTF8, "resnet50"))


def test_an_unreadable_file_with_such_a_name_is_one_sentence_or_left_out(
    tmp_path, run_preprocess_cli
):
    data = synset_set(tmp_path, ["ok.JPEG"])
    (data / SYNSET / NOT_UTF8).write_bytes(b"not an image")
    refused = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert refused.returncode == 2
    assert "cannot be read, the first being" in error_line(refused)
    skipped = cli(run_preprocess_cli, data, tmp_path / "cache", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    cache = load_cache(tmp_path / "cache", "resnet50")
    assert cache.files == [f"{SYNSET}/ok.JPEG"]
    assert [s["file"] for s in cache.manifest["skipped"]] == [f"{SYNSET}/{NOT_UTF8}"]
    again = cli(run_preprocess_cli, data, tmp_path / "cache", "--skip-bad")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


# ------------------------------------------------------------------ line breaks and kin


def test_names_splitlines_would_cut_round_trip_from_synset_folders(tmp_path, run_preprocess_cli):
    data = synset_set(tmp_path, LINE_LIKE)
    first = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    again = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert load_cache(tmp_path / "cache", "resnet50").files == sorted(
        f"{SYNSET}/{name}" for name in LINE_LIKE
    )


def test_names_splitlines_would_cut_round_trip_from_a_val_map(tmp_path, run_preprocess_cli):
    names = [n for n in LINE_LIKE if "\r" not in n]  # \r ends a val_map line, as for MLPerf
    data = synset_set(tmp_path, names) / SYNSET
    (data / "val_map.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    first = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    again = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    cache = load_cache(tmp_path / "cache", "resnet50")
    assert cache.files == names and cache.labels.tolist() == list(range(len(names)))


def test_a_name_with_a_newline_is_refused_naming_it(tmp_path, run_preprocess_cli):
    data = synset_set(tmp_path, ["ok.JPEG", "two\nlines.JPEG"])
    result = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: {data / SYNSET} holds a file whose name contains a line break "
        f"('two\\nlines.JPEG'): rename or remove it"
    )
    assert not (tmp_path / "cache").exists()


def test_files_txt_keeps_the_format_earlier_caches_have(tmp_path):
    """One UTF-8 name per line: a cache written before these changes reads the same."""
    data = synset_set(tmp_path, ["b.JPEG", "a.JPEG"])
    build_cache("resnet50", data, tmp_path / "cache", workers=1, quiet=True)
    text = f"{SYNSET}/a.JPEG\n{SYNSET}/b.JPEG\n"
    assert (tmp_path / "cache" / FILES_NAME).read_bytes() == text.encode()


# ------------------------------------------------------------------ NUL in a val_map


def test_a_nul_byte_in_a_val_map_path_is_refused_with_its_line(tmp_path, run_preprocess_cli):
    data = synset_set(tmp_path, ["ok.JPEG"]) / SYNSET
    (data / "val_map.txt").write_text("ok.JPEG 1\n\nbad\0name.JPEG 2\n")
    result = cli(run_preprocess_cli, data, tmp_path / "cache")
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: {data / 'val_map.txt'} line 3 has a NUL byte in its path "
        f"'bad\\x00name.JPEG': no file can have that name"
    )


# ------------------------------------------------------------------ decoding from bytes


def exif_rotated(folder: Path) -> list[Path]:
    """The same photo under each of the 8 EXIF orientations."""
    from PIL import Image

    rgb = cv2.cvtColor(textured_image(90, 160, seed=4), cv2.COLOR_BGR2RGB)
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = folder / f"exif_{orientation}.jpg"
        Image.fromarray(rgb).save(path, "JPEG", quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


def test_decoding_the_bytes_equals_cv2_imread_on_every_kind_of_file(image_files, tmp_path):
    """Sample photos, generated shapes, grayscale, RGBA PNG, CMYK JPEG, 16-bit PNG and
    EXIF-rotated JPEGs: the pixels MLPerf's ``cv2.imread(path)`` gives, bit for bit."""
    samples = sorted((REPO_ROOT / "pipeline" / "sample").glob("*.jpg"))
    assert len(samples) >= 4
    deep = write_image(tmp_path / "deep.png", (textured_image(70, 90, 8).astype(np.uint16) * 257))
    rotated = exif_rotated(tmp_path)
    names = {p.name for p in image_files}
    assert {"camera_gray.jpg", "rgba.png", "cmyk.jpg"} <= names
    for path in [*samples, *image_files, deep, *rotated]:
        got, reason = decode(str(path))
        want = cv2.imread(str(path))
        assert reason is None and got.dtype == np.uint8, path.name
        assert np.array_equal(got, want), f"{path.name} decodes differently"
    # The EXIF orientation is really applied (so the comparison above covers it).
    shapes = [cv2.imread(str(p)).shape for p in rotated]
    assert shapes[0] == (90, 160, 3) and shapes[5] == (160, 90, 3)
    upright = cv2.imread(str(rotated[0]))
    assert not np.array_equal(decode(str(rotated[2]))[0], upright)
