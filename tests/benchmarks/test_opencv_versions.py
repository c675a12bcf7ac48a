"""The OpenCV-versions study's pure parts: no venv, no pip, no network.

``analyse`` and ``render`` run on a hand-made ``results`` dict shaped like the worker's
JSON: a reference (5.1.0.95) and one older version (4.10.0.84) whose crops differ on
b.jpg through the resize, on d.jpg through the decoder, and which cannot read c.png.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import opencv_versions as ov

REF, OLD, MISSING = "5.1.0.95", "4.10.0.84", "4.0.0.1"
UNREAD = {"error": "returned None"}


def reader(decoded: str, resnet50: str, mobilenet_v1: str) -> dict:
    crops = {"resnet50": resnet50, "mobilenet_v1": mobilenet_v1}
    return {"shape": [375, 500, 3], "dtype": "uint8", "decoded_sha256": decoded, "crops": crops}


def image(rd: dict, dec: dict, vs_ref: dict | None = None, of_ref: dict | None = None) -> dict:
    entry = {"imread": rd, "imdecode": dec}
    if vs_ref is not None:
        entry["decoded_vs_ref"] = vs_ref
    if of_ref is not None:
        entry["crops_of_ref_decoded"] = of_ref
    return entry


def make_results() -> dict:
    same = {"max_abs": 0, "pixels_differing": 0.0}
    ref_images = {
        name: image(reader(f"d{x}", f"r{x}", f"m{x}"), reader(f"d{x}", f"r{x}", f"m{x}"), same)
        for name, x in (("a.jpg", "a"), ("b.jpg", "b"), ("d.jpg", "d"))
    }
    ref_images["c.png"] = image(reader("dc", "rc", "mc"), UNREAD, same)
    for entry in ref_images.values():
        entry["crops_of_ref_decoded"] = dict(entry["imread"]["crops"])
        entry["project_crop_uint8"] = dict(entry["imread"]["crops"])
    ref_images["d.jpg"]["project_crop_uint8"]["resnet50"] = "not the worker's"
    b_old = reader("db", "rb-old", "mb")  # same pixels, other crop: the resize
    d_old = reader("dd-old", "rd-old", "md")  # other pixels; their crop by the ref is rd
    old_images = {
        "a.jpg": image(reader("da", "ra", "ma"), reader("da", "ra", "ma"), same),
        "b.jpg": image(b_old, b_old, same, {"resnet50": "rb-old", "mobilenet_v1": "mb"}),
        "c.png": image(UNREAD, UNREAD),
        "d.jpg": image(
            d_old,
            d_old,
            {"max_abs": 3, "pixels_differing": 0.005},
            {"resnet50": "rd", "mobilenet_v1": "md"},
        ),
    }
    build = {"numpy": "1.26.4", "jpeg": "libjpeg-turbo (ver 3.0.3-70)"}
    return {
        REF: {**build, "numpy": "2.2.6", "project_check": "ran", "images": ref_images},
        OLD: {**build, "images": old_images},
    }


def write_crops(out):
    """Raw RGB crops of 2 and 4 pixels: b.jpg differs by 2 in 1 of 2 pixels, d.jpg by 9
    in 1 of 4."""
    files = {
        (REF, "b.jpg"): bytes([10, 20, 30, 40, 50, 60]),
        (OLD, "b.jpg"): bytes([10, 20, 30, 40, 52, 60]),
        (REF, "d.jpg"): bytes(12),
        (OLD, "d.jpg"): bytes([0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]),
    }
    for (version, name), data in files.items():
        folder = out / "crops" / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}__imread__resnet50.u8").write_bytes(data)


MANIFEST = {
    "sha256": {"a.jpg": "1", "b.jpg": "2", "c.png": "3", "d.jpg": "4"},
    "set_sha256": "0123456789abcdef0123456789",
}
STATUS = {MISSING: "pip install failed (rc 1): ERROR: no wheel", REF: "ok", OLD: "ok"}
EXPECTED_REPORT = """\
Reference: the newest working version, 5.1.0.95. 4 images (set sha256 0123456789abcdef).

| opencv-python-headless | numpy | JPEG codec (build info) | resnet50 (INTER_AREA) \
| mobilenet_v1 (INTER_LINEAR) | imread == imdecode |
|---|---|---|---|---|---|
| 4.0.0.1 | - | - | not tested: pip install failed (rc 1): ERROR: no wheel | | |
| 4.10.0.84 | 1.26.4 | libjpeg-turbo (ver 3.0.3-70) | 1/4 identical, 1 unreadable \
| 3/4 identical, 1 unreadable | 2/3 same |
| 5.1.0.95 | 2.2.6 | libjpeg-turbo (ver 3.0.3-70) | 4/4 identical | 4/4 identical | 3/4 same |

- 4.10.0.84:
  - resnet50 b.jpg: max abs diff 2, 50% of pixels differ; cause: resize
  - resnet50 d.jpg: max abs diff 9, 25% of pixels differ; cause: decoder (decoded max 3, 0.5% px)
  - resnet50 unreadable: c.png: returned None
  - mobilenet_v1 unreadable: c.png: returned None
  - imread vs imdecode c.png: imread error returned None, imdecode error returned None
- 5.1.0.95:
  - imread vs imdecode c.png: imread error None, imdecode error returned None
  - project crop_uint8 vs worker: 3/4 identical; differ: d.jpg"""


@pytest.fixture
def analysed(tmp_path):
    results = make_results()
    write_crops(tmp_path)
    return results, ov.analyse(tmp_path, REF, results)


def test_versions_sort_by_number_not_text():
    versions = ["4.10.0.84", "5.1.0.95", "4.8.1.78", "4.9.0.80"]
    assert sorted(versions, key=ov.version_key) == ["4.8.1.78", "4.9.0.80", "4.10.0.84", "5.1.0.95"]
    assert ov.version_key("4.10.0.84") == (4, 10, 0, 84)
    assert ov.version_key("5.0.0rc1") == (5, 0, "0rc1")


def test_fmt_diff_gives_three_significant_digits_of_percent():
    assert ov.fmt_diff(3, 0.012345) == "max abs diff 3, 1.23% of pixels differ"
    assert ov.fmt_diff(0, 0.0) == "max abs diff 0, 0% of pixels differ"
    assert ov.fmt_diff(-1, 1.0) == "max abs diff -1, 100% of pixels differ"


def test_compare_raw_counts_pixels_not_channels(tmp_path):
    a, b, c, short = (tmp_path / n for n in ("a.u8", "b.u8", "c.u8", "short.u8"))
    a.write_bytes(bytes([0, 0, 0, 100, 100, 100, 7, 7, 7, 200, 200, 200]))
    b.write_bytes(bytes([0, 0, 0, 105, 100, 98, 7, 7, 7, 200, 200, 193]))  # pixels 2 and 4
    c.write_bytes(a.read_bytes())
    short.write_bytes(bytes(9))
    assert ov.compare_raw(a, b) == (7, 0.5)
    assert ov.compare_raw(a, c) == (0, 0.0)
    assert ov.compare_raw(a, short) == (-1, 1.0)  # sizes differ: every pixel counts


def test_last_line_prefers_the_last_error():
    pip_out = "Collecting x\nERROR: first\n  Downloading\nERROR: No matching distribution\ndone\n"
    assert ov.last_line(pip_out) == "ERROR: No matching distribution"
    assert ov.last_line("Traceback\nImportError: numpy.core.multiarray failed\n") == (
        "ImportError: numpy.core.multiarray failed"
    )
    assert ov.last_line("one\n\ntwo  \n\n") == "two"
    assert ov.last_line("  \n") == "(no output)"
    assert len(ov.last_line("ERROR " + "x" * 500)) == 300


def test_difference_cause_tells_decoder_from_resize():
    theirs = reader("d", "r", "m")
    same_pixels = reader("d", "r2", "m")
    other_pixels = reader("d2", "r2", "m")
    ref_crop = {"crops_of_ref_decoded": {"resnet50": "r"}}
    vs_ref = {"decoded_vs_ref": {"max_abs": 12, "pixels_differing": 0.25}}
    assert ov.difference_cause({}, same_pixels, theirs, "resnet50") == "resize"
    assert (
        ov.difference_cause({**ref_crop, **vs_ref}, other_pixels, theirs, "resnet50")
        == "decoder (decoded max 12, 25% px)"
    )
    shape = {"decoded_vs_ref": {"shape": [[375, 500, 3], [500, 375, 3]]}}
    assert (
        ov.difference_cause({**ref_crop, **shape}, other_pixels, theirs, "resnet50")
        == "decoder (shape [[375, 500, 3], [500, 375, 3]])"
    )
    resized = {"crops_of_ref_decoded": {"resnet50": "r3"}, **vs_ref}
    assert ov.difference_cause(resized, other_pixels, theirs, "resnet50") == ("decoder and resize")


def test_analyse_counts_agreement_and_explains_differences(analysed):
    _, analysis = analysed
    assert list(analysis) == [REF, OLD]
    old = analysis[OLD]
    assert old["recipes"]["resnet50"] == {
        "identical": 1,
        "total": 4,
        "differ": [
            {"image": "b.jpg", "max_abs": 2, "pixels_differing": 0.5, "cause": "resize"},
            {
                "image": "d.jpg",
                "max_abs": 9,
                "pixels_differing": 0.25,
                "cause": "decoder (decoded max 3, 0.5% px)",
            },
        ],
        "errors": ["c.png: returned None"],
    }
    assert old["recipes"]["mobilenet_v1"] == {
        "identical": 3,
        "total": 4,
        "differ": [],
        "errors": ["c.png: returned None"],
    }
    assert old["imread_vs_imdecode"] == [
        {"image": "c.png", "imread_error": "returned None", "imdecode_error": "returned None"}
    ]
    assert old["notes"] == []


def test_analyse_of_the_reference_against_itself(analysed):
    _, analysis = analysed
    ref = analysis[REF]
    for recipe in ov.RECIPES:
        assert ref["recipes"][recipe] == {"identical": 4, "total": 4, "differ": [], "errors": []}
    assert ref["imread_vs_imdecode"] == [
        {"image": "c.png", "imread_error": None, "imdecode_error": "returned None"}
    ]
    assert ref["notes"] == ["project crop_uint8 vs worker: 3/4 identical; differ: d.jpg"]


def test_reader_mismatch_reports_pixels_shapes_and_errors():
    rd = reader("d", "r", "m")
    assert ov.reader_mismatch("x.jpg", {"imread": rd, "imdecode": dict(rd)}) is None
    assert ov.reader_mismatch("x.jpg", {}) is None
    decoded = {"max_abs": 1, "pixels_differing": 0.5}
    other = {**reader("d2", "r", "m"), "shape": [1, 2, 3]}
    entry = {"imread": rd, "imdecode": other, "imread_vs_imdecode_decoded": decoded}
    mismatch = ov.reader_mismatch("x.jpg", entry)
    assert mismatch == {
        "image": "x.jpg",
        "imread_shape": [375, 500, 3],
        "imdecode_shape": [1, 2, 3],
        "decoded": decoded,
    }
    assert ov.reader_detail(mismatch) == (
        "  - imread vs imdecode x.jpg: shapes [375, 500, 3] / [1, 2, 3], "
        "decoded max abs diff 1, 50% px"
    )
    mismatch["decoded"] = {"shape": [[375, 500, 3], [1, 2, 3]]}
    assert ov.reader_detail(mismatch).endswith("decoded shapes [[375, 500, 3], [1, 2, 3]]")


def test_project_check_notes():
    images = {"a.jpg": {"imread": reader("d", "r", "m"), "project_crop_uint8": {}}}
    assert ov.project_check_notes({"images": {}}) == []
    assert ov.project_check_notes({"images": {}, "project_check": "ran"}) == []
    assert ov.project_check_notes({"images": {}, "project_check": "ImportError: cv2"}) == [
        "project crop_uint8 not checked: ImportError: cv2"
    ]
    assert ov.project_check_notes({"images": images}) == [
        "project crop_uint8 vs worker: 0/1 identical; differ: a.jpg"
    ]
    images["a.jpg"]["project_crop_uint8"] = {"resnet50": "r", "mobilenet_v1": "m"}
    assert ov.project_check_notes({"images": images}) == [
        "project crop_uint8 vs worker: 1/1 identical"
    ]


def test_render_gives_table_and_details(analysed):
    results, analysis = analysed
    versions = [REF, OLD, MISSING]
    assert ov.render(versions, REF, STATUS, results, analysis, MANIFEST) == EXPECTED_REPORT


def test_render_says_when_nothing_differs(tmp_path):
    ref = {REF: make_results()[REF]}
    del ref[REF]["images"]["c.png"], ref[REF]["images"]["d.jpg"], ref[REF]["project_check"]
    for entry in ref[REF]["images"].values():
        del entry["project_crop_uint8"]
    analysis = ov.analyse(tmp_path, REF, ref)
    manifest = {"sha256": {"a.jpg": "1", "b.jpg": "2"}, "set_sha256": "f" * 64}
    text = ov.render([REF], REF, {REF: "ok"}, ref, analysis, manifest)
    assert text.splitlines()[-3:] == [
        "| 5.1.0.95 | 2.2.6 | libjpeg-turbo (ver 3.0.3-70) | 2/2 identical | 2/2 identical "
        "| 2/2 same |",
        "",
        "No differences: every version's crops equal the reference's.",
    ]


def fake_worker(calls, fail):
    """A run_worker stand-in that records its calls. A version in ``fail`` fails, and so
    does "VERSION+project" when asked for the project check. Each result is the reference's
    as its worker writes it (without the self-comparison), c.png unreadable by imread."""

    def run_worker(py, out, version, dump, ref_decoded, project_root):
        calls.append((version, dump, ref_decoded, project_root))
        if version in fail or (project_root and f"{version}+project" in fail):
            return None, "worker failed: boom"
        res = make_results()[REF]
        for entry in res["images"].values():
            del entry["decoded_vs_ref"], entry["crops_of_ref_decoded"]
        res["images"]["c.png"]["imread"] = UNREAD
        return res, "ok"

    return run_worker


def test_reference_retries_without_the_project_check_and_compares_with_itself(
    tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(ov, "run_worker", fake_worker(calls, {f"{REF}+project"}))
    res, note = ov.run_reference(tmp_path / "py", tmp_path, REF, "/repo")
    assert note == "ok"
    assert calls == [(REF, True, None, "/repo"), (REF, True, None, None)]
    entry = res["images"]["b.jpg"]
    assert entry["decoded_vs_ref"] == {"max_abs": 0, "pixels_differing": 0.0}
    assert entry["crops_of_ref_decoded"] == {"resnet50": "rb", "mobilenet_v1": "mb"}
    assert "decoded_vs_ref" not in res["images"]["c.png"]  # imread could not read it


def test_newest_version_that_runs_is_the_reference(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ov, "run_worker", fake_worker(calls, {REF}))
    venvs = {OLD: tmp_path / "old", REF: tmp_path / "ref", "4.9.0.80": tmp_path / "v49"}
    results, notes, ref_version = ov.run_versions(venvs, tmp_path, None)
    assert ref_version == OLD
    assert list(results) == [OLD, "4.9.0.80"]
    assert notes == {REF: "worker failed: boom", OLD: "ok", "4.9.0.80": "ok"}
    assert calls == [
        (REF, True, None, None),
        (OLD, True, None, None),
        ("4.9.0.80", False, tmp_path / "decoded_ref", None),
    ]


def test_main_writes_report_and_summary(tmp_path, monkeypatch, capsys):
    def make_venv(venv, packages, python, fresh, check_import=None, allow_source=False):
        if venv.name == f"ocv-{MISSING}":
            return None, STATUS[MISSING]
        return venv / "bin" / "python", "installed"

    def generate_images(out, samples, python, fresh):
        return MANIFEST

    monkeypatch.setattr(ov, "make_venv", make_venv)
    monkeypatch.setattr(ov, "generate_images", generate_images)
    monkeypatch.setattr(ov, "run_worker", fake_worker([], set()))
    out = tmp_path / "out"
    assert ov.main(["--versions", MISSING, REF, MISSING, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == [
        "date", "cpu", "python", "command", "reference", "status", "install", "builds",
        "analysis", "images",
    ]  # fmt: skip
    assert summary["reference"] == REF
    assert list(summary["status"].items()) == [(MISSING, STATUS[MISSING]), (REF, "ok")]
    assert summary["install"] == {REF: "installed", MISSING: STATUS[MISSING]}
    assert summary["builds"][REF]["numpy"] == "2.2.6"
    assert summary["builds"][REF]["opencv"] is None
    report = (out / "report.md").read_text()
    assert f"| {MISSING} | - | - | not tested: {STATUS[MISSING]} | | |" in report
    assert (out / "worker.py").read_text() == ov.WORKER_SCRIPT_PATH.read_text()
    printed = capsys.readouterr().out
    assert printed.startswith(f"CPU: {summary['cpu']}; Python {summary['python']}; ")
    assert report in printed


def test_main_fails_when_no_version_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ov, "make_venv", lambda venv, *a, **k: (None, "pip failed"))
    monkeypatch.setattr(ov, "generate_images", lambda *a: MANIFEST)
    assert ov.main(["--versions", OLD, REF, "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().out == (
        f"No version could be installed and run:\n  {OLD}: pip failed\n  {REF}: pip failed\n"
    )
    assert not (tmp_path / "summary.json").exists()


def test_scripts_for_the_venvs_are_beside_the_driver():
    for path in (ov.GENERATOR_SCRIPT_PATH, ov.WORKER_SCRIPT_PATH):
        compile(path.read_text(), str(path), "exec")  # valid Python for the venvs
        assert 'if __name__ == "__main__":' in path.read_text()


def test_worker_crop_is_mlperf_centre_224():
    np = pytest.importorskip("numpy")
    pytest.importorskip("cv2")
    from benchmarks import opencv_versions_worker as worker

    bgr = np.zeros((300, 500, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    crop = worker.crop(bgr, "resnet50")
    assert crop.shape == (224, 224, 3) and crop.flags["C_CONTIGUOUS"]
    assert (crop[..., 2] == 255).all() and (crop[..., :2] == 0).all()  # RGB now
    assert worker.diff(bgr, bgr) == {"max_abs": 0, "pixels_differing": 0.0}
    assert worker.diff(bgr, bgr[:10]) == {"shape": [[300, 500, 3], [10, 500, 3]]}


def test_generator_exif_goes_after_the_jfif_segment():
    pytest.importorskip("numpy")
    pytest.importorskip("cv2")
    from benchmarks import opencv_versions_generator as generator

    app0 = b"\xff\xe0\x00\x04JF"
    jpeg = b"\xff\xd8" + app0 + b"\xff\xdbrest"
    tagged = generator.with_exif(jpeg, 6)
    segment = generator.exif_segment(6)
    assert tagged == b"\xff\xd8" + app0 + segment + b"\xff\xdbrest"
    assert segment[:2] == b"\xff\xe1" and int.from_bytes(segment[2:4], "big") == len(segment) - 2
    assert segment[4:10] == b"Exif\x00\x00"
