"""Inference throughput: PyTorch eager vs this project's fast path vs TensorFlow vs ONNX Runtime.

Both models, steady-state img/s at each batch size (warm-up first, then as many calls as
fit in ``--seconds``), on fixture graphs with random weights (speed does not depend on the
values): TensorFlow runs the frozen graph, PyTorch its ``convert``-ed weights, ONNX Runtime
its tf2onnx conversion. PyTorch's logits are compared with TensorFlow's on the timed batch,
so a speed-up that broke exactness would show.

    python -m benchmarks.bench_inference --json work/bench/inference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
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
from eval.cpu_workers import WORKERS_ENV

log = logging.getLogger("bench_inference")

# "fast" is the project's default fast path; "fast:<builder>" names one explicitly. A
# "@intra-op" suffix runs every call on all cores' intra-op threads instead of one
# single-threaded worker per core (eval/cpu_workers.py), to compare the two.
INTRA_OP = "@intra-op"
ENGINES = ("eager", "fast", "fast:torchscript-freeze", "fast:inductor",
           "fast:torchscript-onednn", "tf", "onnx", f"eager{INTRA_OP}", f"fast{INTRA_OP}",
           f"fast:torchscript-onednn{INTRA_OP}")  # fmt: skip
DEFAULT_ENGINES = ("eager@intra-op", "eager", "fast@intra-op", "fast", "tf", "onnx")


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


def onnx_session(model_name: str, graph: Path, cores: int):
    """An ONNX Runtime session for the graph via tf2onnx, or a string saying why not."""
    try:
        import onnxruntime as ort
        import tf2onnx

        from convert.graph import read_graph_def

        profile = get_profile(model_name)
        graph_def = read_graph_def(graph, profile.archive_member)
        proto, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=[profile.input_tensor],
            output_names=[profile.logits_tensor],
            opset=13,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = cores
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return session, profile.input_tensor
    except Exception as err:  # any converter/runtime failure is reported, not fatal
        first = first_line(err, 200) or type(err).__name__
        return f"n/a: {type(err).__name__}: {first}"


def torch_cell(module, engine: str, nchw, tf_logits: np.ndarray | None, seconds: float) -> dict:
    """One PyTorch engine at one batch: its speed, setup, and agreement with TensorFlow."""
    from eval.engines import prepare_engine

    batch = len(nchw)
    name, intra_op, _ = engine.partition(INTRA_OP)  # "@intra-op": one worker, all threads
    with mock.patch.dict(os.environ, {WORKERS_ENV: "1"} if intra_op else {}):
        prepared = prepare_engine(module, name, batch_size=batch)
    fell_back = " (fast fell back)" if engine.startswith("fast") and not prepared.is_fast else ""
    threading = "workers" if prepared.workers else "intra-op"
    cell = {
        "name": f"torch {prepared.name} ({threading}){fell_back}",
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
        cell["top1_equal_to_tf"] = bool(np.array_equal(logits.argmax(1), tf_logits.argmax(1)))
    return cell


def bench_model(model_name: str, args: argparse.Namespace, cores: int, progress) -> list[dict]:
    import torch

    from convert.tf_runner import TFGraphRunner
    from preprocess import normalize

    graph = fixture_graph(model_name, args.fixture_dir)
    module = converted_model(model_name, graph, args.fixture_dir)
    gflop_per_image = 2 * multiply_adds(module) / 1e9
    runner = TFGraphRunner(graph, model_name) if "tf" in args.engines else None
    onnx = onnx_session(model_name, graph, cores) if "onnx" in args.engines else None
    rows = []
    for batch in args.batches:
        u8 = np.random.default_rng(batch).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        nhwc = normalize(u8, model_name)
        nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # channels-last view, no copy
        tf_logits = runner.logits(nhwc) if runner is not None else None
        for engine in args.engines:
            progress.set_description(f"{model_name} b{batch} {engine}")
            row = {"model": model_name, "batch": batch, "engine": engine, "gflop": gflop_per_image}
            if engine.startswith(("eager", "fast")):
                row.update(torch_cell(module, engine, nchw, tf_logits, args.seconds))
            elif engine == "tf":
                row["name"] = "tensorflow"
                row.update(throughput(lambda x=nhwc: runner.logits(x), batch, args.seconds))
            else:
                row.update(onnx_cell(onnx, nhwc, args.seconds))
            rows.append(row)
            progress.update(1)
    if runner is not None:
        runner.close()
    return rows


def onnx_cell(onnx, nhwc: np.ndarray, seconds: float) -> dict:
    """ONNX Runtime's speed on one batch, or why it could not run (``onnx_session``)."""
    if isinstance(onnx, str):
        return {"name": "onnxruntime", "img_per_s": None, "error": onnx}
    session, input_name = onnx
    feed = {input_name: nhwc}
    speed = throughput(lambda: session.run(None, feed), len(nhwc), seconds)
    return {"name": "onnxruntime", **speed}


def add_ratios(rows: list[dict], gemm_gflops: float, peak_gflops: float | str) -> None:
    """Each row's img/s relative to TensorFlow's for the same model and batch, and its
    arithmetic rate as a share of this CPU's fp32 GEMM rate and of its multiply-add peak
    (``benchmarks/ceiling.py``; a peak that could not be measured is a string)."""
    tf_speed = {(r["model"], r["batch"]): r.get("img_per_s") for r in rows if r["engine"] == "tf"}
    for row in rows:
        base = tf_speed.get((row["model"], row["batch"]))
        speed = row.get("img_per_s")
        row["ratio_to_tf"] = round(speed / base, 3) if speed and base else None
        rate = speed * row["gflop"] if speed else None
        row["share_of_gemm_rate"] = round(rate / gemm_gflops, 3) if rate else None
        measured = rate and isinstance(peak_gflops, float)
        row["share_of_fma_peak"] = round(rate / peak_gflops, 3) if measured else None


def format_table(rows: list[dict]) -> str:
    columns = f"{'img/s':>8}  {'vs TF':>6}  {'GEMM %':>6}  {'peak %':>6}  {'setup s':>7}"
    header = f"{'model':<13} {'batch':>5}  {'engine':<42} {columns}"
    lines = [header, "-" * len(header)]
    for r in rows:
        speed = f"{r['img_per_s']:8.1f}" if r.get("img_per_s") else f"{'n/a':>8}"
        ratio = f"{r['ratio_to_tf']:6.2f}" if r.get("ratio_to_tf") else f"{'':>6}"
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
    print(f"CPU: {system['cpu']} ({describe_cores(system)}), torch {system['torch']}, fp32")
    print(f"load average before/after: {system['load_before']} / {system['load_after']}")
    print(
        f"fp32 GEMM rate (torch.mm 2048x2048, all cores): {system['gemm_gflops']} GFLOP/s;"
        " 'GEMM %' = a row's arithmetic rate as a share of it"
    )
    peak = system["fma_peak_gflops"]
    peak = f"{peak} GFLOP/s; 'peak %' likewise" if isinstance(peak, float) else peak
    print(f"fp32 multiply-add peak (benchmarks/fma_peak.c, all cores): {peak}")
    print(format_table(rows))


if __name__ == "__main__":
    sys.exit(run_cli(main))
