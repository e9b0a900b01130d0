"""A TensorRT build stops on request where TensorRT can: model/cancel or the agent stopping.

TensorRT 10's IProgressMonitor stops the builder when step_complete returns False (the double
then returns no engine, as TensorRT does); TensorRT 8 has no monitor, so a build there runs to
its end and only a request made before the builder starts is honoured. A cancelled build is
not a failed one: the fallback chain must not go on to fp32 or ONNX Runtime."""

import threading

import pytest

from support.trt_helpers import NANO, ORIN, doubles, tiny_package

from agent.backends import open_backend
from agent.backends.base import BackendOptions
from agent.config import load_config
from agent.errors import Cancelled
from agent.updates.loader import ModelLoader


@pytest.fixture
def tiny(tmp_path):
    return tiny_package(str(tmp_path / "pkg"))


def cancel_at_step(trt, step):
    """A cancel flag that the double's builder sets itself when it reaches build step `step`:
    the request arrives while TensorRT is building, at a known point."""
    flag = threading.Event()

    def hook(n):
        if n == step:
            flag.set()
    trt.KNOBS.build_steps_hook = hook
    return flag


def test_a_tensorrt10_build_stops_at_its_next_step(tiny):
    from agent.backends.tensorrt.build import build_engine
    with doubles("10.3", ORIN) as trt:
        flag = cancel_at_step(trt, 1)
        with pytest.raises(Cancelled) as info:
            build_engine(tiny.onnx_path, precision="fp32", trt=trt, cancel=flag)
        assert "stopped during the build" in str(info.value)
        assert "model.onnx" in str(info.value) and "nothing was cached" in str(info.value)
        assert trt.KNOBS.cancelled_builds == 1 and trt.KNOBS.builds == 0


def test_a_tensorrt8_build_runs_to_its_end(tiny):
    from agent.backends.tensorrt.build import build_engine
    with doubles("8.2", NANO) as trt:
        flag = cancel_at_step(trt, 1)
        result = build_engine(tiny.onnx_path, precision="fp32", trt=trt, cancel=flag)
        assert flag.is_set() and result.data  # asked to stop, but TensorRT 8 cannot
        assert trt.KNOBS.cancelled_builds == 0 and trt.KNOBS.builds == 1


@pytest.mark.parametrize("generation, device", [("8.2", NANO), ("10.3", ORIN)])
def test_a_cancel_before_the_builder_starts_stops_every_generation(tiny, generation, device):
    from agent.backends.tensorrt.build import build_engine
    with doubles(generation, device) as trt:
        flag = threading.Event()
        flag.set()
        with pytest.raises(Cancelled, match="stopped before the build"):
            build_engine(tiny.onnx_path, precision="fp32", trt=trt, cancel=flag)
        assert trt.KNOBS.builds == 0


def test_a_build_without_a_cancel_flag_completes_on_tensorrt10(tiny):
    from agent.backends.tensorrt.build import build_engine
    with doubles("10.3", ORIN) as trt:
        assert build_engine(tiny.onnx_path, precision="fp32", trt=trt).data
        assert trt.KNOBS.cancelled_builds == 0 and trt.KNOBS.builds == 1


def test_open_backend_does_not_step_down_after_a_cancel(tmp_path, tiny):
    """fp16 on TensorRT, then fp32, then ONNX Runtime is the chain for a failed build; a
    cancelled one ends there."""
    with doubles("10.3", ORIN) as trt:
        flag = cancel_at_step(trt, 0)
        with pytest.raises(Cancelled):
            open_backend(tiny, BackendOptions(kind="auto", precision="fp16", preprocess="cpu",
                                              state_dir=str(tmp_path / "var")), cancel=flag)
        assert trt.KNOBS.cancelled_builds == 1 and trt.KNOBS.builds == 0


def test_the_loader_passes_the_commands_cancel_flag_to_the_build(tmp_path, tiny):
    """ModelLoader.prepare is what model/install and model/activate run (with the command's
    cancel flag) and what the start runs (with the agent's stop)."""
    config = load_config(data={"backend": {"kind": "tensorrt", "precision": "fp32",
                                           "preprocess": "cpu"},
                               "device": {"state_dir": str(tmp_path / "var")}})
    loader = ModelLoader(config, None, emit=lambda event: None)
    seen = []
    with doubles("10.3", ORIN) as trt:
        flag = cancel_at_step(trt, 2)
        with pytest.raises(Cancelled):
            loader.prepare(tiny, lambda phase, fraction, detail: seen.append(phase), flag)
        assert trt.KNOBS.cancelled_builds == 1
    assert "validating" not in seen


def test_a_stop_during_the_starts_build_tries_no_other_model(tmp_path):
    """At start the active model is built, and the previous one if that fails; a stop (SIGTERM
    during a first build on the device) ends the start there, with no rollback."""
    from agent.store.store import ModelStore
    store = ModelStore(str(tmp_path / "var"))
    for version in ("1", "2"):
        package = store.import_package(
            tiny_package(str(tmp_path / ("pkg" + version)), version=version).root)
        store.activate(package.name, package.version)
    config = load_config(data={"model": {"name": "tiny"},
                               "backend": {"kind": "tensorrt", "precision": "fp32",
                                           "preprocess": "cpu"},
                               "device": {"state_dir": str(tmp_path / "var")}})
    stop = threading.Event()
    loader = ModelLoader(config, store, emit=lambda event: None, stop=stop)
    with doubles("10.3", ORIN) as trt:
        stop.set()  # as the agent's SIGTERM handler does
        backend, errors = loader.initial()
        assert backend is None and trt.KNOBS.builds == 0
    assert len(errors) == 1 and "stopped before the build" in errors[0], errors
    assert store.active_ref() == ("tiny", "2")  # no rollback to 1
