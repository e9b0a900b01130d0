"""The bundled demo model package (models/efficientnet_lite0) and sample photos, as committed.

Needs only onnx, onnxruntime, numpy, cv2 and pyyaml: the files are produced by
models/export_efficientnet_lite0.py in a separate torch venv, and these checks hold the result
to the contract the agent and old TensorRT versions rely on (docs/DESIGN.md "Model package",
docs/PLATFORM.md section 2).
"""

import collections
import hashlib
import os

import numpy as np
import pytest

from support.paths import ROOT

REPO_ROOT = ROOT

import cv2  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from agent.store.package import ModelPackage  # noqa: E402

PACKAGE_DIR = os.path.join(REPO_ROOT, "models", "efficientnet_lite0")
SAMPLES_DIR = os.path.join(REPO_ROOT, "models", "samples")

ALLOWED_OPS = {"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Gemm"}
RUNTIME_SHAPE_OPS = {"Pad", "Shape", "Slice", "Concat", "Gather", "ConstantOfShape", "Flatten"}

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
EXPECTED_TOP1 = {
    "cat.jpg": CAT_CLASSES,
    "coffee.jpg": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
}


@pytest.fixture(scope="module")
def package():
    return ModelPackage.load(PACKAGE_DIR)


@pytest.fixture(scope="module")
def model(package):
    return onnx.load(package.onnx_path)


@pytest.fixture(scope="module")
def session(package):
    return ort.InferenceSession(package.onnx_path, providers=["CPUExecutionProvider"])


def graph_inputs(model):
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def static_dims(value):
    dims = value.type.tensor_type.shape.dim
    assert all(d.HasField("dim_value") for d in dims), \
        "{} has a symbolic dimension: {}".format(value.name, dims)
    return [d.dim_value for d in dims]


def test_manifest_matches_design(package):
    assert package.name == "efficientnet_lite0"
    assert package.version == "1"
    assert package.task == "classification"
    assert package.file == "model.onnx"
    assert package.labels_file == "labels.txt"
    assert package.input.to_dict() == {
        "name": "input", "shape": [1, 3, 224, 224], "layout": "NCHW", "color": "RGB",
        "resize": {"mode": "shorter_side_crop", "size": 256},
        "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]}
    assert package.output.to_dict() == {"name": "logits", "activation": "softmax"}


def test_sha256_in_manifest_matches_model_file(package):
    assert package.sha256 is not None, "model.yaml must pin the model's sha256"
    actual = package.verify()
    with open(package.onnx_path, "rb") as handle:
        assert actual == hashlib.sha256(handle.read()).hexdigest() == package.sha256.lower()


def test_model_passes_onnx_checker(package):
    onnx.checker.check_model(package.onnx_path, full_check=True)


def test_graph_uses_only_tensorrt_friendly_ops(model):
    counts = collections.Counter(node.op_type for node in model.graph.node)
    assert set(counts) <= ALLOWED_OPS, "unexpected ops: {}".format(
        sorted(set(counts) - ALLOWED_OPS))
    assert not set(counts) & RUNTIME_SHAPE_OPS
    assert "Constant" not in counts
    # It is still the whole network: stem + 16 blocks + head convolutions, one classifier.
    assert counts["Conv"] == 49 and counts["Gemm"] == 1 and counts["GlobalAveragePool"] == 1


def test_conv_padding_is_static_same_padding(model):
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"), node.name
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        assert len(pads) == 4 and min(pads) >= 0, (node.name, pads)


def test_opset_and_ir_version_suit_old_tensorrt(model):
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    assert set(opsets) == {"ai.onnx"}, opsets
    assert 11 <= opsets["ai.onnx"] <= 13
    # JetPack 4.6 (TensorRT 8.0/8.2, its ONNX Runtime builds) reads IR versions up to 8.
    assert model.ir_version <= 8


def test_single_static_float32_input_named_as_manifest(model, package):
    inputs = graph_inputs(model)
    assert [value.name for value in inputs] == [package.input.name] == ["input"]
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert static_dims(inputs[0]) == package.input.shape == [1, 3, 224, 224]


def test_output_is_logits_over_1000_classes(model, package, session):
    assert [value.name for value in model.graph.output] == [package.output.name] == ["logits"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert static_dims(model.graph.output[0]) == [1, 1000]
    out = session.run(["logits"], {"input": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert out.shape == (1, 1000) and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_labels_are_the_1000_imagenet_classes(package):
    labels = package.labels
    assert len(labels) == 1000
    with open(os.path.join(PACKAGE_DIR, "labels.txt"), "r", encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) == 1000
    assert all(label.strip() == label and label for label in labels)
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[967] == "espresso"
    assert labels[999] == "toilet tissue"


def test_samples_are_small_jpegs_with_a_readme():
    assert os.path.isfile(os.path.join(SAMPLES_DIR, "README.md"))
    for name in EXPECTED_TOP1:
        path = os.path.join(SAMPLES_DIR, name)
        with open(path, "rb") as handle:
            assert handle.read(3) == b"\xff\xd8\xff", "{} is not a JPEG".format(path)
        assert os.path.getsize(path) < 150 * 1024
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        assert frame is not None and frame.ndim == 3 and min(frame.shape[:2]) >= 224


def softmax(logits):
    z = logits.astype(np.float64) - logits.max()
    return np.exp(z) / np.exp(z).sum()


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_sample_photo_top1_class(name, package, session):
    from agent.preprocess import Preprocessor

    frame = cv2.imread(os.path.join(SAMPLES_DIR, name), cv2.IMREAD_COLOR)
    assert frame is not None
    tensor = Preprocessor(package.input)(frame)
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == np.float32
    probs = softmax(session.run([package.output.name], {package.input.name: tensor})[0][0])
    order = np.argsort(-probs)
    top5 = [(package.labels[i], round(float(probs[i]), 3)) for i in order[:5]]
    assert package.labels[order[0]] in EXPECTED_TOP1[name], top5
    assert probs[order[0]] > 0.2, top5


def test_cat_photo_is_confidently_a_cat(package, session):
    from agent.preprocess import Preprocessor

    frame = cv2.imread(os.path.join(SAMPLES_DIR, "cat.jpg"), cv2.IMREAD_COLOR)
    probs = softmax(session.run(["logits"], {"input": Preprocessor(package.input)(frame)})[0][0])
    cat_mass = sum(probs[i] for i, label in enumerate(package.labels) if label in CAT_CLASSES)
    assert cat_mass > 0.8


def test_preprocessing_matters(package, session):
    """Feeding BGR instead of the manifest's RGB changes the scores: the test above is real."""
    from agent.preprocess import Preprocessor

    frame = cv2.imread(os.path.join(SAMPLES_DIR, "coffee.jpg"), cv2.IMREAD_COLOR)
    rgb = Preprocessor(package.input)(frame)
    bgr = np.ascontiguousarray(rgb[:, ::-1])
    out_rgb = session.run(["logits"], {"input": rgb})[0]
    out_bgr = session.run(["logits"], {"input": bgr})[0]
    assert np.abs(out_rgb - out_bgr).max() > 0.1
