"""Inference engines for the converted models: eager PyTorch or a faster frozen graph.

``prepare_engine`` (``prepare.py``) returns a ``PreparedEngine``: ``NCHW float32 -> logits``,
recording the engine that really runs (``.name``), its build cost and why it was chosen
(``.notes``).
"fast" runs the first fast builder that builds and matches eager on a sample, else eager.
A fast engine runs a copy with its TF-SAME pads folded into the convolutions, always at the
batch shape it was built for (smaller batches zero-padded, larger ones split), so nothing is
re-traced. On the CPU one single-threaded worker per core runs (``eval.engines.cpu_workers``).

- ``eval.engines.choice``: what "auto" resolves to, the memory format, cuDNN autotuning.
- ``eval.engines.fast_builders``: the fast builders, the order they are tried in, the eager check.
- ``eval.engines.build_times``: the recorded fast-build seconds that "auto" on CUDA reads.
- ``eval.engines.warmup``: each batch shape run once during setup (by default on CUDA).
"""

from eval.engines.prepare import PreparedEngine, prepare_engine

__all__ = ["PreparedEngine", "prepare_engine"]
