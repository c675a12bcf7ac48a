"""The built-in sample: a few real photographs with unambiguous ImageNet classes.

The pipeline runs on it when given no ``--data-dir``, reading only the committed files under
``pipeline/sample/`` (MLPerf layout and labels: 0..999 in sorted ILSVRC2012 synset order).
``python -m pipeline.sample --regenerate`` rebuilds them from scikit-image, so their
provenance is checkable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from core.cli import configure_logging, renamed_options, run_cli
from core.errors import UserError
from core.files import atomic_path
from preprocess import dataset

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95


@dataclass(frozen=True)
class SampleImage:
    file: str
    source: str  # the skimage.data function the pixels come from
    crop: tuple[int, int, int, int] | None  # (top, bottom, left, right) rows/cols, or None
    label: int  # ImageNet class, 0..999 in sorted-synset order
    synset: str
    class_name: str
    subject: str
    license: str  # as scikit-image's docstring states it


SAMPLE_IMAGES: tuple[SampleImage, ...] = (
    SampleImage(
        file="chelsea_tabby.jpg",
        source="chelsea",
        crop=None,
        label=281,
        synset="n02123045",
        class_name="tabby, tabby cat",
        subject="Chelsea, a striped tabby cat, face close up",
        license="No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
    ),
    SampleImage(
        file="coffee_espresso.jpg",
        source="coffee",
        crop=None,
        label=967,
        synset="n07920052",
        class_name="espresso",
        subject="an espresso in a cup on a saucer (courtesy of Pikolo Espresso Bar)",
        license="No copyright restrictions. CC0 by the photographer (Rachel Michetti).",
    ),
    SampleImage(
        file="astronaut_space_shuttle.jpg",
        source="astronaut",
        crop=(10, 290, 320, 512),
        label=812,
        synset="n04266014",
        class_name="space shuttle",
        subject="the space shuttle model behind Eileen Collins (top right of the portrait)",
        license="NASA Great Images database; no known copyright restrictions, public domain.",
    ),
    SampleImage(
        file="camera_tripod.jpg",
        source="camera",
        crop=(180, 512, 190, 490),
        label=872,
        synset="n04485082",
        class_name="tripod",
        subject="the camera tripod of the grayscale 'cameraman' photo (lower middle)",
        license="No copyright restrictions. CC0 by the photographer (Lav Varshney).",
    ),
)

SAMPLE_DESCRIPTION = (
    f"Data: the built-in sample of {len(SAMPLE_IMAGES)} real photographs from scikit-image "
    "(not ImageNet), so top-1 on it says nothing about MLPerf accuracy."
)


def sample_dir() -> Path:
    """The folder holding the sample's JPEGs and ``val_map.txt`` (MLPerf layout)."""
    return Path(__file__).resolve().parent / "sample"


def sample_pairs(path: str | Path | None = None) -> list[tuple[str, int]]:
    """The sample's ``(file, label)`` pairs in query order, read by preprocess's parser."""
    path = Path(path) if path is not None else sample_dir() / "val_map.txt"
    listing = dataset.read_val_map(path, path.parent)
    return list(zip(listing.files, listing.labels, strict=True))


# ---------------------------------------------------------------- regeneration


def render_sample_images() -> dict[str, bytes]:
    """Encode each sample photograph from scikit-image's copy: file name -> JPEG bytes."""
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise UserError(
            "regenerating the sample needs scikit-image: pip install scikit-image"
        ) from None
    import cv2

    logger.info(
        "encoding with OpenCV %s from scikit-image %s", cv2.__version__, skimage.__version__
    )
    encoded = {}
    for image in SAMPLE_IMAGES:
        pixels = getattr(skimage.data, image.source)()
        if image.crop is not None:
            top, bottom, left, right = image.crop
            pixels = pixels[top:bottom, left:right]
        if pixels.ndim == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)  # skimage is RGB, cv2 wants BGR
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise UserError(f"OpenCV could not encode {image.file}")
        encoded[image.file] = jpeg.tobytes()
    return encoded


def regenerate(dest: str | Path | None = None) -> list[Path]:
    """Rebuild the JPEGs, ``val_map.txt``, ``manifest.json`` and ``README.md`` in ``dest``."""
    encoded = render_sample_images()  # first: it explains a missing scikit-image
    import cv2
    import skimage

    dest = Path(dest) if dest is not None else sample_dir()
    manifest = {
        "opencv": cv2.__version__,
        "scikit_image": skimage.__version__,
        "jpeg_quality": JPEG_QUALITY,
        "images": [
            {
                "file": image.file,
                "label": image.label,
                "synset": image.synset,
                "class_name": image.class_name,
                "source": f"skimage.data.{image.source}()",
                "crop_rows_cols": list(image.crop) if image.crop else None,
                "sha256": hashlib.sha256(encoded[image.file]).hexdigest(),
            }
            for image in SAMPLE_IMAGES
        ],
    }
    val_map = "".join(f"{image.file} {image.label}\n" for image in SAMPLE_IMAGES)
    files = {
        **encoded,
        "val_map.txt": val_map.encode(),
        "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode(),
        "README.md": sample_readme(cv2.__version__, skimage.__version__).encode(),
    }
    for name, data in files.items():
        with atomic_path(dest / name) as tmp:
            tmp.write_bytes(data)
    return [dest / name for name in files]


def sample_readme(opencv_version: str, skimage_version: str) -> str:
    """The sample's README, naming the OpenCV and scikit-image versions that encoded it."""
    lines = []
    for image in SAMPLE_IMAGES:
        crop = ""
        if image.crop:
            top, bottom, left, right = image.crop
            crop = f" rows {top}:{bottom}, cols {left}:{right}"
        lines.append(
            f"| `{image.file}` | {image.label} | `{image.synset}` | {image.class_name} | "
            f"`skimage.data.{image.source}()`{crop} | {image.subject} | {image.license} |"
        )
    rows = "\n".join(lines)
    header = (
        f"| file | label | synset | class | source (scikit-image {skimage_version}) "
        "| subject | license (as scikit-image documents it) |"
    )
    return f"""# Built-in sample of real photographs

The pipeline evaluates these {len(SAMPLE_IMAGES)} photographs when it is given no
`--data-dir`. They are **not ImageNet**: they only show that the ported models see real
pictures the way the TensorFlow originals do. Top-1 on them says nothing about MLPerf
accuracy (76.456 % for ResNet-50 v1.5 and 71.676 % for MobileNet-v1 on the 50,000
ImageNet validation images).

Layout: MLPerf's, i.e. JPEG files plus `val_map.txt` with one `file label` line per image,
labels 0..999 in sorted ILSVRC2012 synset order (the number a model's 1001-way argmax
gives minus 1). Each photo was chosen, or cropped, so that one ImageNet class is clearly
the subject. `camera_tripod.jpg` is grayscale on purpose: MLPerf's `cv2.imread` expands
it to three channels. ImageNet's cat classes overlap (281 tabby, 282 tiger cat, 285
Egyptian cat), so a model answering 282 or 285 for Chelsea is a near miss, not a bug.

{header}
|---|---|---|---|---|---|---|
{rows}

Source: the photographs bundled with scikit-image (`skimage.data`). Encoded with OpenCV
{opencv_version} (`cv2.imencode`, JPEG quality {JPEG_QUALITY}); `manifest.json` records
each file's sha256. Rebuild and check them with

    python -m pipeline.sample --regenerate

(needs scikit-image; the pipeline itself reads only the committed files).
"""


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sample",
        description="List the built-in sample of real photographs, or rebuild it from "
        "scikit-image.",
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="rebuild the files from scikit-image"
    )
    parser.add_argument("--out", type=Path, help="where to rebuild (default: the sample folder)")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(renamed_options(argv, {"--dest": "--out"}))
    configure_logging(args.quiet)
    if args.regenerate:
        for path in regenerate(args.out):
            logger.info("wrote %s", path)
        return 0
    print(SAMPLE_DESCRIPTION)
    by_file = {image.file: image for image in SAMPLE_IMAGES}
    for file, label in sample_pairs():
        print(f"{file:32s} {label:4d}  {by_file[file].class_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
