"""Session-wide fixtures: frozen TF graphs that mimic MLPerf's checkpoints.

Each graph is built once per session, only when a test asks for it, and handed out as a
file in its own temporary folder (tests may write beside it). Built files are also kept in
pytest's cache folder (``.pytest_cache/d/mlperf-fixtures/``) under a key that hashes the
builder code, arguments and TF/numpy versions, so repeated local runs skip the build; set
``MLPERF_FIXTURE_CACHE=0`` (or run with ``-p no:cacheprovider``) to always build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

_BUILD_LOG: list[str] = []


def _cache_dir(config: pytest.Config) -> Path | None:
    if os.environ.get("MLPERF_FIXTURE_CACHE", "1") == "0":
        return None
    cache = getattr(config, "cache", None)
    return None if cache is None else Path(cache.mkdir("mlperf-fixtures"))


def _materialize(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fixture: str,
    filename: str,
    writer: str,
    **kwargs,
) -> Path:
    """Build (or fetch from the on-disk cache) one fixture file and copy it to a temp folder."""
    from fixtures import tf_graphs  # imported lazily: TensorFlow takes seconds to load

    write = getattr(tf_graphs, writer)
    out = tmp_path_factory.mktemp(fixture) / filename
    start = time.perf_counter()
    cache_dir = _cache_dir(request.config)
    if cache_dir is None:
        write(out, **kwargs)
        how = "built"
    else:
        key = tf_graphs.fixture_cache_key(writer, **kwargs)
        cached = cache_dir / f"{fixture}-{key}-{filename}"
        how = "from cache"
        if not cached.exists():
            write(cached, **kwargs)  # atomic: a crash never leaves a half-written entry
            how = "built"
            for stale in cache_dir.glob(f"{fixture}-*"):
                if stale != cached:
                    stale.unlink(missing_ok=True)
        shutil.copyfile(cached, out)
    _BUILD_LOG.append(f"{fixture}: {how} in {time.perf_counter() - start:.1f} s")
    return out


def pytest_terminal_summary(terminalreporter) -> None:
    if _BUILD_LOG:
        terminalreporter.write_sep("-", "MLPerf fixture graphs")
        for line in _BUILD_LOG:
            terminalreporter.write_line(line)


RESNET_PB = "resnet50_v1.pb"
MOBILENET_PB = "mobilenet_v1_1.0_224_frozen.pb"


@pytest.fixture(scope="session")
def resnet50_pb(request, tmp_path_factory) -> Path:
    """ResNet-50, FusedBatchNormV3, NHWC, input ``[?,224,224,3]``."""
    return _materialize(request, tmp_path_factory, "resnet50_pb", RESNET_PB, "write_resnet50_pb")


@pytest.fixture(scope="session")
def resnet50_decomposed_pb(request, tmp_path_factory) -> Path:
    """ResNet-50 with batch norms decomposed into Rsqrt/Mul/Sub/Add ops."""
    return _materialize(
        request,
        tmp_path_factory,
        "resnet50_decomposed_pb",
        RESNET_PB,
        "write_resnet50_pb",
        bn="decomposed",
    )


@pytest.fixture(scope="session")
def resnet50_batch1_pb(request, tmp_path_factory) -> Path:
    """ResNet-50 whose input placeholder is pinned to ``[1,224,224,3]``."""
    return _materialize(
        request, tmp_path_factory, "resnet50_batch1_pb", RESNET_PB, "write_resnet50_pb", batch=1
    )


@pytest.fixture(scope="session")
def resnet50_nchw_pb(request, tmp_path_factory) -> Path:
    """ResNet-50 computing channels-first after a Transpose of the NHWC input."""
    return _materialize(
        request,
        tmp_path_factory,
        "resnet50_nchw_pb",
        RESNET_PB,
        "write_resnet50_pb",
        data_format="NCHW",
    )


@pytest.fixture(scope="session")
def mobilenet_v1_pb(request, tmp_path_factory) -> Path:
    """MobileNet-v1 with FusedBatchNorm (v1, as the 2018 release), input ``[?,224,224,3]``."""
    return _materialize(
        request, tmp_path_factory, "mobilenet_v1_pb", MOBILENET_PB, "write_mobilenet_v1_pb"
    )


@pytest.fixture(scope="session")
def mobilenet_v1_decomposed_pb(request, tmp_path_factory) -> Path:
    """MobileNet-v1 with batch norms decomposed into Rsqrt/Mul/Sub/Add ops."""
    return _materialize(
        request,
        tmp_path_factory,
        "mobilenet_v1_decomposed_pb",
        MOBILENET_PB,
        "write_mobilenet_v1_pb",
        bn="decomposed",
    )


@pytest.fixture(scope="session")
def mobilenet_v1_batch1_pb(request, tmp_path_factory) -> Path:
    """MobileNet-v1 whose input placeholder is pinned to ``[1,224,224,3]``."""
    return _materialize(
        request,
        tmp_path_factory,
        "mobilenet_v1_batch1_pb",
        MOBILENET_PB,
        "write_mobilenet_v1_pb",
        batch=1,
    )


@pytest.fixture(scope="session")
def mobilenet_v1_tgz(request, tmp_path_factory) -> Path:
    """An MLPerf-like ``mobilenet_v1_1.0_224.tgz`` holding the frozen graph at its root."""
    return _materialize(
        request,
        tmp_path_factory,
        "mobilenet_v1_tgz",
        "mobilenet_v1_1.0_224.tgz",
        "write_mobilenet_v1_tgz",
    )


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, megabytes: int, read_only: bool = False):
    """A small tmpfs at ``folder`` (made if missing) for a real full or read-only disk
    (root only: skips the test where mounting is not allowed); unmounted afterwards."""
    folder.mkdir(exist_ok=True)
    options = f"{'ro,' if read_only else ''}size={megabytes}m"
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
