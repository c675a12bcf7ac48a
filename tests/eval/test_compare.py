import json

import numpy as np
import pytest

from core.cli import run_cli
from core.errors import UserError
from eval.__main__ import main as eval_main
from eval.compare import compare_predictions, format_comparison, main

pytestmark = pytest.mark.slow


def test_compare_predictions_counts_and_indices():
    summary = compare_predictions(np.array([1, 2, 3, 4, 5]), np.array([1, 9, 3, 4, 0]))
    assert summary == {
        "total": 5,
        "agree": 3,
        "differ": 2,
        "percent": 60.0,
        "differing_indices": [1, 4],
    }
    same = compare_predictions(np.arange(4), np.arange(4))
    assert same["differ"] == 0 and same["percent"] == 100.0


def test_compare_rejects_mismatched_inputs():
    with pytest.raises(UserError, match="different numbers of images"):
        compare_predictions(np.arange(3), np.arange(4))
    with pytest.raises(UserError, match="1-D"):
        compare_predictions(np.zeros((2, 5)), np.zeros((2, 5)))


@pytest.fixture
def two_files(tmp_path):
    a = np.array([10, 20, 30, 40, 50, 60], dtype=np.int64)
    b = a.copy()
    b[[2, 5]] = [31, 999]
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "run_b").mkdir()
    np.save(tmp_path / "run_b" / "predictions.npy", b)  # an eval --out directory
    names = tmp_path / "names.txt"
    names.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG\n" for i in range(1, 7)))
    return tmp_path / "a.npy", tmp_path / "run_b", names


def test_compare_cli_lists_differences_with_file_names(two_files, capsys):
    a, b, names = two_files
    assert main([str(a), str(b), "--files", str(names)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "agreement: 4/6 (66.667 %)"
    assert out[1] == "2 image(s) differ:"
    rows = [line.split() for line in out[3:]]
    assert rows == [
        ["2", "30", "31", "ILSVRC2012_val_00000003.JPEG"],
        ["5", "60", "999", "ILSVRC2012_val_00000006.JPEG"],
    ]


def test_compare_subcommand_of_eval_and_strict_exit(two_files, capsys):
    a, b, _ = two_files
    assert eval_main(["compare", str(a), str(b)]) == 0
    assert "agreement: 4/6" in capsys.readouterr().out
    assert eval_main(["compare", str(a), str(b), "--strict"]) == 1
    assert "2 image(s) differ" in capsys.readouterr().out
    assert eval_main(["compare", str(a), str(a), "--strict"]) == 0
    assert capsys.readouterr().out.strip() == "agreement: 6/6 (100.000 %)"


def test_compare_cli_errors_are_one_sentence(two_files, tmp_path, capsys):
    a, _, names = two_files
    np.save(tmp_path / "short.npy", np.arange(3))
    assert run_cli(main, [str(a), str(tmp_path / "short.npy")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: the predictions cover different numbers of images (6 and 3)"
    )
    assert run_cli(main, [str(a), str(tmp_path / "nope.npy")]) == 1
    assert "error: predictions file not found" in capsys.readouterr().err
    names.write_text("one.JPEG\n")
    assert run_cli(main, [str(a), str(a), "--files", str(names)]) == 1
    assert "--files lists 1 names but the predictions cover 6" in capsys.readouterr().err


def test_format_without_files_shows_labels():
    a, b = np.array([1, 2]), np.array([1, 3])
    text = format_comparison(compare_predictions(a, b), a, b)
    assert text.splitlines()[-1].split() == ["1", "2", "3"]


@pytest.mark.parametrize(
    "bad",
    [np.array(["cat", "dog", "emu"]), np.array([1.0, 2.5, 3.0]), np.array([True, False, True])],
    ids=["strings", "floats", "booleans"],
)
def test_compare_refuses_non_integer_predictions_as_a_real_process(tmp_path, bad):
    import subprocess
    import sys
    from pathlib import Path

    np.save(tmp_path / "a.npy", np.array([1, 2, 3]))
    np.save(tmp_path / "b.npy", bad)
    done = subprocess.run(
        [sys.executable, "-m", "eval", "compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1
    assert done.stdout == ""
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "does not hold predicted labels: expected an integer array" in err


def _compare_process(*args):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [sys.executable, "-m", "eval", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_file_names_that_are_not_utf8_are_shown_escaped(two_files):
    a, b, names = two_files
    lines = [f"ILSVRC2012_val_{i:08d}.JPEG".encode() for i in range(1, 7)]
    lines[2] = b"bad\xff.JPEG"  # a name as the file system holds it, not UTF-8
    lines[5] = "odd\u2028name.JPEG".encode()  # str.splitlines() would cut it in two
    names.write_bytes(b"\n".join(lines) + b"\n")
    done = _compare_process(a, b, "--files", names)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    assert rows == [["2", "30", "31", "bad\\xff.JPEG"], ["5", "60", "999", "odd\\u2028name.JPEG"]]


def _run_folder(folder, predictions, fingerprint):
    import json

    folder.mkdir()
    np.save(folder / "predictions.npy", np.asarray(predictions, dtype=np.int64))
    if fingerprint is not None:
        results = {"model": "resnet50", "cache_fingerprint": fingerprint}
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_runs_of_different_caches_are_refused(tmp_path):
    a = _run_folder(tmp_path / "a", [1, 2, 3], "ab" * 32)
    b = _run_folder(tmp_path / "b", [1, 2, 3], "cd" * 32)
    done = _compare_process(a, b / "predictions.npy")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: {a} and {b / 'predictions.npy'} were evaluated on different caches "
        f"(cache_fingerprint abababababab... and cdcdcdcdcdcd... in their results.json): "
        f"compare runs of the same cache"
    )


def test_runs_of_one_cache_or_without_results_are_compared(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", [1, 2, 3], "ab" * 32)
    same = _run_folder(tmp_path / "same", [1, 2, 4], "ab" * 32)
    bare = _run_folder(tmp_path / "bare", [1, 2, 3], None)
    assert main([str(a), str(same)]) == 0
    assert capsys.readouterr().out.startswith("agreement: 2/3")
    assert main([str(a), str(bare)]) == 0
    assert capsys.readouterr().out.strip() == "agreement: 3/3 (100.000 %)"


def test_labels_from_a_val_map_give_the_verdict_with_counts(tmp_path, capsys):
    """Predictions from another harness (one label per image) and MLPerf's val_map.txt."""
    labels = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    val_map = tmp_path / "val_map.txt"
    val_map.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {x}\n" for i, x in enumerate(labels)))
    np.save(tmp_path / "fp32.npy", np.array(labels, dtype=np.int64))
    method = np.array(labels, dtype=np.int64)
    method[0] = 0  # one of ten lost: 0.9 of fp32, below MobileNet's 0.98
    np.save(tmp_path / "method.npy", method)
    argv = [str(tmp_path / "fp32.npy"), str(tmp_path / "method.npy"), "--labels", str(val_map),
            "--model", "mobilenet_v1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top-1 A:     100.000 %  (10 right, fp32)" in out
    assert "top-1 B:     90.000 %  (9 right, the method)" in out
    assert "MLPerf gate: FAIL  90.000 % = 0.900000 x fp32" in out
    assert "flips:       0 fixed, 1 broken (net -1)" in out and "agreement: 9/10" in out
    assert main([*argv[:2], "--labels", str(val_map), "--model", "resnet50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["passes"] is False and report["gate"]["required_ratio"] == 0.99
    assert report["equal_predictions"] == 9 and report["labels"] == f"val map {val_map}"
    np.save(tmp_path / "long.npy", np.zeros(11, dtype=np.int64))
    assert run_cli(main, [str(tmp_path / "long.npy")] * 2 + argv[2:]) == 1
    assert "holds 10 labels but the predictions cover 11 images" in capsys.readouterr().err


def test_labels_from_a_cache_must_be_the_cache_the_runs_read(tmp_path, capsys):
    from fixtures.images import write_val_set
    from preprocess import build_cache, load_cache

    write_val_set(tmp_path / "data", 4, seed=3)
    build_cache("resnet50", tmp_path / "data", tmp_path / "cache", workers=1, quiet=True)
    cache = load_cache(tmp_path / "cache", "resnet50")
    labels = np.asarray(cache.labels, dtype=np.int64)
    a = _run_folder(tmp_path / "a", labels, cache.fingerprint)
    b = _run_folder(tmp_path / "b", labels, cache.fingerprint)
    assert main([str(a), str(b), "--labels", str(tmp_path / "cache"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "resnet50" and report["gate"]["passes"] is True
    other = _run_folder(tmp_path / "other", labels, "ef" * 32)
    argv = [str(a), str(other / "predictions.npy"), "--labels", str(tmp_path / "cache")]
    assert run_cli(main, argv) == 1
    assert "were evaluated on different caches" in capsys.readouterr().err
    bare = tmp_path / "bare.npy"
    np.save(bare, labels)
    assert run_cli(main, [str(bare), str(other), "--labels", str(tmp_path / "cache")]) == 1
    assert "was evaluated on another cache than cache" in capsys.readouterr().err
