"""The agent: wires config, model, backend, source, MQTT and telemetry into threads.

capture thread -> FrameSlot -> inference thread -> publish queue -> MQTT link (spooled).
A telemetry thread publishes every interval. One stop Event ends everything; SIGTERM/SIGINT
set it, in-flight frames drain, the retained status goes `offline`.
A new backend (model install, rollback) is prepared elsewhere and handed to the inference
thread with `swap_backend`; the inference thread swaps it in between two frames.
"""

import collections
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import __version__
from .backends import open_backend
from .backends.base import Backend, BackendOptions
from .config import Config
from .errors import AgentError, BackendError, ModelError, SourceError
from .store.package import ModelPackage
from .postprocess import Classifier
from .preprocess import Preprocessor
from .redact import redact_text
from .pipeline.frames import Frame, FrameSlot
from .sources import Pacer, Source, source_from_config
from .telemetry import StageStats

log = logging.getLogger("edge-agent")


def default_device_id() -> str:
    name = socket.gethostname().split(".")[0] or "device"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def backend_options(config: Config) -> BackendOptions:
    b = config.backend
    return BackendOptions(kind=b.kind, precision=b.precision, workspace_mb=b.workspace_mb,
                          max_batch=b.max_batch, dla_core=b.dla_core,
                          calibration_dir=config.resolve(b.calibration_dir)
                          if b.calibration_dir else None,
                          preprocess=b.preprocess,
                          state_dir=config.resolve(config.device.state_dir), threads=b.threads,
                          validate=b.validate, spin=b.spin)


def bundled_model_dirs(config: Config) -> List[str]:
    """Where bundled model packages are looked for: next to the config, then the install."""
    here = os.path.dirname(os.path.abspath(__file__))
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


class ActiveModel(object):
    """What the inference thread runs: a loaded backend and the pieces derived from its package."""

    def __init__(self, backend: Backend, config: Config) -> None:
        self.backend = backend
        self.package = backend.package
        self.preprocessor = None if backend.accepts_frames() else Preprocessor(self.package.input)
        self.classifier = Classifier(self.package.labels, self.package.output.activation,
                                     self.package.output.name, top_k=config.predictions.top_k,
                                     min_score=config.predictions.min_score)
        self.ref = self.package.ref

    def describe(self) -> Dict[str, Any]:
        return self.backend.describe()


class Probation(object):
    """The first frames of a newly activated model: it fails on MAX_ERRORS failed frames
    (load errors, NaN/Inf outputs) or when its median inference time exceeds the previous
    model's by more than `max_latency_factor`."""

    MAX_ERRORS = 3

    def __init__(self, ref: str, previous: str, frames: int, baseline_ms: Optional[float],
                 max_latency_factor: float) -> None:
        self.ref = ref
        self.previous = previous
        self.frames = frames
        self.baseline_ms = baseline_ms
        self.factor = max_latency_factor
        self.seen = 0
        self.errors = 0
        self.last_error = ""
        self.latencies = []  # type: List[float]

    def add(self, ok: bool, infer_ms: Optional[float], error: str = "") -> Optional[str]:
        """None while undecided, 'passed', or the reason it failed."""
        self.seen += 1
        if not ok:
            self.errors += 1
            self.last_error = error
            if self.errors >= self.MAX_ERRORS:
                return "{} of its first {} frames failed (last: {})".format(
                    self.errors, self.seen, error)
        elif infer_ms is not None:
            self.latencies.append(infer_ms)
        if self.seen < self.frames:
            return None
        if self.baseline_ms and self.latencies:
            values = sorted(self.latencies)
            median = values[len(values) // 2]
            if median > self.factor * self.baseline_ms:
                return ("latency regression: median inference {:.1f} ms vs {:.1f} ms before "
                        "(limit: {:g}x, updates.max_latency_factor)".format(
                            median, self.baseline_ms, self.factor))
        return "passed"


class Agent(object):
    """The daemon. `run()` blocks until stopped and returns the exit code."""

    def __init__(self, config: Config, max_frames: Optional[int] = None,
                 duration: Optional[float] = None, notifier: Any = None, link: Any = None,
                 telemetry: bool = True, backend: Optional[Backend] = None,
                 overrides: Optional[List[str]] = None, sysfs_root: str = "/") -> None:
        self.config = config
        self.max_frames = max_frames
        self.duration = duration
        self.device_id = config.device.id or default_device_id()
        # Identifies this process's messages: with `seq` a subscriber can tell what is missing.
        self.boot = uuid.uuid4().hex[:12]
        self.telemetry_seq = 0
        self.state_dir = config.resolve(config.device.state_dir)
        self.stop = threading.Event()
        self.stats = StageStats()
        self.notifier = notifier
        self.link = link  # preset by `bench` (a local sink); else made in _start_link
        self.spool = getattr(link, "spool", None)
        self.telemetry_enabled = telemetry
        self._preloaded = backend  # bench hands in the backend it already measured
        self._overrides = list(overrides or [])  # --set values, re-applied on reload
        self.sysfs_root = sysfs_root  # where power/thermal sensors are discovered
        self.source = None  # type: Optional[Source]
        self.slot = None  # type: Optional[FrameSlot]
        self.model = None  # type: Optional[ActiveModel]
        self.state = "starting"
        self.problems = {}  # type: Dict[str, str]
        self.frames_done = 0
        self.heartbeat = 0
        self.seq = 0
        self.capture_seq = 0
        self._pending_swap = None  # type: Optional[Tuple[ActiveModel, threading.Event, list]]
        self._swap_lock = threading.Lock()
        self._pub_queue = queue.Queue(maxsize=1024)  # type: queue.Queue
        self._threads = []  # type: List[threading.Thread]
        self._state_lock = threading.Lock()
        self._last_prediction_pub = 0.0
        # Called in the publish thread with every (frame, prediction payload); the live view
        # and bench use it. Telemetry listeners get each telemetry message.
        self.listeners = []  # type: List[Callable[[Frame, Dict[str, Any]], None]]
        self.telemetry_listeners = []  # type: List[Callable[[Dict[str, Any]], None]]
        self.exit_code = 0
        self.pinger = None  # type: Any
        self.sampler = None  # type: Any
        self.power_reader = None  # type: Any
        self.idle_w = None  # type: Optional[float]
        self.last_telemetry = None  # type: Optional[Dict[str, Any]]
        self.store = None  # type: Any
        self.manager = None  # type: Any
        self.last_image = None  # type: Any  # latest captured frame, for validation
        self.building = None  # type: Optional[str]  # model built in the background
        self._probation = None  # type: Optional[Probation]
        self._probation_lock = threading.Lock()
        self._recent_infer = collections.deque(maxlen=50)  # type: Any
        self._reload_requested = threading.Event()
        self._spool_retry_at = 0.0

    # ---------------------------------------------------------------- status and events
    def status_payload(self) -> Dict[str, Any]:
        model = self.model
        payload = {
            "state": self.state,
            "agent": __version__,
            "device": self.device_id,
            "model": model.describe() if model else None,
            "source": redact_text(self.config.source.uri),
            "boot": self.boot,
            "ts": round(time.time(), 3),
        }
        if self.building:
            payload["building"] = self.building
        if self.problems:
            payload["detail"] = "; ".join("{}: {}".format(k, v)
                                          for k, v in sorted(self.problems.items()))
        return payload

    def set_state(self, state: Optional[str] = None) -> None:
        """Publish the retained status; `degraded` wins while any problem is recorded."""
        with self._state_lock:
            if state is not None:
                self._base_state = state
            base = getattr(self, "_base_state", self.state)
            new = "degraded" if self.problems and base == "serving" else base
            if new == "serving" and self.building:
                new = "building"
            self.state = new
            payload = self.status_payload()
        if self.link is not None:
            self.link.publish("status", payload, kind="status", retain=True, qos=1)
        if self.notifier is not None:
            self.notifier.status(self.status_line())

    def problem(self, key: str, reason: Optional[str]) -> None:
        """Record (reason) or clear (None) a reason for `degraded`; on a change republish the
        status and say so on the events topic (command `health`)."""
        changed = False
        if reason is not None:
            reason = redact_text(reason)  # camera credentials in a source error, say
        with self._state_lock:
            if reason is None:
                changed = self.problems.pop(key, None) is not None
            elif self.problems.get(key) != reason:
                self.problems[key] = reason
                changed = True
        if changed:
            self.set_state()
            event = {"command": "health", "request_id": None, "detail": key,
                     "state": "degraded" if reason else "recovered"}
            if reason:
                event["error"] = reason
            self.emit_event(event)

    def status_line(self) -> str:
        model = self.model
        if model is None:
            return "{}: no model".format(self.state)
        d = model.describe()
        line = "{} {} on {} {}".format(self.state, model.ref, d.get("backend"),
                                       d.get("precision"))
        tele = self.last_telemetry
        if tele is not None:
            line += ", {} fps".format(tele.get("fps"))
            watts = (tele.get("power") or {}).get("total_w")
            if watts is not None:
                line += ", {:.1f} W".format(watts)
            per_j = (tele.get("energy") or {}).get("inferences_per_joule")
            if per_j is not None:
                line += ", {:.1f} inferences/J".format(per_j)
        return line

    def emit_event(self, event: Dict[str, Any]) -> None:
        event = dict(event)
        event.setdefault("ts", round(time.time(), 3))
        if self.link is not None:
            self.link.publish("events", event, kind="event", qos=1)

    # ---------------------------------------------------------------- model handling
    # Remembers the model.name of the last start. A dot name: model names cannot start with
    # '.', so no model's directory can collide with it (the old name could: LEGACY_MARKER).
    CONFIGURED_MARKER = ".configured-model"
    LEGACY_MARKER = "configured-model"

    def _last_configured(self) -> Optional[str]:
        """model.name at the last start; moves a marker of the old name out of the way of a
        model called `configured-model`."""
        from .store.layout import write_atomic
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
            from .store.layout import write_atomic
            write_atomic(os.path.join(self.store.root, self.CONFIGURED_MARKER),
                         name.encode("utf-8"))
            log.info("model store: %s is the configured model, now active", package.ref)
        except AgentError as exc:
            if active is not None:
                log.warning("model.name %r: %s; serving the store's active model %s@%s",
                            name, exc, active[0], active[1])
            errors.append(str(exc))

    def load_initial_model(self) -> Optional[ActiveModel]:
        """The store's active model (else its previous one) on the best backend; None
        (degraded) when nothing loads."""
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
                backend = self.prepare_backend(package, self._build_progress)
            except AgentError as exc:
                errors.append(str(exc))
                continue
            if which == "previous":
                reason = "; ".join(errors)
                log.error("the active model failed (%s); rolled back to %s", reason, package.ref)
                self.store.rollback()
                self.emit_event({"command": "model/rollback", "request_id": None,
                                 "state": "activated", "detail": "automatic at start: "
                                 "serving {}".format(package.ref), "error": reason})
            return ActiveModel(backend, self.config)
        if not errors:
            errors.append("no model is installed; set model.name to a bundled model or send "
                          "model/install")
        for error in errors:
            log.error("%s", error)
        self.problems["model"] = errors[-1]
        return None

    def prepare_backend(self, package: ModelPackage, progress: Any) -> Backend:
        """Load `package` on the best backend and check it on real-looking frames before it
        may serve (runs in the model manager's thread, or at start)."""
        package.verify()
        if self.model is not None:
            self.building = package.ref  # status: building, while the old model serves
            self.set_state()
        try:
            backend, reasons = open_backend(package, backend_options(self.config),
                                            progress=progress)
        finally:
            if self.building is not None:
                self.building = None
                self.set_state()
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
        import numpy as np
        frames = []
        if self.last_image is not None:
            frames.append(self.last_image)
        rng = np.random.RandomState(7)
        while len(frames) < count:
            frames.append(rng.randint(0, 256, size=(240, 320, 3), dtype=np.uint8))
        return frames[:count]

    def _validate_backend(self, backend: Backend) -> None:
        """Refuse a backend whose outputs are unusable: wrong size or NaN/Inf. (A TensorRT
        backend has already compared a fresh engine with ONNX Runtime when it built it.)"""
        # A sanity check (the TensorRT backend compares fresh engines with ONNX Runtime on
        # backend.validate.frames itself): a few frames, so a swap steals little CPU.
        count = self.sanity_frames()
        package = backend.package
        pre = None if backend.accepts_frames() else Preprocessor(package.input)
        classifier = Classifier(package.labels, package.output.activation, package.output.name)
        for image in self._validation_frames(count):
            outputs = backend.infer_frame(image) if pre is None else backend.infer(pre(image))
            scores = classifier.scores(outputs)  # raises on NaN/Inf or a missing output
            if package.labels and scores.shape[0] != len(package.labels):
                raise BackendError("model {}: gives {} scores but labels has {} classes; fix the "
                                   "labels file or the model".format(
                                       package.ref, scores.shape[0], len(package.labels)))

    def _build_progress(self, phase: str, fraction: Optional[float], detail: str) -> None:
        self.heartbeat += 1  # a build that reports progress is alive (systemd watchdog)
        log.info("engine %s%s %s", phase,
                 " {:.0%}".format(fraction) if fraction is not None else "", detail)
        self.emit_event({"command": "build", "state": "building", "detail": "{} {}".format(
            phase, detail).strip(), "progress": fraction})

    def swap_backend(self, backend: Backend, timeout: float = 30.0) -> None:
        """Hand a loaded backend to the inference thread and wait until it runs it.

        Raises AgentError if the inference thread did not take it in time; the caller then
        still owns `backend` and must close it.
        """
        active = ActiveModel(backend, self.config)
        done = threading.Event()
        result = []  # type: list
        with self._swap_lock:
            self._pending_swap = (active, done, result)
        if not done.wait(timeout) or not result:
            with self._swap_lock:
                if self._pending_swap is not None and self._pending_swap[0] is active:
                    self._pending_swap = None
                    raise AgentError("the inference thread did not take the new model within "
                                     "{:.0f} s".format(timeout))
            done.wait(timeout)
        old = result[0] if result else None
        log.info("now serving %s on %s (%s)", active.ref, backend.name, backend.precision)
        self.set_state()
        if old is not None:
            threading.Thread(target=old.backend.close, name="close-old-backend",
                             daemon=True).start()

    def _take_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending_swap = self._pending_swap, None
        if pending is None:
            return
        active, done, result = pending
        if self.model is not None:
            self.model.backend.release_thread()  # closed by another thread after the swap
        result.append(self.model)
        self.model = active
        self.problem("model", None)
        done.set()

    # ---------------------------------------------------------------- threads
    def _capture_loop(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                source = source_from_config(self.config.source, self.config.base_dir)
                source.open()
            except SourceError as exc:
                self.problem("source", str(exc))
                log.error("%s (retrying in %.0f s)", exc, backoff)
                if self.stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 30.0)
                continue
            self.source = source
            self.problem("source", None)
            first = self.capture_seq
            try:
                ended = self._capture_frames(source)
            except SourceError as exc:
                self.problem("source", str(exc))
                ended = False
                # A source that opens but fails at once must not be reopened in a tight loop.
                backoff = 1.0 if self.capture_seq - first >= 30 else min(backoff * 2, 30.0)
                log.error("%s (reconnecting in %.0f s)", exc, backoff)
                if self.stop.wait(backoff):
                    break  # `finally` closes the source
            finally:
                source.close()
            if ended:
                self.slot.end()
                return
        self.slot.end()

    def _capture_frames(self, source: Source) -> bool:
        """Read frames until stopped (False) or the stream ends (True)."""
        pacer = Pacer(source.fps if source.paced else 0.0, self.stop)
        while not self.stop.is_set():
            if not pacer.wait():
                return False
            t0 = time.monotonic()
            image = source.read()
            t1 = time.monotonic()
            if image is None:
                log.info("source %s: end of stream", source.describe())
                return True
            self.capture_seq += 1  # across reconnects: gaps in frame_seq are lost frames
            frame = Frame(image, self.capture_seq, time.time(), t1, source.last_name)
            self.last_image = image
            frame.capture_ms = (t1 - t0) * 1000.0
            model = self.model
            if model is not None and model.preprocessor is not None:
                try:
                    frame.tensor = model.preprocessor(image)
                except ValueError as exc:
                    self.stats.record_error()
                    log.warning("source %s: dropping a bad frame: %s", source.describe(), exc)
                    continue
                frame.prep = model.preprocessor
                frame.preprocess_ms = (time.monotonic() - t1) * 1000.0
            self.slot.put(frame, self.stop)
        return False

    def _inference_loop(self) -> None:
        """Feeds the backend and nothing else: postprocessing and publishing happen in the
        publish thread, so the accelerator (or the CPU cores ONNX Runtime uses) waits for
        Python as little as possible."""
        errors_logged = 0
        while not self.stop.is_set():
            self._take_swap()
            self.heartbeat += 1
            frame = self.slot.get(0.2)
            if frame is None:
                if self.slot.ended:
                    if not self.stop.is_set():
                        log.info("all frames processed")
                        self.stop.set()
                    break
                continue
            model = self.model
            if model is None:
                continue
            t0 = time.monotonic()
            try:
                if model.preprocessor is None:
                    outputs = model.backend.infer_frame(frame.image)
                else:
                    tensor = frame.tensor
                    if tensor is None or frame.prep is not model.preprocessor:
                        tensor = model.preprocessor(frame.image)
                        frame.preprocess_ms += (time.monotonic() - t0) * 1000.0
                        t0 = time.monotonic()
                    outputs = model.backend.infer(tensor)
            except Exception as exc:  # a failing model must not stop the loop
                self.stats.record_error()
                if errors_logged < 5:
                    log.error("inference failed on frame %s with %s: %s", frame.seq, model.ref,
                              exc)
                    errors_logged += 1
                self._probation_result(model, False, None, str(exc))
                continue
            infer_ms = (time.monotonic() - t0) * 1000.0
            frame.tensor = None  # free it early; listeners get the image
            self._pub_queue.put((frame, outputs, model, infer_ms))
            self.frames_done += 1
            if self.max_frames is not None and self.frames_done >= self.max_frames:
                log.info("processed %d frames (--max-frames)", self.frames_done)
                self.stop.set()

    def _publish_loop(self) -> None:
        """Postprocess (top-k), feed the probation of a new model, serialize and spool."""
        errors_logged = 0
        while True:
            try:
                item = self._pub_queue.get(timeout=0.5)
            except queue.Empty:
                if self.stop.is_set() and self._inference_done.is_set():
                    return
                continue
            if item is None:
                return
            frame, outputs, model, infer_ms = item
            t1 = time.monotonic()
            try:
                top = model.classifier(outputs)
            except Exception as exc:  # NaN/Inf outputs, a missing output
                self.stats.record_error()
                if errors_logged < 5:
                    log.error("frame %s with %s: %s", frame.seq, model.ref, exc)
                    errors_logged += 1
                self._probation_result(model, False, None, str(exc))
                continue
            self._probation_result(model, True, infer_ms)
            self.seq += 1
            now = time.monotonic()
            latency = (now - frame.t_capture) * 1000.0
            self.stats.record({"capture": frame.capture_ms, "preprocess": frame.preprocess_ms,
                               "infer": infer_ms, "postprocess": (now - t1) * 1000.0,
                               "end_to_end": latency})
            payload = {"ts": round(time.time(), 3), "seq": self.seq,
                       "frame_seq": frame.seq, "frame_ts": round(frame.ts, 3),
                       "model": model.ref, "top": top, "latency_ms": round(latency, 2)}
            if frame.name:
                payload["frame"] = frame.name
            rate = self.config.predictions.max_rate_hz
            if not rate or now - self._last_prediction_pub >= 1.0 / rate:
                self._last_prediction_pub = now
                self.link.publish("predictions", payload, kind="prediction")
            for listener in self.listeners:
                try:
                    listener(frame, payload)
                except Exception:
                    log.exception("prediction listener failed")

    def start_power(self) -> None:
        """Find the power source once, start the sampler, measure the idle baseline."""
        from .power import GpuLoadReader, NvmlPowerReader, PowerSampler, ThermalReader
        from .power import discover_power
        cfg = self.config.telemetry
        try:
            # NVML's energy counter costs ~3 ms a read; the trapezoid over its instant power
            # field agreed within 0.1 % on an H100 (tools/gpu), so the daemon does not read it.
            reader = discover_power(cfg.power, root=self.sysfs_root, energy_counter=False)
        except AgentError as exc:
            log.error("%s; telemetry goes on without power", exc)
            self.problem("power", str(exc))
            from .power import NonePowerReader
            reader = NonePowerReader()
        self.power_reader = reader
        self.thermal = ThermalReader(self.sysfs_root)
        self.gpu_load = GpuLoadReader(self.sysfs_root, nvml=reader if isinstance(reader, NvmlPowerReader)
                                      else None)
        if reader.source == "none":
            log.info("power: no readable sensor; energy per inference is not reported")
            return
        self.sampler = PowerSampler(reader, self.stop, sample_hz=cfg.sample_hz)
        self.sampler.start()
        self.idle_w = self.sampler.measure_idle(1.0, self.stop)
        log.info("power: %s, idle baseline %s W", reader.source,
                 "{:.2f}".format(self.idle_w) if self.idle_w is not None else "unknown")

    def _power_fields(self, start: Any, frames: int) -> Tuple[Dict[str, Any], Any]:
        """The telemetry `power`, `energy`, `temperature_c` and `gpu_load` fields, and the
        energy totals that start the next window."""
        fields = {"temperature_c": self.thermal.read() or None,
                  "gpu_load": self.gpu_load.read()}  # type: Dict[str, Any]
        if self.sampler is None:
            fields["power"] = {"source": "none"}
            fields["energy"] = None
            return fields, None
        now = self.sampler.totals()
        last = now.last
        fields["power"] = {"source": self.power_reader.source,
                           "total_w": _round(last.total_w if last else None, 3),
                           "rails": {k: _round(v, 3) for k, v in (last.rails or {}).items()}
                           if last else {}}
        window = now.since(start) if start is not None else None
        if window is not None:
            energy = window.per_inference(frames, idle_w=self.idle_w)
            energy = {k: _round(v, 4) for k, v in energy.items()}
            energy["mean_w"] = _round(window.mean_w, 3)
            energy["rails_j"] = {k: _round(v, 4) for k, v in (window.rails_j or {}).items()}
            fields["energy"] = energy
        return fields, now

    def _telemetry_loop(self) -> None:
        """One message every interval; a last, partial one (`final`) when the agent stops."""
        interval = self.config.telemetry.interval_s
        self._energy_start = self.sampler.totals() if self.sampler is not None else None
        self._tele_last = time.monotonic()
        self._cpu_last = _cpu_seconds()
        self._dropped_last = 0
        while not self.stop.wait(interval):
            self.publish_telemetry()
        self._publish_done.wait(10.0)  # so the last frames land in the final window
        self.publish_telemetry(final=True)

    def publish_telemetry(self, final: bool = False) -> Dict[str, Any]:
        now = time.monotonic()
        window = now - self._tele_last
        self._tele_last = now
        cpu_now = _cpu_seconds()
        snap = self.stats.take()
        frames = snap["frames"]
        dropped = self.slot.dropped if self.slot else 0
        self.telemetry_seq += 1
        message = {
            "ts": round(time.time(), 3),
            "seq": self.telemetry_seq,
            "boot": self.boot,
            "window_s": round(window, 3),
            "frames": frames,
            "fps": round(frames / window, 2) if window > 0 else None,
            "dropped": dropped - self._dropped_last,
            "errors": snap["errors"],
            "latency_ms": StageStats.summarize(snap["samples"]),
            "cpu_percent": round(100.0 * (cpu_now - self._cpu_last) / window, 1)
            if window > 0 else None,
            "mem_mb": _rss_mb(),
            "model": self.model.ref if self.model else None,
        }  # type: Dict[str, Any]
        if final:
            message["final"] = True
        power, self._energy_start = self._power_fields(self._energy_start, frames)
        message.update(power)
        self.last_telemetry = message
        if self.notifier is not None:
            self.notifier.status(self.status_line())
        self._dropped_last = dropped
        self._cpu_last = cpu_now
        self.link.publish("telemetry", message, kind="telemetry")
        for listener in self.telemetry_listeners:
            try:
                listener(message)
            except Exception:
                log.exception("telemetry listener failed")
        return message

    # ---------------------------------------------------------------- commands
    def handle_command(self, command: str, payload: bytes, topic: str,
                       retained: bool = False) -> None:
        """Routes a command from MQTT (paho's thread) to the model manager, which answers
        every command, malformed ones included, with at least one event (a retained one is
        answered `rejected` and never run)."""
        if self.manager is None:
            from .updates.commands import RETAINED_ERROR, request_id_of
            self.emit_event({"command": command, "request_id": request_id_of(payload),
                             "state": "rejected",
                             "error": RETAINED_ERROR if retained else
                             "the agent is still starting; send it again"})
            return
        self.manager.submit_raw(command, payload, retained=retained)

    def activate_backend(self, backend: Backend, package: ModelPackage) -> None:
        """The model manager's hand-over: swap between frames, then watch it on probation."""
        previous = self.model.ref if self.model is not None else None
        frames = self.config.updates.probation_frames
        if previous is not None and frames > 0:
            # Armed before the swap so the new model's very first frames count.
            with self._probation_lock:
                self._probation = Probation(package.ref, previous, frames,
                                            self._infer_median(),
                                            self.config.updates.max_latency_factor)
        try:
            self.swap_backend(backend)
        except Exception:
            with self._probation_lock:
                self._probation = None
            raise

    def _infer_median(self) -> Optional[float]:
        values = sorted(self._recent_infer)
        return values[len(values) // 2] if values else None

    def _probation_result(self, model: ActiveModel, ok: bool, infer_ms: Optional[float],
                          error: str = "") -> None:
        """Publish thread (or inference thread on an error): feed the probation of a
        just-activated model, or the latency baseline of a trusted one; roll back on failure."""
        with self._probation_lock:
            probation = self._probation
            if probation is None or model.ref != probation.ref:
                if ok and infer_ms is not None:
                    self._recent_infer.append(infer_ms)
                return
            verdict = probation.add(ok, infer_ms, error)
            if verdict is None:
                return
            self._probation = None
        if verdict == "passed":
            log.info("model %s passed probation (%d frames)", probation.ref, probation.frames)
            return
        log.error("model %s failed probation: %s; rolling back to %s", probation.ref, verdict,
                  probation.previous)
        from .updates.commands import Command
        rid = "auto-rollback-" + uuid.uuid4().hex[:8]
        self.emit_event({"command": "model/rollback", "request_id": rid, "state": "accepted",
                         "detail": "automatic: {} failed probation; returning to {}".format(
                             probation.ref, probation.previous), "error": verdict})
        if self.manager is not None:
            # urgent: ahead of the queue and never refused as busy
            self.manager.submit(Command("model/rollback", {}, rid), urgent=True)

    # ---------------------------------------------------------------- lifecycle
    def _start_link(self) -> None:
        from .mqtt import MqttLink
        from .spool_fallback import FallbackSpool
        # A spool that cannot be opened (disk full, spool.db unusable) is no reason to stop:
        # messages wait in memory meanwhile, the status says so, and _check_spool moves them
        # to the file when it opens again.
        self.spool = FallbackSpool(os.path.join(self.state_dir, "spool.db"),
                                   max_messages=self.config.mqtt.spool_max_messages)
        self.link = MqttLink(self.config.mqtt, self.device_id, self.config.device.group,
                             self.spool, on_command=self.handle_command,
                             will_payload={"state": "offline", "device": self.device_id,
                                           "agent": __version__, "reason": "connection lost"})
        self.link.start()
        self._spool_retry_at = time.monotonic() + self.SPOOL_RETRY_S
        self._note_spool_fault()

    # Seconds between attempts to reopen a spool file that could not be opened.
    SPOOL_RETRY_S = 2.0

    def _note_spool_fault(self) -> None:
        fault = getattr(self.spool, "fault", None)
        self.problem("spool", None if fault is None else
                     "{}; messages wait in memory (lost if the agent stops) until it can be "
                     "opened: free disk space or fix device.state_dir".format(fault))

    def _check_spool(self) -> None:
        """Main thread: while the spool is in memory, try the file again now and then."""
        if getattr(self.spool, "fault", None) is None or time.monotonic() < self._spool_retry_at:
            return
        self._spool_retry_at = time.monotonic() + self.SPOOL_RETRY_S
        self.spool.recover()
        self._note_spool_fault()

    def _start_models(self) -> None:
        from .updates.worker import ModelManager
        from .store.store import ModelStore
        self.store = ModelStore.from_updates(self.state_dir, self.config.updates)
        self.manager = ModelManager(self.store, self.emit_event, self.prepare_backend,
                                    self.activate_backend, self.stop,
                                    updates_config=self.config.updates).start()

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=self._guard(target, name), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _guard(self, target: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("thread %s crashed; stopping the agent", name)
                self.exit_code = 1
                self.stop.set()
        return run

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.stop.set()
        def on_hangup(signum: int, _frame: Any) -> None:
            self._reload_requested.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)

    def run(self) -> int:
        from .environment import fingerprint
        if self.link is None:
            self._start_link()
        if self.config.view.enabled:
            from .view import attach_view
            attach_view(self)
        try:
            import cv2
            cv2.setNumThreads(1)  # the backend owns the cores; OpenCV threads only compete
        except Exception:  # no OpenCV or a broken one: the source reports it when it opens
            pass
        starting = None
        if self.notifier is not None:
            from .systemd import StartTimeoutExtender
            # Until READY=1 systemd's TimeoutStartSec= runs, and a first TensorRT build on a
            # Nano outlasts it: keep extending it until the first model serves.
            starting = StartTimeoutExtender(self.notifier, stop=self.stop)
            starting.start()
        self.set_state("starting")
        self.link.publish("info", fingerprint(), kind="status", retain=True, qos=1)
        if self.telemetry_enabled:
            self.start_power()  # before the model loads: the idle baseline needs an idle board
        self.set_state("building")
        if self._preloaded is not None:
            self.model = ActiveModel(self._preloaded, self.config)
        else:
            self._start_models()
            self.model = self.load_initial_model()
        if self.model is not None:
            log.info("serving %s on %s (%s)", self.model.ref, self.model.backend.name,
                     self.model.backend.precision)
        live = self._probe_live()
        self.slot = FrameSlot(live=live)
        self._inference_done = threading.Event()
        self._publish_done = threading.Event()
        self.set_state("serving")
        if starting is not None:
            starting.finish()
        if self.notifier is not None:
            self.notifier.ready(self.status_line())
            # The watchdog from READY=1 on, not before: a WATCHDOG=1 during start-up arms
            # systemd's watchdog, and nothing beats during a TensorRT build, so the pings
            # would stop and systemd would kill the build (the start timeout guards start-up).
            from .systemd import WatchdogPinger
            self.pinger = WatchdogPinger(self.notifier, progress=lambda: self.heartbeat,
                                         stop=self.stop)
            self.pinger.start()
        self._spawn(self._capture_loop, "capture")
        inference = self._spawn(self._run_inference, "inference")
        publisher = self._spawn(self._run_publisher, "publish")
        if self.telemetry_enabled:
            self._spawn(self._telemetry_loop, "telemetry")
        deadline = time.monotonic() + self.duration if self.duration else None
        while not self.stop.is_set():
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self.stop.wait(timeout):
                break
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload_config()
            self._check_spool()
            if deadline is not None and time.monotonic() >= deadline:
                log.info("ran for %.1f s (--duration)", self.duration)
                self.stop.set()
        return self.shutdown(inference, publisher)

    # Keys a running agent applies on SIGHUP; any other change needs a restart.
    LIVE_KEYS = ("logging.level", "predictions.top_k", "predictions.min_score",
                 "predictions.max_rate_hz")

    def reload_config(self) -> List[str]:
        """SIGHUP: re-read the config file, apply what can change live, name the rest."""
        from .config import load_config
        if self.notifier is not None:
            self.notifier.reloading()
        path = self.config.source_path
        try:
            new = load_config(path, self._overrides)
        except Exception as exc:  # whatever is wrong with the file, the agent keeps serving
            error = str(exc) if isinstance(exc, AgentError) else \
                "config file {}: cannot be loaded: {}: {}".format(path, type(exc).__name__, exc)
            error = redact_text(error)
            log.error("reload: keeping the running config: %s", error)
            self.emit_event({"command": "reload", "state": "failed", "error": error})
            if self.notifier is not None:
                self.notifier.ready(self.status_line())
            return []
        old_flat, new_flat = _flatten(self.config.to_dict()), _flatten(new.to_dict())
        changed = sorted(k for k in set(old_flat) | set(new_flat)
                         if old_flat.get(k) != new_flat.get(k))
        live = [k for k in changed if k in self.LIVE_KEYS]
        restart = [k for k in changed if k not in self.LIVE_KEYS]
        if "logging.level" in live:
            logging.getLogger().setLevel(new.logging.level)
        self.config.predictions = new.predictions
        self.config.logging = new.logging
        model = self.model
        if model is not None:
            model.classifier.top_k = new.predictions.top_k
            model.classifier.min_score = new.predictions.min_score
        detail = "applied: {}".format(", ".join(live) or "nothing changed")
        if restart:
            detail += "; need a restart: {}".format(", ".join(restart))
            log.warning("reload: these changed keys take effect only after a restart: %s",
                        ", ".join(restart))
        log.info("reload: %s", detail)
        self.emit_event({"command": "reload", "state": "done", "detail": detail})
        if self.notifier is not None:
            self.notifier.ready(self.status_line())
        return changed

    def _run_publisher(self) -> None:
        try:
            self._publish_loop()
        finally:
            self._publish_done.set()

    def _run_inference(self) -> None:
        try:
            self._inference_loop()
        finally:
            if self.model is not None:
                self.model.backend.release_thread()  # closed by the main thread at shutdown
            self._inference_done.set()

    def _probe_live(self) -> bool:
        try:
            return source_from_config(self.config.source, self.config.base_dir).live
        except SourceError:
            return True

    def shutdown(self, inference: threading.Thread, publisher: threading.Thread) -> int:
        self.stop.set()
        if self.notifier is not None:
            self.notifier.stopping("draining")
        inference.join(10.0)
        if self.manager is not None:
            self.manager.join(5.0)
        self._pub_queue.put(None)
        publisher.join(5.0)
        for thread in self._threads:
            thread.join(2.0)
        if self.model is not None and self._preloaded is None:
            self.model.backend.close()
        self.state = "offline"
        self._base_state = "offline"
        payload = self.status_payload()
        payload["reason"] = "shutdown"
        self.link.publish("status", payload, kind="status", retain=True, qos=1)
        drained = self.link.flush(3.0)
        if not drained and getattr(self.spool, "fault", None) is not None:
            log.error("broker unreachable at shutdown and the spool file unusable: %d messages "
                      "held in memory are lost", len(self.spool))
        elif not drained:
            log.warning("broker unreachable at shutdown: %d messages stay spooled in %s and "
                        "are sent at the next start", len(self.spool), self.spool.path)
        self.link.stop(timeout=0.5)
        self.spool.close()
        if self.pinger is not None:
            self.pinger.join(2.0)
        log.info("stopped after %d frames", self.frames_done)
        if self.model is None and self.exit_code == 0:
            return 1
        return self.exit_code


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


def _flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}  # type: Dict[str, Any]
    for key, value in data.items():
        path = "{}.{}".format(prefix, key) if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def _cpu_seconds() -> float:
    t = os.times()
    return t[0] + t[1]


def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm", "r", encoding="utf-8") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0), 1)
    except (OSError, ValueError, IndexError):
        return None
