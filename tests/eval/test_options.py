"""The evaluation options: default output folder, early checks and the batch-size default."""

from __future__ import annotations

import sys

import pytest

from core.cli import run_cli
from core.errors import UserError
from eval.__main__ import default_out_dir, main
from eval.options import CPU_BATCH, CUDA_BATCH, FAST_BUILDER_NAMES, EvalSettings


def test_default_out_keeps_modified_runs_beside_the_fp32_one():
    def out(model, **settings):
        return default_out_dir(model, EvalSettings(**settings))

    assert out("resnet50") == "results/resnet50-torch"
    assert out("resnet50", precision="bf16") == "results/resnet50-torch-bf16"
    assert out("mobilenet_v1", backend="tf") == "results/mobilenet_v1-tf"
    assert out("resnet50", quantize="int8") == "results/resnet50-torch-int8"
    assert out("resnet50", transform="my/prune.py:prune") == "results/resnet50-torch-prune"
    method = out("resnet50", quantize="w4a8", calibration_method="minmax", equalize=True)
    assert method == "results/resnet50-torch-w4a8-minmax-cle"


def test_cli_without_out_writes_a_bf16_run_into_its_own_folder(monkeypatch, tmp_path):
    calls = []

    def fake_evaluate(model_name, cache_dir, settings, *, out_dir):
        calls.append((out_dir, settings))
        return None  # as a torchrun rank other than 0: nothing to print

    monkeypatch.setattr(sys.modules["eval.evaluate"], "evaluate", fake_evaluate)
    argv = ["--model", "resnet50", "--cache-dir", str(tmp_path), "--weights", "w.pth"]
    assert main([*argv, "--device", "cuda", "--precision", "bf16", "--quiet"]) == 0
    assert main([*argv, "--device", "cuda", "--quiet"]) == 0
    assert [out for out, _ in calls] == ["results/resnet50-torch-bf16", "results/resnet50-torch"]
    assert calls[0][1].batch_size == CUDA_BATCH


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--engine", "fsat"], "error: unknown engine 'fsat': expected one of auto, eager, fast"),
        (["--engine", "fast:warp"], "error: unknown engine 'fast:warp': expected one of"),
        (["--device", "cuda:x"], "error: unknown device 'cuda:x': use cpu, cuda or cuda:N"),
        (["--precision", "tf32"], "error: --precision tf32 runs on CUDA only; on the cpu use fp32"),
    ],
)
def test_cli_refuses_bad_options_before_loading_anything(tmp_path, capsys, option, message):
    argv = ["--model", "resnet50", "--cache-dir", str(tmp_path / "none"), "--weights", "w.pth"]
    assert run_cli(main, [*argv, "--out", str(tmp_path / "out"), "--quiet", *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_check_accepts_every_engine_and_device_form():
    for engine in ("auto", "eager", "fast", *(f"fast:{name}" for name in FAST_BUILDER_NAMES)):
        EvalSettings(engine=engine, device="cuda:1", precision="bf16").check()
    EvalSettings(device="cpu").check()
    with pytest.raises(UserError, match="^unknown precision 'fp16'"):
        EvalSettings(precision="fp16").check()


def test_fast_builder_names_are_the_engines_builders():
    from eval.engines.fast_builders import (
        CUDA_FAST_BUILDER_ORDER,
        FAST_BUILDER_ORDER,
        FAST_BUILDERS,
    )

    assert set(FAST_BUILDERS) == set(FAST_BUILDER_NAMES)
    assert set(FAST_BUILDER_ORDER) | set(CUDA_FAST_BUILDER_ORDER) <= set(FAST_BUILDER_NAMES)


def test_batch_size_defaults_by_device_for_the_python_api_too():
    assert EvalSettings().batch_size is None
    assert EvalSettings().resolved().batch_size == CPU_BATCH
    assert EvalSettings(device="cuda").resolved().batch_size == CUDA_BATCH
    assert EvalSettings(device="cuda:1", batch_size=7).resolved().batch_size == 7
