"""Evaluation stage: batched inference over the preprocessed cache, top-1/top-5, results.

``python -m eval --model M --cache-dir DIR --weights W.pth`` (or ``--backend tf --checkpoint
PB``) evaluates; ``python -m eval compare A.npy B.npy`` compares two predictions files.
Python API: ``eval.evaluate(model_name, cache_dir, EvalSettings(...), out_dir=...)``, which
returns an ``EvalResult``, and ``eval.compare.compare_predictions(a, b)``.
"""

from eval.evaluate import evaluate
from eval.options import EvalSettings

__all__ = ["EvalSettings", "evaluate"]
