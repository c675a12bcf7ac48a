"""Every faithful TensorFlow encoding of the two networks converts and matches TensorFlow.

The zoo (fixtures/zoo_graphs.py) spells the same weights as fused, tf.nn and Keras-style
unfused batch norm, x*scale+shift, optimize_for_inference's folded convs, NCHW (with and
without a leading Transpose), explicit Pad + VALID, a pinned batch, 1000-class and dense
heads. Each is converted by the walker and compared with TensorFlow layer by layer.

Acceptance: identical top-1 and top-5 on every image; logits within REL_TOL of TF relative
to the largest logit; and PyTorch's logits as close to a float64 evaluation of the converted
weights as TF's own float32 logits are (so a wrong epsilon or a mis-assigned statistic, which
moves the function itself, fails even when it hides under float32 noise).

On these random-weight fixtures TF's float32 logits already lie 0.75e-5 (ResNet-50) to
0.9e-5 (MobileNet-v1) of the largest logit away from the float64 result, and TF and PyTorch
differ by 0.8e-5 to 1.4e-5 from each other: a 1e-5 bound between the two frameworks sits
on float32 noise, so REL_TOL is 2e-5 and the float64 comparison carries the exactness claim.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convert.graph import read_graph_def
from convert.registry import build_model, extract_weights
from convert.tf_runner import TFGraphRunner
from convert.verify import compare_layers, synthetic_images
from core.errors import UserError
from core.profiles import MOBILENET_V1, PROFILES, RESNET50
from fixtures.zoo_graphs import MOBILENET_VARIANTS, RESNET_VARIANTS
from tests.conftest import _materialize

pytestmark = pytest.mark.tf

REL_TOL = 2e-5
ABS_TOL = 5e-4  # |logit| < 20 here
LAYER_TOL = 1e-4  # per-layer activations, relative to each layer's largest value
IMAGES = 2

# variant -> (BN encoding of every layer, data format, input layout, classes)
EXPECTED = {
    ("resnet50", "fused"): ("fused", "NHWC", "NHWC", 1001),
    ("resnet50", "nn-batch-norm"): ("decomposed", "NHWC", "NHWC", 1001),
    ("resnet50", "keras-unfused-nchw"): ("decomposed", "NCHW", "NHWC", 1001),
    ("resnet50", "optimize-for-inference"): ("folded-into-conv", "NHWC", "NHWC", 1001),
    ("resnet50", "nchw-fused"): ("fused", "NCHW", "NHWC", 1001),
    ("resnet50", "nchw-input"): ("fused", "NCHW", "NCHW", 1000),
    ("resnet50", "1000-classes"): ("fused", "NHWC", "NHWC", 1000),
    ("resnet50", "batch1-scale-shift"): ("scale-shift", "NHWC", "NHWC", 1001),
    ("mobilenet_v1", "fused"): ("fused", "NHWC", "NHWC", 1001),
    ("mobilenet_v1", "nn-batch-norm"): ("decomposed", "NHWC", "NHWC", 1001),
    ("mobilenet_v1", "keras-unfused-nchw"): ("decomposed", "NCHW", "NHWC", 1001),
    ("mobilenet_v1", "optimize-for-inference"): ("folded-into-conv", "NHWC", "NHWC", 1001),
    ("mobilenet_v1", "1000-classes-dense-pad"): ("fused", "NHWC", "NHWC", 1000),
    ("mobilenet_v1", "batch1-scale-shift"): ("scale-shift", "NHWC", "NHWC", 1001),
}
CASES = [("resnet50", v) for v in RESNET_VARIANTS] + [
    ("mobilenet_v1", v) for v in MOBILENET_VARIANTS
]
assert set(CASES) == set(EXPECTED)
# A ResNet-50 variant converts and runs layer by layer in TensorFlow in 7-18 s: slow; each
# MobileNet-v1 variant takes 1-4 s.
ZOO_PARAMS = [
    pytest.param(m, v, id=f"{m}-{v}", marks=pytest.mark.slow if m == "resnet50" else ())
    for m, v in CASES
]


def _zoo_pb(request, tmp_path_factory, model: str, variant: str):
    name = f"zoo-{model}-{variant}"
    return _materialize(
        request, tmp_path_factory, name, f"{name}.pb", "write_zoo_pb", model=model, variant=variant
    )


def _convert_and_compare(pb, model: str):
    graph_def = read_graph_def(pb)
    extracted = extract_weights(graph_def, PROFILES[model], source=pb.name)
    torch_model = build_model(model, **extracted.hyperparameters)
    torch_model.load_state_dict(extracted.state_dict, strict=True)
    names, images = synthetic_images(PROFILES[model], count=IMAGES, seed=11)
    with TFGraphRunner(
        pb,
        model,
        graph_def=graph_def,
        input_tensor=extracted.input_tensor,
        logits_tensor=extracted.logits_tensor,
    ) as runner:
        result = compare_layers(
            torch_model.eval(),
            runner,
            extracted.layer_tensors,
            extracted.data_format,
            names,
            images,
            tolerance=LAYER_TOL,
            quiet=True,
        )
        tf_logits = runner.logits(images)
    return extracted, torch_model, result, (images, tf_logits)


def _assert_as_exact_as_tensorflow(torch_model, images, tf_logits) -> None:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        pt = torch_model(x).numpy()
        exact = torch_model.double()(x.double()).numpy()
    scale = np.abs(exact).max()
    tf_error = np.abs(tf_logits - exact).max() / scale
    pt_error = np.abs(pt - exact).max() / scale
    assert np.abs(pt - tf_logits).max() / scale <= REL_TOL
    assert pt_error <= 1.5 * tf_error + 1e-6, (pt_error, tf_error)


@pytest.mark.parametrize(("model", "variant"), ZOO_PARAMS)
def test_zoo_variant_converts_and_matches_tensorflow(request, tmp_path_factory, model, variant):
    pb = _zoo_pb(request, tmp_path_factory, model, variant)
    encoding, data_format, input_layout, classes = EXPECTED[(model, variant)]
    extracted, torch_model, result, (images, tf_logits) = _convert_and_compare(pb, model)

    assert extracted.bn_encoding_summary == encoding
    assert set(extracted.bn_encodings.values()) == {encoding}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in torch_model.modules())
    assert extracted.bn_encoding_counts == {encoding: n_bn}
    assert (extracted.data_format, extracted.input_layout) == (data_format, input_layout)
    assert extracted.num_classes == classes and extracted.label_offset == classes - 1000
    assert extracted.ignored_tensors == []

    assert result.passed, result.table()
    assert result.logits_max_rel_diff <= REL_TOL
    assert result.logits_max_abs_diff <= ABS_TOL
    assert all(i.tf_top1 == i.torch_top1 and i.top5_agree for i in result.images)
    rows = {r.layer: r for r in result.layers}
    block = "layer2.1" if model == "resnet50" else "features.3"
    assert rows[block].encoding == encoding  # the report names the encoding per layer
    assert encoding in result.table()
    _assert_as_exact_as_tensorflow(torch_model, images, tf_logits)


def test_folded_batch_norm_is_an_exact_identity(request, tmp_path_factory):
    """A folded layer's BatchNorm2d adds the conv bias and nothing else, bit for bit."""
    pb = _zoo_pb(request, tmp_path_factory, "mobilenet_v1", "optimize-for-inference")
    extracted = extract_weights(read_graph_def(pb), MOBILENET_V1)
    model = build_model("mobilenet_v1", **extracted.hyperparameters)
    model.load_state_dict(extracted.state_dict)
    bn = model.eval().features[3].pointwise.bn
    assert bn.eps == 0.0 and float(bn.running_var.min()) == float(bn.running_var.max()) == 1.0
    x = torch.randn(2, bn.num_features, 5, 5) * 100
    expected = x + bn.bias[None, :, None, None]
    with torch.no_grad():
        assert torch.equal(bn(x), expected)
        # Folding the identity BN back into the conv leaves the conv's weights untouched.
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        conv = model.features[3].pointwise.conv
        fused = fuse_conv_bn_eval(conv, bn)
        assert torch.equal(fused.weight, conv.weight) and torch.equal(fused.bias, bn.bias)


def test_decomposed_statistics_are_recovered(request, tmp_path_factory):
    """Keras-style NCHW batch norm: gamma/beta/mean/variance/eps come back as stored."""
    from fixtures.mobilenet_graph import mobilenet_v1_weights

    pb = _zoo_pb(request, tmp_path_factory, "mobilenet_v1", "keras-unfused-nchw")
    extracted = extract_weights(read_graph_def(pb), MOBILENET_V1)
    weights = mobilenet_v1_weights(0)
    scope = "MobilenetV1/Conv2d_5_depthwise/BatchNorm"
    for key, role in (
        ("weight", "gamma"),
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    ):
        got = extracted.state_dict[f"features.5.depthwise.bn.{key}"].numpy()
        np.testing.assert_array_equal(got, weights[f"{scope}/{role}"])
    assert extracted.hyperparameters["bn_eps"] == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.slow
def test_nchw_input_graph_is_fed_nhwc_like_any_other(request, tmp_path_factory):
    """Runner and eval's TF backend take NHWC even when the graph's placeholder is NCHW."""
    from eval.backends import TFBackend

    nchw = _zoo_pb(request, tmp_path_factory, "resnet50", "nchw-input")
    nhwc = _zoo_pb(request, tmp_path_factory, "resnet50", "1000-classes")  # same weights
    _, images = synthetic_images(RESNET50, count=IMAGES, seed=11)
    u8 = np.random.default_rng(3).integers(0, 256, (IMAGES, 224, 224, 3), dtype=np.uint8)
    logits = {}
    for name, pb in (("nchw", nchw), ("nhwc", nhwc)):
        with TFGraphRunner(pb, RESNET50) as runner:
            logits[name] = runner.logits(images)
        backend = TFBackend(pb, RESNET50)
        logits[f"{name}-eval"] = backend.logits(u8)
        backend.close()
    for key in ("", "-eval"):
        expected = logits[f"nhwc{key}"]
        atol = REL_TOL * float(np.abs(expected).max())
        np.testing.assert_allclose(logits[f"nchw{key}"], expected, rtol=0, atol=atol)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def mobilenet_fused_graph(request, tmp_path_factory):
    return read_graph_def(_zoo_pb(request, tmp_path_factory, "mobilenet_v1", "fused"))


def _edited(graph_def, edit):
    import tensorflow as tf

    copy = tf.compat.v1.GraphDef()
    copy.CopyFrom(graph_def)
    edit({n.name: n for n in copy.node}, copy)
    return copy


def _conv_and_bn(nodes, index: int):
    convs = [n for n in nodes.values() if n.op == "DepthwiseConv2dNative"]
    conv = convs[index]
    bn = next(
        n for n in nodes.values() if n.op.startswith("FusedBatchNorm") and n.input[0] == conv.name
    )
    relu = next(n for n in nodes.values() if n.op == "Relu6" and n.input[0] == bn.name)
    return conv, bn, relu


def test_missing_batch_norm_names_node_op_and_expectation(mobilenet_fused_graph):
    def drop_bn(nodes, _graph):
        conv, _, relu = _conv_and_bn(nodes, 2)
        relu.input[0] = conv.name

    with pytest.raises(UserError) as err:
        extract_weights(_edited(mobilenet_fused_graph, drop_bn), MOBILENET_V1)
    msg = str(err.value)
    conv, _, relu = _conv_and_bn({n.name: n for n in mobilenet_fused_graph.node}, 2)
    assert f"after conv {conv.name} expected a batch norm" in msg
    assert f"{relu.name} (Relu6)" in msg and "\n" not in msg


def test_scale_that_is_not_per_channel_is_refused(mobilenet_fused_graph):
    """x * v with v varying along the width is no batch norm: the error says so."""
    import tensorflow as tf

    def width_scale(nodes, graph):
        conv, bn, relu = _conv_and_bn(nodes, 0)
        width = graph.node.add()
        width.name, width.op = "width_scale", "Const"
        width.attr["dtype"].type = tf.float32.as_datatype_enum
        value = np.ones((1, 1, 112, 1), np.float32)
        width.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        mul = graph.node.add()
        mul.name, mul.op = "width_mul", "Mul"
        mul.input.extend([conv.name, "width_scale"])
        mul.attr["T"].type = tf.float32.as_datatype_enum
        bn.input[0] = mul.name

    with pytest.raises(UserError) as err:
        extract_weights(_edited(mobilenet_fused_graph, width_scale), MOBILENET_V1)
    assert "width_mul (Mul)" in str(err.value) and "expected a batch norm" in str(err.value)


def test_wrong_class_count_names_the_kernel(mobilenet_fused_graph):
    import tensorflow as tf

    def ten_classes(nodes, _graph):
        head = next(
            n for n in nodes.values() if n.op == "Conv2D" and nodes[n.input[0]].op == "AvgPool"
        )
        kernel = nodes[head.input[1]]
        kernel.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto(np.ones((1, 1, 1024, 10), np.float32))
        )

    with pytest.raises(UserError, match=r"has 10 classes .* 1001 \(with background\) or 1000"):
        extract_weights(_edited(mobilenet_fused_graph, ten_classes), MOBILENET_V1)
