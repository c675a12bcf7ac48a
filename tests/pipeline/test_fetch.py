"""pipeline.fetch against a local HTTP server: truncation, digests, archives, errors."""

from __future__ import annotations

import errno
import io
import json
import random
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.cli import run_cli
from core.errors import UserError
from core.files import sha256_file
from core.profiles import get_profile
from pipeline.fetch import fetch_checkpoint, main

pytestmark = pytest.mark.tf

PB_NAME = "resnet50_v1.pb"
TGZ_NAME = "mobilenet_v1_1.0_224.tgz"
MEMBER = "mobilenet_v1_1.0_224_frozen.pb"


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)  # incompressible, so truncation bites


def _graph(model: str, size: int, seed: int) -> bytes:
    """A GraphDef holding the profile's input and logits nodes, padded by a random constant of
    ``size`` bytes: the fetcher accepts it as the model; truncating it still bites."""
    from tensorflow.core.framework import graph_pb2, types_pb2

    from convert.graph import node_name

    profile = get_profile(model)
    graph = graph_pb2.GraphDef()
    placeholder = graph.node.add(name=node_name(profile.input_tensor), op="Placeholder")
    placeholder.attr["dtype"].type = types_pb2.DT_FLOAT
    padding = graph.node.add(name="padding", op="Const")
    padding.attr["dtype"].type = types_pb2.DT_UINT8
    tensor = padding.attr["value"].tensor
    tensor.dtype = types_pb2.DT_UINT8
    tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = _payload(size, seed)
    graph.node.add(name=node_name(profile.logits_tensor), op="Identity", input=[placeholder.name])
    return graph.SerializeToString()


HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.mode`` selects a misbehaviour for the next requests."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        body = server.files.get(self.path.lstrip("/"))
        range_header = self.headers.get("Range")
        entry = {"path": self.path, "range": range_header, "sent": 0}
        server.requests.append(entry)
        if body is None or server.mode == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)  # downloads never resume: a Range header is only recorded
        chunk = body
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if server.mode == "truncate":
            chunk = chunk[: server.cut_at]
            self.close_connection = True
        entry["sent"] = len(chunk)  # before writing: the client may finish reading first
        self.wfile.write(chunk)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.mode, httpd.cut_at = {}, [], "normal", 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".sha256.json").read_text())


def test_full_download_records_digest_and_then_needs_no_network(server, tmp_path):
    payload = _graph("resnet50", 300_000, seed=1)
    server.files[PB_NAME] = payload
    url = f"{server.url}/{PB_NAME}"

    path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)

    assert path == tmp_path / PB_NAME
    assert path.read_bytes() == payload
    record = _sidecar(path)
    assert record["size"] == len(payload)
    assert record["sha256"] == sha256_file(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PB_NAME, PB_NAME + ".sha256.json"]
    assert len(server.requests) == 1 and server.requests[0]["range"] is None

    server.mode = "404"  # a second run must not even ask
    assert fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True) == path
    assert len(server.requests) == 1


def test_a_partial_file_of_an_earlier_version_is_not_resumed_but_removed(server, tmp_path):
    # Earlier versions resumed from <file>.part; now the whole file comes in one request.
    payload = _graph("resnet50", 100_000, seed=3)
    server.files[PB_NAME] = payload
    (tmp_path / (PB_NAME + ".part")).write_bytes(b"x" * 40_000)

    path = fetch_checkpoint("resnet50", tmp_path, url=f"{server.url}/{PB_NAME}", quiet=True)

    assert path.read_bytes() == payload
    assert [(r["range"], r["sent"]) for r in server.requests] == [(None, len(payload))]
    assert not (tmp_path / (PB_NAME + ".part")).exists()


def test_truncated_download_is_refused_unrecorded_then_fetched_whole(server, tmp_path):
    payload = _graph("resnet50", 250_000, seed=4)
    server.files[PB_NAME] = payload
    server.mode, server.cut_at = "truncate", 100_000
    url = f"{server.url}/{PB_NAME}"

    with pytest.raises(UserError, match=r"is truncated .*moved it to .*\.rejected") as err:
        fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    assert "\n" not in str(err.value)
    assert (tmp_path / (PB_NAME + ".rejected")).stat().st_size == 100_000
    assert not (tmp_path / PB_NAME).exists()
    assert not list(tmp_path.glob("*.sha256.json")) and not list(tmp_path.glob("*.partial"))

    server.mode = "normal"
    path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    assert path.read_bytes() == payload
    assert server.requests[-1]["range"] is None
    assert server.requests[-1]["sent"] == len(payload)


def test_truncated_archive_download_is_set_aside_then_fetched_whole(server, tmp_path):
    archive = _tgz({f"./{MEMBER}": _graph("mobilenet_v1", 200_000, seed=17)})
    server.files[TGZ_NAME] = archive
    server.mode, server.cut_at = "truncate", len(archive) // 2
    url = f"{server.url}/{TGZ_NAME}"

    with pytest.raises(UserError, match=r"corrupt or truncated\); moved it to"):
        fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TGZ_NAME + ".rejected"]

    server.mode = "normal"
    assert fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True) == tmp_path / MEMBER


def test_sha256_pin_mismatch_names_both_digests_and_keeps_nothing(server, tmp_path):
    payload = _graph("resnet50", 50_000, seed=5)
    server.files[PB_NAME] = payload
    wrong = "0" * 64
    actual = sha256_file_bytes(payload)

    with pytest.raises(UserError) as err:
        fetch_checkpoint(
            "resnet50", tmp_path, url=f"{server.url}/{PB_NAME}", sha256=wrong, quiet=True
        )
    assert actual in str(err.value) and wrong in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_sha256_pin_match_and_malformed_pin(server, tmp_path):
    payload = _graph("resnet50", 50_000, seed=6)
    server.files[PB_NAME] = payload
    url = f"{server.url}/{PB_NAME}"
    digest = sha256_file_bytes(payload)
    path = fetch_checkpoint("resnet50", tmp_path, url=url, sha256=digest.upper(), quiet=True)
    assert path.read_bytes() == payload
    with pytest.raises(UserError, match="64 hexadecimal"):
        fetch_checkpoint("resnet50", tmp_path, url=url, sha256="abc", quiet=True)


def test_pin_mismatch_on_present_file_moves_it_aside(server, tmp_path):
    payload = _graph("resnet50", 40_000, seed=7)
    server.files[PB_NAME] = payload
    url = f"{server.url}/{PB_NAME}"
    path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)

    with pytest.raises(UserError, match="moved it to"):
        fetch_checkpoint("resnet50", tmp_path, url=url, sha256="1" * 64, quiet=True)
    assert not path.exists()
    assert (tmp_path / (PB_NAME + ".rejected")).read_bytes() == payload


def test_file_changed_on_disk_is_reported(server, tmp_path):
    payload = _graph("resnet50", 60_000, seed=8)
    server.files[PB_NAME] = payload
    url = f"{server.url}/{PB_NAME}"
    path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    corrupted = bytearray(payload)
    corrupted[1000] ^= 0xFF
    path.write_bytes(bytes(corrupted))

    with pytest.raises(UserError, match=r"changed on disk since it was fetched.*delete it"):
        fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    assert len(server.requests) == 1


def test_http_404_and_unreachable_host_say_what_to_download_and_where(server, tmp_path):
    server.mode = "404"
    url = f"{server.url}/{PB_NAME}"
    with pytest.raises(UserError) as err:
        fetch_checkpoint("resnet50", tmp_path / "ckpt", url=url, quiet=True)
    message = str(err.value)
    assert "HTTP 404" in message and url in message
    assert str(tmp_path / "ckpt" / PB_NAME) in message and "--checkpoint PATH" in message

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/{TGZ_NAME}"
    with pytest.raises(UserError) as err:
        fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=url, quiet=True)
    message = str(err.value)
    assert url in message and str(tmp_path / "ckpt" / TGZ_NAME) in message
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").iterdir()) == []


@pytest.mark.parametrize("member_name", [f"./{MEMBER}", MEMBER])
def test_tgz_extracts_only_the_frozen_graph(server, tmp_path, member_name):
    graph = _graph("mobilenet_v1", 30_000, seed=9)
    archive = _tgz(
        {
            "./mobilenet_v1_1.0_224.ckpt.data-00000-of-00001": b"ckpt",
            "./mobilenet_v1_1.0_224.tflite": b"tflite",
            "./other_frozen.pb": b"decoy",
            member_name: graph,
            "./mobilenet_v1_1.0_224_info.txt": b"info",
        }
    )
    server.files[TGZ_NAME] = archive
    url = f"{server.url}/{TGZ_NAME}"

    path = fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True)

    assert path == tmp_path / MEMBER
    assert path.read_bytes() == graph
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MEMBER, MEMBER + ".sha256.json", TGZ_NAME, TGZ_NAME + ".sha256.json"]
    )
    assert _sidecar(path)["archive_sha256"] == sha256_file_bytes(archive)

    # Present and verified: no network, even with the archive gone.
    (tmp_path / TGZ_NAME).unlink()
    server.mode = "404"
    assert fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True) == path
    assert len(server.requests) == 1


def test_tgz_member_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "src" / TGZ_NAME
    archive.parent.mkdir()
    archive.write_bytes(_tgz({"./readme": b"r", f"../{MEMBER}": b"evil"}))
    with pytest.raises(UserError, match="leaves the archive"):
        fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=str(archive), quiet=True)
    assert not (tmp_path / MEMBER).exists()
    assert not (tmp_path / "ckpt" / MEMBER).exists()


def test_corrupt_archives_are_one_sentence(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    not_gzip = src / "not_gzip.tgz"
    not_gzip.write_bytes(b"this is not a gzip file at all" * 10)
    good = _tgz({f"./{MEMBER}": _payload(200_000, seed=10)})
    truncated = src / "truncated.tgz"
    truncated.write_bytes(good[: len(good) // 2])
    missing = src / "missing.tgz"
    missing.write_bytes(_tgz({"./mobilenet_v1_1.0_224.tflite": b"t"}))

    for bad in (not_gzip, truncated):
        with pytest.raises(UserError, match="corrupt or truncated"):
            fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=str(bad), quiet=True)
        assert not (tmp_path / "ckpt" / MEMBER).exists()
    with pytest.raises(UserError, match=r"holds no member 'mobilenet_v1_1.0_224_frozen.pb'"):
        fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=str(missing), quiet=True)
    leftovers = list((tmp_path / "ckpt").iterdir()) if (tmp_path / "ckpt").exists() else []
    assert leftovers == []


def test_file_url_and_local_pb(tmp_path):
    local_pb = tmp_path / "mine.pb"
    local_pb.write_bytes(_graph("resnet50", 10_000, seed=11))
    # A local .pb is used where it is, not copied.
    assert fetch_checkpoint("resnet50", tmp_path / "ckpt", url=local_pb.as_uri()) == local_pb
    assert not (tmp_path / "ckpt").exists()

    archive = tmp_path / TGZ_NAME
    graph = _graph("mobilenet_v1", 10_000, seed=11)
    archive.write_bytes(_tgz({f"./{MEMBER}": graph}))
    path = fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=archive.as_uri())
    assert path == tmp_path / "ckpt" / MEMBER and path.read_bytes() == graph

    with pytest.raises(UserError, match="does not exist"):
        fetch_checkpoint("resnet50", tmp_path, url=(tmp_path / "absent.pb").as_uri())


def test_cli_prints_path_and_reports_errors(tmp_path, capsys):
    local_pb = tmp_path / "g.pb"
    local_pb.write_bytes(b"graph")
    argv = ["--model", "resnet50", "--out", str(tmp_path / "d"), "--checkpoint", str(local_pb)]
    assert run_cli(main, argv + ["--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(local_pb)
    # --url, the old spelling of --checkpoint, still works.
    assert run_cli(main, [*argv[:-2], f"--url={local_pb}", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(local_pb)

    assert run_cli(main, argv + ["--sha256", "2" * 64, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2" * 64 in err and err.count("\n") == 1


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------ only the expected model is ever trusted


def test_html_page_first_is_refused_unrecorded_then_the_real_file_is_accepted(server, tmp_path):
    url = f"{server.url}/{PB_NAME}"
    server.files[PB_NAME] = HTML_PAGE
    with pytest.raises(UserError) as err:
        fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    message = str(err.value)
    assert "is not a TensorFlow frozen graph (it looks like an HTML page)" in message
    assert "\n" not in message
    assert not (tmp_path / PB_NAME).exists()
    assert not (tmp_path / (PB_NAME + ".sha256.json")).exists()
    assert (tmp_path / (PB_NAME + ".rejected")).read_bytes() == HTML_PAGE

    real = _graph("resnet50", 20_000, seed=12)
    server.files[PB_NAME] = real
    path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    assert path.read_bytes() == real
    assert _sidecar(path)["sha256"] == sha256_file_bytes(real)


def test_html_page_instead_of_the_tgz_is_refused_then_the_real_archive_works(server, tmp_path):
    url = f"{server.url}/{TGZ_NAME}"
    server.files[TGZ_NAME] = HTML_PAGE
    with pytest.raises(
        UserError, match=r"is not a TensorFlow frozen graph \(it looks like an HTML"
    ):
        fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True)
    assert not list(tmp_path.glob("*.sha256.json"))
    assert not (tmp_path / TGZ_NAME).exists() and not (tmp_path / MEMBER).exists()

    graph = _graph("mobilenet_v1", 20_000, seed=13)
    server.files[TGZ_NAME] = _tgz({f"./{MEMBER}": graph})
    path = fetch_checkpoint("mobilenet_v1", tmp_path, url=url, quiet=True)
    assert path.read_bytes() == graph
    assert _sidecar(tmp_path / TGZ_NAME)["sha256"] == sha256_file(tmp_path / TGZ_NAME)


def test_a_graph_without_the_models_nodes_is_not_trusted(server, tmp_path):
    server.files[PB_NAME] = _graph("mobilenet_v1", 5_000, seed=14)  # MobileNet's node names
    with pytest.raises(UserError, match=r"not MLPerf's resnet50: it has no node 'input_tensor'"):
        fetch_checkpoint("resnet50", tmp_path, url=f"{server.url}/{PB_NAME}", quiet=True)
    assert not list(tmp_path.glob("*.sha256.json"))


def test_unrecorded_file_found_in_place_is_checked_before_it_is_recorded(server, tmp_path):
    (tmp_path / PB_NAME).write_bytes(HTML_PAGE)  # e.g. saved by hand from a browser
    with pytest.raises(UserError, match="looks like an HTML page"):
        fetch_checkpoint("resnet50", tmp_path, url=f"{server.url}/{PB_NAME}", quiet=True)
    assert not (tmp_path / (PB_NAME + ".sha256.json")).exists()
    assert server.requests == []


@pytest.mark.parametrize(
    ("graph_of", "why"),
    [(None, "looks like an HTML page"), ("resnet50", "not MLPerf's mobilenet_v1: it has no node")],
)
def test_unrecorded_graph_extracted_by_hand_is_checked_before_it_is_recorded(
    server, tmp_path, graph_of, why
):
    # No record and no archive beside it: the graph stands for the .tgz, so it must be the model.
    content = _graph(graph_of, 1_000, seed=15) if graph_of else HTML_PAGE
    (tmp_path / MEMBER).write_bytes(content)
    with pytest.raises(UserError, match=why) as err:
        fetch_checkpoint("mobilenet_v1", tmp_path, url=f"{server.url}/{TGZ_NAME}", quiet=True)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.sha256.json"))
    assert (tmp_path / (MEMBER + ".rejected")).read_bytes() == content
    assert server.requests == []


class _FillsUp:
    """A writable file whose disk is full after ``room`` bytes (raises ENOSPC)."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_full_disk_during_download_says_so_and_leaves_nothing(server, tmp_path, monkeypatch):
    import torch.hub

    payload = _graph("resnet50", 3 * (1 << 20), seed=15)
    server.files[PB_NAME] = payload
    url = f"{server.url}/{PB_NAME}"
    monkeypatch.setattr(  # the file torch's download helper writes to
        torch.hub, "open", lambda *a, **k: _FillsUp(open(*a, **k), 1 << 20), raising=False
    )
    with pytest.raises(UserError) as err:
        fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
    message = str(err.value)
    assert "is full" in message and "rerun" in message and "delete" not in message
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    assert fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True).read_bytes() == payload


def test_full_disk_while_extracting_keeps_the_good_archive(tmp_path, monkeypatch):
    graph = _graph("mobilenet_v1", 50_000, seed=16)
    archive = tmp_path / "src" / TGZ_NAME
    archive.parent.mkdir()
    archive.write_bytes(_tgz({f"./{MEMBER}": graph}))
    before = archive.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("shutil.copyfileobj", disk_full)
    with pytest.raises(UserError) as err:
        fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=str(archive), quiet=True)
    message = str(err.value)
    assert "no space left" in message and "is kept" in message
    assert "delete" not in message and "corrupt" not in message
    assert archive.read_bytes() == before
    assert not (tmp_path / "ckpt" / MEMBER).exists()
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))

    monkeypatch.undo()
    path = fetch_checkpoint("mobilenet_v1", tmp_path / "ckpt", url=str(archive), quiet=True)
    assert path.read_bytes() == graph


def test_fetch_and_run_spell_the_checkpoint_options_alike(capsys):
    from pipeline.run import build_parser

    with pytest.raises(SystemExit):
        main(["--help"])
    fetch_help = " ".join(capsys.readouterr().out.split())
    run_help = " ".join(build_parser().format_help().split())
    sha256_help = "--sha256 SHA256 expected sha256 of the file --checkpoint names"
    assert "--checkpoint CHECKPOINT" in fetch_help and "--url" not in fetch_help
    assert sha256_help in fetch_help and sha256_help in run_help


def test_the_same_file_name_from_another_url_is_fetched_again(server, tmp_path):
    """Two URLs naming files alike are two files: the second is not the first one reused."""
    first, second = _graph("mobilenet_v1", 20_000, seed=21), _graph("mobilenet_v1", 20_000, 22)
    server.files[f"a/{TGZ_NAME}"] = _tgz({f"./{MEMBER}": first})
    server.files[f"b/{TGZ_NAME}"] = _tgz({f"./{MEMBER}": second})
    path = fetch_checkpoint("mobilenet_v1", tmp_path, url=f"{server.url}/a/{TGZ_NAME}", quiet=True)
    assert path.read_bytes() == first
    path = fetch_checkpoint("mobilenet_v1", tmp_path, url=f"{server.url}/b/{TGZ_NAME}", quiet=True)
    assert path.read_bytes() == second
    assert _sidecar(tmp_path / TGZ_NAME)["source"] == f"{server.url}/b/{TGZ_NAME}"
    server.files[f"a/{PB_NAME}"] = _graph("resnet50", 20_000, seed=23)
    server.files[f"b/{PB_NAME}"] = _graph("resnet50", 20_000, seed=24)
    for folder in ("a", "b", "a"):
        url = f"{server.url}/{folder}/{PB_NAME}"
        path = fetch_checkpoint("resnet50", tmp_path, url=url, quiet=True)
        assert path.read_bytes() == server.files[f"{folder}/{PB_NAME}"]


def test_a_custom_archive_is_not_taken_for_mlperfs_file(server, tmp_path, monkeypatch):
    """After --checkpoint custom.tgz, a run without --checkpoint (MLPerf's file) fetches
    MLPerf's file instead of reusing the custom graph extracted under the same name."""
    import dataclasses

    import pipeline.fetch as fetch

    custom, mlperf = _graph("mobilenet_v1", 20_000, seed=31), _graph("mobilenet_v1", 20_000, 32)
    local = tmp_path / "mine" / "custom.tgz"
    local.parent.mkdir()
    local.write_bytes(_tgz({f"./{MEMBER}": custom}))
    dest = tmp_path / "ckpt"
    assert fetch_checkpoint("mobilenet_v1", dest, url=str(local)).read_bytes() == custom
    # MLPerf's URL, served here: the profile's own URL, as a run without --checkpoint uses.
    server.files[TGZ_NAME] = _tgz({f"./{MEMBER}": mlperf})
    profile = dataclasses.replace(get_profile("mobilenet_v1"), url=f"{server.url}/{TGZ_NAME}")
    monkeypatch.setattr(fetch, "get_profile", lambda name: profile)
    assert fetch_checkpoint("mobilenet_v1", dest, quiet=True).read_bytes() == mlperf
    # And back: the custom archive again is its graph, not the one just fetched.
    assert fetch_checkpoint("mobilenet_v1", dest, url=str(local)).read_bytes() == custom
