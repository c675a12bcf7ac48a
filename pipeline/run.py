"""One command from "ImageNet val + an MLPerf checkpoint" to "top-1 next to MLPerf's".

    python -m pipeline.run --model resnet50 [--checkpoint PATH|URL] [--data-dir DIR] ...

Stages: fetch → preprocess → convert (verified against TensorFlow) → evaluate. A rerun redoes
only what changed: preprocess re-crops only changed, added or vanished files; convert and
evaluate are skipped while their stamps (pipeline.stamps) record the same inputs.

One run at a time per work dir (W/<model>/.lock; --wait waits for it). Under ``torchrun
--nproc-per-node N -m pipeline.run ...`` rank 0 runs the stages and every rank evaluates a
shard of the cache (``pipeline.ranks``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.cli import configure_logging, positive_int, run_cli
from core.errors import UserError
from core.files import (
    check_output_dir,
    exclusive_lock,
    sha256_file,
    temporaries_of,
    write_text_atomic,
)
from core.profiles import MODEL_NAMES, ModelProfile, get_profile
from core.sources import source_digest
from eval.distributed import DistContext, init_from_environment, shutdown
from eval.method.options import unmodified
from eval.options import (
    BACKENDS,
    CPU_BATCH,
    EvalSettings,
    add_evaluation_options,
)
from eval.results import PREDICTIONS_FILE, library_versions
from pipeline.fetch import SHA256_HELP, fetch_checkpoint
from pipeline.ranks import EvaluationJob, follow, hand_over
from pipeline.stamps import StageStamp

log = logging.getLogger("pipeline.run")

STAGES = ("fetch", "preprocess", "convert", "evaluate")
# --backend: one of the evaluation backends, or "both" for all of them.
BACKEND_RUNS = {**{name: (name,) for name in BACKENDS}, "both": BACKENDS}


@dataclass
class RunOptions:
    model_name: str
    work_dir: Path
    checkpoint_source: str | None = None  # --checkpoint: a .pb / .tgz path or URL
    sha256: str | None = None
    data_dir: Path | None = None
    val_map: Path | None = None
    limit: int | None = None
    workers: int | None = None
    skip_bad: bool = False
    device: str = "cpu"
    backend: str = "torch"
    engine: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # None: by device, as EvalSettings.from_options picks
    stages: tuple[str, ...] = STAGES
    force: bool = False
    quiet: bool = False
    loadgen: bool = False
    loadgen_mode: str = "accuracy"
    scenario: str = "Offline"
    wait: bool = False
    # A user's method (eval.method.transform) and what it calibrates on.
    transform: str | None = None
    quantize: str | None = None
    calibration_method: str | None = None
    equalize: bool = False
    bias_correction: bool = True
    calibration_list: Path | None = None


@dataclass
class RunState:
    """What the stages produced so far, and which of them did work this time."""

    profile: ModelProfile
    model_dir: Path
    checkpoint: Path | None = None
    cache_dir: Path | None = None
    cache_fingerprint: str | None = None
    calibration_cache: Path | None = None  # None: the first images of the evaluation cache
    calibration_list: dict[str, Any] | None = None  # the list file a calibration cache holds
    weights: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    using_sample: bool = False
    ctx: DistContext = field(default_factory=DistContext)  # torchrun's ranks, if any
    _digests: dict[tuple, str] = field(default_factory=dict)

    def sha256(self, path: Path) -> str:
        """sha256 of a file, computed once per run (several stages stamp the same file)."""
        st = Path(path).stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return self._digests[key]


# --- stages ---------------------------------------------------------------------------------


def stage_fetch(opts: RunOptions, state: RunState) -> None:
    dest = state.model_dir / "checkpoint"
    already_there = (dest / state.profile.checkpoint_filename).is_file()
    # Every source goes through fetch_checkpoint, so --sha256 is checked for a local file too.
    state.checkpoint = fetch_checkpoint(
        opts.model_name, dest, url=opts.checkpoint_source, sha256=opts.sha256, quiet=opts.quiet
    )
    if state.checkpoint.parent.resolve() != dest.resolve():
        state.ran["fetch"] = "skipped (local .pb, used in place)"
    elif already_there:
        state.ran["fetch"] = "skipped (checkpoint present, sha256 verified)"
    else:
        state.ran["fetch"] = "ran"


def stage_preprocess(opts: RunOptions, state: RunState) -> None:
    from preprocess import build_cache

    data_dir = opts.data_dir
    if data_dir is None:
        from pipeline.sample import sample_dir

        data_dir = sample_dir()
        state.using_sample = True
    state.cache_dir = state.model_dir / "cache"
    # The cache records its recipe and OpenCV; this stamp records the code that cropped it,
    # so a change to the preprocessing code re-crops instead of reusing older crops.
    stamp = StageStamp(state.model_dir / "stages", "preprocess", state.sha256)
    code = {"code": source_digest("core", "preprocess")}
    recrop = opts.force or not stamp.is_current(code, [])
    summary = build_cache(
        opts.model_name,
        data_dir,
        state.cache_dir,
        val_map=opts.val_map,
        limit=opts.limit,
        workers=opts.workers,
        skip_bad=opts.skip_bad,
        quiet=opts.quiet,
        force=recrop,
        wait=opts.wait,
        repair=True,  # the pipeline's own folder: a damaged manifest is rebuilt, not refused
    )
    stamp.record(code, [])
    state.cache_fingerprint = summary.fingerprint
    state.ran["preprocess"] = "skipped (cache up to date)" if summary.already_complete else "ran"
    if opts.transform is not None or opts.quantize is not None:
        _prepare_calibration(opts, state, data_dir, recrop)


def _prepare_calibration(opts: RunOptions, state: RunState, data_dir: Path, recrop: bool) -> None:
    """The calibration cache a transform calibrates on: --calibration-list, else MLPerf's
    list when the data dir holds its images (real ImageNet does), else none (the first
    images of the evaluation cache, which the results flag as not MLPerf's list)."""
    from preprocess import build_cache
    from preprocess.calibration import (
        calibration_listing,
        mlperf_list,
        read_calibration_list,
        write_calibration_val_map,
    )

    if opts.calibration_list is not None:
        listed = read_calibration_list(opts.calibration_list)
        listing = calibration_listing(listed, data_dir, opts.val_map)
    elif state.using_sample:
        return
    else:
        listed = mlperf_list()
        try:  # the data dir's listing is read once, whether or not it holds the list
            listing = calibration_listing(listed, data_dir, opts.val_map)
        except UserError:
            return  # not real ImageNet: the first evaluation images, flagged as such
    folder = state.model_dir / "calibration"
    val_map = write_calibration_val_map(listing, folder / "val_map.txt")
    summary = build_cache(
        opts.model_name,
        data_dir,
        folder / "cache",
        val_map=val_map,
        workers=opts.workers,
        quiet=opts.quiet,
        force=recrop,
        wait=opts.wait,
    )
    state.calibration_cache = folder / "cache"
    state.calibration_list = {
        "file": str(listed.path),
        "sha256": listed.sha256,
        "images": len(listed.names),
        "mlperf_list": listed.is_mlperf,
        "cache_fingerprint": summary.fingerprint,
    }


def stage_convert(opts: RunOptions, state: RunState) -> None:
    weights = state.model_dir / "model.pth"
    outputs = [weights, weights.with_suffix(".json")]
    stamp = StageStamp(state.model_dir / "stages", "convert", state.sha256)
    # The weights depend only on the checkpoint and the converter: new data does not redo
    # the conversion (the report names the images it was verified on).
    inputs = {
        "checkpoint_sha256": state.sha256(state.checkpoint),
        "converter": source_digest("convert", "core"),
        "versions": library_versions(),
    }
    state.weights = weights
    if not opts.force and stamp.is_current(inputs, outputs):
        state.ran["convert"] = "skipped (checkpoint unchanged)"
        return
    from convert import convert_checkpoint  # imports torch: only when converting

    stamp.clear()
    convert_checkpoint(
        opts.model_name,
        state.checkpoint,
        weights,
        verify_cache=state.cache_dir,
        verify_limit=8,  # cached images verified layer by layer against TensorFlow
        report=state.model_dir / "conversion_report.json",
        quiet=opts.quiet,
        wait=opts.wait,
    )
    stamp.record(inputs, outputs)
    state.ran["convert"] = "ran"


def stage_evaluate(opts: RunOptions, state: RunState) -> None:
    from eval import evaluate

    settings = EvalSettings.from_options(opts)
    did_work = False
    runs = _evaluation_runs(settings, state, opts.backend, opts.batch_size)
    for key, run_settings in runs:
        run_name = run_settings.folder_name
        out_dir = state.model_dir / f"eval-{run_name}"
        inputs = _evaluate_inputs(run_settings, state)
        stamp = StageStamp(state.model_dir / "stages", f"evaluate-{run_name}", state.sha256)
        results_path = out_dir / "results.json"
        # The summary reads both: its agreement figure comes from the predictions.
        outputs = [results_path, out_dir / PREDICTIONS_FILE]
        if not opts.force and stamp.is_current(inputs, outputs):
            state.results[key] = json.loads(results_path.read_text())
            continue
        stamp.clear()
        hand_over(state.ctx, EvaluationJob(opts.model_name, state.cache_dir, run_settings, out_dir))
        result = evaluate(opts.model_name, state.cache_dir, run_settings, out_dir=out_dir)
        state.results[key] = result.to_json()
        stamp.record(inputs, outputs)
        did_work = True
    state.ran["evaluate"] = "ran" if did_work else "skipped (results up to date)"


def _evaluation_runs(
    settings: EvalSettings, state: RunState, backend_runs: str, asked_batch: int | None
) -> list[tuple[str, EvalSettings]]:
    """``(results key, settings)`` per evaluation, in order: each backend's run, and for a
    modified model (a transform, int8, bf16, tf32) the plain fp32 run first, as "torch": it
    is the reference the modified run, "method", is compared with."""
    runs = []
    for backend in BACKEND_RUNS[backend_runs]:
        run = _backend_settings(settings, backend, state, asked_batch)
        if backend == "torch" and (run.transformed or run.precision != "fp32"):
            fp32 = unmodified(run)
            reference = state.model_dir / f"eval-{fp32.folder_name}"
            runs.append(("torch", fp32))
            method = replace(run, calibration_cache=state.calibration_cache, reference=reference)
            runs.append(("method", method))
        else:
            runs.append((backend, run))
    return runs


def _backend_settings(
    settings: EvalSettings, backend: str, state: RunState, asked_batch: int | None
) -> EvalSettings:
    """The run's settings for one backend, with the model file the earlier stages left.
    ``asked_batch``: --batch-size, None when the device picks it."""
    if backend == "torch":
        return replace(settings, backend=backend, weights=state.weights, checkpoint=None)
    # The TF reference runs the original graph in fp32 on the CPU (tensorflow-cpu) even when
    # PyTorch runs on a GPU: its answers are the ones to compare against. So its default
    # batch is the CPU's, not the GPU's.
    return replace(
        unmodified(settings),
        backend="tf",
        checkpoint=state.checkpoint,
        device="cpu",
        batch_size=asked_batch or CPU_BATCH,
    )


def _evaluate_inputs(settings: EvalSettings, state: RunState) -> dict[str, Any]:
    """What one backend's evaluation depends on: its stamp records these."""
    from eval.method.transform import describe_transform, spec_digest

    torch = settings.backend == "torch"
    calibration = None
    if settings.transformed:
        calibration = (state.calibration_list or {}).get("cache_fingerprint", "evaluation cache")
    return {
        "backend": settings.backend,
        "source_sha256": state.sha256(settings.weights if torch else settings.checkpoint),
        "cache": state.cache_fingerprint,
        "limit": settings.limit,
        "device": settings.device,
        "engine": settings.engine if torch else None,
        "precision": settings.precision if torch else None,
        "loadgen": [settings.loadgen, settings.scenario] if settings.loadgen else None,
        # A transform's source file and options, and the images it calibrated on.
        "transform": spec_digest(describe_transform(settings)),
        "calibration": calibration,
        # The code that evaluates (quantize: the built-in methods) and the libraries that
        # compute the numbers.
        "code": source_digest("core", "preprocess", "convert", "quantize", "eval"),
        "versions": library_versions(),
    }


STAGE_FUNCTIONS = {
    "fetch": stage_fetch,
    "preprocess": stage_preprocess,
    "convert": stage_convert,
    "evaluate": stage_evaluate,
}


# --- the run -------------------------------------------------------------------------------


def run_pipeline(opts: RunOptions, ctx: DistContext | None = None) -> RunState:
    """Run the requested stages in order; earlier stages a later one needs run too.

    Asking only for `evaluate` still resolves the checkpoint, cache and weights: their own
    stamps make that free when they are already up to date. ``ctx``: torchrun's group, of
    which this process is rank 0 (``pipeline.ranks``).
    """
    profile = get_profile(opts.model_name)
    model_dir = opts.work_dir / opts.model_name
    state = RunState(profile=profile, model_dir=model_dir, ctx=ctx or DistContext())
    check_output_dir(state.model_dir, "--work-dir")  # one sentence before any work
    with exclusive_lock(state.model_dir, "work dir", wait=opts.wait):
        # Only the summary's own leftovers: each stage cleans its outputs under its own lock.
        for stale in temporaries_of(state.model_dir / "results.json"):
            stale.unlink(missing_ok=True)
        for stage in stages_to_run(opts.stages):
            start = time.perf_counter()
            STAGE_FUNCTIONS[stage](opts, state)
            seconds = time.perf_counter() - start
            log.info("%s: %s in %.1f s", stage, state.ran.get(stage, "ran"), seconds)
        if state.results:
            write_summary(opts, state)
    return state


def stages_to_run(requested: tuple[str, ...]) -> tuple[str, ...]:
    """Every stage up to the last requested one; fetch is left out when preprocess is the
    last and fetch was not asked for (preprocessing needs no checkpoint)."""
    needed = STAGES[: max(STAGES.index(s) for s in requested) + 1]
    if needed[-1] == "preprocess" and "fetch" not in requested:
        needed = needed[1:]
    return needed


def combined_results(opts: RunOptions, state: RunState) -> dict[str, Any]:
    """W/<model>/results.json: the primary run's keys (the modified model's when there is
    one, else PyTorch's, else TensorFlow's) plus the other runs' figures."""
    primary = next(key for key in ("method", "torch", "tf") if key in state.results)
    combined = dict(state.results[primary])
    if "method" in state.results:
        combined["fp32_top1"] = state.results["torch"]["top1"]
        combined["calibration_list"] = state.calibration_list
    if "torch" in state.results and "tf" in state.results:
        torch_res, tf_res = state.results["torch"], state.results["tf"]
        for key in ("top1", "top5", "images_per_second"):
            combined[f"tf_{key}"] = tf_res[key]
        combined["top1_torch_minus_tf"] = round(torch_res["top1"] - tf_res["top1"], 6)
        combined["prediction_agreement"] = _prediction_agreement(opts, state)
    loadgen = combined.get("loadgen") or {}
    if loadgen.get("accuracy_line"):
        combined["loadgen_accuracy_line"] = loadgen["accuracy_line"]
        combined["loadgen_top1"] = loadgen["top1"]
    combined["difference_from_reference"] = round(
        combined["top1"] - state.profile.reference_top1, 6
    )
    combined["dataset"] = "built-in sample (not ImageNet)" if state.using_sample else "user data"
    combined["stages"] = state.ran
    return combined


def _prediction_agreement(opts: RunOptions, state: RunState) -> float:
    from eval.compare import compare_predictions
    from eval.results import load_predictions

    torch_run = load_predictions(state.model_dir / "eval-torch")  # the fp32 run
    tf_run = load_predictions(state.model_dir / "eval-tf")
    return compare_predictions(torch_run, tf_run)["percent"]


def write_summary(opts: RunOptions, state: RunState) -> None:
    combined = combined_results(opts, state)
    write_text_atomic(
        state.model_dir / "results.json", json.dumps(combined, indent=2, sort_keys=True) + "\n"
    )
    print(format_summary(combined, state))


def format_summary(combined: dict[str, Any], state: RunState) -> str:
    torch_top1 = state.results.get("torch", {}).get("top1")
    tf_top1 = state.results.get("tf", {}).get("top1")
    rows = [
        ("model", combined["model"]),
        ("images", str(combined["images"])),
        ("top-1 PyTorch", _pct(torch_top1)),
        ("top-1 TensorFlow", _pct(tf_top1)),
        ("MLPerf reference", _pct(state.profile.reference_top1)),
        ("difference", f"{combined['top1'] - state.profile.reference_top1:+.3f} points"),
    ]
    if "method" in state.results:
        rows += _method_rows(state.results["method"])
    if combined.get("loadgen"):
        from eval.loadgen import LoadgenResult

        rows.append(("MLPerf LoadGen", LoadgenResult.from_json(combined["loadgen"]).summary_line()))
    if "prediction_agreement" in combined:
        rows.append(("PyTorch = TF", f"{combined['prediction_agreement']:.3f} % of images"))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if state.using_sample:
        from pipeline.sample import SAMPLE_DESCRIPTION

        lines.append(f"  note: {SAMPLE_DESCRIPTION}")
    stages = ", ".join(f"{s} {what}" for s, what in state.ran.items())
    lines.append(f"  stages: {stages}")
    return "\n".join(lines)


def _method_rows(method: dict[str, Any]) -> list[tuple[str, str]]:
    """The modified model's top-1 and speed, then the rows ``python -m eval`` prints for it."""
    from eval.method.summary import method_rows

    top1 = f"{_pct(method['top1'])}  ({method['images_per_second']:,.1f} img/s)"
    rows = method_rows(method)
    return rows[:1] + [("top-1 method", top1)] + rows[1:]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} %"


# --- command line --------------------------------------------------------------------------


def _parse_stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(STAGES)}"
        )
    return stages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.split("\n")[0])
    p.add_argument("--model", dest="model_name", required=True, choices=MODEL_NAMES)
    p.add_argument(
        "--checkpoint",
        dest="checkpoint_source",
        help="frozen graph .pb / MLPerf .tgz: a path or a URL (default: MLPerf's)",
    )
    p.add_argument("--sha256", help=SHA256_HELP)
    p.add_argument("--data-dir", type=Path, help="ImageNet val (default: built-in sample)")
    p.add_argument("--val-map", type=Path, help="val_map.txt outside the data dir")
    p.add_argument("--work-dir", type=Path, default=Path("work"))
    p.add_argument("--limit", type=positive_int, help="use only the first N images of the listing")
    p.add_argument(
        "--workers", type=positive_int, help="preprocessing threads (default: all cores)"
    )
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images")
    p.add_argument("--backend", default="torch", choices=tuple(BACKEND_RUNS))
    add_evaluation_options(p)
    p.add_argument(
        "--calibration-list",
        type=Path,
        metavar="FILE",
        help="images --transform/--quantize calibrate on, in MLPerf's format (one name per "
        "line, relative to the data dir); default: MLPerf's cal_image_list_option_1.txt when "
        "the data dir holds its images, else the first 500 listed images",
    )
    p.add_argument(
        "--stages",
        type=_parse_stages,
        default=STAGES,
        help=f"comma-separated, from {', '.join(STAGES)}: runs up to the last named stage, "
        "with the earlier ones it needs (their records make them free when up to date)",
    )
    p.add_argument("--force", action="store_true", help="redo every stage (re-crop included)")
    p.add_argument(
        "--wait", action="store_true", help="wait for another run on this work dir to finish"
    )
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    settings = EvalSettings.from_options(args)
    settings.check()  # a bad engine, device or precision: before any stage
    # Every RunOptions field has a command-line option of the same name.
    opts = RunOptions(**{f.name: getattr(args, f.name) for f in fields(RunOptions)})
    ctx = init_from_environment(settings.device, "pipeline.run")
    try:
        if ctx.distributed and opts.loadgen:
            raise UserError("a LoadGen run is one process: run it without torchrun")
        if ctx.is_main:
            run_pipeline(opts, ctx)
            hand_over(ctx, None)  # the other ranks may stop
        else:
            follow(ctx)
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
