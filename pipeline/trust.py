"""Which fetched files are trusted: their integrity records, and whether a file is the model.

Each file the fetcher writes gets a sidecar ``<file>.sha256.json`` (size, sha256, source; an
extracted graph also its archive's sha256, member and origin): later runs refuse a changed
file and reuse a matching one offline. A digest is recorded only once the file parsed as
the expected frozen graph; one that did not (an HTML error page, say) is moved to
``<file>.rejected``, with its record, so a rerun fetches the file again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core.errors import UserError
from core.files import atomic_path, sha256_file
from core.profiles import ModelProfile

logger = logging.getLogger(__name__)


class NotTheModelError(UserError):
    """The file is not the expected frozen graph: it must never be recorded as trusted."""


# ---------------------------------------------------------------- integrity records


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def read_record(path: Path) -> dict | None:
    record_path = sidecar(path)
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        int(record["size"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"integrity record {record_path} is unreadable ({err}); delete it and {path.name} "
            "and rerun to fetch the file again"
        ) from None
    return record


def write_record(path: Path, *, source: str, digest: str | None = None, **extra) -> None:
    """Write ``path``'s sidecar: its size, sha256 and source."""
    digest = digest or sha256_file(path)
    record = {"file": path.name, "size": path.stat().st_size, "sha256": digest, "source": source}
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(json.dumps({**record, **extra}, indent=2) + "\n")


def forget_if_from_elsewhere(path: Path, source: str) -> None:
    """Delete a fetched file (and its record) that another source gave: a file of the same
    name from another URL is another file, fetched again rather than reused."""
    record = read_record(path) if path.exists() else None
    if record is not None and record.get("source") != source:
        logger.info("%s came from %s, not %s: fetching it again", path, record["source"], source)
        path.unlink()
        sidecar(path).unlink(missing_ok=True)


def set_aside(
    path: Path, why: str, advice: str = "check the URL (or save the real file there) and rerun"
) -> UserError:
    """Rename a file that must not be trusted to ``<file>.rejected`` and drop its record."""
    rejected = path.with_name(path.name + ".rejected")
    os.replace(path, rejected)
    sidecar(path).unlink(missing_ok=True)
    return UserError(f"{why}; moved it to {rejected}: {advice}")


def verify_against_record(path: Path, pin: str | None) -> str:
    """Check a file in dest_dir against its record (if any) and the pin; return its sha256."""
    digest, size = sha256_file(path), path.stat().st_size
    record = read_record(path)
    if record is not None and (size != record["size"] or digest != record["sha256"]):
        raise UserError(
            f"{path} changed on disk since it was fetched ({size} bytes, sha256 {digest}; "
            f"recorded {record['size']} bytes, sha256 {record['sha256']}): delete it and "
            f"{sidecar(path).name} and rerun to fetch it again"
        )
    if pin and digest != pin:
        why = f"{path} has sha256 {digest} but --sha256 expects {pin}"
        raise set_aside(path, why, "check the URL and the pinned digest, then rerun")
    return digest


def verify_or_record(
    path: Path, pin: str | None, *, source: str, profile: ModelProfile, **extra
) -> None:
    """``verify_against_record``, then record a file found without a record: only once it
    parsed as ``profile``'s frozen graph."""
    digest = verify_against_record(path, pin)
    if read_record(path) is None:
        refuse_unless_model(path, profile)
        logger.info("recording the sha256 of %s, found without an integrity record", path)
        write_record(path, source=source, digest=digest, **extra)


def extracted_is_current(
    final: Path,
    archive: Path,
    pin: str | None,
    profile: ModelProfile,
    archive_sha: str | None = None,
    *,
    origin: str,
) -> bool:
    """Whether ``final`` was extracted from this archive (or the pinned one), which came
    from ``origin`` (the URL or local archive asked for), and is intact.

    Without the archive on disk, the digest recorded at extraction time stands in for it,
    so a present graph needs no network access. A graph found in place without a record
    (put there by hand, as the offline instructions say) is taken as ``origin``'s.
    """
    if not final.exists():
        return False
    record = read_record(final)
    if record is None:
        if pin or archive.exists():
            return False  # re-extract: it is cheap and makes the provenance known
        verify_or_record(final, None, source="found in place", profile=profile, origin=origin)
        return True
    if record.get("origin") != origin:  # another archive's graph (or an older record)
        return False
    recorded_archive = record.get("archive_sha256")
    if pin and recorded_archive != pin:
        return False
    if archive_sha is None and archive.exists():
        archive_record = read_record(archive)
        archive_sha = archive_record["sha256"] if archive_record else sha256_file(archive)
    if archive_sha is not None and recorded_archive != archive_sha:
        return False
    verify_against_record(final, None)
    return True


# ---------------------------------------------------------------- is it the model?


def refuse_unless_model(path: Path, profile: ModelProfile) -> None:
    """Move ``path`` aside (nothing recorded) unless it is ``profile``'s frozen graph."""
    try:
        check_is_model(path, profile)
    except NotTheModelError as err:
        raise set_aside(path, str(err)) from None


def check_is_model(path: Path, profile: ModelProfile, shown: str | None = None) -> None:
    """NotTheModelError unless ``path`` parses as a GraphDef with the profile's input and
    logits nodes. ``shown`` names the file in messages (e.g. ``archive:member``)."""
    from convert.graph import node_name, read_graph_def

    shown = shown or str(path)
    if plainly_not := plainly_not_a_graph(path, shown):
        raise plainly_not
    try:
        graph_def = read_graph_def(path)
    except UserError as err:
        raise NotTheModelError(f"{shown} is not a TensorFlow frozen graph ({err})") from None
    names = {node.name for node in graph_def.node}
    for tensor in (profile.input_tensor, profile.logits_tensor):
        if node_name(tensor) not in names:
            raise NotTheModelError(
                f"{shown} is a TensorFlow graph but not MLPerf's {profile.name}: it has no "
                f"node {node_name(tensor)!r}"
            )


def plainly_not_a_graph(path: Path, shown: str) -> NotTheModelError | None:
    """Say what a file plainly not a binary graph looks like, judged by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<head", b"<body")) or b"<html" in head:
        looks = "an HTML page"
    elif head.startswith(b"<"):
        looks = "an XML document"
    elif head.startswith((b"{", b"[")):
        looks = "a JSON document"
    elif not head:
        looks = "an empty file"
    else:
        return None
    return NotTheModelError(f"{shown} is not a TensorFlow frozen graph (it looks like {looks})")
