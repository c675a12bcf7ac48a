"""The PyTorch models: readable names, shapes, hyperparameters (no TensorFlow needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convert import MobileNetV1, ResNet50, build_model
from convert.models.resnet import Bottleneck
from convert.registry import MODELS
from core.errors import UserError
from core.profiles import PROFILES


def test_resnet50_names_and_shapes():
    model = ResNet50()
    state = model.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert state["fc.weight"].shape == (1001, 2048)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert model.layer1[1].downsample is None and isinstance(model.layer3[2], Bottleneck)
    assert model.bn1.eps == pytest.approx(1.001e-5)
    assert model.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1001)


def test_mobilenet_v1_names_and_shapes():
    model = MobileNetV1()
    state = model.state_dict()
    assert state["features.0.conv.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.depthwise.conv.weight"].shape == (32, 1, 3, 3)
    assert state["features.1.pointwise.conv.weight"].shape == (64, 32, 1, 1)
    assert state["features.13.pointwise.bn.running_var"].shape == (1024,)
    assert state["classifier.weight"].shape == (1001, 1024, 1, 1)
    assert state["classifier.bias"].shape == (1001,)
    assert len(model.features) == 14
    assert [model.features[i].depthwise.conv.stride[0] for i in (2, 4, 6, 12)] == [2] * 4
    assert model.features[3].pointwise.bn.eps == pytest.approx(1e-3)
    assert model.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1001)


def test_build_model_applies_hyperparameters():
    model = build_model(
        "resnet50", num_classes=10, bn_eps=2e-5, bn_eps_per_layer={"layer1.0.bn2": 3e-3}
    )
    assert model.fc.out_features == 10
    assert model.bn1.eps == 2e-5 and model.layer1[0].bn2.eps == 3e-3
    assert isinstance(build_model("mobilenet_v1"), MobileNetV1)
    with pytest.raises(UserError, match="unknown model 'vgg16': expected one of resnet50, "):
        build_model("vgg16")
    with pytest.raises(ValueError, match="not a batch-norm"):
        build_model("resnet50", bn_eps_per_layer={"layer1.0.conv1": 1e-3})


def test_every_profile_has_one_convert_entry():
    assert set(MODELS) == set(PROFILES)
    assert isinstance(build_model("resnet50"), MODELS["resnet50"].module_class)


def test_import_convert_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, convert; convert.load_model; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_models_are_plain_modules():
    model = ResNet50()
    assert isinstance(model.layer4[2].conv3, nn.Conv2d)
    assert isinstance(model.maxpool, nn.MaxPool2d)
