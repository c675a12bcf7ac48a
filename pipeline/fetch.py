"""Fetch MLPerf's frozen graph for a model: resumable download, integrity record, safe unpack.

``fetch_checkpoint(model, dest_dir, url=..., sha256=...)`` returns the frozen ``.pb``'s path;
the source is the profile's URL or ``url`` (``http(s)://``, ``file://`` or a local path). A
local ``.pb`` is used in place; of a ``.tgz`` only the graph member is extracted. Each file
written into ``dest_dir`` gets a sidecar ``<file>.sha256.json`` (size, sha256): later runs
refuse a changed file and reuse a matching one offline. A digest is recorded only once the
file parsed as the model; one that did not (an HTML error page, say) is moved to
``<file>.rejected``. ``sha256`` pins the file the source names (the ``.pb`` or the ``.tgz``).
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import zlib
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from tqdm import tqdm

from core.cli import configure_logging, renamed_options, run_cli
from core.errors import UserError
from core.files import atomic_path, find_archive_member, is_archive_name, sha256_file
from core.profiles import MODEL_NAMES, ModelProfile, get_profile

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # also bounds each read: a stalled server ends in a resumable error
CHUNK_SIZE = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# --sha256 of pipeline.fetch and pipeline.run: one option, one meaning.
SHA256_HELP = (
    "expected sha256 of the file --checkpoint names (the .pb, or the .tgz), local or downloaded"
)


class NotTheModelError(UserError):
    """The file is not the expected frozen graph: it must never be recorded as trusted."""


def fetch_checkpoint(
    model_name: str,
    dest_dir: str | os.PathLike,
    *,
    url: str | None = None,
    sha256: str | None = None,
    quiet: bool = False,
) -> Path:
    """Return the path of ``model_name``'s frozen graph, downloading/extracting it if needed."""
    profile = get_profile(model_name)
    pin = _normalise_pin(sha256)
    dest_dir = Path(dest_dir)
    try:
        return _fetch(profile, url or profile.url, pin, dest_dir, quiet=quiet)
    except OSError as err:
        if err.errno in _DISK_FULL:
            # Downloads resume from their .part file and a downloaded archive is reused.
            raise UserError(
                f"the disk holding {dest_dir} is full (no space left on device): free some "
                "space and rerun the same command; a partial download resumes and what was "
                "fetched is kept"
            ) from None
        raise


def _fetch(profile: ModelProfile, source: str, pin: str | None, dest_dir: Path, *, quiet: bool):
    final = dest_dir / profile.checkpoint_filename
    member = profile.archive_member or profile.checkpoint_filename
    local = _local_path(source)
    if local is not None:
        return _fetch_local(local, final, member, pin, profile)

    name = _download_name(source, profile)
    if not is_archive_name(name):
        _forget_if_from_elsewhere(final, source)
        if final.exists():
            _verify_or_record(final, pin, source=source, profile=profile)
        else:
            _download(source, final, pin, quiet=quiet)
            _refuse_unless_model(final, profile)
            _record(final, source=source)
        return final

    archive = dest_dir / name
    _forget_if_from_elsewhere(archive, source)
    if final.exists() and _extracted_is_current(final, archive, pin, profile, origin=source):
        return final
    if not archive.exists():
        _download(source, archive, pin, quiet=quiet)
    archive_sha = _verify_against_record(archive, pin)
    try:
        extracted = _extract(archive, archive_sha, member, final, profile, origin=source)
    except NotTheModelError as err:
        raise _set_aside(archive, str(err)) from None
    if _read_record(archive) is None:
        _record(archive, source=source, digest=archive_sha)
    return extracted


def _forget_if_from_elsewhere(path: Path, source: str) -> None:
    """Delete a fetched file (and its record) that another source gave: a file of the same
    name from another URL is another file, fetched again rather than reused."""
    record = _read_record(path) if path.exists() else None
    if record is not None and record.get("source") != source:
        logger.info("%s came from %s, not %s: fetching it again", path, record["source"], source)
        path.unlink()
        _sidecar(path).unlink(missing_ok=True)


# ---------------------------------------------------------------- sources and names


def _normalise_pin(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise UserError(f"--sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return pin


def _local_path(source: str) -> Path | None:
    """The local file a ``file://`` URL or plain path names; None for a network URL."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme in ("http", "https"):
        return None
    if len(parsed.scheme) > 1:  # a one-letter "scheme" is a Windows drive letter
        raise UserError(
            f"cannot fetch {source!r}: expected an http(s):// or file:// URL or a local path"
        )
    return Path(source)


def _download_name(url: str, profile: ModelProfile) -> str:
    name = posixpath.basename(unquote(urlparse(url).path))
    return name or posixpath.basename(urlparse(profile.url).path)


def _fetch_local(
    local: Path, final: Path, member: str, pin: str | None, profile: ModelProfile
) -> Path:
    if not local.is_file():
        raise UserError(f"checkpoint file {local} does not exist")
    digest = sha256_file(local) if pin or is_archive_name(local.name) else None
    if pin and digest != pin:
        raise UserError(
            f"{local} has sha256 {digest} but --sha256 expects {pin}: check that it is the "
            "right file"
        )
    if not is_archive_name(local.name):
        return local
    origin = str(local.resolve())
    current = _extracted_is_current(final, local, pin, profile, archive_sha=digest, origin=origin)
    if final.exists() and current:
        return final
    return _extract(local, digest, member, final, profile, origin=origin)


# ---------------------------------------------------------------- integrity records


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _read_record(path: Path) -> dict | None:
    sidecar = _sidecar(path)
    if not sidecar.exists():
        return None
    try:
        record = json.loads(sidecar.read_text())
        int(record["size"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"integrity record {sidecar} is unreadable ({err}); delete it and {path.name} "
            "and rerun to fetch the file again"
        ) from None
    return record


def _record(path: Path, *, source: str, digest: str | None = None, **extra) -> None:
    """Write ``path``'s sidecar: its size, sha256 and source."""
    digest = digest or sha256_file(path)
    record = {"file": path.name, "size": path.stat().st_size, "sha256": digest, "source": source}
    with atomic_path(_sidecar(path)) as tmp:
        tmp.write_text(json.dumps({**record, **extra}, indent=2) + "\n")


def _set_aside(
    path: Path, why: str, advice: str = "check the URL (or save the real file there) and rerun"
) -> UserError:
    """Rename a file that must not be trusted to ``<file>.rejected`` and drop its record."""
    rejected = path.with_name(path.name + ".rejected")
    os.replace(path, rejected)
    _sidecar(path).unlink(missing_ok=True)
    return UserError(f"{why}; moved it to {rejected}: {advice}")


def _verify_against_record(path: Path, pin: str | None) -> str:
    """Check a file in dest_dir against its record (if any) and the pin; return its sha256."""
    digest, size = sha256_file(path), path.stat().st_size
    record = _read_record(path)
    if record is not None and (size != record["size"] or digest != record["sha256"]):
        raise UserError(
            f"{path} changed on disk since it was fetched ({size} bytes, sha256 {digest}; "
            f"recorded {record['size']} bytes, sha256 {record['sha256']}): delete it and "
            f"{_sidecar(path).name} and rerun to fetch it again"
        )
    if pin and digest != pin:
        why = f"{path} has sha256 {digest} but --sha256 expects {pin}"
        raise _set_aside(path, why, "check the URL and the pinned digest, then rerun")
    return digest


def _verify_or_record(
    path: Path, pin: str | None, *, source: str, profile: ModelProfile, **extra
) -> None:
    """``_verify_against_record``, then record a file found without a record: only once it
    parsed as ``profile``'s frozen graph."""
    digest = _verify_against_record(path, pin)
    if _read_record(path) is None:
        _refuse_unless_model(path, profile)
        logger.info("recording the sha256 of %s, found without an integrity record", path)
        _record(path, source=source, digest=digest, **extra)


def _extracted_is_current(
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
    record = _read_record(final)
    if record is None:
        if pin or archive.exists():
            return False  # re-extract: it is cheap and makes the provenance known
        _verify_or_record(final, None, source="found in place", profile=profile, origin=origin)
        return True
    if record.get("origin") != origin:  # another archive's graph (or an older record)
        return False
    recorded_archive = record.get("archive_sha256")
    if pin and recorded_archive != pin:
        return False
    if archive_sha is None and archive.exists():
        archive_record = _read_record(archive)
        archive_sha = archive_record["sha256"] if archive_record else sha256_file(archive)
    if archive_sha is not None and recorded_archive != archive_sha:
        return False
    _verify_against_record(final, None)
    return True


# ---------------------------------------------------------------- is it the model?


def _refuse_unless_model(path: Path, profile: ModelProfile) -> None:
    """Move ``path`` aside (nothing recorded) unless it is ``profile``'s frozen graph."""
    try:
        check_is_model(path, profile)
    except NotTheModelError as err:
        raise _set_aside(path, str(err)) from None


def check_is_model(path: Path, profile: ModelProfile, shown: str | None = None) -> None:
    """NotTheModelError unless ``path`` parses as a GraphDef with the profile's input and
    logits nodes. ``shown`` names the file in messages (e.g. ``archive:member``)."""
    from convert.graph import node_name, read_graph_def

    shown = shown or str(path)
    if plainly_not := _plainly_not_a_graph(path, shown):
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


def _plainly_not_a_graph(path: Path, shown: str) -> NotTheModelError | None:
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


# ---------------------------------------------------------------- download


def _download(url: str, dest: Path, pin: str | None, *, quiet: bool) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial file."""
    part = dest.with_name(dest.name + ".part")
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "mlperf-port"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urlopen(Request(url, headers=headers), timeout=CONNECT_TIMEOUT_S)
        except HTTPError as err:
            err.close()
            if err.code == 416 and offset:
                # The partial file does not fit what the server has now: start over.
                logger.warning("server refused to resume %s; downloading it again", url)
                part.unlink()
                continue
            raise _unreachable(url, dest, f"HTTP {err.code} {err.reason}") from None
        except (URLError, OSError, http.client.HTTPException) as err:
            raise _unreachable(url, dest, str(getattr(err, "reason", None) or err)) from None
        with response:
            start, total = _response_span(response, offset)
            if start is None:
                # A 206 for some other range than the one asked for: start over.
                part.unlink()
                continue
            if start == 0 and offset:
                logger.info("server ignored the resume request for %s; starting over", url)
            _stream(response, part, start, total, url, quiet=quiet)
        break
    else:
        raise UserError(f"could not resume the download of {url}: delete {part} and rerun")

    if pin:
        digest = sha256_file(part)
        if digest != pin:
            part.unlink()
            raise UserError(
                f"the file downloaded from {url} has sha256 {digest} but --sha256 expects "
                f"{pin}; it was deleted: check the URL and the pinned digest"
            )
    os.replace(part, dest)
    logger.info("downloaded %s to %s", url, dest)


def _response_span(response, offset: int) -> tuple[int | None, int | None]:
    """Where the response body starts in the file, and the file's total size if known."""
    length = response.headers.get("Content-Length", "")
    length = int(length) if length.isdigit() else None
    if response.status != 206:
        return 0, length  # a full body, whether or not a range was asked for
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        return None, None
    total = match.group(3)
    if total != "*":
        return offset, int(total)
    return offset, offset + length if length is not None else None


def _stream(response, part: Path, start: int, total: int | None, url: str, *, quiet: bool):
    """Write the response body into ``part`` from byte ``start``; a short body is an error
    that a rerun resumes."""
    part.parent.mkdir(parents=True, exist_ok=True)
    received = start
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.stem,
        disable=quiet,
        leave=False,
    )
    try:
        with bar, open(part, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            while chunk := response.read(CHUNK_SIZE):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:
        if getattr(err, "errno", None) in _DISK_FULL:
            raise  # fetch_checkpoint says so; the partial file stays for the rerun
        raise _interrupted(url, part, received, total, str(err)) from None
    if total is not None and received != total:
        raise _interrupted(url, part, received, total, "the connection closed early")


def _interrupted(url: str, part: Path, received: int, total: int | None, why: str) -> UserError:
    of_total = f" of {total}" if total is not None else ""
    return UserError(
        f"the download of {url} is truncated at {received}{of_total} bytes ({why}); "
        f"rerun the same command to resume from {part}"
    )


def _unreachable(url: str, dest: Path, reason: str) -> UserError:
    return UserError(
        f"could not download {url} ({reason}): download it yourself and save it as {dest}, "
        "or pass --checkpoint PATH to use a frozen graph you already have"
    )


# ---------------------------------------------------------------- archives


def _extract(
    archive: Path,
    archive_sha: str | None,
    member: str,
    final: Path,
    profile: ModelProfile,
    *,
    origin: str,
) -> Path:
    """Extract only ``member`` (stored as ``name`` or ``./name``) from ``archive`` to ``final``,
    and record it, with the source the archive came from, only once it parsed as
    ``profile``'s frozen graph."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            found = find_archive_member(tar, member, archive)  # a regular file, safe path
            with tar.extractfile(found) as source, atomic_path(final) as tmp:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_SIZE)
                if tmp.stat().st_size != found.size:
                    raise EOFError(f"{found.name} is short")
                check_is_model(tmp, profile, shown=f"{archive}:{found.name}")
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise  # fetch_checkpoint says so; the archive is kept and reused
        if err.errno is not None:  # a system error (permissions, I/O), not the archive's fault
            raise UserError(
                f"cannot extract {member} from {archive} to {final} ({err.strerror})"
            ) from None
        raise _unreadable_archive(archive, err) from None
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise _unreadable_archive(archive, err) from None
    _record(
        final,
        source=f"{archive}:{found.name}",
        archive_sha256=archive_sha,
        member=found.name,
        origin=origin,
    )
    logger.info("extracted %s from %s", final.name, archive)
    return final


def _unreadable_archive(archive: Path, err: Exception) -> UserError:
    logger.debug("reading %s failed: %s", archive, err)
    return _plainly_not_a_graph(archive, str(archive)) or UserError(
        f"{archive} is not a readable .tgz archive (corrupt or truncated); delete it and "
        "rerun to fetch it again"
    )


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fetch",
        description="Fetch MLPerf's frozen graph for a model and print its path.",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--out", required=True, help="folder to keep the checkpoint in")
    parser.add_argument(
        "--checkpoint",
        help="frozen graph .pb / MLPerf .tgz: an http(s):// or file:// URL or a local path "
        "(default: MLPerf's)",
    )
    parser.add_argument("--sha256", help=SHA256_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    args = parser.parse_args(renamed_options(argv, {"--dest": "--out", "--url": "--checkpoint"}))
    configure_logging(args.quiet)
    path = fetch_checkpoint(
        args.model, args.out, url=args.checkpoint, sha256=args.sha256, quiet=args.quiet
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
