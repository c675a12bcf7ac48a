"""Which opencv-python-headless releases give bit-identical MLPerf crops?

MLPerf's preprocessing up to the uint8 crop (see ``preprocess/recipes.py``): ``cv2.imread``
(default flags, BGR uint8), BGR->RGB, resize the short side to 256 keeping the aspect ratio
with Python ``int()`` truncation (resnet50: ``INTER_AREA``, mobilenet_v1: ``INTER_LINEAR``),
centre crop 224.

This driver needs only the standard library. It

1. generates a fixed, seeded set of test images into ``OUT/images`` (in a generator venv
   with pinned opencv/numpy/Pillow, so the bytes do not depend on the versions under test;
   ``OUT/images/manifest.json`` lists their sha256) and copies the committed sample photos;
2. for each requested version creates ``OUT/venvs/ocv-<V>`` (``python -m venv``,
   ``pip install opencv-python-headless==V numpy``; if cv2 then fails to import because of
   a NumPy 2 ABI mismatch, it retries with ``numpy<2``) and runs a self-contained worker
   there that decodes every image with both ``cv2.imread(path)`` and
   ``cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)`` and computes both
   recipes' crops (and, to separate decoder from resize differences, the crops of the
   reference version's decoded pixels);
3. prints a table: per version and recipe, how many images give the same crop as the
   newest working version, and for those that differ the max abs pixel difference and the
   share of differing pixels.

    python benchmarks/opencv_versions.py --versions 4.8.1.78 4.10.0.84 5.1.0.95 --out /tmp/ocv

A version that fails to install or to run is reported as such; the others continue.
Re-running with the same ``--out`` reuses venvs that installed fine (``--fresh`` rebuilds).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = str(REPO_ROOT / "pipeline" / "sample" / "*.jpg")

# The image generator's own environment is pinned so the test images are the same bytes
# whatever versions are under test. Pillow is optional (only the CMYK JPEG needs it).
GENERATOR_REQUIREMENTS = ["opencv-python-headless==4.10.0.84", "numpy==1.26.4"]
GENERATOR_OPTIONAL = ["pillow==11.3.0"]
SEED = 20240611

RECIPES = ("resnet50", "mobilenet_v1")  # INTER_AREA, INTER_LINEAR
READERS = ("imread", "imdecode")

# --------------------------------------------------------------------------------------
# Image generator (runs inside the generator venv: numpy + cv2 [+ PIL]).
# --------------------------------------------------------------------------------------
GENERATOR_SCRIPT = r'''
import hashlib, json, os, struct, sys
import numpy as np
import cv2

out_dir, seed = sys.argv[1], int(sys.argv[2])
os.makedirs(out_dir, exist_ok=True)
rs = np.random.RandomState(seed)
notes = {}


def content(h, w):
    """Smooth gradients, sinusoids, sharp shapes, text, a fine checkerboard, noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy, ph = rs.uniform(1.5, 9.0), rs.uniform(1.5, 9.0), rs.uniform(0, 6.3)
        img[..., c] = (128 + 70 * np.sin(2 * np.pi * fx * xx / w + ph)
                       * np.cos(2 * np.pi * fy * yy / h) + 40 * (xx / w - yy / h))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(12):
        color = tuple(int(v) for v in rs.randint(0, 256, 3))
        x0, y0 = int(rs.randint(0, w)), int(rs.randint(0, h))
        x1, y1 = int(rs.randint(0, w)), int(rs.randint(0, h))
        if rs.rand() < 0.5:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, int(rs.randint(-1, 6)) or -1)
        else:
            r = int(rs.randint(2, max(3, min(h, w) // 3)))
            cv2.circle(img, (x0, y0), r, color, int(rs.randint(-1, 6)) or -1, cv2.LINE_AA)
    cv2.putText(img, "MLPerf %dx%d" % (w, h), (w // 10, h // 2), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.3, w / 600), (250, 250, 250), max(1, w // 300), cv2.LINE_AA)
    cy, cx = int(rs.randint(0, max(1, h - h // 4))), int(rs.randint(0, max(1, w - w // 4)))
    ch, cw = h // 4, w // 4
    check = ((np.indices((ch, cw)).sum(axis=0) % 2) * 255).astype(np.uint8)
    img[cy:cy + ch, cx:cx + cw] = check[..., None]
    noise = rs.normal(0, 10, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def jpeg(name, h, w, quality=90, extra=()):
    img = content(h, w)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality] + list(extra))
    assert ok
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(buf.tobytes())
    return buf.tobytes()


def exif_segment(orientation):
    """APP1 'Exif' with a big-endian TIFF IFD holding only Orientation (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif(data, orientation):
    assert data[:2] == b"\xff\xd8"
    pos = 2
    if data[2:4] == b"\xff\xe0":  # keep JFIF APP0 first
        pos = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:pos] + exif_segment(orientation) + data[pos:]


# Name: (height, width, quality). ImageNet-like sizes, portrait and landscape, small
# images that are upscaled, a large one, extreme aspect ratios, odd sizes.
SIZES = {
    "land_500x375_q90": (375, 500, 90),
    "port_375x500_q90": (500, 375, 90),
    "land_500x333_q75": (333, 500, 75),
    "port_333x500_q95": (500, 333, 95),
    "land_640x480_q50": (480, 640, 50),
    "port_480x640_q100": (640, 480, 100),
    "square_256_q90": (256, 256, 90),
    "square_224_q85": (224, 224, 85),
    "small_200x150_q90": (150, 200, 90),
    "tiny_64x48_q90": (48, 64, 90),
    "big_2048x1536_q85": (1536, 2048, 85),
    "wide_1200x300_q90": (300, 1200, 90),
    "tall_240x1000_q80": (1000, 240, 80),
    "odd_257x259_q97": (259, 257, 97),
    "odd_513x301_q60": (301, 513, 60),
}
for name, (h, w, q) in SIZES.items():
    jpeg(name + ".jpg", h, w, q)

jpeg("progressive_500x375_q90.jpg", 375, 500, 90, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
jpeg("optimized_375x500_q90.jpg", 500, 375, 90, [cv2.IMWRITE_JPEG_OPTIMIZE, 1])
if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
    jpeg("sampling444_500x375_q95.jpg", 375, 500, 95,
         [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])

gray = content(400, 300)[..., 1]
ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 90])
open(os.path.join(out_dir, "gray_300x400_q90.jpg"), "wb").write(buf.tobytes())

bgra = np.dstack([content(333, 500), rs.randint(0, 256, (333, 500)).astype(np.uint8)])
bgra[:100, :, 3] = 0  # fully transparent band: imread drops alpha, keeps the colour
ok, buf = cv2.imencode(".png", bgra)
open(os.path.join(out_dir, "alpha_500x333.png"), "wb").write(buf.tobytes())

ok, buf = cv2.imencode(".png", content(300, 420))
open(os.path.join(out_dir, "rgb_420x300.png"), "wb").write(buf.tobytes())

base = jpeg("exif_base_500x375_q90.jpg", 375, 500, 90)
for orientation in (3, 6, 8):
    with open(os.path.join(out_dir, "exif_orient%d_500x375_q90.jpg" % orientation), "wb") as f:
        f.write(with_exif(base, orientation))

try:
    from PIL import Image
    rgb = cv2.cvtColor(content(375, 500), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).convert("CMYK").save(os.path.join(out_dir, "cmyk_500x375_q90.jpg"),
                                               quality=90)
    import PIL
    notes["pillow"] = PIL.__version__
except ImportError as err:
    notes["pillow"] = "not importable (%s): no CMYK JPEG" % err

notes["generator_opencv"] = cv2.__version__
notes["generator_numpy"] = np.__version__
notes["seed"] = seed
with open(os.path.join(out_dir, "generator.json"), "w") as f:
    json.dump(notes, f, indent=1)
'''

# --------------------------------------------------------------------------------------
# Worker (runs inside each version's venv: numpy + cv2 only).
# --------------------------------------------------------------------------------------
WORKER_SCRIPT = r"""
import argparse, hashlib, json, os, re, sys
import numpy as np
import cv2

p = argparse.ArgumentParser()
p.add_argument("--images", required=True)
p.add_argument("--out", required=True)
p.add_argument("--crops", required=True)
p.add_argument("--dump-decoded")
p.add_argument("--ref-decoded")
p.add_argument("--project-root")
a = p.parse_args()
cv2.setNumThreads(1)  # be gentle with shared CPUs; resize results do not depend on it
os.makedirs(a.crops, exist_ok=True)
INTERP = {"resnet50": cv2.INTER_AREA, "mobilenet_v1": cv2.INTER_LINEAR}


def sha(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def read(path, reader):
    if reader == "imread":
        return cv2.imread(path)
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)


def crop(bgr, recipe):
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


build = cv2.getBuildInformation()
def build_line(key):
    m = re.search(r"^\s*" + re.escape(key) + r":\s*(.*)$", build, re.M)
    return m.group(1).strip() if m else None

project_crop = None
if a.project_root:
    try:
        import importlib.util
        sys.path.insert(0, a.project_root)
        spec = importlib.util.spec_from_file_location(
            "_mlperf_port_recipes", os.path.join(a.project_root, "preprocess", "recipes.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        project_crop = mod.crop_uint8
        project_error = None
    except Exception as err:  # reported, not fatal
        project_error = "%s: %s" % (type(err).__name__, err)

result = {
    "opencv": cv2.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
    "jpeg": build_line("JPEG"), "png": build_line("PNG"),
    "baseline_simd": build_line("Baseline"),
    "dispatched_simd": build_line("Dispatched code generation"),
    "parallel": build_line("Parallel framework"),
    "images": {},
}
if a.project_root:
    result["project_check"] = project_error or "ran"

for name in sorted(os.listdir(a.images)):
    path = os.path.join(a.images, name)
    if name.endswith(".json") or not os.path.isfile(path):
        continue
    entry = {}
    decoded = {}
    for reader in ("imread", "imdecode"):
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
        rec = {"shape": list(bgr.shape), "dtype": str(bgr.dtype), "decoded_sha256": sha(bgr),
               "crops": {}}
        for recipe in INTERP:
            c = crop(bgr, recipe)
            rec["crops"][recipe] = sha(c)
            with open(os.path.join(a.crops, "%s__%s__%s.u8" % (name, reader, recipe)), "wb") as f:
                f.write(c.tobytes())
        entry[reader] = rec
    if "imread" in decoded and "imdecode" in decoded:
        entry["imread_vs_imdecode_decoded"] = diff(decoded["imread"], decoded["imdecode"])
    if "imread" in decoded and a.dump_decoded:
        os.makedirs(a.dump_decoded, exist_ok=True)
        np.save(os.path.join(a.dump_decoded, name + ".npy"), decoded["imread"])
    ref_path = os.path.join(a.ref_decoded or "", name + ".npy")
    if a.ref_decoded and os.path.exists(ref_path):
        ref = np.load(ref_path)
        if "imread" in decoded:
            entry["decoded_vs_ref"] = diff(decoded["imread"], ref)
        # Resize on the reference's decoded pixels: isolates resize differences.
        entry["crops_of_ref_decoded"] = {}
        for recipe in INTERP:
            c = crop(ref, recipe)
            entry["crops_of_ref_decoded"][recipe] = sha(c)
            with open(os.path.join(a.crops, "%s__refdec__%s.u8" % (name, recipe)), "wb") as f:
                f.write(c.tobytes())
    if project_crop is not None:
        try:
            entry["project_crop_uint8"] = {r: sha(project_crop(path, r)) for r in INTERP}
        except Exception as err:
            entry["project_crop_uint8"] = {"error": "%s: %s" % (type(err).__name__, err)}
    result["images"][name] = entry

with open(a.out, "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
print("worker done: opencv %s, %d images" % (cv2.__version__, len(result["images"])))
"""


# --------------------------------------------------------------------------------------
# Driver (standard library only).
# --------------------------------------------------------------------------------------
def version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: int, log_path: Path | None = None) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        rc, out = -1, (err.stdout or "") if isinstance(err.stdout, str) else ""
        out += f"\n[timed out after {timeout}s]"
    except OSError as err:
        rc, out = -1, str(err)
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}\n[rc={rc}]\n")
    return rc, out


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("ERROR") or "Error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def make_venv(
    venv: Path,
    packages: list[str],
    python: str,
    fresh: bool,
    check_import: str | None = None,
    allow_source: bool = False,
) -> tuple[Path | None, str]:
    """A venv with ``packages``; (python path, note) or (None, why it failed)."""
    py = venv / "bin" / "python"
    marker = venv / "installed.json"
    if fresh and venv.exists():
        shutil.rmtree(venv)
    if marker.exists() and py.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("packages") == packages:
            return py, f"reused ({recorded.get('note')})"
        shutil.rmtree(venv)
    elif venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_path = venv.parent / f"{venv.name}.log"
    log_path.write_text("")
    rc, out = run([python, "-m", "venv", str(venv)], 300, log_path)
    if rc != 0:
        return None, f"venv failed: {last_line(out)}"
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not allow_source:
        # Building OpenCV from an sdist takes an hour and is not the PyPI build anyway.
        pip.append("--only-binary=:all:")
    rc, out = run(pip + packages, 1200, log_path)
    if rc != 0:
        return None, f"pip install failed (rc {rc}): {last_line(out)}"
    note = "installed"
    if check_import:
        rc, out = run([str(py), "-c", check_import], 120, log_path)
        if rc != 0 and "numpy" in out.lower():
            # cv2 wheels built against NumPy 1.x cannot import under NumPy 2.
            rc2, out2 = run(pip + ["numpy<2"], 1200, log_path)
            if rc2 != 0:
                return None, f"pip install numpy<2 failed (rc {rc2}): {last_line(out2)}"
            rc, out = run([str(py), "-c", check_import], 120, log_path)
            note = "installed; cv2 failed to import with NumPy 2, retried with numpy<2"
        if rc != 0:
            return None, f"import failed: {last_line(out)}"
    marker.write_text(json.dumps({"packages": packages, "note": note}))
    return py, note


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_images(out: Path, samples: str, python: str, fresh: bool) -> dict:
    images = out / "images"
    venv = out / "venvs" / "generator"
    py, note = make_venv(
        venv, GENERATOR_REQUIREMENTS + GENERATOR_OPTIONAL, python, fresh, "import cv2, numpy, PIL"
    )
    if py is None:
        log(f"generator venv with Pillow failed ({note}); retrying without Pillow")
        py, note = make_venv(venv, GENERATOR_REQUIREMENTS, python, True, "import cv2, numpy")
        if py is None:
            raise SystemExit(f"cannot build the image generator venv: {note}")
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    script = out / "generate_images.py"
    script.write_text(GENERATOR_SCRIPT)
    rc, text = run([str(py), str(script), str(images), str(SEED)], 600)
    if rc != 0:
        raise SystemExit(f"image generation failed:\n{text}")
    copied = []
    for sample in sorted(glob.glob(samples)):
        dest = images / ("sample_" + os.path.basename(sample))
        shutil.copyfile(sample, dest)
        copied.append(sample)
    generator = json.loads((images / "generator.json").read_text())
    files = {p.name: sha256_file(p) for p in sorted(images.iterdir()) if p.suffix != ".json"}
    manifest = {
        "generator": generator,
        "samples": copied,
        "sha256": files,
        "set_sha256": hashlib.sha256(
            "".join(f"{k}={v}\n" for k, v in files.items()).encode()
        ).hexdigest(),
    }
    (images / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def run_worker(
    py: Path,
    out: Path,
    version: str,
    dump: bool,
    ref_decoded: Path | None,
    project_root: str | None,
) -> tuple[dict | None, str]:
    worker = out / "worker.py"
    result_path = out / "results" / f"{version}.json"
    crops = out / "crops" / version
    if crops.exists():
        shutil.rmtree(crops)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(py),
        str(worker),
        "--images",
        str(out / "images"),
        "--out",
        str(result_path),
        "--crops",
        str(crops),
    ]
    if dump:
        decoded = out / "decoded_ref"
        if decoded.exists():
            shutil.rmtree(decoded)
        cmd += ["--dump-decoded", str(decoded)]
    if ref_decoded is not None:
        cmd += ["--ref-decoded", str(ref_decoded)]
    if project_root:
        cmd += ["--project-root", project_root]
    rc, text = run(cmd, 1800, out / "results" / f"{version}.log")
    if rc != 0:
        return None, f"worker failed: {last_line(text)}"
    return json.loads(result_path.read_text()), "ok"


def compare_raw(path_a: Path, path_b: Path) -> tuple[int, float]:
    """(max abs difference, share of pixels with any channel differing), pure Python."""
    a, b = path_a.read_bytes(), path_b.read_bytes()
    if len(a) != len(b):
        return -1, 1.0
    max_abs, differing = 0, 0
    for i in range(0, len(a), 3):
        pa, pb = a[i : i + 3], b[i : i + 3]
        if pa != pb:
            differing += 1
            max_abs = max(max_abs, *(abs(x - y) for x, y in zip(pa, pb, strict=False)))
    return max_abs, differing / (len(a) // 3)


def fmt_diff(max_abs: int, share: float) -> str:
    return f"max abs diff {max_abs}, {100 * share:.3g}% of pixels differ"


def analyse(out: Path, ref_version: str, results: dict[str, dict]) -> dict:
    """Per version: crop agreement with the reference, and why crops differ."""
    ref = results[ref_version]
    analysis = {}
    for version, res in results.items():
        per = {"recipes": {}, "imread_vs_imdecode": [], "notes": []}
        names = sorted(ref["images"])
        for recipe in RECIPES:
            same, differ, errors = 0, [], []
            for name in names:
                mine = res["images"].get(name, {}).get("imread", {})
                theirs = ref["images"][name].get("imread", {})
                if "crops" not in mine or "crops" not in theirs:
                    errors.append(f"{name}: {mine.get('error') or theirs.get('error')}")
                    continue
                if mine["crops"][recipe] == theirs["crops"][recipe]:
                    same += 1
                    continue
                m, s = compare_raw(
                    out / "crops" / version / f"{name}__imread__{recipe}.u8",
                    out / "crops" / ref_version / f"{name}__imread__{recipe}.u8",
                )
                entry = res["images"][name]
                dec = entry.get("decoded_vs_ref", {})
                decoder_same = mine["decoded_sha256"] == theirs["decoded_sha256"]
                resize_same = (
                    entry.get("crops_of_ref_decoded", {}).get(recipe) == theirs["crops"][recipe]
                )
                if decoder_same:
                    cause = "resize"
                elif resize_same:
                    cause = (
                        "decoder ("
                        + (
                            f"decoded max {dec['max_abs']}, {100 * dec['pixels_differing']:.3g}% px"
                            if "max_abs" in dec
                            else f"shape {dec.get('shape')}"
                        )
                        + ")"
                    )
                else:
                    cause = "decoder and resize"
                differ.append({"image": name, "max_abs": m, "pixels_differing": s, "cause": cause})
            per["recipes"][recipe] = {
                "identical": same,
                "total": len(names),
                "differ": differ,
                "errors": errors,
            }
        for name in names:
            entry = res["images"].get(name, {})
            r, d = entry.get("imread", {}), entry.get("imdecode", {})
            if "crops" in r and "crops" in d:
                if r["decoded_sha256"] != d["decoded_sha256"] or r["crops"] != d["crops"]:
                    per["imread_vs_imdecode"].append(
                        {
                            "image": name,
                            "imread_shape": r["shape"],
                            "imdecode_shape": d["shape"],
                            "decoded": entry.get("imread_vs_imdecode_decoded"),
                        }
                    )
            elif r.get("error") or d.get("error"):
                per["imread_vs_imdecode"].append(
                    {
                        "image": name,
                        "imread_error": r.get("error"),
                        "imdecode_error": d.get("error"),
                    }
                )
        proj = [
            (name, e["project_crop_uint8"])
            for name, e in res["images"].items()
            if "project_crop_uint8" in e
        ]
        if proj:
            bad = [
                name for name, p in proj if p != res["images"][name].get("imread", {}).get("crops")
            ]
            per["notes"].append(
                f"project crop_uint8 vs worker: {len(proj) - len(bad)}/{len(proj)} identical"
                + (f"; differ: {', '.join(bad)}" if bad else "")
            )
        elif res.get("project_check") not in (None, "ran"):
            per["notes"].append(f"project crop_uint8 not checked: {res['project_check']}")
        analysis[version] = per
    return analysis


def render(
    versions: list[str],
    ref_version: str | None,
    status: dict,
    results: dict,
    analysis: dict,
    manifest: dict,
) -> str:
    lines = []
    n_images = len(manifest["sha256"])
    lines.append(
        f"Reference: the newest working version, {ref_version}. "
        f"{n_images} images (set sha256 {manifest['set_sha256'][:16]})."
    )
    lines.append("")
    lines.append(
        "| opencv-python-headless | numpy | JPEG codec (build info) | resnet50 (INTER_AREA) "
        "| mobilenet_v1 (INTER_LINEAR) | imread == imdecode |"
    )
    lines.append("|---|---|---|---|---|---|")
    for v in sorted(versions, key=version_key):
        if v not in results:
            lines.append(f"| {v} | - | - | not tested: {status[v]} | | |")
            continue
        res, per = results[v], analysis[v]
        cells = []
        for recipe in RECIPES:
            r = per["recipes"][recipe]
            cells.append(
                f"{r['identical']}/{r['total']} identical"
                + (f", {len(r['errors'])} unreadable" if r["errors"] else "")
            )
        n_rd = sum(
            1
            for e in res["images"].values()
            if "crops" in e.get("imread", {}) or "crops" in e.get("imdecode", {})
        )
        rd = f"{n_rd - len(per['imread_vs_imdecode'])}/{n_rd} same"
        lines.append(f"| {v} | {res['numpy']} | {res['jpeg']} | {cells[0]} | {cells[1]} | {rd} |")
    lines.append("")
    any_detail = False
    for v in sorted(results, key=version_key):
        per = analysis[v]
        details = []
        for recipe in RECIPES:
            for d in per["recipes"][recipe]["differ"]:
                details.append(
                    f"  - {recipe} {d['image']}: {fmt_diff(d['max_abs'], d['pixels_differing'])}"
                    f"; cause: {d['cause']}"
                )
            for e in per["recipes"][recipe]["errors"]:
                details.append(f"  - {recipe} unreadable: {e}")
        for d in per["imread_vs_imdecode"]:
            if "imread_shape" in d:
                dec = d.get("decoded") or {}
                details.append(
                    f"  - imread vs imdecode {d['image']}: shapes {d['imread_shape']} / "
                    f"{d['imdecode_shape']}, decoded "
                    + (
                        f"max abs diff {dec['max_abs']}, {100 * dec['pixels_differing']:.3g}% px"
                        if "max_abs" in dec
                        else f"shapes {dec.get('shape')}"
                    )
                )
            else:
                details.append(
                    f"  - imread vs imdecode {d['image']}: imread error "
                    f"{d['imread_error']}, imdecode error {d['imdecode_error']}"
                )
        for note in per["notes"]:
            details.append(f"  - {note}")
        if details:
            any_detail = True
            lines.append(f"- {v}:")
            lines.extend(details)
    if not any_detail:
        lines.append("No differences: every version's crops equal the reference's.")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--versions",
        nargs="+",
        required=True,
        help="opencv-python-headless versions, e.g. 4.8.1.78 5.1.0.95",
    )
    parser.add_argument("--out", required=True, help="work folder (images, venvs, results)")
    parser.add_argument(
        "--samples",
        default=DEFAULT_SAMPLES,
        help="glob of real photos to include (default: %(default)s)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the venvs (default: this one)"
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild existing venvs")
    parser.add_argument(
        "--allow-source",
        action="store_true",
        help="let pip build a version from source when it has no wheel for "
        "this Python (default: wheels only; such a version is reported "
        "as failing to install)",
    )
    parser.add_argument(
        "--no-project-check",
        action="store_true",
        help="do not also run this repo's preprocess/recipes.py crop_uint8 in the reference venv",
    )
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    versions = list(dict.fromkeys(args.versions))
    log(f"generating images into {out / 'images'}")
    manifest = generate_images(out, args.samples, args.python, args.fresh)
    log(f"{len(manifest['sha256'])} images, set sha256 {manifest['set_sha256'][:16]}")
    (out / "worker.py").write_text(WORKER_SCRIPT)

    status: dict[str, str] = {}
    venvs: dict[str, Path] = {}
    install_notes: dict[str, str] = {}
    for v in sorted(versions, key=version_key, reverse=True):
        log(f"[{v}] installing opencv-python-headless=={v} numpy")
        py, note = make_venv(
            out / "venvs" / f"ocv-{v}",
            [f"opencv-python-headless=={v}", "numpy"],
            args.python,
            args.fresh,
            "import cv2, numpy",
            args.allow_source,
        )
        log(f"[{v}] {note}")
        install_notes[v] = note
        if py is None:
            status[v] = note
        else:
            venvs[v] = py

    results: dict[str, dict] = {}
    ref_version = None
    project_root = None if args.no_project_check else str(REPO_ROOT)
    for v in sorted(venvs, key=version_key, reverse=True):
        is_ref = ref_version is None
        log(f"[{v}] running worker" + (" (reference)" if is_ref else ""))
        res, note = run_worker(
            venvs[v],
            out,
            v,
            dump=is_ref,
            ref_decoded=None if is_ref else out / "decoded_ref",
            project_root=project_root if is_ref else None,
        )
        if res is None and is_ref and project_root:
            res, note = run_worker(venvs[v], out, v, dump=True, ref_decoded=None, project_root=None)
        if res is None:
            status[v] = note
            log(f"[{v}] {note}")
            continue
        if is_ref:
            # The reference compares with itself: record that for a uniform analysis.
            for _name, entry in res["images"].items():
                if "crops" in entry.get("imread", {}):
                    entry["decoded_vs_ref"] = {"max_abs": 0, "pixels_differing": 0.0}
                    entry["crops_of_ref_decoded"] = dict(entry["imread"]["crops"])
            ref_version = v
        res["install"] = install_notes[v]
        results[v] = res
        status[v] = "ok"

    if ref_version is None:
        print("No version could be installed and run:")
        for v in versions:
            print(f"  {v}: {status.get(v)}")
        return 1
    analysis = analyse(out, ref_version, results)
    table = render(versions, ref_version, status, results, analysis, manifest)
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "command": " ".join(
            [
                os.path.relpath(sys.argv[0], Path.cwd())
                if Path(sys.argv[0]).exists()
                else sys.argv[0]
            ]
            + sys.argv[1:]
        ),
        "reference": ref_version,
        "status": status,
        "install": install_notes,
        "builds": {
            v: {
                k: r.get(k)
                for k in (
                    "opencv",
                    "numpy",
                    "jpeg",
                    "png",
                    "baseline_simd",
                    "dispatched_simd",
                    "parallel",
                )
            }
            for v, r in results.items()
        },
        "analysis": analysis,
        "images": manifest,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(table + "\n")
    print(f"CPU: {summary['cpu']}; Python {summary['python']}; {summary['date']}")
    print(table)
    print(f"\nDetails: {out / 'summary.json'}, per-version results in {out / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
