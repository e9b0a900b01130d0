"""The agent end to end on each JetPack stack (.ci/stacks), and on the main venv: a real agent
process reads sample photos (file://), preprocesses them, runs the bundled model through the
TensorRT double of the stack's generation (with the pycuda double), takes the top-k and
publishes over MQTT to the real Mosquitto broker. On stacks without ONNX Runtime (JetPack 4.6:
no wheel works with numpy 1.13) the double computes with tests/support/reference_onnx.py and the agent
skips its ONNX Runtime validation with a note, as it does on a Jetson without onnxruntime."""

import os
import subprocess
import sys

import numpy as np

from support.paths import ROOT, SAMPLES
from support.agent_process import agent_args
from support.trt_helpers import trt_double

# Python of each JetPack generation -> (TensorRT API double, board).
STACKS = {(3, 6): ("8.2", "NANO"), (3, 8): ("8.5", "XAVIER"), (3, 10): ("10.3", "ORIN")}
EXPECTED = {"coffee.jpg": {"espresso", "cup", "coffee mug"},
            "cat.jpg": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}}


def ort_available():
    try:
        import onnxruntime  # noqa: F401
        return True
    except Exception:
        return False


def test_photos_to_mqtt_through_the_tensorrt_double(broker, recorder, tmp_path):
    generation, board = STACKS.get(tuple(sys.version_info[:2]), ("8.2", "NANO"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in EXPECTED:
        with open(os.path.join(SAMPLES, name), "rb") as src:
            (photos / name).write_bytes(src.read())
    device = "jetpack-" + generation.replace(".", "")
    args = agent_args(broker.port, device, str(tmp_path / "state"),
                      "--set", "backend.kind=tensorrt", "--set", "backend.precision=fp16",
                      "--set", "source.uri=file://" + str(photos), "--set", "source.loop=false",
                      "--max-frames", str(len(EXPECTED)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "support", "agent_with_doubles.py"),
                             generation, board] + args, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    log = err.decode("utf-8", "replace")
    assert proc.returncode == 0, log[-3000:]
    for name, classes in sorted(EXPECTED.items()):
        prediction = recorder.wait_topic(device + "/predictions",
                                         lambda p, n=name: p.get("frame") == n, 30,
                                         "a prediction for " + name)
        top = prediction["top"]
        assert top[0]["label"] in classes, (name, top)
        scores = [t["score"] for t in top]
        assert len(top) == 5 and scores == sorted(scores, reverse=True)
        assert prediction["model"] == "efficientnet_lite0@1"
    serving = recorder.wait_topic(device + "/status", lambda p: p.get("state") == "serving", 10,
                                  "serving status")
    assert serving["model"]["backend"] == "tensorrt", serving
    if ort_available():
        assert "top-1 agreement" in log, log[-3000:]
    else:
        # As on a Jetson without onnxruntime: the engine is served, its validation skipped
        # with the reason.
        assert "validation skipped: the ONNX Runtime reference is unavailable" in log, \
            log[-3000:]
    assert np.__version__  # the stack's numpy ran the agent's pre/postprocessing
