"""tests/support/reference_onnx.py, the numpy stand-in for ONNX Runtime on the JetPack 4.6 stack,
checked against ONNX Runtime (where it is installed) on the bundled model and sample photos,
and its protobuf reader checked against the `onnx` package."""

import os

import cv2
import numpy as np
import pytest

from agent.store.package import ModelPackage
from agent.preprocess import Preprocessor
from support.paths import MODEL_DIR, SAMPLES
from support.strict import requires
from support.reference_onnx import OnnxFormatError, ReferenceSession, conv, load_model

PHOTOS = ("cat.jpg", "coffee.jpg", "rocket.jpg")


@pytest.fixture(scope="module")
def model_bytes():
    with open(os.path.join(MODEL_DIR, "model.onnx"), "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def tensors():
    package = ModelPackage.load(MODEL_DIR)
    pre = Preprocessor(package.input)
    return {p: pre(cv2.imread(os.path.join(SAMPLES, p))) for p in PHOTOS}


def test_matches_onnxruntime_on_the_sample_photos(model_bytes, tensors):
    ort = requires("onnxruntime")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    ref = ReferenceSession(model_bytes)
    for photo, tensor in sorted(tensors.items()):
        want = session.run(["logits"], {"input": tensor})[0]
        got = ref.run(["logits"], {"input": tensor})[0]
        assert got.shape == want.shape == (1, 1000)
        assert float(np.max(np.abs(got - want))) < 1e-3, photo
        assert int(np.argmax(got)) == int(np.argmax(want)), photo


def test_top1_of_the_sample_photos(model_bytes, tensors):
    """Runs on every stack: the reference alone gives the photos' known classes."""
    labels = ModelPackage.load(MODEL_DIR).labels
    ref = ReferenceSession(model_bytes)
    top1 = {p: labels[int(np.argmax(ref.run(None, {"input": t})[0]))]
            for p, t in tensors.items()}
    assert top1["coffee.jpg"] in ("espresso", "cup", "coffee mug"), top1
    assert "cat" in top1["cat.jpg"] or top1["cat.jpg"] == "tabby", top1


def test_reader_agrees_with_the_onnx_package(model_bytes):
    onnx = requires("onnx")
    from onnx import numpy_helper
    want = onnx.load_from_string(model_bytes)
    got = load_model(model_bytes)
    assert [(o.domain, o.version) for o in got.opset_import] == \
        [(o.domain, o.version) for o in want.opset_import]
    assert [(n.op_type, list(n.input), list(n.output), n.name) for n in got.graph.node] == \
        [(n.op_type, list(n.input), list(n.output), n.name) for n in want.graph.node]
    for g, w in zip(got.graph.node, want.graph.node):
        assert g.attrs() == {a.name: onnx.helper.get_attribute_value(a) for a in w.attribute}
    assert len(got.graph.initializer) == len(want.graph.initializer)
    for g, w in zip(got.graph.initializer, want.graph.initializer):
        assert g.name == w.name and np.array_equal(g.array(), numpy_helper.to_array(w))
    for g, w in zip(got.graph.input, want.graph.input):
        assert g.name == w.name
        assert g.type.tensor_type.elem_type == w.type.tensor_type.elem_type
        assert [d.dim_value for d in g.type.tensor_type.shape.dim] == \
            [d.dim_value for d in w.type.tensor_type.shape.dim]


def test_grouped_strided_padded_conv_against_a_direct_sum():
    rng = np.random.RandomState(1)
    x = rng.standard_normal((1, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    attrs = {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}
    got = conv(x, w, b, attrs)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1)), mode="constant")
    oh = (7 + 3 - 2 - 1) // 2 + 1
    ow = (6 + 1 - 2 - 1) // 1 + 1
    want = np.zeros((1, 6, oh, ow), np.float64)
    for m in range(6):
        g = m // 3
        for y in range(oh):
            for xx in range(ow):
                for c in range(2):
                    for i in range(3):
                        for j in range(2):
                            want[0, m, y, xx] += xp[0, g * 2 + c, y * 2 + i, xx + j * 2] * \
                                w[m, c, i, j]
                want[0, m, y, xx] += b[m]
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-4)


def test_garbage_is_a_format_error():
    with pytest.raises(OnnxFormatError):
        load_model(b"\x08\x07\x3a\xff\xff\xff")
    with pytest.raises(OnnxFormatError):
        load_model(b"hello world, not onnx")
