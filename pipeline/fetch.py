"""Fetch MLPerf's frozen graph for a model: download, integrity record, safe unpack.

``fetch_checkpoint(model, dest_dir, url=..., sha256=...)`` returns the frozen ``.pb``'s path;
the source is the profile's URL or ``url`` (``http(s)://``, ``file://`` or a local path). A
local ``.pb`` is used in place; of a ``.tgz`` only the graph member is extracted
(``pipeline.archive``). Each file written into ``dest_dir`` gets an integrity record, and
only a file that parsed as the model is ever trusted (``pipeline.trust``). ``sha256`` pins
the file the source names (the ``.pb`` or the ``.tgz``).

Downloads go through ``torch.hub.download_url_to_file``, which writes a temporary file
beside the destination and renames it once the body is in: an interrupted download leaves
no half file under the real name, and a rerun downloads it again from the start. Resuming
a partial download is not worth its code here: the two files are about 100 MB, and a body
cut short (which Python's HTTP client does not report) is caught by the checks that follow
every download, the graph's parse for a ``.pb`` and the archive's read for a ``.tgz``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import posixpath
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from core.cli import configure_logging, renamed_options, run_cli
from core.disk import disk_full_says
from core.errors import UserError
from core.files import is_archive_name, sha256_file
from core.profiles import MODEL_NAMES, ModelProfile, get_profile
from pipeline.archive import extract_graph
from pipeline.trust import (
    NotTheModelError,
    check_is_model,
    extracted_is_current,
    forget_if_from_elsewhere,
    read_record,
    refuse_unless_model,
    set_aside,
    verify_against_record,
    verify_or_record,
    write_record,
)

__all__ = ["SHA256_HELP", "NotTheModelError", "check_is_model", "fetch_checkpoint", "main"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # also bounds each read: a stalled server ends in an error
# --sha256 of pipeline.fetch and pipeline.run: one option, one meaning.
SHA256_HELP = (
    "expected sha256 of the file --checkpoint names (the .pb, or the .tgz), local or downloaded"
)


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
    full = (
        f"the disk holding {dest_dir} is full (no space left on device): free some space and "
        "rerun the same command; what was fetched in full is kept"
    )
    with disk_full_says(full):
        return _fetch(profile, url or profile.url, pin, dest_dir, quiet=quiet)


def _fetch(profile: ModelProfile, source: str, pin: str | None, dest_dir: Path, *, quiet: bool):
    final = dest_dir / profile.checkpoint_filename
    member = profile.archive_member or profile.checkpoint_filename
    local = _local_path(source)
    if local is not None:
        return _fetch_local(local, final, member, pin, profile)

    name = _download_name(source, profile)
    if not is_archive_name(name):
        forget_if_from_elsewhere(final, source)
        if final.exists():
            verify_or_record(final, pin, source=source, profile=profile)
        else:
            digest = _download(source, final, pin, quiet=quiet)
            refuse_unless_model(final, profile)  # a body cut short fails here too
            write_record(final, source=source, digest=digest)
        return final

    archive = dest_dir / name
    forget_if_from_elsewhere(archive, source)
    if final.exists() and extracted_is_current(final, archive, pin, profile, origin=source):
        return final
    if not archive.exists():
        _download(source, archive, pin, quiet=quiet)
    archive_sha = verify_against_record(archive, pin)
    try:
        extracted = extract_graph(archive, archive_sha, member, final, profile, origin=source)
    except NotTheModelError as err:  # a page instead of the archive, or one cut short
        raise set_aside(archive, str(err)) from None
    if read_record(archive) is None:
        write_record(archive, source=source, digest=archive_sha)
    return extracted


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
    current = extracted_is_current(final, local, pin, profile, archive_sha=digest, origin=origin)
    if final.exists() and current:
        return final
    return extract_graph(local, digest, member, final, profile, origin=origin)


# ---------------------------------------------------------------- download


def _download(url: str, dest: Path, pin: str | None, *, quiet: bool) -> str:
    """Download ``url`` to ``dest`` (all of it or nothing) and return its sha256; a file
    that does not match ``pin`` is deleted."""
    from torch.hub import download_url_to_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    # An earlier version of this fetcher resumed from <file>.part; nothing reads it now.
    dest.with_name(dest.name + ".part").unlink(missing_ok=True)
    try:
        with _socket_timeout(CONNECT_TIMEOUT_S):
            download_url_to_file(url, os.fspath(dest), hash_prefix=None, progress=not quiet)
    except HTTPError as err:
        err.close()
        raise _unreachable(url, dest, f"HTTP {err.code} {err.reason}") from None
    except (URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
        raise _unreachable(url, dest, str(getattr(err, "reason", None) or err)) from None
    digest = sha256_file(dest)
    if pin and digest != pin:
        dest.unlink()
        raise UserError(
            f"the file downloaded from {url} has sha256 {digest} but --sha256 expects "
            f"{pin}; it was deleted: check the URL and the pinned digest"
        )
    logger.info("downloaded %s to %s", url, dest)
    return digest


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch's helper opens the URL without a timeout, so a stalled server would hang the
    run; the default timeout of new sockets bounds it (connecting and each read)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _unreachable(url: str, dest: Path, reason: str) -> UserError:
    return UserError(
        f"could not download {url} ({reason}): download it yourself and save it as {dest}, "
        "or pass --checkpoint PATH to use a frozen graph you already have"
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
