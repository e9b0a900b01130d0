"""Preparing a model to serve: open its backend, check its outputs, pick the model at start.

`ModelLoader.prepare` loads a package on the best backend and checks it on a few frames (the
latest camera frame and generated ones) before it may serve; it runs in the model manager's
thread, or at start. `ModelLoader.initial` puts the configured model in the store when needed
and prepares the store's active model, else its previous one (an automatic rollback).
"""

import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..backends import open_backend
from ..backends.base import Backend, BackendOptions
from ..config import Config
from ..errors import AgentError, BackendError, Cancelled, ModelError
from ..postprocess import Classifier
from ..preprocess import Preprocessor
from ..store.layout import write_atomic  # with the store's temp-file prefix
from ..store.package import ModelPackage

log = logging.getLogger("edge-agent")

Progress = Callable[[str, Optional[float], str], None]


def backend_options(config: Config) -> BackendOptions:
    b = config.backend
    return BackendOptions(kind=b.kind, precision=b.precision, workspace_mb=b.workspace_mb,
                          max_batch=b.max_batch, dla_core=b.dla_core,
                          calibration_dir=config.resolve(b.calibration_dir)
                          if b.calibration_dir else None,
                          preprocess=b.preprocess,
                          state_dir=config.resolve(config.device.state_dir), threads=b.threads,
                          validate=b.validate, spin=b.spin, workers=b.workers)


def bundled_model_dirs(config: Config) -> List[str]:
    """Where bundled model packages are looked for: next to the config, then the install."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = [config.resolve("models"), os.path.normpath(os.path.join(here, "..", "models")),
            os.path.join(sys.prefix, "share", "edge-agent", "models")]
    out = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_bundled_package(config: Config, name: str) -> ModelPackage:
    tried = []
    for base in bundled_model_dirs(config):
        path = os.path.join(base, name)
        tried.append(path)
        if os.path.isfile(os.path.join(path, "model.yaml")):
            return ModelPackage.load(path)
    raise ModelError("model {!r}: no package found (looked in {}); set model.name to an "
                     "installed model or install one with `edge-agent models install`".format(
                         name, ", ".join(tried)))


class ModelLoader(object):
    """Prepares backends for `config`'s backend settings and picks the model at start.

    `latest_image()` gives the newest camera frame (or None) for the sanity check;
    `on_building(ref)` is told when a build starts (ref) and ends (None); `emit` publishes
    an event; `stop` (the agent stopping) stops the start's build where TensorRT can.
    """

    # Remembers the model.name of the last start. A dot name: model names cannot start with
    # '.', so no model's directory can collide with it (the old name could: LEGACY_MARKER).
    CONFIGURED_MARKER = ".configured-model"
    LEGACY_MARKER = "configured-model"

    def __init__(self, config: Config, store: Any, emit: Callable[[Dict[str, Any]], None],
                 latest_image: Callable[[], Any] = lambda: None,
                 on_building: Callable[[Optional[str]], None] = lambda ref: None,
                 stop: Any = None) -> None:
        self.config = config
        self.stop = stop
        self.store = store
        self.emit = emit
        self.latest_image = latest_image
        self.on_building = on_building

    # ---------------------------------------------------------------- prepare and check
    def prepare(self, package: ModelPackage, progress: Progress, cancel: Any = None) -> Backend:
        """Load `package` on the best backend and check it on real-looking frames before it
        may serve (runs in the model manager's thread, or at start). `cancel.is_set()` stops
        a TensorRT build where TensorRT can (see open_backend)."""
        package.verify()
        self.on_building(package.ref)
        try:
            backend, reasons = open_backend(package, backend_options(self.config),
                                            progress=progress, cancel=cancel)
        finally:
            self.on_building(None)
        for reason in reasons:
            log.warning("%s", reason)
            progress("building", None, reason)
        try:
            progress("validating", None, "checking the outputs on {} frames".format(
                self.sanity_frames()))
            self._validate_backend(backend)
        except Exception:
            backend.close()
            raise
        backend.release_thread()  # the inference thread takes it over (CUDA context)
        return backend

    def sanity_frames(self) -> int:
        return max(1, min(4, self.config.backend.validate.frames))

    def _validation_frames(self, count: int) -> List[Any]:
        """The latest camera frame (when there is one) and generated frames."""
        frames = []
        image = self.latest_image()
        if image is not None:
            frames.append(image)
        rng = np.random.RandomState(7)
        while len(frames) < count:
            frames.append(rng.randint(0, 256, size=(240, 320, 3), dtype=np.uint8))
        return frames[:count]

    def _validate_backend(self, backend: Backend) -> None:
        """Refuse a backend whose outputs are unusable: wrong size or NaN/Inf. (A TensorRT
        backend has already compared a fresh engine with ONNX Runtime when it built it.)"""
        # A sanity check (the TensorRT backend compares fresh engines with ONNX Runtime on
        # backend.validate.frames itself): a few frames, so a swap steals little CPU.
        package = backend.package
        pre = None if backend.accepts_frames() else Preprocessor(package.input)
        classifier = Classifier(package.labels, package.output.activation, package.output.name)
        for image in self._validation_frames(self.sanity_frames()):
            outputs = backend.infer_frame(image) if pre is None else backend.infer(pre(image))
            scores = classifier.scores(outputs)  # raises on NaN/Inf or a missing output
            if package.labels and scores.shape[0] != len(package.labels):
                raise BackendError("model {}: gives {} scores but labels has {} classes; fix the "
                                   "labels file or the model".format(
                                       package.ref, scores.shape[0], len(package.labels)))

    # ---------------------------------------------------------------- the model at start
    def start_progress(self, phase: str, fraction: Optional[float], detail: str) -> None:
        """Progress of a build at start: logged, and a `build` event."""
        log.info("engine %s%s %s", phase,
                 " {:.0%}".format(fraction) if fraction is not None else "", detail)
        self.emit({"command": "build", "state": "building", "detail": "{} {}".format(
            phase, detail).strip(), "progress": fraction})

    def initial(self) -> Tuple[Optional[Backend], List[str]]:
        """The store's active model (else its previous one) prepared on the best backend, and
        the errors met; (None, errors) when nothing loads."""
        errors = []  # type: List[str]
        self._seed_store(errors)
        candidates = []  # type: List[Tuple[str, Optional[ModelPackage]]]
        for which, getter in (("active", self.store.active_package),
                              ("previous", self.store.previous_package)):
            try:
                candidates.append((which, getter()))
            except AgentError as exc:
                errors.append("{} model: {}".format(which, exc))
        for which, package in candidates:
            if package is None:
                continue
            try:
                backend = self.prepare(package, self.start_progress, self.stop)
            except Cancelled as exc:  # the agent is stopping: no other candidate either
                errors.append(str(exc))
                break
            except AgentError as exc:
                errors.append(str(exc))
                continue
            if which == "previous":
                reason = "; ".join(errors)
                log.error("the active model failed (%s); rolled back to %s", reason, package.ref)
                self.store.rollback()
                self.emit({"command": "model/rollback", "request_id": None,
                           "state": "activated", "detail": "automatic at start: "
                           "serving {}".format(package.ref), "error": reason})
            return backend, errors
        if not errors:
            errors.append("no model is installed; set model.name to a bundled model or send "
                          "model/install")
        for error in errors:
            log.error("%s", error)
        return None, errors

    def _last_configured(self) -> Optional[str]:
        """model.name at the last start; moves a marker of the old name out of the way of a
        model called `configured-model`."""
        marker = os.path.join(self.store.root, self.CONFIGURED_MARKER)
        legacy = os.path.join(self.store.root, self.LEGACY_MARKER)
        for path in (marker, legacy):
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as handle:
                    last = handle.read().decode("utf-8", "replace").strip()
                if path == legacy:
                    write_atomic(marker, last.encode("utf-8"))
                    os.remove(legacy)
            except OSError as exc:
                log.warning("model store: cannot read or move %s: %s", path, exc)
                return None
            return last
        return None

    def _store_lost_its_models(self) -> bool:
        """The record names versions whose directories are gone (deleted by hand): neither the
        active nor the previous one can load, so the configured model is imported again."""
        refs = [r for r in (self.store.active_ref(), self.store.previous_ref()) if r]
        return bool(refs) and not any(
            os.path.isdir(os.path.join(self.store.root, r[0], r[1])) for r in refs)

    def _seed_store(self, errors: List[str]) -> None:
        """Put the configured model in the store when the store is empty (or emptied by hand)
        or config.model.name changed since the last start; otherwise the store's active record
        wins (it holds what operators installed over MQTT)."""
        name = self.config.model.name
        last = self._last_configured()
        active = self.store.active_ref()
        if active is not None and self._store_lost_its_models():
            log.warning("model store: the versions its record names (active: %s@%s) are gone "
                        "from %s; importing the configured model %s again", active[0],
                        active[1], self.store.root, name)
            active = None
        elif active is not None and (last == name or active[0] == name):
            return
        try:
            package = self.store.import_package(find_bundled_package(self.config, name).root)
            self.store.activate(package.name, package.version)
            write_atomic(os.path.join(self.store.root, self.CONFIGURED_MARKER),
                         name.encode("utf-8"))
            log.info("model store: %s is the configured model, now active", package.ref)
        except AgentError as exc:
            if active is not None:
                log.warning("model.name %r: %s; serving the store's active model %s@%s",
                            name, exc, active[0], active[1])
            errors.append(str(exc))
