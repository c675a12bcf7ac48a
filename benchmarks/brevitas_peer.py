"""Brevitas' post-training quantization beside this project's, on the same model and images.

The recipe is that of Brevitas 0.13.4's ImageNet PTQ example
(``brevitas_examples/imagenet_classification/ptq/ptq_evaluate.py``), through the example's
own functions (``ptq_common.create_quant_maps``, ``calibrate``, ``apply_gptq``,
``apply_bias_correction``) with its defaults but per-channel weights: ``--target-backend
fx --scale-factor-type float_scale --weight-quant-granularity per_channel
--weight-quant-type sym --weight-quant-calibration-type stats --act-quant-type sym
--act-quant-granularity per_tensor --act-quant-calibration-type stats
--act-quant-percentile 99.999 --bias-bit-width 32 --graph-eq-iterations 20
--graph-eq-merge-bias --merge-bn --uint-sym-act-for-unsigned-values --bias-corr``, and for
the GPTQ rows ``--gptq --gpxq-act-order`` (quantized activations off during GPTQ, fp32
weights kept for the unquantized passes: the example's defaults). Step by step:

1. ``preprocess_for_quantize``: the FX graph, batch norm merged into the convolutions,
   graph equalization (20 iterations, merged bias);
2. ``brevitas.graph.quantize.quantize``: symmetric per-output-channel weights (absmax
   scales), 32-bit biases, per-tensor activations (99.999th percentile; signed for the
   image, unsigned after each ReLU6), every layer at the scheme's widths;
3. one forward pass, ``calibration_mode`` over the calibration crops (batches of 16), then
   ``gptq_mode`` (GPTQ rows only; nearest rounding rows skip it), then
   ``bias_correction_mode``.

Where this model needs it, the example's path is changed, and only there:

- FX cannot trace the TF-SAME pads (their sizes follow the input's). For 224x224 inputs
  this project's ``fold_same_padding`` moves 26 of the 27 into their convolutions; the
  stem's (one row and column after the image) stays, a leaf of the trace. Brevitas puts a
  signed quantizer before each convolution whose input comes from a module it does not
  know to keep quantization, as it does after the stem's pad.
- Brevitas turns ReLU6 into ReLU (``relu6_to_relu``), and its quantizer for a ReLU6 does
  not clip at 6 (``nn.ReLU6`` is an ``nn.Hardtanh``, which Brevitas skips under a
  quantizer); TF-slim's MobileNet-v1 leans on that clip, so both change fp32's answers.
  ReLU6 is kept and quantized by ``QuantReLU6``: a clip at 6, then the example's unsigned
  quantizer. With ReLU6 kept, graph equalization changes no weight (ReLU6 is not
  scale-invariant). ``--example-relu6`` keeps Brevitas' own ReLU6 handling instead.

Two of Brevitas' choices differ from this project's and stay unless asked: it quantizes the
image at the scheme's activation width (this project keeps its 8 bits: ``--input-bits 8``),
and it quantizes the logits too, at the activation width (at 4 bits an image's 1001 logits
take 8 or 9 values): ``--float-logits`` leaves them float, as this project does (the output
quantizer becomes an identity; ``quantize``'s ``requantize_layer_handler_output=False``
leaves the classifier without its input's scale, which its 32-bit bias needs).

Images, labels and scores are those of ``benchmarks.quantization_study``: calibration on
``crops(48, 1000 + seed)``, held-out ``crops(240, 2000 + seed)`` labelled by the fp32
model; the score is the share keeping fp32's top-1, and the logits' SQNR against fp32.

Brevitas is not among the project's dependencies, so no test runs this script; it runs in
a virtual environment of its own holding brevitas 0.13.4 and torch, numpy,
opencv-python-headless, scikit-image and tqdm (it needs no TensorFlow):

    PYTHONPATH=. brevitas-venv/bin/python benchmarks/brevitas_peer.py \\
        --checkpoint work/real/mobilenet_v1.pth --schemes w4a8 w8a4 --seeds 0 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.quantization_study import agreement
from convert import load_checkpoint
from convert.models.pad_folding import fold_same_padding
from convert.models.padding import TFSamePad2d
from core.files import write_text_atomic
from fixtures.photo_models import crops

warnings.filterwarnings("ignore")  # as the example does (about __torch_function__)
import brevitas  # noqa: E402
import brevitas.nn as qnn  # noqa: E402
from brevitas.fx import Tracer  # noqa: E402
from brevitas.fx.brevitas_tracer import _symbolic_trace  # noqa: E402
from brevitas.graph.quantize import preprocess_for_quantize, quantize  # noqa: E402
from brevitas.nn.quant_layer import QuantNonLinearActLayer  # noqa: E402
from brevitas_examples.imagenet_classification.ptq import ptq_common  # noqa: E402

RECIPES = {  # name -> GPTQ on; every recipe calibrates first and corrects biases last
    "nearest + bias corr.": False,
    "GPTQ act-order + bias corr.": True,
}
BATCH = 16  # calibration and scoring batch


class ClipAt6(nn.Module):
    """ReLU6 that is no ``nn.Hardtanh``: Brevitas drops a Hardtanh under a quantizer."""

    def __init__(self):  # Brevitas' injector refuses an inherited ``*args, **kwargs``
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


class QuantReLU6(QuantNonLinearActLayer):
    """``QuantReLU`` that clips at 6 before quantizing, as the fp32 model does."""

    def __init__(self, act_quant=None, input_quant=None, return_quant_tensor=False, **kwargs):
        super().__init__(
            act_impl=ClipAt6,
            passthrough_act=True,
            input_quant=input_quant,
            act_quant=act_quant,
            return_quant_tensor=return_quant_tensor,
            **kwargs,
        )


class PadLeafTracer(Tracer):
    """FX tracer keeping each TF-SAME pad as one call (its sizes depend on the input's)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, TFSamePad2d) or super().is_leaf_module(module, qualified_name)


def parse_scheme(scheme: str) -> tuple[int, int]:
    match = re.fullmatch(r"w(\d+)a(\d+)", scheme)
    if not match:
        raise SystemExit(f"error: --schemes: {scheme!r} is not wNaM (e.g. w4a8)")
    return int(match[1]), int(match[2])


def prepare(model: nn.Module, example_relu6: bool) -> nn.Module:
    """The example's ``preprocess_for_quantize`` on a trace with the pads as leaves, after
    the pads that can be are folded into their convolutions (for 224x224 inputs)."""
    model = copy.deepcopy(model).eval()
    fold_same_padding(model, torch.zeros(1, 3, 224, 224))
    graph = _symbolic_trace(PadLeafTracer(), model, None)
    return preprocess_for_quantize(
        graph,
        trace_model=False,
        relu6_to_relu=example_relu6,
        equalize_iters=20,
        equalize_merge_bias=True,
        merge_bn=True,
    )


def quant_maps(weight_bits: int, act_bits: int) -> tuple[dict, dict, dict]:
    """The example's FX maps (``ptq_common.create_quant_maps``) at its defaults."""
    layer_map, _, act_map, identity_map = ptq_common.create_quant_maps(
        dtype=torch.float32,
        device="cpu",
        bias_bit_width=32,
        weight_bit_width=weight_bits,
        weight_param_method="stats",
        weight_scale_type="float_scale",
        weight_quant_type="sym",
        weight_quant_granularity="per_channel",
        weight_narrow_range=False,
        weight_quant_format="int",
        act_quant_format="int",
        uint_sym_act_for_unsigned_values=True,
        act_bit_width=act_bits,
        act_scale_type="float_scale",
        act_scale_computation_type="static",
        act_param_method="stats",
        act_quant_type="sym",
        act_quant_granularity="per_tensor",
        act_quant_percentile=99.999,
    )
    return layer_map, act_map, identity_map


def quantized(graph: nn.Module, scheme: str, args) -> nn.Module:
    """``ptq_common.quantize_model``'s FX branch; ``--input-bits`` re-makes the image's
    quantizers (those before the first convolution) at that width, ``--float-logits``
    leaves the classifier's output unquantized."""
    weight_bits, act_bits = parse_scheme(scheme)
    layer_map, act_map, identity_map = quant_maps(weight_bits, act_bits)
    if not args.example_relu6:
        act_map[nn.ReLU6] = (QuantReLU6, act_map[nn.ReLU6][1])
    quant = quantize(
        graph, compute_layer_map=layer_map, quant_act_map=act_map, quant_identity_map=identity_map
    )
    if args.float_logits:  # requantize_layer_handler_output=False loses the head's input scale
        quant.add_module("classifier_output_quant", nn.Identity())
    if args.input_bits:
        make, kwargs = quant_maps(weight_bits, args.input_bits)[2]["signed"]
        for node in quant.graph.nodes:
            module = quant.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(module, qnn.QuantConv2d):
                break
            if isinstance(module, qnn.QuantIdentity):
                quant.add_module(node.target, make(**kwargs))
    return quant


def brevitas_ptq(model, calibration, scheme: str, gptq: bool, args) -> nn.Module:
    """The example's steps: quantize, one forward, calibrate, GPTQ (optional), bias corr."""
    loader = [(calibration[i : i + BATCH], None) for i in range(0, len(calibration), BATCH)]
    quant = quantized(prepare(model, args.example_relu6), scheme, args)
    quant.eval()
    with torch.no_grad():
        quant(loader[0][0])
    ptq_common.calibrate(loader, quant)
    if gptq:
        ptq_common.apply_gptq(loader, quant, act_order=True, create_weight_orig=True)
    ptq_common.apply_bias_correction(loader, quant)
    return quant


def logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        batches = [model(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    return torch.cat(batches).numpy().astype(np.float64)


def one_seed(model, seed: int, args) -> list[dict]:
    """Every (scheme, recipe) row for one seed's calibration and held-out crops."""
    calibration = crops(args.calibration, 1_000 + seed, "mobilenet")
    held_out = crops(args.images, 2_000 + seed, "mobilenet")
    expected = logits(model, held_out)
    rows = []
    for scheme in args.schemes:
        for recipe in args.recipes:
            torch.manual_seed(seed)
            start = time.perf_counter()
            quant = brevitas_ptq(model, calibration, scheme, RECIPES[recipe], args)
            seconds = time.perf_counter() - start
            row = {"seed": seed, "scheme": scheme, "recipe": recipe}
            row["input_bits"] = args.input_bits or parse_scheme(scheme)[1]
            row |= agreement(logits(quant, held_out), expected)
            rows.append(row | {"quantize_seconds": round(seconds, 1)})
            print(f"seed {seed} {scheme} {recipe}: {row['kept']:.3f} kept, "
                  f"{row['logit_sqnr_db']} dB, {seconds:.0f}s", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict], images: int) -> str:
    lines = [
        f"{images} held-out photo crops per seed: share keeping fp32's top-1, logits' SQNR",
        "",
        f"{'seed':>4} {'scheme':<7} {'input':>5} {'recipe':<28} {'kept':>7} {'SQNR':>8} "
        f"{'time':>6}",
    ]
    for row in rows:
        lines.append(
            f"{row['seed']:>4} {row['scheme']:<7} {row['input_bits']:>3} b "
            f"{row['recipe']:<28} "
            f"{100 * row['kept']:5.1f} % {row['logit_sqnr_db']:5.1f} dB "
            f"{row['quantize_seconds']:5.0f}s"
        )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="benchmarks/brevitas_peer.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a converted MobileNet .pth")
    p.add_argument("--schemes", nargs="+", default=["w4a8", "w8a4"], help="e.g. w4a8 w8a4")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="crop seeds")
    p.add_argument("--calibration", type=int, default=48, help="calibration crops")
    p.add_argument("--images", type=int, default=240, help="held-out crops scored")
    p.add_argument(
        "--example-relu6",
        action="store_true",
        help="Brevitas' own ReLU6 handling (ReLU6 becomes ReLU; unclipped QuantReLU)",
    )
    p.add_argument(
        "--input-bits",
        type=int,
        help="the image's width (this project keeps 8); default: the scheme's, as Brevitas",
    )
    p.add_argument(
        "--float-logits",
        action="store_true",
        help="leave the logits unquantized, as this project does (Brevitas quantizes them at "
        "the scheme's activation width)",
    )
    p.add_argument("--json", type=Path, help="write every row here")
    args = p.parse_args(argv)
    for scheme in args.schemes:
        parse_scheme(scheme)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_checkpoint(args.checkpoint, expected_model="mobilenet_v1")[0].eval()
    rows = []
    for seed in args.seeds:
        rows += one_seed(model, seed, args)
    print(f"Brevitas {brevitas.__version__}, torch {torch.__version__}, {args.checkpoint}")
    print(table(rows, args.images))
    if args.json is not None:
        report = {"brevitas": brevitas.__version__, "torch": torch.__version__,
                  "checkpoint": str(args.checkpoint), "calibration": args.calibration,
                  "images": args.images, "example_relu6": args.example_relu6,
                  "input_bits": args.input_bits, "float_logits": args.float_logits,
                  "rows": rows}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
