"""Which evaluations one pipeline request makes, and the settings of each."""

from __future__ import annotations

from dataclasses import replace

from eval.method.options import unmodified
from eval.options import BACKENDS, CPU_BATCH, EvalSettings
from pipeline.options import RunOptions
from pipeline.state import RunState

# --backend: one of the evaluation backends, or "both" for all of them.
BACKEND_RUNS = {**{name: (name,) for name in BACKENDS}, "both": BACKENDS}


def evaluation_runs(opts: RunOptions, state: RunState) -> list[tuple[str, EvalSettings]]:
    """``(results key, settings)`` per evaluation, in order: each backend's run, and for a
    modified model (a transform, int8, bf16, tf32) the plain fp32 run first, as "torch": it
    is the reference the modified run, "method", is compared with."""
    settings = opts.evaluation.resolved()
    runs = []
    for backend in BACKEND_RUNS[opts.backend]:
        run = backend_settings(settings, backend, state, opts.batch_size_given)
        if backend == "torch" and run.modified:
            fp32 = unmodified(run)
            reference = state.model_dir / f"eval-{fp32.folder_name}"
            runs.append(("torch", fp32))
            method = replace(run, calibration_cache=state.calibration_cache, reference=reference)
            runs.append(("method", method))
        else:
            runs.append((backend, run))
    return runs


def backend_settings(
    settings: EvalSettings, backend: str, state: RunState, batch_size_given: bool
) -> EvalSettings:
    """The run's settings for one backend, with the model file the earlier stages left.
    ``batch_size_given``: --batch-size was given, so ``settings.batch_size`` is the user's."""
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
        batch_size=settings.batch_size if batch_size_given else CPU_BATCH,
    )
