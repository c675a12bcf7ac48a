"""``python -m eval.accuracy_imagenet``: MLPerf's ImageNet accuracy tool, kept at this
name for scripts that call it; the code lives in ``eval.loadgen.accuracy_imagenet``."""

from core.cli import run_cli
from eval.loadgen.accuracy_imagenet import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
