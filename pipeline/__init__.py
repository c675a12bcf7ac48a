"""The top layer: fetch checkpoints, stamp stages, and run them all (``python -m pipeline.run``).

It composes ``preprocess``, ``convert`` and ``eval``; nothing below imports it.
"""
