"""The daemon: wires the parts together, runs their threads, reloads on SIGHUP, shuts down.

capture thread -> FrameSlot -> inference thread -> publish queue -> MQTT link (spooled);
a telemetry thread publishes every interval; the model manager's thread prepares new models
(agent/updates) and hands them to the inference thread's BackendSlot. Health owns the status.
One stop Event ends everything: SIGTERM/SIGINT set it, in-flight frames drain, the retained
status goes `offline`.
"""

import logging
import queue
import signal
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from .backends.base import Backend
from .config import Config
from .environment import board_model, fingerprint
from .health import Health
from .homeassistant import announce as announce_discovery
from .pipeline.capture import CaptureStage, probe_live
from .pipeline.frames import FrameSlot
from .pipeline.inference import BackendSlot, InferenceStage
from .pipeline.publish import PublishStage
from .priority import HelperPriority
from .redact import redact_text
from .reload import reload_config
from .store.package import ModelPackage
from .store.store import ModelStore
from .systemd import StartTimeoutExtender, WatchdogPinger
from .telemetry import StageStats
from .telemetry.reporter import TelemetryReporter
from .updates.commands import RETAINED_ERROR, request_id_of
from .updates.loader import ModelLoader
from .updates.probation import ProbationWatch
from .updates.worker import ModelManager
from .uplink import SpoolWatch, close_link, open_link
from .view import LiveView, ViewServer, start_view_server

log = logging.getLogger("edge-agent")


def default_device_id() -> str:
    name = socket.gethostname().split(".")[0] or "device"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


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
        self.boot = uuid.uuid4().hex[:12]  # with `seq`, a subscriber can tell what is missing
        self.state_dir = config.resolve(config.device.state_dir)
        self.stop = threading.Event()
        self.notifier = notifier
        self.link = link  # preset by `bench` (a local sink); else made in run()
        self.spool = getattr(link, "spool", None)
        self.telemetry_enabled = telemetry
        self._preloaded = backend  # bench hands in the backend it already measured
        self._overrides = list(overrides or [])  # --set values, re-applied on reload
        self.stats = StageStats()
        # Capture, publish, telemetry and the MQTT threads yield the CPU to inference
        # (agent/priority.py); the main loop checks that none of them starves.
        self.priority = HelperPriority(config.backend.helper_priority)
        # Called with every (frame, prediction payload) / every telemetry message.
        self.listeners = []  # type: List[Callable[[Any, Dict[str, Any]], None]]
        self.telemetry_listeners = []  # type: List[Callable[[Dict[str, Any]], None]]
        self.backends = BackendSlot(config, on_taken=lambda: self.health.problem("model", None))
        self.reporter = TelemetryReporter(
            config, self.stats, lambda *a, **kw: self.link.publish(*a, **kw), self.boot,
            self.stop, sysfs_root, dropped=lambda: self.slot.dropped if self.slot else 0,
            model_ref=lambda: self.backends.model.ref if self.backends.model else None,
            problem=lambda key, reason: self.health.problem(key, reason),
            listeners=self.telemetry_listeners)
        self.health = Health(self.device_id, self.boot, redact_text(config.source.uri),
                             model=lambda: self.backends.model,
                             telemetry=lambda: self.reporter.last, notifier=notifier,
                             group=config.device.group)
        self.probation = ProbationWatch(config.updates, self._rollback)
        self.slot = None  # type: Optional[FrameSlot]
        self.results = queue.Queue(maxsize=1024)  # type: queue.Queue  # inference -> publish
        self.inference = None  # type: Optional[InferenceStage]
        self.loader = None  # type: Optional[ModelLoader]
        self.manager = None  # type: Optional[ModelManager]
        self.pinger = None  # type: Optional[WatchdogPinger]
        self.exit_code = 0
        self._threads = {}  # type: Dict[str, threading.Thread]
        self._live_view = None  # type: Optional[LiveView]
        self._view_server = None  # type: Optional[ViewServer]
        self._reload_requested = threading.Event()
        self._started = time.monotonic()

    # ---------------------------------------------------------------- start and run
    def run(self) -> int:
        if self.link is None:
            self.link = open_link(self.config, self.device_id, self.state_dir,
                                  self.handle_command)
            self.spool = self.link.spool
            self.link.enrol_helper = self.priority.enrol
            self.link.start()
            announce_discovery(self.config, self.link, self.state_dir, self.device_id,
                               board_model())
        self.health.attach(self.link)
        # The Last Will (a lost connection, a broker restart) may have replaced the retained
        # status: say again what the device does, at every reconnect.
        self.link.on_reconnect = self.health.set_state
        spool_watch = SpoolWatch(self.spool, self.health.problem)
        if self.config.view.enabled:
            self.serve_view()
        _single_threaded_opencv()
        starting = None
        if self.notifier is not None:
            # Until READY=1 systemd's TimeoutStartSec= runs, and a first TensorRT build on a
            # Nano outlasts it: keep extending it until the first model serves.
            starting = StartTimeoutExtender(self.notifier, stop=self.stop)
            starting.start()
        self.health.set_state("starting")
        self.link.publish("info", fingerprint(), kind="status", retain=True, qos=1)
        if self.telemetry_enabled:
            self.reporter.start_power()  # before the model loads: the idle baseline
        self.health.set_state("building")
        capture, stages = self._build_pipeline()
        self._load_first_model(capture)
        self.health.set_state("serving")
        if starting is not None:
            starting.finish()
        if self.notifier is not None:
            self.notifier.ready(self.health.status_line())
            # The watchdog from READY=1 on, not before: a WATCHDOG=1 during start-up arms
            # systemd's watchdog, and nothing beats during a TensorRT build, so the pings
            # would stop and systemd would kill the build (the start timeout guards start-up).
            inference = self.inference
            self.pinger = WatchdogPinger(self.notifier, progress=lambda: inference.beats,
                                         stop=self.stop)
            self.pinger.start()
        for name, target in stages:
            self._spawn(target, name)
        self._serve_until_stopped(spool_watch)
        return self.shutdown()

    def _build_pipeline(self) -> Tuple[CaptureStage, List[Tuple[str, Callable[[], None]]]]:
        """The capture, inference, publish and telemetry stages: the capture stage, and the
        threads to start as (name, run)."""
        self.slot = FrameSlot(live=probe_live(self.config))
        capture = CaptureStage(self.config, self.slot, self.backends.preprocessor,
                               self.stats, self.stop, self.health.problem,
                               frame_pool=self.backends.frame_pool)
        self.inference = InferenceStage(self.slot, self.backends, self.results, self.stats,
                                        self.stop, self.probation.result, self.max_frames)
        publisher = PublishStage(self.config, self.results, self.link.publish, self.stats,
                                 self.stop, self.inference.done, self.probation.result,
                                 self.listeners)
        stages = [("capture", self._helper(capture.run)), ("inference", self.inference.run),
                  ("publish", self._helper(publisher.run))]
        if self.telemetry_enabled:
            stages.append(("telemetry",
                            self._helper(lambda: self.reporter.run(publisher.done))))
        return capture, stages

    def _helper(self, run: Callable[[], None]) -> Callable[[], None]:
        """`run` in a helper thread: at idle priority (backend.helper_priority). Never the
        inference thread, nor one that loads models: ONNX Runtime's workers would inherit it."""
        def helper() -> None:
            self.priority.enrol()
            run()
        return helper

    def _load_first_model(self, capture: CaptureStage) -> None:
        if self._preloaded is not None:
            model = self.backends.start_with(self._preloaded)
        else:
            store = ModelStore.from_updates(self.state_dir, self.config.updates)
            self.loader = ModelLoader(self.config, store, self.health.emit_event,
                                      latest_image=lambda: capture.last_image,
                                      on_building=self._building, stop=self.stop)
            self.manager = ModelManager(store, self.health.emit_event,
                                        self.loader.prepare, self.activate_backend, self.stop,
                                        updates_config=self.config.updates).start()
            backend, errors = self.loader.initial()
            if backend is None:
                self.health.problem("model", errors[-1], announce=False)
                return
            model = self.backends.start_with(backend)
        model.log_serving("serving")

    def _serve_until_stopped(self, spool_watch: SpoolWatch) -> None:
        """Main thread: SIGHUP reloads, the spool is retried, --duration ends the run."""
        deadline = time.monotonic() + self.duration if self.duration else None
        while not self.stop.is_set():
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self.stop.wait(timeout):
                break
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload_config()
            spool_watch.check()
            self.priority.check()
            if deadline is not None and time.monotonic() >= deadline:
                log.info("ran for %.1f s (--duration)", self.duration)
                self.stop.set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                log.exception("thread %s crashed; stopping the agent", name)
                self.exit_code = 1
                self.stop.set()
        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads[name] = thread

    # ---------------------------------------------------------------- models and commands
    def handle_command(self, command: str, payload: bytes, topic: str,
                       retained: bool = False) -> None:
        """MQTT (paho's thread) -> the model manager, which answers every command with at least
        one event (malformed ones too; a retained one is `rejected` and never run)."""
        if self.manager is None:
            self.health.emit_event({"command": command, "request_id": request_id_of(payload),
                                    "state": "rejected",
                                    "error": RETAINED_ERROR if retained else
                                    "the agent is still starting; send it again"})
            return
        self.manager.submit_raw(command, payload, retained=retained)

    def activate_backend(self, backend: Backend, package: ModelPackage) -> None:
        """The model manager's hand-over: swap between frames, then watch it on probation."""
        current = self.backends.model
        self.probation.arm(package.ref, current.ref if current is not None else None)
        try:
            self.backends.swap(backend)
        except Exception:
            self.probation.disarm()
            raise
        self.health.set_state()

    def _building(self, ref: Optional[str]) -> None:
        """A build in the background shows in the status while the old model serves."""
        if ref is None or self.backends.model is not None:
            self.health.set_building(ref)

    def _rollback(self, reason: str, detail: str) -> None:
        """Probation failed: urgent, ahead of the queue and never refused as busy."""
        if self.manager is not None:
            self.manager.rollback(reason, detail)

    # ---------------------------------------------------------------- live view
    def live_view(self) -> LiveView:
        """The live view fed by this agent's predictions and telemetry (made once)."""
        if self._live_view is None:
            self._live_view = LiveView(model_info=self.backends.describe,
                                       status=self._view_status)
            self.listeners.append(self._live_view.on_prediction)
            self.telemetry_listeners.append(self._live_view.on_telemetry)
            self.health.event_listeners.append(self._live_view.on_event)
        return self._live_view

    def _view_status(self) -> Dict[str, Any]:
        """The status snapshot the view shows: the retained status plus uptime, frames
        dropped since start and messages waiting in the spool."""
        status = self.health.status_payload()
        status["uptime_s"] = round(time.monotonic() - self._started, 1)
        status["dropped_frames"] = self.slot.dropped if self.slot is not None else 0
        spool = self.spool
        status["spool_pending"] = len(spool) if spool is not None else None
        return status

    def serve_view(self, required: bool = False) -> Optional[ViewServer]:
        """The web view on view.host:view.port until the stop Event (started once)."""
        if self._view_server is None:
            self._view_server = start_view_server(
                self.live_view(), self.config.view.host, self.config.view.port, self.stop,
                self.health.problem, required=required)
        return self._view_server

    # ---------------------------------------------------------------- signals and shutdown
    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, lambda signum, _frame: self._reload_requested.set())

    def reload_config(self) -> List[str]:
        """SIGHUP: re-read the config file, apply what can change live, name the rest."""
        if self.notifier is not None:
            self.notifier.reloading()
        changed = reload_config(self.config, self._overrides, self.backends.model,
                                self.health.emit_event)
        if self.notifier is not None:
            self.notifier.ready(self.health.status_line())
        return changed

    def shutdown(self) -> int:
        self.stop.set()
        if self.notifier is not None:
            self.notifier.stopping("draining")
        self._join("inference", 10.0)
        if self.manager is not None:
            self.manager.join(5.0)
        self.results.put(None)  # the publish thread ends after what came before
        self._join("publish", 5.0)
        for name in list(self._threads):
            self._join(name, 2.0)
        if self.slot is not None:
            self.slot.clear()  # frames nobody will infer (maybe in pinned pool buffers)
        if self._preloaded is None:
            self.backends.close()
        self.link.publish("status", self.health.offline_payload(), kind="status", retain=True,
                          qos=1)
        close_link(self.link, self.spool)
        if self.pinger is not None:
            self.pinger.join(2.0)
        log.info("stopped after %d frames", self.inference.frames_done if self.inference else 0)
        if self.backends.model is None and self.exit_code == 0:
            return 1
        return self.exit_code

    def _join(self, name: str, timeout: float) -> None:
        if name in self._threads:
            self._threads[name].join(timeout)


def _single_threaded_opencv() -> None:
    try:
        import cv2
        cv2.setNumThreads(1)  # the backend owns the cores; OpenCV threads only compete
    except Exception:  # no OpenCV or a broken one: the source reports it when it opens
        pass
