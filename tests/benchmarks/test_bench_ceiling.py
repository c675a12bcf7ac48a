import shutil

import pytest
import torch
from torch import nn

from benchmarks import machine
from benchmarks.bench_inference import add_ratios
from benchmarks.ceiling import fma_peak_gflops, gemm_gflops, multiply_adds
from convert import build_model


def test_multiply_adds_of_small_layers_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 112x112x8 outputs, 27 each
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 9 each
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    assert multiply_adds(net) == 112 * 112 * 8 * 27 + 112 * 112 * 8 * 9 + 10 * 8


@pytest.mark.parametrize(("name", "published"), [("resnet50", 4.1e9), ("mobilenet_v1", 0.569e9)])
def test_multiply_adds_match_the_published_counts(name, published):
    assert multiply_adds(build_model(name).eval()) == pytest.approx(published, rel=0.02)


def test_gemm_rate_is_a_positive_finite_number():
    rate = gemm_gflops(seconds=0.2, size=256)
    assert 0 < rate < 1e6 and rate == rate
    assert torch.get_num_threads() >= 1


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_fma_peak_is_measured_with_the_c_compiler():
    peak = fma_peak_gflops(threads=1)
    assert isinstance(peak, float) and 0 < peak < 1e5


def test_fma_peak_without_a_compiler_says_why(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    peak = fma_peak_gflops(threads=1)
    assert peak == "not measured (FileNotFoundError building or running no-such-compiler)"


def test_rows_are_shares_of_gemm_rate_and_peak():
    rows = [
        {"model": "m", "batch": 2, "engine": "tf", "gflop": 2.0, "img_per_s": 10.0},
        {"model": "m", "batch": 2, "engine": "fast", "gflop": 2.0, "img_per_s": 15.0},
    ]
    add_ratios(rows, gemm_gflops=40.0, peak_gflops=60.0)
    assert [r["ratio_to_tf"] for r in rows] == [1.0, 1.5]
    assert [r["share_of_gemm_rate"] for r in rows] == [0.5, 0.75]
    assert [r["share_of_fma_peak"] for r in rows] == [0.333, 0.5]
    add_ratios(rows, gemm_gflops=40.0, peak_gflops="not measured")
    assert [r["share_of_fma_peak"] for r in rows] == [None, None]


def test_cpu_description_names_generation_and_vector_unit(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel Xeon\n"
        "flags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nmodel name\t: Intel Xeon\n"
    )
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_description()["cpu"] == "Intel Xeon (family 6 model 143, AVX-512)"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t: avx2\n")
    assert machine.cpu_description()["cpu"] == "Some CPU (AVX2)"


def test_hyperthreads_are_told_apart_from_cores(tmp_path, monkeypatch):
    block = "processor\t: {cpu}\nmodel name\t: Intel Xeon\nphysical id\t: 0\ncore id\t\t: {core}\n"
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpuinfo.write_text("\n".join(block.format(cpu=cpu, core=0) for cpu in (0, 1, 2)))
    system = machine.cpu_description()
    assert system["physical_cores"] == 1
    assert machine.describe_cores(system) == "2 logical CPUs on 1 physical core"
    cpuinfo.write_text("\n".join(block.format(cpu=cpu, core=cpu) for cpu in (0, 1, 2)))
    assert machine.describe_cores(machine.cpu_description()) == "2 cores"
    cpuinfo.write_text("model name\t: Some CPU\n")  # no topology given: logical CPUs only
    assert machine.describe_cores(machine.cpu_description()) == "2 cores"


def test_bench_preprocess_options(capsys):
    from benchmarks.bench_preprocess import parse_args
    from core.profiles import MODEL_NAMES

    assert parse_args(["--model", MODEL_NAMES[-1]]).model == MODEL_NAMES[-1]
    with pytest.raises(SystemExit):
        parse_args(["--images", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_int8_rows_are_ratios_to_the_fp32_fast_engine_not_shares_of_fp32_rates():
    rows = [
        {"model": "m", "batch": 2, "engine": "tf", "gflop": 2.0, "img_per_s": 10.0},
        {"model": "m", "batch": 2, "engine": "fast", "gflop": 2.0, "img_per_s": 15.0},
        {"model": "m", "batch": 2, "engine": "int8", "gflop": 2.0, "img_per_s": 45.0},
        {"model": "m", "batch": 4, "engine": "onnx-int8", "gflop": 2.0, "img_per_s": 30.0},
    ]
    add_ratios(rows, gemm_gflops=40.0, peak_gflops=60.0)
    assert [r["ratio_to_fast"] for r in rows] == [0.667, 1.0, 3.0, None]  # no fast at batch 4
    assert [r["share_of_gemm_rate"] for r in rows] == [0.5, 0.75, None, None]
