"""Inference throughput: PyTorch eager vs this project's fast path vs TensorFlow vs ONNX
Runtime, in fp32 and in int8.

Both models, steady-state img/s at each batch size (warm-up first, then as many calls as
fit in ``--seconds``), on fixture graphs with random weights (speed does not depend on the
values): TensorFlow runs the frozen graph, PyTorch its ``convert``-ed weights, ONNX Runtime
its tf2onnx conversion. "int8" is ``--quantize int8`` of the converted weights run as
``python -m eval`` runs it; "onnx-int8" is ONNX Runtime's ``quantize_static`` of its fp32
graph (``benchmarks/onnx_int8.py``); both calibrated on the same photo crops. PyTorch's
top-1 is compared with TensorFlow's on the timed batch, so a speed-up that broke exactness
would show (int8 agrees on a share of it, not all).

    python -m benchmarks.bench_inference --json work/bench/inference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np

from benchmarks.ceiling import fma_peak_gflops, gemm_gflops, multiply_adds
from benchmarks.machine import cpu_description, describe_cores, load_average
from core.cli import configure_logging, positive_int, renamed_options, run_cli
from core.errors import UserError, first_line
from core.files import sha256_file, write_text_atomic
from core.profiles import MODEL_NAMES, get_profile
from eval.engines.cpu_workers import WORKERS_ENV

log = logging.getLogger("bench_inference")

# "fast" is the project's default fast path; "fast:<builder>" names one explicitly. A
# "@intra-op" suffix runs every call on all cores' intra-op threads instead of one
# single-threaded worker per core (eval/cpu_workers.py), to compare the two.
INTRA_OP = "@intra-op"
ENGINES = ("eager", "fast", "fast:torchscript-freeze", "fast:inductor",
           "fast:torchscript-onednn", "tf", "onnx", "int8", "onnx-int8", f"eager{INTRA_OP}",
           f"fast{INTRA_OP}", f"fast:torchscript-onednn{INTRA_OP}")  # fmt: skip
DEFAULT_ENGINES = ("eager@intra-op", "eager", "fast@intra-op", "fast", "tf", "onnx", "int8",
                   "onnx-int8")  # fmt: skip
CALIBRATION_IMAGES = 32  # photo crops both int8 rows are calibrated on


def throughput(run: Callable[[], object], batch: int, seconds: float) -> dict:
    """Steady-state img/s: two warm-up calls, then calls until ``seconds`` (at least 3)."""
    for _ in range(2):
        run()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    elapsed = time.perf_counter() - start
    return {"img_per_s": calls * batch / elapsed, "calls": calls, "seconds": elapsed}


def fixture_graph(model_name: str, fixture_dir: Path) -> Path:
    """The fixture frozen graph for ``model_name``, built once into ``fixture_dir``."""
    path = fixture_dir / f"{model_name}_fixture.pb"
    if not path.exists():
        from fixtures import tf_graphs  # TensorFlow: imported only when needed

        log.info("building the %s fixture graph", model_name)
        getattr(tf_graphs, f"write_{model_name}_pb")(path, seed=0)
    return path


def converted_model(model_name: str, graph: Path, fixture_dir: Path):
    """The graph's weights as the project's PyTorch module, converted once: a kept conversion
    is used only if its own record names this graph's sha256."""
    from convert import convert_checkpoint, load_checkpoint

    pth = fixture_dir / f"{model_name}_fixture.pth"
    if pth.exists():
        try:
            module, record = load_checkpoint(pth, expected_model=model_name)
            if record["source_sha256"] == sha256_file(graph):
                return module
        except UserError as err:
            log.info("converting again: %s", err)
    convert_checkpoint(model_name, graph, pth, verify=False, quiet=True)
    return load_checkpoint(pth, expected_model=model_name)[0]


def onnx_sessions(model_name: str, graph: Path, cores: int, calibration, engines) -> dict:
    """ONNX Runtime sessions for the graph via tf2onnx, fp32 ("onnx") and int8
    ("onnx-int8"), each either a session or a string saying why not."""
    wanted = [engine for engine in ("onnx", "onnx-int8") if engine in engines]
    if not wanted:
        return {}
    profile = get_profile(model_name)
    try:
        import tf2onnx

        from benchmarks.onnx_int8 import cpu_session, quantize_onnx
        from convert.graph import read_graph_def

        graph_def = read_graph_def(graph, profile.archive_member)
        proto, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=[profile.input_tensor],
            output_names=[profile.logits_tensor],
            opset=13,
        )
        with tempfile.TemporaryDirectory() as folder:
            fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
            fp32_path.write_bytes(proto.SerializeToString())
            sessions = {"onnx": cpu_session(fp32_path, cores)}
            if "onnx-int8" in wanted:
                images = [image[None] for image in calibration]
                quantize_onnx(fp32_path, int8_path, profile.input_tensor, images, "MinMax")
                sessions["onnx-int8"] = cpu_session(int8_path, cores)
        return {engine: (sessions[engine], profile.input_tensor) for engine in wanted}
    except Exception as err:  # any converter/runtime failure is reported, not fatal
        first = first_line(err, 200) or type(err).__name__
        return dict.fromkeys(wanted, f"n/a: {type(err).__name__}: {first}")


def int8_model(module, calibration: np.ndarray):
    """``--quantize int8`` of ``module`` (defaults), calibrated on NHWC float32 crops."""
    import torch

    from quantize import quantize_model

    nchw = torch.from_numpy(calibration).permute(0, 3, 1, 2).contiguous()
    return quantize_model(module, [nchw], "int8", quiet=True)


def torch_cell(module, engine: str, nchw, tf_logits: np.ndarray | None, seconds: float) -> dict:
    """One PyTorch engine at one batch: its speed, setup, and agreement with TensorFlow."""
    from eval.engines import prepare_engine

    batch = len(nchw)
    name, intra_op, _ = engine.partition(INTRA_OP)  # "@intra-op": one worker, all threads
    name = "eager" if name == "int8" else name  # int8 kernels run eager, as in the evaluation
    with mock.patch.dict(os.environ, {WORKERS_ENV: "1"} if intra_op else {}):
        prepared = prepare_engine(module, name, batch_size=batch)
    fell_back = " (fast fell back)" if engine.startswith("fast") and not prepared.is_fast else ""
    threading = "workers" if prepared.workers else "intra-op"
    int8 = "int8 oneDNN " if engine.startswith("int8") else ""
    cell = {
        "name": f"torch {int8}{prepared.name} ({threading}){fell_back}",
        "setup_seconds": round(prepared.setup_seconds, 2),
        "notes": prepared.notes,
        **throughput(lambda: prepared(nchw), batch, seconds),
    }
    if tf_logits is not None:
        logits = prepared(nchw).numpy()
        diff = float(np.abs(logits - tf_logits).max())
        # Fixture weights give large logits: relative to their magnitude too.
        cell["max_abs_logit_diff_vs_tf"] = diff
        cell["max_rel_logit_diff_vs_tf"] = diff / max(1.0, float(np.abs(tf_logits).max()))
        cell["top1_share_equal_to_tf"] = float(np.mean(logits.argmax(1) == tf_logits.argmax(1)))
    return cell


def bench_model(model_name: str, args: argparse.Namespace, cores: int, progress) -> list[dict]:
    import torch

    from convert.tf_runner import TFGraphRunner
    from fixtures.photo_models import crops_uint8
    from preprocess import normalize

    graph = fixture_graph(model_name, args.fixture_dir)
    module = converted_model(model_name, graph, args.fixture_dir)
    gflop_per_image = 2 * multiply_adds(module) / 1e9
    runner = TFGraphRunner(graph, model_name) if "tf" in args.engines else None
    calibration = None  # photo crops, read only when an int8 row needs them
    if {"int8", "onnx-int8"} & set(args.engines):
        calibration = normalize(crops_uint8(CALIBRATION_IMAGES, seed=7)[0], model_name)
    onnx = onnx_sessions(model_name, graph, cores, calibration, args.engines)
    int8 = int8_model(module, calibration) if "int8" in args.engines else None
    rows = []
    for batch in args.batches:
        u8 = np.random.default_rng(batch).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        nhwc = normalize(u8, model_name)
        nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # channels-last view, no copy
        tf_logits = runner.logits(nhwc) if runner is not None else None
        for engine in args.engines:
            progress.set_description(f"{model_name} b{batch} {engine}")
            row = {"model": model_name, "batch": batch, "engine": engine, "gflop": gflop_per_image}
            if engine.startswith(("eager", "fast", "int8")):
                model = int8 if engine == "int8" else module
                row.update(torch_cell(model, engine, nchw, tf_logits, args.seconds))
            elif engine == "tf":
                row["name"] = "tensorflow"
                row.update(throughput(lambda x=nhwc: runner.logits(x), batch, args.seconds))
            else:
                row.update(onnx_cell(onnx[engine], engine, nhwc, args.seconds))
            rows.append(row)
            progress.update(1)
    if runner is not None:
        runner.close()
    return rows


def onnx_cell(onnx, engine: str, nhwc: np.ndarray, seconds: float) -> dict:
    """ONNX Runtime's speed on one batch, or why it could not run (``onnx_sessions``)."""
    name = "onnxruntime int8 (quantize_static, QDQ)" if engine == "onnx-int8" else "onnxruntime"
    if isinstance(onnx, str):
        return {"name": name, "img_per_s": None, "error": onnx}
    session, input_name = onnx
    feed = {input_name: nhwc}
    speed = throughput(lambda: session.run(None, feed), len(nhwc), seconds)
    return {"name": name, **speed}


def add_ratios(rows: list[dict], gemm_gflops: float, peak_gflops: float | str) -> None:
    """Each row's img/s relative to TensorFlow's and to the fp32 fast engine's for the same
    model and batch, and its arithmetic rate as a share of this CPU's fp32 GEMM rate and of
    its multiply-add peak (``benchmarks/ceiling.py``; a peak not measured is a string)."""
    for baseline in ("tf", "fast"):
        speeds = {(r["model"], r["batch"]): r.get("img_per_s") for r in rows
                  if r["engine"] == baseline}  # fmt: skip
        for row in rows:
            base, speed = speeds.get((row["model"], row["batch"])), row.get("img_per_s")
            row[f"ratio_to_{baseline}"] = round(speed / base, 3) if speed and base else None
    for row in rows:  # int8 rows are not compared with fp32 arithmetic rates
        speed = row.get("img_per_s") if "int8" not in row["engine"] else None
        rate = speed * row["gflop"] if speed else None
        row["share_of_gemm_rate"] = round(rate / gemm_gflops, 3) if rate else None
        measured = rate and isinstance(peak_gflops, float)
        row["share_of_fma_peak"] = round(rate / peak_gflops, 3) if measured else None


def format_table(rows: list[dict]) -> str:
    ratios = f"{'vs TF':>6}  {'vs fast':>7}"
    columns = f"{'img/s':>8}  {ratios}  {'GEMM %':>6}  {'peak %':>6}  {'setup s':>7}"
    header = f"{'model':<13} {'batch':>5}  {'engine':<42} {columns}"
    lines = [header, "-" * len(header)]
    for r in rows:
        speed = f"{r['img_per_s']:8.1f}" if r.get("img_per_s") else f"{'n/a':>8}"
        ratio = f"{r['ratio_to_tf']:6.2f}" if r.get("ratio_to_tf") else f"{'':>6}"
        ratio += f"  {r['ratio_to_fast']:7.2f}" if r.get("ratio_to_fast") else f"  {'':>7}"
        shares = [r.get(key) for key in ("share_of_gemm_rate", "share_of_fma_peak")]
        share = "  ".join(f"{100 * s:6.0f}" if s else f"{'':>6}" for s in shares)
        setup = f"{r['setup_seconds']:7.1f}" if "setup_seconds" in r else f"{'':>7}"
        name = f"{r['model']:<13} {r['batch']:>5}  {r['name']:<42}"
        lines.append(f"{name} {speed}  {ratio}  {share}  {setup}")
        if r.get("error"):
            lines.append(f"{'':<21}{r['error']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[1, 32])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(DEFAULT_ENGINES))
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="timed seconds per cell (after warm-up)"
    )
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument(
        "--fixture-dir",
        type=Path,
        default=Path("work/bench/cache"),
        help="where fixture graphs and their conversions are kept between runs",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    # Elsewhere --cache-dir is the preprocessed image cache; here the folder holds fixture graphs.
    args = parser.parse_args(renamed_options(argv, {"--cache-dir": "--fixture-dir"}))
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    from tqdm import tqdm

    try:
        args.fixture_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the fixture folder {args.fixture_dir} ({err.strerror})"
        ) from None
    import torch

    system = cpu_description()
    system.update(
        torch=torch.__version__, python=platform.python_version(), load_before=load_average()
    )
    started = time.perf_counter()
    system["gemm_gflops"] = round(gemm_gflops(), 1)
    system["fma_peak_gflops"] = fma_peak_gflops(system["cores"])
    cells = len(args.models) * len(args.batches) * len(args.engines)
    rows: list[dict] = []
    with tqdm(total=cells, unit="cell", disable=args.quiet) as progress:
        for model_name in args.models:
            rows += bench_model(model_name, args, system["cores"], progress)
    add_ratios(rows, system["gemm_gflops"], system["fma_peak_gflops"])
    system["load_after"] = load_average()
    system["total_seconds"] = round(time.perf_counter() - started, 1)
    print_report(system, rows)
    if args.json:
        result = {"system": system, "seconds_per_cell": args.seconds, "results": rows}
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", args.json)
    return 0


def print_report(system: dict, rows: list[dict]) -> None:
    print(f"CPU: {system['cpu']} ({describe_cores(system)}), torch {system['torch']}")
    print(f"load average before/after: {system['load_before']} / {system['load_after']}")
    print(
        f"fp32 GEMM rate (torch.mm 2048x2048, all cores): {system['gemm_gflops']} GFLOP/s;"
        " 'GEMM %' = a row's arithmetic rate as a share of it"
    )
    peak = system["fma_peak_gflops"]
    peak = f"{peak} GFLOP/s; 'peak %' likewise" if isinstance(peak, float) else peak
    print(f"fp32 multiply-add peak (benchmarks/fma_peak.c, all cores): {peak}")
    print("'vs fast': img/s relative to the fp32 fast engine's ('torch ... fast' row)")
    print(format_table(rows))


if __name__ == "__main__":
    sys.exit(run_cli(main))
