"""Preprocessing throughput: this project's cache build vs an MLPerf-style build.

MLPerf's reference preprocesses in one process and writes one float32 ``.npy`` per image
with ``np.save``. The project's build decodes in worker threads into one uint8 memmap.
Both run here on the same generated ImageNet-sized JPEGs (page cache warmed first), and
the script checks that the two caches hold the same floats.

    python -m benchmarks.bench_preprocess [--images 300] [--model resnet50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.machine import cpu_description, describe_cores
from core.cli import positive_int, run_cli
from core.files import write_text_atomic
from core.profiles import MODEL_NAMES
from core.system import available_cores
from fixtures.images import write_val_set
from preprocess import build_cache, load_cache, normalize

IMAGENET_LIKE_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 500)]


def mlperf_style_build(model_name: str, data_dir: Path, out_dir: Path) -> int:
    """One process, MLPerf's per-image recipe, one float32 .npy per image via np.save."""
    interpolation = cv2.INTER_AREA if model_name == "resnet50" else cv2.INTER_LINEAR
    means = np.array([123.68, 116.78, 103.94], dtype=np.float32)
    out_dir.mkdir(parents=True)
    count = 0
    for line in (data_dir / "val_map.txt").read_text().splitlines():
        name = line.split()[0]
        img = cv2.cvtColor(cv2.imread(str(data_dir / name)), cv2.COLOR_BGR2RGB)
        height, width, _ = img.shape
        if height > width:
            w, h = 256, int(256 * height / width)
        else:
            w, h = int(256 * width / height), 256
        img = cv2.resize(img, (w, h), interpolation=interpolation)
        top, left = int((h - 224) / 2), int((w - 224) / 2)
        img = np.asarray(img[top : top + 224, left : left + 224], dtype="float32")
        if model_name == "resnet50":
            img -= means
        else:
            img /= 255.0
            img -= 0.5
            img *= 2
        np.save(out_dir / name, img)
        count += 1
    return count


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def print_result(result: dict) -> None:
    print(f"CPU: {result['cpu']} ({describe_cores(result)}), OpenCV {result['opencv']}")
    print(f"{'build':<28}{'img/s':>10}{'bytes/image':>14}")
    print(f"{'project (uint8 memmap)':<28}{result['ours_img_per_s']:>10.1f}"
          f"{result['ours_bytes_per_image']:>14.0f}")  # fmt: skip
    print(f"{'MLPerf-style (float32 .npy)':<28}{result['mlperf_style_img_per_s']:>10.1f}"
          f"{result['mlperf_style_bytes_per_image']:>14.0f}")  # fmt: skip
    print(f"speedup {result['speedup']:.2f}x with {result['workers']} thread(s); "
          "crops checked equal to MLPerf's floats")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=300, help="JPEGs to generate")
    parser.add_argument("--model", default="resnet50", choices=MODEL_NAMES)
    parser.add_argument(
        "--workers", type=positive_int, help="preprocessing threads (default: all cores)"
    )
    parser.add_argument("--repeats", type=positive_int, default=2, help="best of N timings each")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    return parser.parse_args(argv)


def generate_jpegs(data: Path, images: int) -> None:
    """ImageNet-sized JPEGs in ``data``, read once so neither build pays cold reads."""
    start = time.perf_counter()
    write_val_set(data, images, sizes=IMAGENET_LIKE_SIZES, seed=2024, quality=90)
    kib_each = folder_bytes(data) / images / 1024
    seconds = time.perf_counter() - start
    print(f"generated {images} JPEGs ({kib_each:.0f} KiB each) in {seconds:.1f} s")
    for path in data.iterdir():
        path.read_bytes()


def time_builds(args: argparse.Namespace, data: Path, tmp: Path) -> tuple[list, list]:
    """Seconds of each repeat of both builds, into ``tmp``/ours<r> and ``tmp``/mlperf<r>."""
    ours_s, theirs_s = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        build_cache(args.model, data, tmp / f"ours{r}", workers=args.workers, quiet=True)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        mlperf_style_build(args.model, data, tmp / f"mlperf{r}")
        theirs_s.append(time.perf_counter() - start)
    return ours_s, theirs_s


def check_same_floats(model_name: str, ours: Path, theirs: Path) -> None:
    """Spot-check that the project's cache normalises to MLPerf's float32 crops."""
    cache = load_cache(ours, model_name)
    for i in range(0, len(cache), max(1, len(cache) // 10)):
        expected = np.load(theirs / f"{cache.files[i]}.npy")
        assert np.array_equal(normalize(cache.images[i : i + 1], model_name)[0], expected)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        generate_jpegs(tmp / "data", args.images)
        ours_s, theirs_s = time_builds(args, tmp / "data", tmp)
        check_same_floats(args.model, tmp / "ours0", tmp / "mlperf0")
        result = {
            "images": args.images,
            "model": args.model,
            **cpu_description(),
            "workers": args.workers or available_cores(),
            "opencv": cv2.__version__,
            "ours_seconds": min(ours_s),
            "mlperf_style_seconds": min(theirs_s),
            "ours_img_per_s": args.images / min(ours_s),
            "mlperf_style_img_per_s": args.images / min(theirs_s),
            "speedup": min(theirs_s) / min(ours_s),
            "ours_bytes_per_image": folder_bytes(tmp / "ours0") / args.images,
            "mlperf_style_bytes_per_image": folder_bytes(tmp / "mlperf0") / args.images,
            "all_timings_s": {"ours": ours_s, "mlperf_style": theirs_s},
        }
    print_result(result)
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
