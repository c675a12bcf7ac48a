from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks.seeded_weights import save_converted, seeded_model
from core.errors import UserError
from core.profiles import get_profile
from eval.backends import TorchBackend, make_backend, resolve_torch_device
from eval.options import EvalSettings
from preprocess.recipes import normalize
from tests.eval.fakes import ToyNet

pytestmark = pytest.mark.tf

RESNET = get_profile("resnet50")


def every_uint8_value() -> np.ndarray:
    """A (1, 16, 16, 3) batch holding each uint8 value once in every channel."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.ascontiguousarray(np.stack([values, values[::-1], values.T], axis=-1)[None])


@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v1"])
def test_torch_normalisation_equals_cpu_recipe_bit_for_bit(model):
    backend = TorchBackend(ToyNet(), get_profile(model))
    batch = every_uint8_value()
    got = backend.normalize(torch.from_numpy(batch)).numpy()
    want = normalize(batch, model)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    backend.check_normalization()  # the start-up self-check passes on this device too


@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v1"])
def test_module_gets_normalised_nchw_and_logits_come_back(model):
    net = ToyNet()
    backend = TorchBackend(net, get_profile(model))
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)
    batch.flags.writeable = False  # a memmap slice is read-only
    logits = backend.logits(batch)
    assert logits.shape == (4, 1001) and logits.dtype == np.float32
    seen = backend.prepared.forward.last_input.numpy()  # the engine runs its own copy
    assert seen.shape == (4, 3, 224, 224)
    np.testing.assert_array_equal(seen, normalize(batch, model).transpose(0, 3, 1, 2))
    with torch.no_grad():
        expected = net(torch.from_numpy(normalize(batch, model).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_submit_ranks_the_same_logits_as_logits_on_a_read_only_batch():
    backend = TorchBackend(ToyNet(), RESNET)
    batch = np.random.default_rng(5).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    batch.flags.writeable = False  # a memmap slice is read-only
    (labels,) = backend.collect([backend.submit(batch)])
    expected = np.argsort(-backend.logits(batch), axis=1, kind="stable")[:, :5] - 1
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("call", ["logits", "submit"])
def test_wrong_logits_shape_is_one_sentence(call):
    backend = TorchBackend(torch.nn.Flatten(), RESNET)
    with pytest.raises(UserError, match=r"logits of shape \(2, 150528\), expected \(2, 1001\)"):
        getattr(backend, call)(np.zeros((2, 224, 224, 3), dtype=np.uint8))


def test_make_backend_refuses_another_models_converted_file(tmp_path):
    path = save_converted(seeded_model("mobilenet_v1"), "mobilenet_v1", tmp_path / "m.pth")
    with pytest.raises(UserError) as err:
        make_backend(RESNET, EvalSettings(weights=path))
    assert str(err.value) == f"{path} holds a converted mobilenet_v1 model, not resnet50"


def test_cuda_without_gpu_is_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="sees no CUDA GPU; use --device cpu"):
        resolve_torch_device("cuda")
    with pytest.raises(UserError, match="unsupported device"):
        resolve_torch_device("meta")
    with pytest.raises(UserError, match="unknown device"):
        resolve_torch_device("gpu")
    assert resolve_torch_device("cpu").type == "cpu"


def test_make_backend_reports_missing_inputs(tmp_path):
    cases = [
        ("needs --weights", EvalSettings(backend="torch")),
        ("weights file not found", EvalSettings(weights=tmp_path / "missing.pth")),
        ("needs --checkpoint", EvalSettings(backend="tf")),
        (
            "checkpoint file not found",
            EvalSettings(backend="tf", checkpoint=tmp_path / "missing.pb"),
        ),
        ("unknown backend", EvalSettings(backend="onnx")),
    ]
    for message, settings in cases:
        with pytest.raises(UserError, match=message):
            make_backend(RESNET, settings)


def test_describe_hashes_the_weights(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    backend = TorchBackend(ToyNet(), RESNET, weights_path=weights)
    weights.write_bytes(b"replaced during the run")  # the digest was taken before any image
    info = backend.describe()
    assert info["weights_sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert info["device_name"] == "cpu"


class RecordingRunner:
    """Stands in for convert.tf_runner.TFGraphRunner: records what the graph would get."""

    def __init__(self, checkpoint_path, profile):
        import hashlib

        self.checkpoint_path, self.profile = checkpoint_path, profile
        self.source_sha256 = hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()
        self.inputs = []

    def logits(self, nhwc_float32):
        self.inputs.append(nhwc_float32)
        return np.tile(np.arange(1001, dtype=np.float64), (len(nhwc_float32), 1))


def test_tf_backend_feeds_the_cpu_recipe_to_the_graph(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("convert.tf_runner")
    fake.TFGraphRunner = RecordingRunner
    monkeypatch.setitem(sys.modules, "convert.tf_runner", fake)
    checkpoint = tmp_path / "graph.pb"
    checkpoint.write_bytes(b"graph")
    settings = EvalSettings(backend="tf", checkpoint=checkpoint)
    backend = make_backend(get_profile("mobilenet_v1"), settings)
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    logits = backend.logits(batch)
    assert logits.dtype == np.float32 and logits.shape == (3, 1001)
    (fed,) = backend.runner.inputs
    np.testing.assert_array_equal(fed, normalize(batch, "mobilenet_v1"))
    assert backend.runner.profile is get_profile("mobilenet_v1")
    info = backend.describe()
    assert info["checkpoint_sha256"] == __import__("hashlib").sha256(b"graph").hexdigest()
    with pytest.raises(UserError, match="runs on the CPU only"):
        make_backend(get_profile("mobilenet_v1"), replace(settings, device="cuda"))


def test_recorded_digests_are_of_the_files_as_loaded_not_as_replaced(tmp_path, mobilenet_v1_pb):
    """A model file replaced while a run holds it cannot change the digest results.json
    and the resume journal name: they describe the bytes the backend actually loaded."""
    import hashlib
    import shutil

    weights = save_converted(seeded_model("mobilenet_v1"), "mobilenet_v1", tmp_path / "m.pth")
    loaded = hashlib.sha256(weights.read_bytes()).hexdigest()
    torch_backend = make_backend(
        get_profile("mobilenet_v1"), EvalSettings(weights=weights, engine="eager")
    )
    weights.write_bytes(b"replaced after loading")
    assert torch_backend.describe()["weights_sha256"] == loaded

    graph = tmp_path / "graph.pb"
    shutil.copyfile(mobilenet_v1_pb, graph)
    parsed = hashlib.sha256(graph.read_bytes()).hexdigest()
    with make_backend(
        get_profile("mobilenet_v1"), EvalSettings(backend="tf", checkpoint=graph)
    ) as tf_backend:
        graph.write_bytes(b"replaced after parsing")
        assert tf_backend.describe()["checkpoint_sha256"] == parsed
