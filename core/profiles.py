"""What each MLPerf model needs, in one place, so a fact such as "label = argmax - 1" or
"resnet50 uses INTER_AREA" is written exactly once."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError


@dataclass(frozen=True)
class ModelProfile:
    name: str
    # Preprocessing, as MLPerf inference's vision/classification_and_detection/python/
    # dataset.py does it: pre_process_vgg (resnet50) / pre_process_mobilenet.
    recipe: str  # "vgg" (mean subtraction) or "mobilenet" (scale to [-1, 1])
    interpolation: str  # "area" or "linear": the cv2.resize flag
    # Checkpoint.
    url: str
    archive_member: str | None  # frozen graph inside a .tgz, or None for a bare .pb
    checkpoint_filename: str  # the file name the pipeline stores the frozen graph under
    # TensorFlow tensor names in the frozen graph.
    input_tensor: str
    logits_tensor: str
    probabilities_tensor: str
    # Classes: MLPerf's graphs have 1001 (index 0 = "background"), so label = argmax -
    # label_offset. Only a first guess: the converter reads the classifier's shape (1001
    # or 1000) and records what it found, and a converted model's readers use that.
    num_classes: int
    label_offset: int
    # MLPerf's published accuracy on the 50,000 ImageNet validation images, in percent.
    reference_top1: float
    # MLPerf's accuracy gate for a modified (e.g. quantized) model: at least gate_ratio of
    # the fp32 top-1; its submission checker applies it to gate_reference_top1 (the
    # reference top-1 as the rules round it).
    gate_ratio: float
    gate_reference_top1: float


# Recipe parameters shared by the models.
SHORT_SIDE = int(100 * 224 / 87.5)  # 256: MLPerf resizes the short side to this
CROP_SIZE = 224
VGG_MEANS_RGB = (123.68, 116.78, 103.94)

RESNET50 = ModelProfile(
    name="resnet50",
    recipe="vgg",
    interpolation="area",
    url="https://zenodo.org/record/2535873/files/resnet50_v1.pb",
    archive_member=None,
    checkpoint_filename="resnet50_v1.pb",
    input_tensor="input_tensor:0",
    logits_tensor="resnet_model/final_dense:0",
    probabilities_tensor="softmax_tensor:0",
    num_classes=1001,
    label_offset=1,
    reference_top1=76.456,
    gate_ratio=0.99,
    gate_reference_top1=76.46,
)

MOBILENET_V1 = ModelProfile(
    name="mobilenet_v1",
    recipe="mobilenet",
    interpolation="linear",
    url="https://zenodo.org/record/2269307/files/mobilenet_v1_1.0_224.tgz",
    archive_member="mobilenet_v1_1.0_224_frozen.pb",
    checkpoint_filename="mobilenet_v1_1.0_224_frozen.pb",
    input_tensor="input:0",
    logits_tensor="MobilenetV1/Predictions/Reshape:0",
    probabilities_tensor="MobilenetV1/Predictions/Reshape_1:0",
    num_classes=1001,
    label_offset=1,
    reference_top1=71.676,
    gate_ratio=0.98,
    gate_reference_top1=71.68,
)

PROFILES: dict[str, ModelProfile] = {p.name: p for p in (RESNET50, MOBILENET_V1)}
MODEL_NAMES = tuple(PROFILES)


def get_profile(name: str) -> ModelProfile:
    """Return the profile for ``name``; an unknown name is a UserError naming the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(MODEL_NAMES)
        raise UserError(f"unknown model {name!r}: expected one of {known}") from None


def as_profile(model: ModelProfile | str) -> ModelProfile:
    """``model`` if it is a profile, else the profile it names (for APIs taking either)."""
    return model if isinstance(model, ModelProfile) else get_profile(model)
