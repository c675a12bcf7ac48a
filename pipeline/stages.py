"""The four stages, fetch → preprocess → convert → evaluate, and running them in order.

Each stage skips its work while its stamp (``pipeline.stamps``) records the same inputs
(``pipeline.stage_inputs``) and unchanged outputs.
"""

from __future__ import annotations

import json
import logging
import time

from core.files import check_output_dir, exclusive_lock, temporaries_of
from core.profiles import get_profile
from eval.distributed import DistContext
from eval.results import PREDICTIONS_FILE
from pipeline.calibration import prepare_calibration
from pipeline.fetch import fetch_checkpoint
from pipeline.options import STAGES, RunOptions
from pipeline.plan import evaluation_runs
from pipeline.ranks import EvaluationJob, hand_over
from pipeline.stage_inputs import convert_inputs, evaluate_inputs, preprocess_inputs
from pipeline.stamps import StageStamp
from pipeline.state import RunState
from pipeline.summary import write_summary

# The command's name, which its log lines have always carried.
log = logging.getLogger("pipeline.run")


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
    stamp = StageStamp(state.model_dir / "stages", "preprocess", state.sha256)
    inputs = preprocess_inputs()
    recrop = opts.force or not stamp.is_current(inputs, [])
    summary = build_cache(
        opts.model_name,
        data_dir,
        state.cache_dir,
        val_map=opts.val_map,
        limit=opts.evaluation.limit,
        workers=opts.workers,
        skip_bad=opts.skip_bad,
        quiet=opts.quiet,
        force=recrop,
        wait=opts.wait,
        repair=True,  # the pipeline's own folder: a damaged manifest is rebuilt, not refused
    )
    stamp.record(inputs, [])
    state.cache_fingerprint = summary.fingerprint
    state.ran["preprocess"] = "skipped (cache up to date)" if summary.already_complete else "ran"
    if opts.evaluation.transformed:
        prepare_calibration(opts, state, data_dir, recrop)


def stage_convert(opts: RunOptions, state: RunState) -> None:
    weights = state.model_dir / "model.pth"
    outputs = [weights, weights.with_suffix(".json")]
    stamp = StageStamp(state.model_dir / "stages", "convert", state.sha256)
    inputs = convert_inputs(state)
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

    did_work = False
    for key, settings in evaluation_runs(opts, state):
        run_name = settings.folder_name
        out_dir = state.model_dir / f"eval-{run_name}"
        inputs = evaluate_inputs(settings, state)
        stamp = StageStamp(state.model_dir / "stages", f"evaluate-{run_name}", state.sha256)
        results_path = out_dir / "results.json"
        # The summary reads both: its agreement figure comes from the predictions.
        outputs = [results_path, out_dir / PREDICTIONS_FILE]
        if not opts.force and stamp.is_current(inputs, outputs):
            state.results[key] = json.loads(results_path.read_text())
            continue
        stamp.clear()
        hand_over(state.ctx, EvaluationJob(opts.model_name, state.cache_dir, settings, out_dir))
        result = evaluate(opts.model_name, state.cache_dir, settings, out_dir=out_dir)
        state.results[key] = result.to_json()
        stamp.record(inputs, outputs)
        did_work = True
    state.ran["evaluate"] = "ran" if did_work else "skipped (results up to date)"


STAGE_FUNCTIONS = {
    "fetch": stage_fetch,
    "preprocess": stage_preprocess,
    "convert": stage_convert,
    "evaluate": stage_evaluate,
}


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
            write_summary(state)
    return state


def stages_to_run(requested: tuple[str, ...]) -> tuple[str, ...]:
    """Every stage up to the last requested one; fetch is left out when preprocess is the
    last and fetch was not asked for (preprocessing needs no checkpoint)."""
    needed = STAGES[: max(STAGES.index(s) for s in requested) + 1]
    if needed[-1] == "preprocess" and "fetch" not in requested:
        needed = needed[1:]
    return needed
