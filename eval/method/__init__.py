"""Your method, measured the MLPerf way: everything that makes a modified model (a user's
transform, ``--quantize``, another precision) comparable with the fp32 model it came from.

- ``options``: the method's command-line options and their checks (torch-free).
- ``transform``: how a transform is found, imported from the bytes recorded, and applied.
- ``calibration``: which images it calibrates on (MLPerf's list, or flagged when not).
- ``reference``: the fp32 run it is judged against, named or matched by digests.
- ``gate``: MLPerf's accuracy gate, decided on whole numbers of images.
- ``flips``: which images it fixed or broke; ``verdict``: all of that for two predictions.
- ``layers``: block by block against fp32 (layers.json, ``python -m eval layers``).
- ``prepare``: the method of one evaluation, checked before any work, applied once
  (``modify``) and judged once (``judge``); ``summary``: its rows in a summary table.
"""
