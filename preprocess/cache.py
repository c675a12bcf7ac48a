"""The on-disk cache: one model per folder, uint8 crops in a memory-mappable ``.npy``.

Layout of a finished cache::

    images.npy      uint8 (N, 224, 224, 3) RGB crops (steps 1-3 of ``recipes.py``)
    digests.npy     uint8 (N, 32): sha256 of each crop, computed when it was written
    labels.npy      int64 (N,)
    files.txt       N relative file names, in listing order, one per line (see
                    ``write_file_names``)
    signatures.npy  int64 (N, 4): each source file's size, mtime_ns, ctime_ns, inode
    manifest.json   written last; ``complete: true`` only once the files above are final

``damaged.json`` (optional) lists rows whose bytes no longer match their digest, found by
``PreprocessedCache.read``; the next build re-crops them. While a build runs,
``*.partial.npy`` and ``journal.txt`` (see ``build.py``) hold the work so far, so a killed
build resumes instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import LOCK_NAME, atomic_path, write_text_atomic
from core.profiles import CROP_SIZE, ModelProfile, as_profile

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
IMAGES_NAME = "images.npy"
DIGESTS_NAME = "digests.npy"
LABELS_NAME = "labels.npy"
FILES_NAME = "files.txt"
SIGNATURES_NAME = "signatures.npy"
MANIFEST_NAME = "manifest.json"
DAMAGED_NAME = "damaged.json"
PARTIAL_IMAGES_NAME = "images.partial.npy"
PARTIAL_DIGESTS_NAME = "digests.partial.npy"
PARTIAL_SIGNATURES_NAME = "signatures.partial.npy"
JOURNAL_NAME = "journal.txt"
PARTIAL_NAMES = (PARTIAL_IMAGES_NAME, PARTIAL_DIGESTS_NAME, PARTIAL_SIGNATURES_NAME)
# Every name this tool writes into a cache dir (temporaries are ``.NAME.XXXX.tmp``).
OWN_NAMES = frozenset(
    (IMAGES_NAME, DIGESTS_NAME, LABELS_NAME, FILES_NAME, SIGNATURES_NAME, MANIFEST_NAME)
    + (DAMAGED_NAME, JOURNAL_NAME, LOCK_NAME)
    + PARTIAL_NAMES
)
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)
DIGEST_SIZE = 32


def config_key(config: dict) -> str:
    """sha256 of a JSON-able dict, independent of key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def crop_digest(crop: np.ndarray) -> bytes:
    """sha256 of one stored crop (C-contiguous uint8). sha256 rather than blake2b: with the
    CPU's SHA instructions it hashed 150 KB crops about twice as fast where measured."""
    return hashlib.sha256(memoryview(crop)).digest()


def mismatched_rows(crops: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """bool (n,): which of ``crops`` no longer match their recorded ``digests`` (n, 32)."""
    got = b"".join(map(crop_digest, np.ascontiguousarray(crops)))
    return (np.frombuffer(got, dtype=np.uint8).reshape(-1, DIGEST_SIZE) != digests).any(axis=1)


def content_fingerprint(
    config: dict, digests: np.ndarray, labels: np.ndarray, files: list[str]
) -> str:
    """Identity of a cache's content: recipe/OpenCV config, every crop's digest, every
    label and file name, in order. Moving the data elsewhere does not change it."""
    h = hashlib.sha256()
    recipe = {k: v for k, v in config.items() if k != "data_dir"}  # where, not what
    h.update(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode())
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    h.update(encode_names(files, ""))
    return h.hexdigest()


def encode_names(files: list[str], end: str = "\n") -> bytes:
    """The names joined by newlines (plus ``end``), each as the bytes of its file name:
    UTF-8, and a name that is not UTF-8 (surrogate-escaped by ``os.fsdecode``) as it is
    on disk, so that any name the file system gives can be written and read back."""
    return ("\n".join(files) + (end if files else "")).encode("utf-8", "surrogateescape")


def write_file_names(path: Path, files: list[str]) -> None:
    """``files.txt``: one name per line. Lines rather than JSON keep the file readable with
    any text tool and every cache written before readable; the one name a line cannot hold,
    one with a newline, is refused when the listing is made (``preprocess.dataset``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_names(files))


def read_file_names(path: Path) -> list[str]:
    """The names ``write_file_names`` wrote, exactly: split on "\\n" alone (``splitlines``
    would also split names holding U+2028, \\r or other line-like characters)."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    return text.split("\n")[:-1] if text else []


def file_stat(path: Path) -> dict:
    """Size and mtime of a file, as recorded for images.npy: a write into it changes them."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest as a dict, or None when it is absent, unreadable or not ours."""
    try:
        manifest = json.loads((cache_dir / MANIFEST_NAME).read_text())
        ours = (
            isinstance(manifest["config"]["recipe"], dict)
            and "format_version" in manifest
            and isinstance(manifest.get("count"), int)
            and isinstance(manifest.get("skipped", []), list)
            and all(isinstance(entry, dict) for entry in manifest.get("skipped", []))
            # A finished cache names its fingerprint: the builder and loader read it.
            and (not manifest.get("complete") or isinstance(manifest.get("fingerprint"), str))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if ours else None


def read_damage(cache_dir: Path) -> tuple[str, list[dict]]:
    """(raw text, entries) of ``damaged.json``; ("", []) when there is none or it is unreadable."""
    try:
        text = (cache_dir / DAMAGED_NAME).read_text()
        entries = json.loads(text)["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return "", []
    return text, [e for e in entries if isinstance(e, dict)]


def record_damage(cache_dir: Path, entries: list[dict]) -> bool:
    """Add rows to ``damaged.json`` (atomically); False when the folder cannot be written."""
    _, known = read_damage(cache_dir)
    rows = known + [e for e in entries if e not in known]
    try:
        write_text_atomic(cache_dir / DAMAGED_NAME, json.dumps({"rows": rows}, indent=1) + "\n")
    except OSError as err:
        log.warning("cannot record the damaged rows in %s: %s", cache_dir, err)
        return False
    return True


@dataclass
class PreprocessedCache:
    """A finished cache opened read-only. Read crops with ``read``: it checks each crop
    against the digest written when it was made. ``images`` is the raw memmap (unchecked)."""

    cache_dir: Path
    profile: ModelProfile
    images: np.ndarray  # uint8 (N, 224, 224, 3), read-only memmap
    labels: np.ndarray  # int64 (N,)
    files: list[str]
    manifest: dict = field(repr=False)
    fingerprint: str
    digests: np.ndarray = field(repr=False)  # uint8 (N, 32)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy crops ``start:stop`` (into ``out`` when given) and check each one's digest.

        A crop that no longer matches is a UserError naming the image; the row is recorded
        in ``damaged.json`` so the next ``python -m preprocess`` re-crops it.
        """
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} outside a cache of {len(self)} images")
        shape = (stop - start, *CROP_SHAPE)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}")
        out[...] = self.images[start:stop]  # one bulk copy from the memmap
        bad = mismatched_rows(out, self.digests[start:stop])
        if bad.any():
            self._damaged(start + int(bad.argmax()))
        return out

    def _damaged(self, index: int):
        name = self.files[index]
        recorded = record_damage(
            self.cache_dir,
            [{"index": index, "file": name, "digest": self.digests[index].tobytes().hex()}],
        )
        how = "rerun preprocess to re-crop it" if recorded else "rerun preprocess with --force"
        raise UserError(
            f"the cache at {self.cache_dir} is damaged: image {index} ({name}) no longer "
            f"matches the digest written when it was cropped; {how}"
        )

    def normalized(self, start: int, stop: int) -> np.ndarray:
        """MLPerf's float32 inputs for images ``start:stop`` (NHWC), read through ``read``."""
        from preprocess.recipes import normalize  # keeps cv2 out of load-only imports

        return normalize(self.read(start, stop), self.profile)


def load_cache(cache_dir: str | os.PathLike, profile: ModelProfile | str) -> PreprocessedCache:
    """Open a finished cache for a model; UserError if missing, incomplete or foreign."""
    cache_dir, profile = Path(cache_dir), as_profile(profile)
    rerun = f"run `python -m preprocess --model {profile.name} --cache-dir {cache_dir} ...` first"
    if not cache_dir.is_dir():
        raise UserError(f"no preprocessed cache at {cache_dir}: {rerun}")
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise UserError(f"{cache_dir} holds no readable {MANIFEST_NAME}: {rerun}")
    built_for = manifest["config"]["recipe"].get("model")
    if built_for != profile.name:
        raise UserError(f"the cache at {cache_dir} was built for {built_for}, not {profile.name}")
    if not manifest.get("complete"):
        done, count = manifest.get("done", 0), manifest.get("count")
        raise UserError(
            f"the cache at {cache_dir} is incomplete ({done} of {count} images done): "
            f"rerun the same preprocess command to finish it"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"the cache at {cache_dir} has an older layout: {rerun}")
    try:
        images, labels, files, digests = read_arrays(cache_dir, manifest)
    except ValueError as err:
        raise UserError(f"the cache at {cache_dir} {err}: {rerun}") from None
    _warn_if_opencv_changed(manifest)
    fingerprint = manifest["fingerprint"]
    return PreprocessedCache(
        cache_dir, profile, images, labels, files, manifest, fingerprint, digests
    )


def read_arrays(cache_dir: Path, manifest: dict):
    """(images memmap, labels, files, digests) of a finished cache, checked against its
    manifest: shapes, dtypes and content fingerprint. ValueError says what is wrong."""
    count = manifest.get("count")
    try:
        images = np.load(cache_dir / IMAGES_NAME, mmap_mode="r")
        labels = np.load(cache_dir / LABELS_NAME)
        digests = np.load(cache_dir / DIGESTS_NAME)
        files = read_file_names(cache_dir / FILES_NAME)
    except (OSError, ValueError) as err:
        raise ValueError(f"is damaged ({err})") from None
    if (
        images.shape != (count, *CROP_SHAPE)
        or images.dtype != np.uint8
        or labels.shape != (count,)
        or labels.dtype != np.int64
        or digests.shape != (count, DIGEST_SIZE)
        or digests.dtype != np.uint8
        or len(files) != count
    ):
        raise ValueError(f"does not match its manifest ({count} images)")
    fingerprint = content_fingerprint(manifest["config"], digests, labels, files)
    if fingerprint != manifest.get("fingerprint"):
        raise ValueError("is damaged (its digests, labels or file names do not match its manifest)")
    return images, labels, files, digests


def _warn_if_opencv_changed(manifest: dict) -> None:
    try:
        import cv2
    except ImportError:  # loading a cache does not need OpenCV
        return
    built_with = manifest["config"].get("opencv_version")
    if built_with != cv2.__version__:
        log.warning(
            "cache was built with OpenCV %s but %s is installed: rerun preprocess to refresh it",
            built_with,
            cv2.__version__,
        )
