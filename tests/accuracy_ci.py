"""CI accuracy regression job (`make accuracy-ci`): the whole pipeline on fixture checkpoints.

For each model it builds an MLPerf-shaped fixture checkpoint (ResNet-50 as a bare .pb with
decomposed batch norm, MobileNet-v1 as MLPerf's .tgz with fused batch norm, so both
encodings and both checkpoint forms go through the real fetch path), writes a small
generated validation set, runs `pipeline.run` with both backends and an MLPerf LoadGen
accuracy run, and fails unless:

- PyTorch top-1 equals TensorFlow top-1 and the predictions agree on every image;
- the LoadGen accuracy line (scored like MLPerf's accuracy-imagenet.py) equals the top-1;
- predictions, top-1 and top-5 equal the committed `accuracy_ci_expected.json`, so an
  accidental change in preprocessing or conversion turns CI red.

The labels of the generated set are committed too: a third of the images carry ResNet's
prediction, a third MobileNet's, the rest a label neither predicts, so top-1 is neither 0
nor 100 % and a wrong label offset or a shifted prediction shows. After a deliberate change,
`--update-expected` rewrites the file (review the diff before committing it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from core.cli import configure_logging
from core.files import sha256_file, write_text_atomic

EXPECTED_PATH = Path(__file__).with_name("accuracy_ci_expected.json")
MODELS = ("resnet50", "mobilenet_v1")
NUM_IMAGES = 24
DATA_SEED = 11
CHECKPOINT_SEED = 7
# Conversion report: PyTorch vs TF logits, relative to the largest |logit| (the fixture nets
# are random, so float32 noise is amplified more than in the trained models).
MAX_RELATIVE_LOGIT_DIFF = 1e-4


def build_checkpoints(ckpt_dir: Path) -> dict[str, Path]:
    """Fixture checkpoints, rebuilt only when the builder code or arguments change."""
    from fixtures.tf_graphs import (
        fixture_cache_key,
        write_mobilenet_v1_tgz,
        write_resnet50_pb,
    )

    specs = {
        "resnet50": (
            write_resnet50_pb,
            ckpt_dir / "resnet50_v1.pb",
            {"seed": CHECKPOINT_SEED, "bn": "decomposed"},
        ),
        "mobilenet_v1": (
            write_mobilenet_v1_tgz,
            ckpt_dir / "mobilenet_v1_1.0_224.tgz",
            {"seed": CHECKPOINT_SEED, "bn": "fused"},
        ),
    }
    paths = {}
    for model, (writer, path, kwargs) in specs.items():
        key_file = path.with_name(path.name + ".key")
        key = fixture_cache_key(writer.__name__, **kwargs)
        if not (path.exists() and key_file.exists() and key_file.read_text() == key):
            writer(path, **kwargs)
            write_text_atomic(key_file, key)
        paths[model] = path
    return paths


def write_dataset(data_dir: Path, labels: list[int]) -> None:
    """The generated validation images, with the given labels in val_map.txt."""
    from fixtures.images import write_val_set

    entries = write_val_set(data_dir, NUM_IMAGES, layout="val_map", seed=DATA_SEED)
    lines = "".join(f"{rel} {label}\n" for (rel, _), label in zip(entries, labels, strict=True))
    write_text_atomic(data_dir / "val_map.txt", lines)


def run_model(model: str, checkpoint: Path, data_dir: Path, work_dir: Path):
    from eval.options import EvalSettings
    from pipeline.options import RunOptions
    from pipeline.stages import run_pipeline

    opts = RunOptions(
        model_name=model,
        work_dir=work_dir,
        checkpoint_source=str(checkpoint),
        data_dir=data_dir,
        backend="both",
        # LoadGen in its accuracy mode, as --loadgen runs it.
        evaluation=EvalSettings(engine="auto", batch_size=8, quiet=True, loadgen="accuracy"),
        batch_size_given=True,
    )
    return run_pipeline(opts)


def model_outcome(model: str, work_dir: Path) -> dict:
    model_dir = work_dir / model
    combined = json.loads((model_dir / "results.json").read_text())
    report = json.loads((model_dir / "conversion_report.json").read_text())
    return {
        "top1": combined["top1"],
        "top5": combined["top5"],
        "tf_top1": combined["tf_top1"],
        "loadgen_top1": combined.get("loadgen_top1"),
        "loadgen_good": (combined.get("loadgen") or {}).get("good"),
        "correct_top1": combined["correct_top1"],
        "torch_predictions": np.load(model_dir / "eval-torch" / "predictions.npy").tolist(),
        "tf_predictions": np.load(model_dir / "eval-tf" / "predictions.npy").tolist(),
        "logits_max_rel": _report_logit_rel_diff(report),
        "top5_labels": np.load(model_dir / "eval-torch" / "top5.npy").tolist(),
        # The uint8 crops themselves: any change in decoding, resizing or cropping shows here
        # even when the random fixture nets happen to predict the same classes.
        "crops_sha256": sha256_file(model_dir / "cache" / "images.npy"),
        "opencv": cv2.__version__,
    }


def _report_logit_rel_diff(report: dict) -> float:
    return float(report["verification"]["logits_max_rel_diff"])


def check(model: str, outcome: dict, expected: dict | None) -> list[str]:
    failures = []
    if outcome["top1"] != outcome["tf_top1"]:
        failures.append(f"{model}: PyTorch top-1 {outcome['top1']} != TF {outcome['tf_top1']}")
    differ = [
        i
        for i, (a, b) in enumerate(
            zip(outcome["torch_predictions"], outcome["tf_predictions"], strict=True)
        )
        if a != b
    ]
    if differ:
        failures.append(f"{model}: PyTorch and TF predictions differ on images {differ}")
    if outcome["loadgen_good"] != outcome["correct_top1"]:
        failures.append(
            f"{model}: LoadGen accuracy {outcome['loadgen_top1']} != eval top-1 {outcome['top1']}"
        )
    if outcome["logits_max_rel"] > MAX_RELATIVE_LOGIT_DIFF:
        failures.append(
            f"{model}: converted logits differ from TF by {outcome['logits_max_rel']:.2e} "
            f"(relative), above {MAX_RELATIVE_LOGIT_DIFF:.0e}"
        )
    # Compared whatever OpenCV is installed: every release checked gives the same crops
    # (docs/opencv-versions.md), so a difference here is one to look at, not to skip.
    if expected is not None:
        for key, committed in (("top1", "top1"), ("top5", "top5_percent")):
            if outcome[key] != expected[committed]:
                failures.append(
                    f"{model}: {key} {outcome[key]} != committed {expected[committed]} "
                    f"(preprocessing or conversion changed?)"
                )
        if outcome["crops_sha256"] != expected["crops_sha256"]:
            failures.append(
                f"{model}: the preprocessed crops changed (sha256 {outcome['crops_sha256'][:12]}…"
                f" vs committed {expected['crops_sha256'][:12]}…; OpenCV {outcome['opencv']}, "
                f"committed with {expected['opencv']})"
            )
        if outcome["top5_labels"] != expected["top5"]:
            failures.append(f"{model}: top-5 labels changed from the committed ones")
        if outcome["torch_predictions"] != expected["predictions"]:
            changed = [
                i
                for i, (a, b) in enumerate(
                    zip(outcome["torch_predictions"], expected["predictions"], strict=True)
                )
                if a != b
            ]
            failures.append(f"{model}: predictions changed from the committed ones on {changed}")
    return failures


def labels_from_predictions(predictions: dict[str, list[int]]) -> list[int]:
    """A third ResNet's predictions, a third MobileNet's, the rest predicted by neither."""
    labels = []
    for i in range(NUM_IMAGES):
        resnet, mobilenet = predictions["resnet50"][i], predictions["mobilenet_v1"][i]
        if i % 3 == 0:
            labels.append(resnet)
        elif i % 3 == 1:
            labels.append(mobilenet)
        else:
            wrong = (resnet + 1) % 1000
            while wrong in (resnet, mobilenet):
                wrong = (wrong + 1) % 1000
            labels.append(wrong)
    return labels


def _compact_json(payload: dict) -> str:
    """Indented JSON with each list of numbers on one line, so diffs stay readable."""
    import re

    text = json.dumps(payload, indent=1)
    return (
        re.sub(r"\[\s*([-\d,\s]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        + "\n"
    )


def learned_labels(checkpoints: dict[str, Path], data_dir: Path, run_dir: Path) -> list[int]:
    """--update-expected: a first pass with placeholder labels, only to learn what each
    model predicts, and the labels made from those predictions."""
    write_dataset(data_dir, [0] * NUM_IMAGES)
    first = {}
    for model in MODELS:
        run_model(model, checkpoints[model], data_dir, run_dir)
        first[model] = model_outcome(model, run_dir)["tf_predictions"]
    return labels_from_predictions(first)


def print_outcomes(outcomes: dict[str, dict]) -> None:
    print(f"accuracy-ci: {NUM_IMAGES} generated images, fixture checkpoints (random weights)")
    for model, o in outcomes.items():
        print(
            f"  {model:13s} top-1 PyTorch {o['top1']:7.3f} %  TF {o['tf_top1']:7.3f} %  "
            f"LoadGen {o['loadgen_top1']:7.3f} %  top-5 {o['top5']:7.3f} %  "
            f"logits rel diff {o['logits_max_rel']:.1e}"
        )


def write_expected(labels: list[int], outcomes: dict[str, dict]) -> None:
    payload = {"num_images": NUM_IMAGES, "labels": labels}
    for model, o in outcomes.items():
        payload[model] = {
            "top1": o["top1"],
            "top5_percent": o["top5"],
            "predictions": o["torch_predictions"],
            "top5": o["top5_labels"],
            "crops_sha256": o["crops_sha256"],
            "opencv": o["opencv"],
        }
    write_text_atomic(EXPECTED_PATH, _compact_json(payload))
    print(f"  wrote {EXPECTED_PATH}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.accuracy_ci", description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("work/accuracy-ci"))
    parser.add_argument("--update-expected", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(quiet=True)
    started = time.perf_counter()

    checkpoints = build_checkpoints(args.work_dir / "checkpoints")
    expected = None if args.update_expected else json.loads(EXPECTED_PATH.read_text())
    data_dir, run_dir = args.work_dir / "data", args.work_dir / "run"
    if args.update_expected:
        labels = learned_labels(checkpoints, data_dir, run_dir)
    else:
        labels = expected["labels"]
    write_dataset(data_dir, labels)

    failures, outcomes = [], {}
    for model in MODELS:
        run_model(model, checkpoints[model], data_dir, run_dir)
        outcomes[model] = model_outcome(model, run_dir)
        failures += check(model, outcomes[model], None if expected is None else expected[model])
    print_outcomes(outcomes)
    if args.update_expected and not failures:
        write_expected(labels, outcomes)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(f"accuracy-ci: {'FAILED' if failures else 'passed'} in {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
