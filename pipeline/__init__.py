"""Model profiles, checkpoint fetching and the stage runner (``python -m pipeline.run``).

Kept free of imports on purpose: every stage imports ``pipeline.profiles`` and
``pipeline.common``, and importing this package must not drag the runner in.
"""
