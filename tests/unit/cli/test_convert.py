"""`edge-agent convert` (Keras file, SavedModel, TFLite -> ONNX) in the conversion venv that
.ci/setup --tests installs (.venv/convert: TensorFlow CPU and tf2onnx, constraints/convert.txt),
then `package` on the result in the main venv. A small Keras model is built and
initialised here (no training); outputs are compared with the source framework's (max abs difference
printed), once by `convert` itself and once independently here with ONNX Runtime."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from support.paths import ROOT, SAMPLES
from support.strict import requires

CONVERT_PY = os.environ.get("EDGE_AGENT_CONVERT_PYTHON") or \
    os.path.join(ROOT, ".venv", "convert", "bin", "python")

# Run in the conversion venv: a 4-class Keras classifier on 32x32 RGB, saved as .keras, as a
# SavedModel and as .tflite, with the framework's outputs on a fixed input saved beside them.
MAKE_MODELS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import keras
    import tensorflow as tf
    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    spread = keras.initializers.RandomNormal(stddev=3.0)  # scores far from uniform
    probs = keras.layers.Dense(4, activation="softmax", kernel_initializer=spread,
                               name="probs")(x)
    model = keras.Model(inp, probs)
    model.save(os.path.join(out, "tiny.keras"))
    model.export(os.path.join(out, "saved"), verbose=False)
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    open(os.path.join(out, "tiny.tflite"), "wb").write(tflite)
    x = np.random.RandomState(1).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "keras.npy"), model(x, training=False).numpy())
    interp = tf.lite.Interpreter(model_path=os.path.join(out, "tiny.tflite"))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    np.save(os.path.join(out, "tflite.npy"),
            interp.get_tensor(interp.get_output_details()[0]["index"]))
""")


def run(python, *args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run([python] + [str(a) for a in args], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not os.path.isfile(CONVERT_PY):
        pytest.skip("no conversion venv at {} (.ci/setup --tests installs it)".format(
            CONVERT_PY))
    out = tmp_path_factory.mktemp("convert")
    code, stdout, err = run(CONVERT_PY, "-c", MAKE_MODELS, out)
    assert code == 0, err[-3000:]
    return out


@pytest.mark.parametrize("source, reference", [
    ("tiny.keras", "keras.npy"), ("saved", "keras.npy"), ("tiny.tflite", "tflite.npy")])
def test_convert_then_package(models, tmp_path, source, reference):
    ort = requires("onnxruntime")
    onnx_path = tmp_path / "tiny.onnx"
    code, stdout, err = run(CONVERT_PY, "-m", "agent", "convert", models / source,
                            "--out", onnx_path)
    assert code == 0, stdout + err[-3000:]
    reported = float(re.search(r"max abs difference vs \w+ on random input: (\S+)",
                               stdout).group(1))
    assert reported <= 1e-4
    # Independently: ONNX Runtime here against the framework's own output on a fixed input.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 32, 32, 3]  # static batch for TensorRT 8.2
    x = np.load(str(models / "x.npy"))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(got - np.load(str(models / reference)))))
    print("convert {}: max abs difference vs the source framework: reported {:.3g}, on a "
          "0..255 input {:.3g}".format(source, reported, diff))
    assert diff < 1e-5

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    code, stdout, err = run(sys.executable, "-m", "agent", "package", onnx_path, "--labels",
                            labels, "--name", "tiny", "--version", "1", "--preset", "raw",
                            "--out", tmp_path / "pkg", "--sample",
                            os.path.join(SAMPLES, "cat.jpg"))
    assert code == 0, stdout + err
    assert "activation none" in stdout  # the Keras Softmax is in the graph
    from agent.store.package import ModelPackage
    package = ModelPackage.load(str(tmp_path / "pkg"))
    assert package.input.layout == "NHWC" and package.input.shape == [1, 32, 32, 3]


def test_convert_refuses_unknown_files_and_says_what_to_install(tmp_path):
    other = tmp_path / "model.pt"
    other.write_text("x")
    code, _, err = run(sys.executable, "-m", "agent", "convert", other, "--out",
                       tmp_path / "o.onnx")
    assert code == 2 and "give a Keras file (.keras, .h5, .hdf5), a SavedModel" in err, err
    keras_file = tmp_path / "m.keras"
    keras_file.write_text("x")
    code, _, err = run(sys.executable, "-m", "agent", "convert", keras_file, "--out",
                       tmp_path / "o.onnx")
    assert code == 2 and "pip install 'edge-agent[convert]'" in err, err
