"""Evaluation stage: batched inference over the preprocessed cache, top-1/top-5, results.

Python API: ``eval.evaluate(model_name, cache_dir, EvalSettings(...), out_dir=...)`` returns
an ``EvalResult``; ``eval.compare.compare_predictions(a, b)``. CLI: ``python -m eval``.
"""

from eval.evaluate import evaluate
from eval.options import EvalSettings

__all__ = ["EvalSettings", "evaluate"]
