"""Decodes and crops every test image with one OpenCV release, for
``benchmarks/opencv_versions.py``.

It runs inside that release's venv (numpy + opencv only), not in this repository's
environment:

    python opencv_versions_worker.py --images DIR --out RESULT.json --crops DIR
        [--dump-decoded DIR] [--ref-decoded DIR] [--project-root REPO]

Each image is read with both ``cv2.imread(path)`` and ``cv2.imdecode(np.fromfile(path),
cv2.IMREAD_COLOR)`` and cropped with both MLPerf recipes; the raw crops go to
``--crops`` as ``NAME__READER__RECIPE.u8`` and their sha256 to ``--out``. With
``--ref-decoded`` (the reference release's ``imread`` pixels, which ``--dump-decoded``
saves) it also crops those pixels, to tell decoder from resize differences apart; with
``--project-root`` it also runs that repository's ``preprocess/recipes.py`` crop_uint8.
"""

import argparse
import hashlib
import json
import os
import re
import sys

import cv2
import numpy as np

INTERP = {"resnet50": cv2.INTER_AREA, "mobilenet_v1": cv2.INTER_LINEAR}
READERS = ("imread", "imdecode")


def parse_args(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--dump-decoded")
    p.add_argument("--ref-decoded")
    p.add_argument("--project-root")
    return p.parse_args(argv)


def sha(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def read(path, reader):
    if reader == "imread":
        return cv2.imread(path)
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)


def crop(bgr, recipe):
    """MLPerf's uint8 crop: BGR->RGB, short side to 256 (int() truncation), centre 224."""
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width, _ = img.shape
    if height > width:
        w, h = 256, int(256 * height / width)
    else:
        h, w = 256, int(256 * width / height)
    img = cv2.resize(img, (w, h), interpolation=INTERP[recipe])
    height, width, _ = img.shape
    top, bottom = int((height - 224) / 2), int((height + 224) / 2)
    left, right = int((width - 224) / 2), int((width + 224) / 2)
    return np.ascontiguousarray(img[top:bottom, left:right])


def diff(a_, b_):
    if a_.shape != b_.shape:
        return {"shape": [list(a_.shape), list(b_.shape)]}
    d = np.abs(a_.astype(np.int16) - b_.astype(np.int16))
    return {"max_abs": int(d.max()), "pixels_differing": float((d.max(axis=-1) > 0).mean())}


def build_info():
    """The build facts of cv2.getBuildInformation() that can change decoding or resizing."""
    build = cv2.getBuildInformation()

    def build_line(key):
        m = re.search(r"^\s*" + re.escape(key) + r":\s*(.*)$", build, re.M)
        return m.group(1).strip() if m else None

    return {
        "jpeg": build_line("JPEG"),
        "png": build_line("PNG"),
        "baseline_simd": build_line("Baseline"),
        "dispatched_simd": build_line("Dispatched code generation"),
        "parallel": build_line("Parallel framework"),
    }


def load_project_crop(project_root):
    """(the project's crop_uint8, None), or (None, why it could not be loaded)."""
    try:
        import importlib.util

        sys.path.insert(0, project_root)
        spec = importlib.util.spec_from_file_location(
            "_mlperf_port_recipes", os.path.join(project_root, "preprocess", "recipes.py")
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.crop_uint8, None
    except Exception as err:  # reported, not fatal
        return None, f"{type(err).__name__}: {err}"


def save_crop(crops_dir, file_name, img):
    with open(os.path.join(crops_dir, file_name), "wb") as f:
        f.write(img.tobytes())


def decode_and_crop(path, name, crops_dir):
    """Per reader: shape, pixel and crop digests (or the error); and the decoded pixels."""
    entry, decoded = {}, {}
    for reader in READERS:
        try:
            bgr = read(path, reader)
        except cv2.error as err:
            bgr, error = None, str(err)
        else:
            error = None if bgr is not None else "returned None"
        if bgr is None:
            entry[reader] = {"error": error}
            continue
        decoded[reader] = bgr
        rec = {
            "shape": list(bgr.shape),
            "dtype": str(bgr.dtype),
            "decoded_sha256": sha(bgr),
            "crops": {},
        }
        for recipe in INTERP:
            c = crop(bgr, recipe)
            rec["crops"][recipe] = sha(c)
            save_crop(crops_dir, f"{name}__{reader}__{recipe}.u8", c)
        entry[reader] = rec
    return entry, decoded


def compare_with_reference(entry, decoded, name, ref_decoded, crops_dir):
    """Add the pixel difference from the reference's decoding, and the digests of this
    release's crops of the reference's pixels (which isolate resize differences)."""
    ref_path = os.path.join(ref_decoded or "", name + ".npy")
    if not (ref_decoded and os.path.exists(ref_path)):
        return
    ref = np.load(ref_path)
    if "imread" in decoded:
        entry["decoded_vs_ref"] = diff(decoded["imread"], ref)
    entry["crops_of_ref_decoded"] = {}
    for recipe in INTERP:
        c = crop(ref, recipe)
        entry["crops_of_ref_decoded"][recipe] = sha(c)
        save_crop(crops_dir, f"{name}__refdec__{recipe}.u8", c)


def process_image(path, name, args, project_crop):
    entry, decoded = decode_and_crop(path, name, args.crops)
    if "imread" in decoded and "imdecode" in decoded:
        entry["imread_vs_imdecode_decoded"] = diff(decoded["imread"], decoded["imdecode"])
    if "imread" in decoded and args.dump_decoded:
        os.makedirs(args.dump_decoded, exist_ok=True)
        np.save(os.path.join(args.dump_decoded, name + ".npy"), decoded["imread"])
    compare_with_reference(entry, decoded, name, args.ref_decoded, args.crops)
    if project_crop is not None:
        try:
            entry["project_crop_uint8"] = {r: sha(project_crop(path, r)) for r in INTERP}
        except Exception as err:
            entry["project_crop_uint8"] = {"error": f"{type(err).__name__}: {err}"}
    return entry


def image_files(images_dir):
    """(path, name) of the images, in name order; the .json manifests are skipped."""
    for name in sorted(os.listdir(images_dir)):
        path = os.path.join(images_dir, name)
        if not name.endswith(".json") and os.path.isfile(path):
            yield path, name


def main(argv):
    args = parse_args(argv)
    cv2.setNumThreads(1)  # be gentle with shared CPUs; resize results do not depend on it
    os.makedirs(args.crops, exist_ok=True)
    project_crop = None
    result = {"opencv": cv2.__version__, "numpy": np.__version__}
    result.update(python=sys.version.split()[0], images={}, **build_info())
    if args.project_root:
        project_crop, project_error = load_project_crop(args.project_root)
        result["project_check"] = project_error or "ran"
    for path, name in image_files(args.images):
        result["images"][name] = process_image(path, name, args, project_crop)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"worker done: opencv {cv2.__version__}, {len(result['images'])} images")


if __name__ == "__main__":
    main(sys.argv[1:])
