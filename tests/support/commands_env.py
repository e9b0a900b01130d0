"""Test helpers shared by several test modules (from tests/unit/updates/test_commands.py)."""

import json
import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from support.model_store import LABELS, FileServer, publish_model, sha

from agent.backends import open_backend
from agent.backends.base import BackendOptions
from agent.updates.worker import ModelManager
from agent.config import load_config
from agent.errors import BackendError
from agent.store.store import ModelStore


TERMINAL = ("activated", "installed", "done", "rejected", "failed")


# ----------------------------------------------------------------------------- the manager

class Events(object):
    """Collects emitted events; waits on a condition, never sleeps."""

    def __init__(self) -> None:
        self.items = []  # type: List[Dict[str, Any]]
        self.cond = threading.Condition()

    def __call__(self, event: Dict[str, Any]) -> None:
        json.dumps(event)  # every event must be publishable as JSON
        with self.cond:
            self.items.append(event)
            self.cond.notify_all()

    def of(self, request_id: str) -> List[Dict[str, Any]]:
        with self.cond:
            return [e for e in self.items if e["request_id"] == request_id]

    def wait_for(self, predicate: Callable[[List[Dict[str, Any]]], Any], what: str,
                 timeout: float = 20) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError("timed out waiting for {}; events: {}".format(
                    what, json.dumps(self.items, indent=1)))

    def finished(self, request_id: str, nth: int = 1) -> Dict[str, Any]:
        """The nth terminal event with this request_id (waits for it)."""
        def ends(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
            return [e for e in items if e["request_id"] == request_id and e["state"] in TERMINAL]
        self.wait_for(lambda items: len(ends(items)) >= nth,
                      "final event #{} for {}".format(nth, request_id))
        with self.cond:
            return ends(self.items)[nth - 1]

    def states(self, request_id: str) -> List[str]:
        out = []  # type: List[str]
        for event in self.of(request_id):
            if not out or out[-1] != event["state"]:
                out.append(event["state"])
        return out


class InferenceSeam(object):
    """The app's prepare/activate callbacks (see the module docstring)."""

    def __init__(self) -> None:
        self.serving = None  # type: Any
        self.activated = []  # type: List[str]
        self.closed = []  # type: List[str]
        self.fail_prepare = None  # type: Optional[str]
        self.fail_activate = None  # type: Optional[str]
        self.gate = None  # type: Optional[threading.Event]
        self.cancel = None  # type: Any
        self.entered = threading.Event()

    def prepare(self, package: Any, progress: Any, cancel: Any) -> Any:
        self.cancel = cancel  # what a TensorRT build polls (agent.backends.tensorrt.build)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test never opened the prepare gate"
        if self.fail_prepare:
            raise BackendError(self.fail_prepare)
        progress("building", 0.0, "loading with ONNX Runtime")
        backend, _ = open_backend(package, BackendOptions(kind="onnxruntime", precision="fp32"))
        progress("validating", None, "one frame")
        out = backend.infer(np.zeros(package.input.shape, np.float32))
        assert out["logits"].shape == (1, 5)
        original = backend.close

        def close() -> None:
            self.closed.append(package.ref)
            original()
        backend.close = close
        return backend

    def activate(self, backend: Any, package: Any) -> None:
        if self.fail_activate:
            raise BackendError(self.fail_activate)
        old, self.serving = self.serving, backend
        self.activated.append(package.ref)
        if old is not None:
            old.close()


class Env(object):
    def __init__(self, tmp_path: Any, queue_size: int = 4,
                 updates: Optional[Dict[str, Any]] = None) -> None:
        self.server = FileServer()
        self.store = ModelStore(str(tmp_path / "state"), max_download_mb=1)
        self.events = Events()
        self.seam = InferenceSeam()
        self.stop = threading.Event()
        # `updates`: keys of the config's updates section, validated with the others' defaults.
        section = load_config(data={"updates": updates}).updates if updates else None
        self.manager = ModelManager(self.store, self.events, self.seam.prepare,
                                    self.seam.activate, self.stop, section,
                                    queue_size=queue_size).start()

    def install(self, version: str, seed: int, request_id: str, **changes: Any) -> None:
        args = publish_model(self.server, version, seed)
        args.update(request_id=request_id, labels_sha256=sha(LABELS))
        args.update(changes)
        self.manager.submit_raw("model/install", json.dumps(
            {k: v for k, v in args.items() if v is not None}).encode())

    def restart(self) -> Events:
        """A second manager on this state_dir, as after a restart of the agent: the events
        its start sends (it is stopped again at once)."""
        events = Events()
        stop = threading.Event()
        manager = ModelManager(self.store, events, self.seam.prepare, self.seam.activate,
                               stop).start()
        stop.set()
        assert manager.join(20)
        return events

    def close(self) -> None:
        self.stop.set()
        if self.seam.gate is not None:
            self.seam.gate.set()
        assert self.manager.join(20), "model manager did not stop"
        self.server.close()
