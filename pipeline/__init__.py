"""The top layer: fetch checkpoints and run every stage (``python -m pipeline.run``)."""
