"""A converted model is one self-describing .pth: the sidecar cannot change what it builds,
and any file this converter did not write is refused in one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert import load_checkpoint, load_model
from convert.model_file import FORMAT, content_digest
from convert.verify import synthetic_images
from core.errors import UserError
from core.profiles import MOBILENET_V1

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parents[2]


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


# A real python -m convert (torch and TensorFlow imported in a fresh process): about 5 s, so
# every test using it is marked slow.
@pytest.fixture(scope="module")
def converted(mobilenet_v1_pb, tmp_path_factory) -> Path:
    """A MobileNet-v1 converted by a real ``python -m convert``."""
    out = tmp_path_factory.mktemp("converted") / "mobilenet_v1.pth"
    result = _python_m(
        "convert",
        "--model",
        "mobilenet_v1",
        "--checkpoint",
        str(mobilenet_v1_pb),
        "--out",
        str(out),
        "--no-verify",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    _, nhwc = synthetic_images(MOBILENET_V1, count=2, seed=4)
    return torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy())


def _logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(path)(images)


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save(payload: dict, path: Path, *, redigest: bool = False) -> Path:
    if redigest:
        payload["content_sha256"] = content_digest(payload)
    torch.save(payload, path)
    return path


def _copy(converted: Path, folder: Path) -> Path:
    copy = folder / converted.name
    copy.write_bytes(converted.read_bytes())
    copy.with_suffix(".json").write_text(converted.with_suffix(".json").read_text())
    return copy


@pytest.mark.slow
def test_record_comes_from_the_pth(converted):
    module, record = load_checkpoint(converted)
    assert not module.training
    assert record["format"] == FORMAT and record["model_name"] == "mobilenet_v1"
    assert record["num_classes"] == 1001 and record["label_offset"] == 1
    assert len(record["bn_epsilons"]) == 27 and len(record["content_sha256"]) == 64
    assert record["bn_encoding"].keys() == record["bn_epsilons"].keys()
    assert set(record["bn_encoding"].values()) == {"fused"}
    eps = {n: m.eps for n, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == record["bn_epsilons"]


@pytest.mark.slow
def test_edited_sidecar_changes_nothing(converted, images, tmp_path):
    copy = _copy(converted, tmp_path)
    before = _logits(copy, images)
    sidecar = copy.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["bn_epsilons"] = {name: 0.5 for name in record["bn_epsilons"]}
    record.update(num_classes=1000, label_offset=0, model_name="resnet50", surprise="yes")
    sidecar.write_text(json.dumps(record))
    assert torch.equal(_logits(copy, images), before)
    sidecar.unlink()
    assert torch.equal(_logits(copy, images), before)


@pytest.mark.slow
def test_epsilons_in_the_pth_are_what_the_model_uses(converted, images, tmp_path):
    """The counterpart: the same edit inside the .pth (digest redone) does change logits."""
    payload = _payload(converted)
    payload["bn_epsilons"] = {name: 0.5 for name in payload["bn_epsilons"]}
    edited = _save(payload, tmp_path / "edited.pth", redigest=True)
    assert not torch.allclose(_logits(edited, images), _logits(converted, images))


@pytest.mark.slow
def test_edit_inside_the_pth_without_digest_is_refused(converted, tmp_path):
    payload = _payload(converted)
    payload["bn_epsilons"]["features.3.depthwise.bn"] = 0.5
    with pytest.raises(UserError, match="altered after conversion"):
        load_checkpoint(_save(payload, tmp_path / "eps.pth"))
    payload = _payload(converted)
    payload["state_dict"]["classifier.bias"][7] += 1.0
    with pytest.raises(UserError, match="altered after conversion"):
        load_checkpoint(_save(payload, tmp_path / "weights.pth"))


@pytest.mark.slow
def test_unknown_key_is_refused_by_load_and_by_eval(converted, tiny_cache, tmp_path):
    payload = _payload(converted)
    payload["bn_momentum"] = 0.9
    edited = _save(payload, tmp_path / "edited.pth", redigest=True)
    with pytest.raises(UserError) as err:
        load_checkpoint(edited)
    assert "unknown field 'bn_momentum'" in str(err.value)
    assert "convert it again with python -m convert" in str(err.value)

    out = tmp_path / "results"
    result = _python_m(
        "eval",
        "--model",
        "mobilenet_v1",
        "--cache-dir",
        str(tiny_cache),
        "--weights",
        str(edited),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unknown field 'bn_momentum'" in last
    assert "Traceback" not in result.stderr
    assert not (out / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_classes", "1001", "field 'num_classes' of type str, expected int"),
        ("num_classes", True, "field 'num_classes' of type bool, expected int"),
        ("bn_epsilons", [1e-3], "field 'bn_epsilons' of type list, expected dict"),
        ("label_offset", 0, "label_offset = num_classes - 1000"),
        ("model_name", "vgg16", "names the model 'vgg16'"),
        ("format", "mlperf-port.converted-model/9", "not a converted model of format"),
    ],
)
def test_wrong_types_and_values_are_one_sentence(converted, tmp_path, field, value, message):
    payload = _payload(converted)
    payload[field] = value
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(_save(payload, tmp_path / "m.pth", redigest=True))


@pytest.mark.slow
def test_wrong_entry_types_are_one_sentence(converted, tmp_path):
    payload = _payload(converted)
    payload["bn_epsilons"]["features.0.bn"] = "0.001"
    with pytest.raises(UserError, match="entry 'features.0.bn' of type str in field"):
        load_checkpoint(_save(payload, tmp_path / "m.pth"))
    payload = _payload(converted)
    del payload["bn_epsilons"]["features.0.bn"]
    with pytest.raises(UserError, match="first difference: 'features.0.bn'"):
        load_checkpoint(_save(payload, tmp_path / "m.pth", redigest=True))


@pytest.mark.slow
def test_older_state_dict_only_format_says_convert_again(converted, tmp_path):
    old = tmp_path / "old.pth"
    torch.save(_payload(converted)["state_dict"], old)
    with pytest.raises(UserError) as err:
        load_checkpoint(old)
    assert "older format" in str(err.value)
    assert (
        f"convert it again with python -m convert --model MODEL --checkpoint GRAPH --out {old}"
        in (str(err.value))
    )


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "pickled module"])
def test_damaged_or_foreign_files_are_one_sentence(converted, tmp_path, damage):
    path = tmp_path / "m.pth"
    if damage == "truncated":
        path.write_bytes(converted.read_bytes()[: converted.stat().st_size // 2])
    elif damage == "text":
        path.write_text("not a model\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # arbitrary pickled objects are never unpickled
        torch.save(load_model(converted), path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"cannot load {path}: it is not a converted model file")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_expected_model_is_checked(converted):
    with pytest.raises(UserError, match="holds a converted mobilenet_v1 model, not resnet50"):
        load_model("resnet50", converted)  # the older (model, path) call
    with pytest.raises(UserError, match="not resnet50"):
        load_checkpoint(converted, expected_model="resnet50")
    assert load_model("mobilenet_v1", converted) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", "bn_epsilons do not name exactly the batch-norm layers of the model"),
        ("negative", "has batch-norm epsilon -1.0 for"),
        ("small", None),
    ],
)
def test_batch_norm_epsilons_come_from_the_file(converted, tmp_path, change, message):
    """Epsilons are the file's own (even when re-signed), all layers, each a float >= 0."""
    payload = torch.load(converted, weights_only=True)
    first = sorted(payload["bn_epsilons"])[0]
    if change == "drop":
        del payload["bn_epsilons"][first]
    else:
        payload["bn_epsilons"][first] = -1.0 if change == "negative" else 2.5e-4
    payload["content_sha256"] = content_digest(payload)
    path = tmp_path / "m.pth"
    torch.save(payload, path)
    if message is None:
        module, _ = load_checkpoint(path)
        assert dict(module.named_modules())[first].eps == 2.5e-4
        return
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
