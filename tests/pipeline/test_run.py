"""pipeline.run end to end on a fixture MobileNet checkpoint and a generated val set."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from core.errors import UserError
from eval.options import EvalSettings
from fixtures.images import write_val_set
from pipeline.options import STAGES, RunOptions
from pipeline.run import main
from pipeline.stages import run_pipeline

# Slow: the tests that start torchrun's processes (each imports torch and TensorFlow).
pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    write_val_set(root, 6, layout="val_map", seed=3)
    return root


@pytest.fixture(scope="module")
def first_run(mobilenet_v1_tgz, val_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    opts = RunOptions(
        model_name="mobilenet_v1",
        work_dir=work,
        checkpoint_source=str(mobilenet_v1_tgz),
        data_dir=val_dir,
        backend="both",
        evaluation=EvalSettings(batch_size=4, quiet=True),
        batch_size_given=True,
    )
    state = run_pipeline(opts)
    return opts, state


def test_first_run_does_every_stage_and_agrees_with_tensorflow(first_run):
    opts, state = first_run
    assert state.ran == {"fetch": "ran", "preprocess": "ran", "convert": "ran", "evaluate": "ran"}
    combined = json.loads((opts.work_dir / "mobilenet_v1" / "results.json").read_text())
    assert combined["model"] == "mobilenet_v1"
    assert combined["images"] == 6
    assert combined["top1"] == combined["tf_top1"]
    assert combined["prediction_agreement"] == 100.0
    assert combined["reference_top1"] == 71.676
    assert combined["dataset"] == "user data"
    torch_pred = np.load(opts.work_dir / "mobilenet_v1" / "eval-torch" / "predictions.npy")
    tf_pred = np.load(opts.work_dir / "mobilenet_v1" / "eval-tf" / "predictions.npy")
    np.testing.assert_array_equal(torch_pred, tf_pred)


def test_identical_rerun_skips_every_stage(first_run):
    opts, _ = first_run
    state = run_pipeline(opts)
    assert state.ran["preprocess"].startswith("skipped")
    assert state.ran["convert"].startswith("skipped")
    assert state.ran["evaluate"].startswith("skipped")
    assert state.results["torch"]["top1"] == state.results["tf"]["top1"]


@pytest.mark.slow
def test_torchrun_ranks_run_the_pipeline_as_one_process(first_run, mobilenet_v1_tgz, val_dir):
    """Rank 0 runs the stages, both ranks evaluate their shards; the predictions are one
    process's, and a one-process rerun finds every stage up to date."""
    opts, _ = first_run
    work = opts.work_dir.parent / "torchrun-work"
    argv = ["--model", "mobilenet_v1", "--work-dir", str(work), "--checkpoint",
            str(mobilenet_v1_tgz), "--data-dir", str(val_dir), "--backend", "both",
            "--batch-size", "4", "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pipeline.run", *argv],
        capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top-1 PyTorch") == 1  # one summary, from rank 0
    for run in ("eval-torch", "eval-tf"):
        results = json.loads((work / "mobilenet_v1" / run / "results.json").read_text())
        assert results["world_size"] == 2 and results["images"] == 6
        alone = np.load(opts.work_dir / "mobilenet_v1" / run / "predictions.npy")
        np.testing.assert_array_equal(
            np.load(work / "mobilenet_v1" / run / "predictions.npy"), alone
        )
    rerun = run_pipeline(replace(opts, work_dir=work))
    assert all(rerun.ran[stage].startswith("skipped") for stage in STAGES[1:])


@pytest.mark.slow
def test_a_torchrun_rank_that_fails_leaves_one_sentence_per_rank(tmp_path, val_dir):
    missing = tmp_path / "nope.pb"
    argv = ["--model", "mobilenet_v1", "--work-dir", str(tmp_path / "w"), "--checkpoint",
            str(missing), "--data-dir", str(val_dir), "--quiet"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pipeline.run", *argv],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert any(str(missing) in line for line in ours)  # rank 0 says why
    # Rank 1, unless torchrun stopped it first, says only that another rank stopped.
    others = [line for line in ours if str(missing) not in line]
    assert all(line.startswith("error: rank 1 stopped: another rank stopped") for line in others)
    assert len(ours) <= 2 and "[rank1]: Traceback" not in proc.stderr  # a rank's traceback


def test_loadgen_under_torchrun_is_refused_before_any_stage(tmp_path, val_dir, monkeypatch):
    import pipeline.run as runner
    from eval.distributed import DistContext

    monkeypatch.setattr(runner, "init_from_environment", lambda *_: DistContext(0, 2, 0))
    argv = ["--model", "mobilenet_v1", "--work-dir", str(tmp_path / "w"), "--data-dir",
            str(val_dir), "--loadgen"]  # fmt: skip
    with pytest.raises(UserError, match="a LoadGen run is one process: run it without torchrun"):
        main(argv)
    assert not (tmp_path / "w").exists()


def test_replaced_weights_are_converted_again_not_evaluated(first_run):
    """A model.pth written by another conversion (here: seeded weights) is not this
    checkpoint's: the rerun converts again instead of reporting the other file's numbers."""
    from benchmarks.seeded_weights import save_converted, seeded_model

    opts, _ = first_run
    weights = opts.work_dir / "mobilenet_v1" / "model.pth"
    save_converted(seeded_model("mobilenet_v1"), "mobilenet_v1", weights)
    state = run_pipeline(opts)
    assert state.ran["convert"] == "ran"
    combined = json.loads((opts.work_dir / "mobilenet_v1" / "results.json").read_text())
    assert combined["prediction_agreement"] == 100.0


def test_changed_limit_redoes_data_stages_but_not_conversion(first_run):
    opts, _ = first_run
    weights = opts.work_dir / "mobilenet_v1" / "model.pth"
    before = weights.stat().st_mtime_ns
    limited = replace(opts, evaluation=replace(opts.evaluation, limit=3), backend="torch")
    state = run_pipeline(limited)
    assert state.ran["preprocess"] == "ran"
    assert state.ran["convert"].startswith("skipped")
    assert state.ran["evaluate"] == "ran"
    assert state.results["torch"]["images"] == 3
    assert weights.stat().st_mtime_ns == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_checkpoint_is_one_sentence(tmp_path, val_dir, capsys):
    from core.cli import run_cli

    url = f"http://127.0.0.1:{_closed_port()}/resnet50_v1.pb"
    argv = ["--model", "resnet50", "--checkpoint", url, "--data-dir", str(val_dir)]
    code = run_cli(main, [*argv, "--work-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "\n" not in err
    assert url in err and "--checkpoint" in err
    assert not list(tmp_path.rglob("*.pth"))


def test_missing_local_checkpoint(tmp_path, val_dir):
    opts = RunOptions(
        model_name="resnet50",
        work_dir=tmp_path,
        checkpoint_source=str(tmp_path / "nope.pb"),
        data_dir=val_dir,
        evaluation=EvalSettings(quiet=True),
    )
    with pytest.raises(UserError, match="nope.pb"):
        run_pipeline(opts)


def test_stage_list_is_validated(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "resnet50", "--stages", "preprocess,bake"])
    assert "bake" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--device", "cuda:1", "--engine", "fast", "--precision", "bf16", "--limit", "5"],
        ["--batch-size", "7", "--loadgen", "--loadgen-mode", "performance", "--wait"],
        ["--scenario", "SingleStream", "--loadgen", "--quiet"],
        ["--quantize", "w4a8", "--layer-bits", "first=w8a8,last=w8a8", "--rounding", "gptq",
         "--mixed-precision", "--bit-budget", "5"],
    ],
)  # fmt: skip
def test_both_entry_points_build_the_same_evaluation_settings(options):
    from eval.__main__ import build_parser as eval_parser
    from eval.options import EvalSettings
    from pipeline.run import build_parser as pipeline_parser

    model = ["--model", "resnet50"]
    eval_args = eval_parser().parse_args([*model, "--cache-dir", "c", *options])
    pipeline_args = pipeline_parser().parse_args([*model, *options])
    from_eval = EvalSettings.from_options(eval_args)
    # --checkpoint (a path or URL, for the fetch stage) is not the evaluation's checkpoint.
    from_pipeline = EvalSettings.from_options(pipeline_args)
    assert from_eval == from_pipeline == RunOptions.from_options(pipeline_args).evaluation
    batch = 7 if "--batch-size" in options else 256 if "--device" in options else 32
    assert from_eval.batch_size == batch
    assert from_eval.loadgen == ("performance" if "performance" in options else
                                 "accuracy" if "--loadgen" in options else None)  # fmt: skip


def _local_pb(tmp_path):
    """A local .pb file: the fetch stage checks its digest, not its contents."""
    path = tmp_path / "mine" / "resnet50_v1.pb"
    path.parent.mkdir()
    path.write_bytes(b"not parsed by the fetch stage")
    return path


def test_local_pb_with_a_wrong_sha256_is_refused_in_one_sentence(tmp_path, val_dir, capsys):
    from core.cli import run_cli

    pb, work = _local_pb(tmp_path), tmp_path / "work"
    argv = ["--model", "resnet50", "--checkpoint", str(pb), "--sha256", "0" * 64,
            "--data-dir", str(val_dir), "--work-dir", str(work), "--quiet"]  # fmt: skip
    code = run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "\n" not in err
    assert str(pb) in err and "--sha256" in err
    assert not (work / "resnet50" / "cache").exists()  # refused before any preprocessing
    assert pb.is_file()  # the user's own file is left where it is


def test_local_pb_with_its_sha256_is_used_in_place(tmp_path):
    from core.files import sha256_file

    pb = _local_pb(tmp_path)
    opts = RunOptions(model_name="resnet50", work_dir=tmp_path / "work",
                      checkpoint_source=str(pb), sha256=sha256_file(pb), stages=("fetch",),
                      evaluation=EvalSettings(quiet=True))  # fmt: skip
    state = run_pipeline(opts)
    assert state.checkpoint == pb
    assert state.ran["fetch"] == "skipped (local .pb, used in place)"


def test_batch_size_defaults_by_device():
    from eval.options import CPU_BATCH, CUDA_BATCH
    from pipeline.run import build_parser

    def options(*argv: str) -> RunOptions:
        return RunOptions.from_options(build_parser().parse_args(["--model", "resnet50", *argv]))

    cpu, cuda, asked = options(), options("--device", "cuda"), options("--batch-size", "7")
    assert not cpu.batch_size_given and not cuda.batch_size_given and asked.batch_size_given
    assert cpu.evaluation.batch_size == CPU_BATCH
    assert cuda.evaluation.batch_size == CUDA_BATCH == 256
    assert asked.evaluation.batch_size == 7


def test_non_fp32_runs_get_their_own_folder_beside_the_fp32_one():
    from eval.options import evaluation_name

    assert evaluation_name("torch", "fp32") == "torch"
    assert evaluation_name("tf", "fp32") == "tf"
    names = {evaluation_name("torch", p) for p in ("fp32", "bf16", "tf32")}
    assert names == {"torch", "torch-bf16", "torch-tf32"}
    assert evaluation_name("torch", "fp32", "int8") == "torch-int8"


@pytest.mark.parametrize(
    ("stages", "expected"),
    [(("fetch", "preprocess"), ["fetch", "preprocess"]), (("preprocess",), ["preprocess"])],
)
def test_stages_run_up_to_the_last_named_one(tmp_path, val_dir, stages, expected):
    from core.files import sha256_file

    pb = _local_pb(tmp_path)
    opts = RunOptions(model_name="resnet50", work_dir=tmp_path / "work",
                      checkpoint_source=str(pb), sha256=sha256_file(pb), data_dir=val_dir,
                      workers=1, stages=stages, evaluation=EvalSettings(quiet=True))  # fmt: skip
    state = run_pipeline(opts)
    assert list(state.ran) == expected
    # Preprocessing needs no checkpoint: it is resolved only when fetch is asked for.
    assert state.checkpoint == (pb if "fetch" in stages else None)


def test_stages_help_says_what_the_option_does():
    from pipeline.run import build_parser

    assert "up to the last named stage" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--engine", "fsat"], "error: unknown engine 'fsat': expected one of auto, eager, fast"),
        (["--precision", "bf16"], "error: --precision bf16 runs on CUDA only; on the cpu use fp32"),
        (["--device", "gpu"], "error: unknown device 'gpu': use cpu, cuda or cuda:N"),
        (["--layer-bits", "last=w8a8"], "error: --layer-bits is for --quantize"),
        (["--quantize", "int8", "--layer-bits", "last=w8a8"],
         "error: --layer-bits needs a simulated --quantize wXaY"),
        (["--quantize", "int8", "--mixed-precision"], "error: --mixed-precision raises layers"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "3"],
         "error: --bit-budget 3 is below w4a8's 4 weight bits: no plan can be that small"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "x"],
         "error: --bit-budget 'x' is not a number"),
    ],
)  # fmt: skip
def test_bad_evaluation_options_are_refused_before_any_stage(
    tmp_path, val_dir, capsys, options, message
):
    from core.cli import run_cli

    pb, work = _local_pb(tmp_path), tmp_path / "work"
    argv = ["--model", "resnet50", "--checkpoint", str(pb), "--data-dir", str(val_dir),
            "--work-dir", str(work), "--quiet", *options]  # fmt: skip
    assert run_cli(main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not work.exists()  # no stage ran: nothing fetched, cropped or converted


@pytest.mark.parametrize(("asked", "tf_batch"), [(None, 32), (7, 7)])
def test_tensorflow_reference_runs_on_the_cpu_with_the_cpus_batch(tmp_path, asked, tf_batch):
    from pipeline.plan import backend_settings
    from pipeline.state import RunState

    state = RunState(profile=None, model_dir=tmp_path, checkpoint=tmp_path / "g.pb")
    settings = EvalSettings(device="cuda", batch_size=asked).resolved()
    torch_run = backend_settings(settings, "torch", state, batch_size_given=asked is not None)
    tf_run = backend_settings(settings, "tf", state, batch_size_given=asked is not None)
    assert (torch_run.device, torch_run.batch_size) == ("cuda", asked or 256)
    assert (tf_run.device, tf_run.batch_size) == ("cpu", tf_batch)


def test_quantize_choices_reach_the_method_run_and_redo_only_its_evaluation(tmp_path):
    """Each choice is in the method run's settings and in its stamp's inputs; the fp32
    reference run beside it is the same whatever they are."""
    from core.profiles import get_profile
    from pipeline.plan import evaluation_runs
    from pipeline.run import build_parser
    from pipeline.stage_inputs import evaluate_inputs
    from pipeline.state import RunState

    weights = tmp_path / "model.pth"
    weights.write_bytes(b"weights")
    state = RunState(profile=get_profile("mobilenet_v1"), model_dir=tmp_path, weights=weights)

    def planned(*choices: str) -> dict:
        argv = ["--model", "mobilenet_v1", "--quantize", "w4a8", *choices]
        opts = RunOptions.from_options(build_parser().parse_args(argv))
        runs = dict(evaluation_runs(opts, state))
        return {key: (run, evaluate_inputs(run, state)) for key, run in runs.items()}

    default = planned()
    choices = (["--layer-bits", "first=w8a8"], ["--rounding", "nearest"], ["--mixed-precision"],
               ["--mixed-precision", "--bit-budget", "5"], ["--device", "cuda"])  # fmt: skip
    seen = {default["method"][1]["transform"]}
    for choice in choices:
        runs = planned(*choice)
        method, inputs = runs["method"]
        seen.add(inputs["transform"])
        if choice[0] != "--device":
            assert runs["torch"][1] == default["torch"][1]  # fp32 is not redone
            assert method.folder_name != default["method"][0].folder_name
    assert len(seen) == 1 + len(choices)
    method, inputs = planned("--mixed-precision", "--layer-bits", "last=w8a8")["method"]
    assert (method.mixed_precision, method.layer_bits) == (True, "last=w8a8")
    assert method.folder_name == "torch-w4a8-lbd040bc64-mp"
