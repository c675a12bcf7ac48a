"""Which opencv-python-headless releases give bit-identical MLPerf crops?

MLPerf's preprocessing up to the uint8 crop (see ``preprocess/recipes.py``): ``cv2.imread``
(default flags, BGR uint8), BGR->RGB, resize the short side to 256 keeping the aspect ratio
with Python ``int()`` truncation (resnet50: ``INTER_AREA``, mobilenet_v1: ``INTER_LINEAR``),
centre crop 224.

This driver needs only the standard library (and this repository's ``core`` and
``benchmarks.machine``, which need no more). It

1. generates a fixed, seeded set of test images into ``OUT/images`` (by running
   ``opencv_versions_generator.py`` in a generator venv with pinned opencv/numpy/Pillow,
   so the bytes do not depend on the versions under test; ``OUT/images/manifest.json``
   lists their sha256) and copies the committed sample photos;
2. for each requested version creates ``OUT/venvs/ocv-<V>`` (``python -m venv``,
   ``pip install opencv-python-headless==V numpy``; if cv2 then fails to import because of
   a NumPy 2 ABI mismatch, it retries with ``numpy<2``) and runs the self-contained worker
   ``opencv_versions_worker.py`` there, which decodes every image with both
   ``cv2.imread(path)`` and ``cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)``
   and computes both recipes' crops (and, to separate decoder from resize differences, the
   crops of the reference version's decoded pixels);
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
if __package__ in (None, ""):  # run by path (python benchmarks/opencv_versions.py)
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import cpu_description  # noqa: E402
from core.files import sha256_file  # noqa: E402

DEFAULT_SAMPLES = str(REPO_ROOT / "pipeline" / "sample" / "*.jpg")

# These two run inside the venvs built here, not in this repository's environment; each
# run copies them into OUT (as generate_images.py and worker.py) and runs the copy.
GENERATOR_SCRIPT_PATH = Path(__file__).with_name("opencv_versions_generator.py")
WORKER_SCRIPT_PATH = Path(__file__).with_name("opencv_versions_worker.py")

# The image generator's own environment is pinned so the test images are the same bytes
# whatever versions are under test. Pillow is optional (only the CMYK JPEG needs it).
GENERATOR_REQUIREMENTS = ["opencv-python-headless==4.10.0.84", "numpy==1.26.4"]
GENERATOR_OPTIONAL = ["pillow==11.3.0"]
SEED = 20240611

RECIPES = ("resnet50", "mobilenet_v1")  # INTER_AREA, INTER_LINEAR
READERS = ("imread", "imdecode")
BUILD_KEYS = ("opencv", "numpy", "jpeg", "png", "baseline_simd", "dispatched_simd", "parallel")


# --------------------------------------------------------------------------------------
# Running commands and building venvs.
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


def reusable_venv(venv: Path, packages: list[str], fresh: bool) -> str | None:
    """The note of an earlier install of exactly ``packages`` in ``venv``; otherwise None,
    and ``venv`` is removed."""
    py = venv / "bin" / "python"
    marker = venv / "installed.json"
    if fresh and venv.exists():
        shutil.rmtree(venv)
    if marker.exists() and py.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("packages") == packages:
            return str(recorded.get("note"))
        shutil.rmtree(venv)
    elif venv.exists():
        shutil.rmtree(venv)
    return None


def check_importable(
    py: Path, pip: list[str], check_import: str, log_path: Path
) -> tuple[bool, str]:
    """(True, install note) when ``check_import`` runs, retrying with ``numpy<2`` when it
    fails over NumPy; else (False, why)."""
    note = "installed"
    rc, out = run([str(py), "-c", check_import], 120, log_path)
    if rc != 0 and "numpy" in out.lower():
        # cv2 wheels built against NumPy 1.x cannot import under NumPy 2.
        rc2, out2 = run(pip + ["numpy<2"], 1200, log_path)
        if rc2 != 0:
            return False, f"pip install numpy<2 failed (rc {rc2}): {last_line(out2)}"
        rc, out = run([str(py), "-c", check_import], 120, log_path)
        note = "installed; cv2 failed to import with NumPy 2, retried with numpy<2"
    if rc != 0:
        return False, f"import failed: {last_line(out)}"
    return True, note


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
    reused = reusable_venv(venv, packages, fresh)
    if reused is not None:
        return py, f"reused ({reused})"
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
        ok, note = check_importable(py, pip, check_import, log_path)
        if not ok:
            return None, note
    (venv / "installed.json").write_text(json.dumps({"packages": packages, "note": note}))
    return py, note


# --------------------------------------------------------------------------------------
# The test images.
# --------------------------------------------------------------------------------------
def generator_python(out: Path, python: str, fresh: bool) -> Path:
    """The generator venv's interpreter: with Pillow if it installs, else without."""
    venv = out / "venvs" / "generator"
    py, note = make_venv(
        venv, GENERATOR_REQUIREMENTS + GENERATOR_OPTIONAL, python, fresh, "import cv2, numpy, PIL"
    )
    if py is None:
        log(f"generator venv with Pillow failed ({note}); retrying without Pillow")
        py, note = make_venv(venv, GENERATOR_REQUIREMENTS, python, True, "import cv2, numpy")
        if py is None:
            raise SystemExit(f"cannot build the image generator venv: {note}")
    return py


def copy_samples(samples: str, images: Path) -> list[str]:
    """Copy the photos ``samples`` matches into ``images`` as sample_NAME; their paths."""
    copied = []
    for sample in sorted(glob.glob(samples)):
        shutil.copyfile(sample, images / ("sample_" + os.path.basename(sample)))
        copied.append(sample)
    return copied


def image_manifest(images: Path, copied: list[str]) -> dict:
    """The generator's notes, the samples copied, each image's sha256 and the set's."""
    files = {p.name: sha256_file(p) for p in sorted(images.iterdir()) if p.suffix != ".json"}
    return {
        "generator": json.loads((images / "generator.json").read_text()),
        "samples": copied,
        "sha256": files,
        "set_sha256": hashlib.sha256(
            "".join(f"{k}={v}\n" for k, v in files.items()).encode()
        ).hexdigest(),
    }


def generate_images(out: Path, samples: str, python: str, fresh: bool) -> dict:
    images = out / "images"
    py = generator_python(out, python, fresh)
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    script = out / "generate_images.py"
    shutil.copyfile(GENERATOR_SCRIPT_PATH, script)
    rc, text = run([str(py), str(script), str(images), str(SEED)], 600)
    if rc != 0:
        raise SystemExit(f"image generation failed:\n{text}")
    manifest = image_manifest(images, copy_samples(samples, images))
    (images / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------------------
# Installing the versions and running the worker in each.
# --------------------------------------------------------------------------------------
def install_versions(
    versions: list[str], out: Path, args: argparse.Namespace
) -> tuple[dict[str, Path], dict[str, str]]:
    """Newest first, a venv per version: (version: python of those that installed,
    version: install note)."""
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
        if py is not None:
            venvs[v] = py
    return venvs, install_notes


def run_worker(
    py: Path,
    out: Path,
    version: str,
    dump: bool,
    ref_decoded: Path | None,
    project_root: str | None,
) -> tuple[dict | None, str]:
    result_path = out / "results" / f"{version}.json"
    crops = out / "crops" / version
    if crops.exists():
        shutil.rmtree(crops)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(py), str(out / "worker.py"), "--images", str(out / "images")]
    cmd += ["--out", str(result_path), "--crops", str(crops)]
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


def run_reference(
    py: Path, out: Path, version: str, project_root: str | None
) -> tuple[dict | None, str]:
    """The reference's worker run, which saves its decoded pixels; when it fails with the
    project check, once more without. The reference compares with itself: its results say
    so, for a uniform analysis."""
    res, note = run_worker(py, out, version, dump=True, ref_decoded=None, project_root=project_root)
    if res is None and project_root:
        res, note = run_worker(py, out, version, dump=True, ref_decoded=None, project_root=None)
    if res is not None:
        for entry in res["images"].values():
            if "crops" in entry.get("imread", {}):
                entry["decoded_vs_ref"] = {"max_abs": 0, "pixels_differing": 0.0}
                entry["crops_of_ref_decoded"] = dict(entry["imread"]["crops"])
    return res, note


def run_versions(
    venvs: dict[str, Path], out: Path, project_root: str | None
) -> tuple[dict[str, dict], dict[str, str], str | None]:
    """Newest first, the worker in each venv; the newest that runs is the reference, the
    others crop its decoded pixels too. (results, version: note, reference version)."""
    results: dict[str, dict] = {}
    notes: dict[str, str] = {}
    ref_version = None
    for v in sorted(venvs, key=version_key, reverse=True):
        is_ref = ref_version is None
        log(f"[{v}] running worker" + (" (reference)" if is_ref else ""))
        if is_ref:
            res, note = run_reference(venvs[v], out, v, project_root)
        else:
            ref_decoded = out / "decoded_ref"
            res, note = run_worker(venvs[v], out, v, False, ref_decoded, project_root=None)
        notes[v] = note
        if res is None:
            log(f"[{v}] {note}")
            continue
        if is_ref:
            ref_version = v
        results[v] = res
    return results, notes, ref_version


# --------------------------------------------------------------------------------------
# Comparing each version with the reference.
# --------------------------------------------------------------------------------------
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


def difference_cause(entry: dict, mine: dict, theirs: dict, recipe: str) -> str:
    """Why a crop differs from the reference's: "resize" when the decoded pixels are the
    same, "decoder (...)" when cropping the reference's pixels gives its crop, else both."""
    if mine["decoded_sha256"] == theirs["decoded_sha256"]:
        return "resize"
    if entry.get("crops_of_ref_decoded", {}).get(recipe) != theirs["crops"][recipe]:
        return "decoder and resize"
    dec = entry.get("decoded_vs_ref", {})
    if "max_abs" in dec:
        return f"decoder (decoded max {dec['max_abs']}, {100 * dec['pixels_differing']:.3g}% px)"
    return f"decoder (shape {dec.get('shape')})"


def crop_difference(
    out: Path, version: str, ref_version: str, name: str, recipe: str, entry: dict, ref: dict
) -> dict:
    """How one image's imread crop differs from the reference's, and why."""
    mine, theirs = entry["imread"], ref["images"][name]["imread"]
    max_abs, share = compare_raw(
        out / "crops" / version / f"{name}__imread__{recipe}.u8",
        out / "crops" / ref_version / f"{name}__imread__{recipe}.u8",
    )
    cause = difference_cause(entry, mine, theirs, recipe)
    return {"image": name, "max_abs": max_abs, "pixels_differing": share, "cause": cause}


def recipe_agreement(
    out: Path, version: str, ref_version: str, res: dict, ref: dict, recipe: str
) -> dict:
    """For one recipe: how many imread crops equal the reference's, the ones that differ,
    and the images either side could not read."""
    names = sorted(ref["images"])
    same, differ, errors = 0, [], []
    for name in names:
        mine = res["images"].get(name, {}).get("imread", {})
        theirs = ref["images"][name].get("imread", {})
        if "crops" not in mine or "crops" not in theirs:
            errors.append(f"{name}: {mine.get('error') or theirs.get('error')}")
        elif mine["crops"][recipe] == theirs["crops"][recipe]:
            same += 1
        else:
            entry = res["images"][name]
            differ.append(crop_difference(out, version, ref_version, name, recipe, entry, ref))
    return {"identical": same, "total": len(names), "differ": differ, "errors": errors}


def reader_mismatch(name: str, entry: dict) -> dict | None:
    """How imread and imdecode disagree on one image (pixels, crops or errors), or None."""
    r, d = entry.get("imread", {}), entry.get("imdecode", {})
    if "crops" in r and "crops" in d:
        if r["decoded_sha256"] == d["decoded_sha256"] and r["crops"] == d["crops"]:
            return None
        return {
            "image": name,
            "imread_shape": r["shape"],
            "imdecode_shape": d["shape"],
            "decoded": entry.get("imread_vs_imdecode_decoded"),
        }
    if r.get("error") or d.get("error"):
        return {"image": name, "imread_error": r.get("error"), "imdecode_error": d.get("error")}
    return None


def imread_vs_imdecode(res: dict, names: list[str]) -> list[dict]:
    mismatches = (reader_mismatch(name, res["images"].get(name, {})) for name in names)
    return [m for m in mismatches if m is not None]


def project_check_notes(res: dict) -> list[str]:
    """Whether this repository's crop_uint8 gave the worker's imread crops, if it ran."""
    proj = [
        (name, e["project_crop_uint8"])
        for name, e in res["images"].items()
        if "project_crop_uint8" in e
    ]
    if proj:
        bad = [name for name, p in proj if p != res["images"][name].get("imread", {}).get("crops")]
        return [
            f"project crop_uint8 vs worker: {len(proj) - len(bad)}/{len(proj)} identical"
            + (f"; differ: {', '.join(bad)}" if bad else "")
        ]
    if res.get("project_check") not in (None, "ran"):
        return [f"project crop_uint8 not checked: {res['project_check']}"]
    return []


def analyse_version(out: Path, version: str, ref_version: str, res: dict, ref: dict) -> dict:
    return {
        "recipes": {
            recipe: recipe_agreement(out, version, ref_version, res, ref, recipe)
            for recipe in RECIPES
        },
        "imread_vs_imdecode": imread_vs_imdecode(res, sorted(ref["images"])),
        "notes": project_check_notes(res),
    }


def analyse(out: Path, ref_version: str, results: dict[str, dict]) -> dict:
    """Per version: crop agreement with the reference, and why crops differ."""
    ref = results[ref_version]
    return {
        version: analyse_version(out, version, ref_version, res, ref)
        for version, res in results.items()
    }


# --------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------
TABLE_HEADER = [
    "| opencv-python-headless | numpy | JPEG codec (build info) | resnet50 (INTER_AREA) "
    "| mobilenet_v1 (INTER_LINEAR) | imread == imdecode |",
    "|---|---|---|---|---|---|",
]


def render_heading(ref_version: str | None, manifest: dict) -> list[str]:
    return [
        f"Reference: the newest working version, {ref_version}. "
        f"{len(manifest['sha256'])} images (set sha256 {manifest['set_sha256'][:16]}).",
        "",
    ]


def recipe_cell(agreement: dict) -> str:
    """ "12/30 identical", with ", N unreadable" when some images could not be read."""
    errors = agreement["errors"]
    return f"{agreement['identical']}/{agreement['total']} identical" + (
        f", {len(errors)} unreadable" if errors else ""
    )


def readers_cell(res: dict, per: dict) -> str:
    """ "N/M same": of the M images either reader could crop, N gave identical results."""
    n_read = sum(
        1
        for e in res["images"].values()
        if "crops" in e.get("imread", {}) or "crops" in e.get("imdecode", {})
    )
    return f"{n_read - len(per['imread_vs_imdecode'])}/{n_read} same"


def table_row(version: str, status: dict, results: dict, analysis: dict) -> str:
    if version not in results:
        return f"| {version} | - | - | not tested: {status[version]} | | |"
    res, per = results[version], analysis[version]
    cells = [recipe_cell(per["recipes"][recipe]) for recipe in RECIPES]
    return (
        f"| {version} | {res['numpy']} | {res['jpeg']} | {cells[0]} | {cells[1]} "
        f"| {readers_cell(res, per)} |"
    )


def render_table(versions: list[str], status: dict, results: dict, analysis: dict) -> list[str]:
    rows = [table_row(v, status, results, analysis) for v in sorted(versions, key=version_key)]
    return TABLE_HEADER + rows + [""]


def recipe_details(per: dict) -> list[str]:
    details = []
    for recipe in RECIPES:
        for d in per["recipes"][recipe]["differ"]:
            details.append(
                f"  - {recipe} {d['image']}: {fmt_diff(d['max_abs'], d['pixels_differing'])}"
                f"; cause: {d['cause']}"
            )
        for e in per["recipes"][recipe]["errors"]:
            details.append(f"  - {recipe} unreadable: {e}")
    return details


def reader_detail(d: dict) -> str:
    """One line on how imread and imdecode disagree on an image."""
    if "imread_shape" not in d:
        return (
            f"  - imread vs imdecode {d['image']}: imread error "
            f"{d['imread_error']}, imdecode error {d['imdecode_error']}"
        )
    dec = d.get("decoded") or {}
    if "max_abs" in dec:
        decoded = f"max abs diff {dec['max_abs']}, {100 * dec['pixels_differing']:.3g}% px"
    else:
        decoded = f"shapes {dec.get('shape')}"
    return (
        f"  - imread vs imdecode {d['image']}: shapes {d['imread_shape']} / "
        f"{d['imdecode_shape']}, decoded {decoded}"
    )


def version_details(per: dict) -> list[str]:
    """Indented lines on everything one version's analysis found wrong or noted."""
    return (
        recipe_details(per)
        + [reader_detail(d) for d in per["imread_vs_imdecode"]]
        + [f"  - {note}" for note in per["notes"]]
    )


def render_details(results: dict, analysis: dict) -> list[str]:
    lines = []
    for v in sorted(results, key=version_key):
        details = version_details(analysis[v])
        if details:
            lines += [f"- {v}:"] + details
    return lines or ["No differences: every version's crops equal the reference's."]


def render(
    versions: list[str],
    ref_version: str | None,
    status: dict,
    results: dict,
    analysis: dict,
    manifest: dict,
) -> str:
    lines = render_heading(ref_version, manifest)
    lines += render_table(versions, status, results, analysis)
    lines += render_details(results, analysis)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
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
    return parser


def command_line() -> str:
    """This run's command, the script's path relative to the working directory."""
    script = sys.argv[0]
    shown = os.path.relpath(script, Path.cwd()) if Path(script).exists() else script
    return " ".join([shown] + sys.argv[1:])


def build_summary(
    ref_version: str,
    status: dict[str, str],
    install_notes: dict[str, str],
    results: dict[str, dict],
    analysis: dict,
    manifest: dict,
) -> dict:
    """What summary.json records: when, where and how it ran, and everything found."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_description()["cpu"],
        "python": platform.python_version(),
        "command": command_line(),
        "reference": ref_version,
        "status": status,
        "install": install_notes,
        "builds": {v: {k: r.get(k) for k in BUILD_KEYS} for v, r in results.items()},
        "analysis": analysis,
        "images": manifest,
    }


def report_nothing_ran(versions: list[str], status: dict[str, str]) -> int:
    print("No version could be installed and run:")
    for v in versions:
        print(f"  {v}: {status.get(v)}")
    return 1


def write_report(out: Path, summary: dict, table: str) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(table + "\n")
    print(f"CPU: {summary['cpu']}; Python {summary['python']}; {summary['date']}")
    print(table)
    print(f"\nDetails: {out / 'summary.json'}, per-version results in {out / 'results'}")


def prepare(out: Path, args: argparse.Namespace) -> dict:
    """The work folder with the test images and the worker script; the image manifest."""
    out.mkdir(parents=True, exist_ok=True)
    log(f"generating images into {out / 'images'}")
    manifest = generate_images(out, args.samples, args.python, args.fresh)
    log(f"{len(manifest['sha256'])} images, set sha256 {manifest['set_sha256'][:16]}")
    shutil.copyfile(WORKER_SCRIPT_PATH, out / "worker.py")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    versions = list(dict.fromkeys(args.versions))
    manifest = prepare(out, args)
    venvs, install_notes = install_versions(versions, out, args)
    project_root = None if args.no_project_check else str(REPO_ROOT)
    results, run_notes, ref_version = run_versions(venvs, out, project_root)
    # Failed installs first, then the runs, newest first in each (summary.json's order).
    status = {v: note for v, note in install_notes.items() if v not in venvs}
    status.update(run_notes)
    if ref_version is None:
        return report_nothing_ran(versions, status)
    for v, res in results.items():
        res["install"] = install_notes[v]
    analysis = analyse(out, ref_version, results)
    table = render(versions, ref_version, status, results, analysis, manifest)
    summary = build_summary(ref_version, status, install_notes, results, analysis, manifest)
    write_report(out, summary, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
