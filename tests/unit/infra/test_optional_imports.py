"""An optional dependency that fails to import for ANY reason (not only ImportError: a numpy
ABI mismatch raises SystemError, a broken native library OSError) is reported as unavailable,
with the reason, and never crashes the agent."""

import os
import sys

import pytest

from support.paths import MODEL_DIR, ROOT, SAMPLES
from support.strict import requires

REASON = "numpy.core.multiarray failed to import (test double of a broken install)"


def broken_package(folder, name):
    """A package `name` in `folder` whose import raises SystemError, like onnx beside a numpy
    its ml_dtypes was not built for."""
    top = name.split(".")[0]
    pkg = os.path.join(str(folder), top)
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as handle:
        handle.write("raise SystemError({!r})\n".format(REASON))
    return str(folder)


@pytest.fixture
def broken(tmp_path, monkeypatch):
    def make(name):
        monkeypatch.syspath_prepend(broken_package(tmp_path, name))
        top = name.split(".")[0]
        for mod in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            monkeypatch.delitem(sys.modules, mod)
        with pytest.raises(SystemError):
            __import__(name)
    return make


def test_broken_onnx_leaves_the_container_check(broken):
    from agent.store.onnx_check import check_onnx
    from agent.store.package import ModelPackage
    broken("onnx")
    check_onnx(ModelPackage.load(MODEL_DIR))  # the protobuf walk only; no exception


def test_broken_onnx_skips_the_tensorrt_preflight_with_the_reason(broken):
    from agent.backends.tensorrt.preflight import preflight
    broken("onnx")
    report = preflight(os.path.join(MODEL_DIR, "model.onnx"), "8.2.1")
    assert not report.checked and "broken install" in report.notes[0], report.notes


def test_broken_onnxruntime_is_a_backend_error(broken):
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    from agent.errors import BackendError
    broken("onnxruntime")
    with pytest.raises(BackendError, match="broken install"):
        OnnxRuntimeBackend._load_impl(object.__new__(OnnxRuntimeBackend))


def test_broken_tensorrt_and_pycuda_are_backend_errors(broken):
    from agent.backends.tensorrt.cuda import import_pycuda_driver
    from agent.backends.tensorrt.runtime import import_tensorrt
    from agent.errors import BackendError
    broken("tensorrt")
    broken("pycuda")
    with pytest.raises(BackendError, match="broken install"):
        import_tensorrt()
    with pytest.raises(BackendError, match="broken install"):
        import_pycuda_driver()


def test_broken_jtop_and_pynvml_are_unavailable_power_sources(broken):
    from agent.power import JtopPowerReader, PowerSourceUnavailable
    from agent.power.nvml import _import_nvml
    broken("jtop")
    broken("pynvml")
    with pytest.raises(PowerSourceUnavailable, match="broken install"):
        JtopPowerReader()
    with pytest.raises(PowerSourceUnavailable, match="broken install"):
        _import_nvml()


def test_broken_cryptography_is_a_signature_error(broken):
    from agent.store.signing import SignatureError, _crypto
    broken("cryptography")
    with pytest.raises(SignatureError, match="broken install"):
        _crypto()


def test_broken_cv2_is_reported_by_the_view(broken):
    from agent.view import highgui_available
    broken("cv2")
    ok, why = highgui_available()
    assert not ok and "broken install" in why


def test_agent_serves_with_a_broken_onnx_package(broker, recorder, run_agent, tmp_path):
    """The fresh-machine CI failure: `import onnx` raised SystemError and the agent died."""
    requires("onnxruntime")  # the agent's backend here
    folder = broken_package(tmp_path / "broken", "onnx")
    photo = os.path.join(SAMPLES, "coffee.jpg")
    agent = run_agent("broken-onnx", "--set", "source.uri=file://" + photo,
                      "--set", "source.loop=false", "--max-frames", "1",
                      env={"PYTHONPATH": os.pathsep.join([folder, ROOT])})
    assert agent.wait(90) == 0, agent.err
    prediction = recorder.wait_topic("broken-onnx/predictions",
                                     lambda p: p.get("frame") == "coffee.jpg", 10,
                                     "a prediction with onnx broken")
    assert prediction["top"][0]["label"] in {"espresso", "cup", "coffee mug"}


def test_broken_cv2_is_a_source_error_for_a_file_source(broken):
    from agent.errors import SourceError
    from agent.sources import make_source
    source = make_source("file://" + os.path.join(SAMPLES, "cat.jpg"))
    broken("cv2")
    with pytest.raises(SourceError, match="broken install"):
        source.open()
