"""Images per second of the fp32 fast engine's model and the int8 model, one thread.

    .venv/bin/python -m benchmarks.int8_speed [--seconds 10]

As the evaluation runs them: ``torch.set_num_threads(1)``, 4-image chunks, channels-last
input, under ``torch.inference_mode()``. fp32 is the fast engine's form: TF-SAME pads
folded (``fold_same_padding``), then ``torch.jit.freeze(torch.jit.trace(...))``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.machine import cpu_description
from convert.models import MobileNetV1, ResNet50
from convert.models.pad_folding import fold_same_padding
from fixtures import photo_models as models
from quantize import quantize_model

CHUNK = 4


def frozen_fp32(model: torch.nn.Module, example: torch.Tensor):
    module = copy.deepcopy(model).eval()
    fold_same_padding(module, example)
    with torch.inference_mode():
        return torch.jit.freeze(torch.jit.trace(module, example))


def images_per_second(forward, example: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(3):
            forward(example)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            forward(example)
            count += len(example)
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--calibration", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = cpu_description()["cpu"]
    print(f"CPU: {cpu}, torch {torch.__version__}, 1 thread, {CHUNK}-image chunks\n")
    print("| model | fp32 frozen img/s | int8 img/s | speed-up |")
    print("|---|---|---|---|")
    for name, arch in (("MobileNet-v1", "mobilenet"), ("ResNet-50", "resnet")):
        torch.manual_seed(0)
        model = (MobileNetV1() if arch == "mobilenet" else ResNet50()).eval()
        calibration = models.crops(args.calibration, 5, arch)
        int8 = quantize_model(model, [calibration], "int8", quiet=True)
        example = models.crops(CHUNK, 6, arch).contiguous(memory_format=torch.channels_last)
        fp32 = frozen_fp32(model, example)
        fp32_rate = images_per_second(fp32, example, args.seconds)
        int8_rate = images_per_second(int8, example, args.seconds)
        print(f"| {name} | {fp32_rate:.1f} | {int8_rate:.1f} | {int8_rate / fp32_rate:.2f}x |")


if __name__ == "__main__":
    main()
