"""The real agent under a notify socket the test owns: READY, STATUS, WATCHDOG, RELOADING on
SIGHUP, STOPPING on SIGTERM, the retained status and the exit code."""

import os
import shutil
import signal
import socket
import tempfile
import time

from support.paths import ROOT


class NotifySocket(object):
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if predicate(msg):
                return msg
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no notify message for {} within {} s; got {}".format(
                    what, timeout, self.messages[-8:]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append(data)
            if predicate(data):
                return data


def test_notify_watchdog_reload_and_stop(broker, recorder, run_agent, tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    config = tmp_path / "config.yaml"
    config.write_text(open(os.path.join(ROOT, "config.yaml")).read())
    agent = run_agent("svc", "--set", "source.uri=synthetic://?fps=20", "-c", str(config),
                      env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                           "WATCHDOG_USEC": "1000000"})
    ready = notify.wait_for(lambda m: "READY=1" in m, 60, "READY=1")
    assert "STATUS=" in ready and "efficientnet_lite0@1" in ready
    notify.wait_for(lambda m: m == "WATCHDOG=1", 5, "a watchdog ping")
    recorder.wait_topic("svc/status", lambda p: p.get("state") == "serving", 30, "serving")

    # SIGHUP: a live key and a restart-only key changed.
    text = config.read_text().replace("top_k: 5", "top_k: 2").replace("keepalive_s: 30",
                                                                         "keepalive_s: 40")
    config.write_text(text)
    agent.signal(signal.SIGHUP)
    notify.wait_for(lambda m: "RELOADING=1" in m, 10, "RELOADING=1")
    event = recorder.wait_topic("svc/events", lambda p: p.get("command") == "reload", 10,
                                "reload event")
    assert "predictions.top_k" in event["detail"]
    assert "need a restart: mqtt.keepalive_s" in event["detail"]
    recorder.wait_topic("svc/predictions", lambda p: len(p["top"]) == 2, 10,
                        "predictions with the new top_k")

    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.err
    notify.wait_for(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")
    recorder.wait_topic("svc/status", lambda p: p.get("state") == "offline", 10, "offline")
    assert "Traceback" not in agent.err


def test_journald_style_logging_under_systemd(broker, run_agent, tmp_path):
    """Under journald (JOURNAL_STREAM names stderr) lines carry <N> priorities, no timestamps."""
    import subprocess
    import sys
    log_path = tmp_path / "stderr.log"
    with open(str(log_path), "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM="{}:{}".format(st.st_dev, st.st_ino),
                   PYTHONPATH=ROOT)
        code = subprocess.call([sys.executable, "-m", "agent", "run", "-c",
                                os.path.join(ROOT, "config.yaml"),
                                "--set", "mqtt.port={}".format(broker.port),
                                "--set", "device.state_dir={}".format(tmp_path / "s"),
                                "--max-frames", "2"], stderr=err, cwd=ROOT, env=env)
    assert code == 0
    lines = [l for l in log_path.read_text().splitlines() if l.strip()]
    assert lines and all(l.startswith("<") for l in lines), lines[:5]
    assert any(l.startswith("<6>") and "serving" in l for l in lines)
    assert not any(l[3:7].isdigit() and l[7] == "-" for l in lines)  # no "2026-..." stamps


class StartJob(object):
    """systemd's side of a Type=notify start, as sd_notify(3) and systemd.service(5) describe
    it: the start fails when READY=1 has not come by TimeoutStartSec=; each EXTEND_TIMEOUT_USEC
    moves that deadline to (arrival + the value) when that is later. A thread reads the socket
    and stamps each message as it reads it, which is never earlier than it arrived: the check
    can only be stricter than systemd."""

    def __init__(self, path, timeout_start_s):
        import threading
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.timeout_start_s = timeout_start_s
        self.received = []  # (monotonic time read, message)
        self.cond = threading.Condition()
        self.t0 = None
        self._closing = False
        self._reader = threading.Thread(target=self._read, daemon=True)

    def begin(self):
        self.t0 = time.monotonic()
        self._reader.start()

    def _read(self):
        while not self._closing:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.received.append((time.monotonic(), data))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(list(self.received)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("{} within {} s; got {}".format(
                        what, timeout, [m for _, m in self.received[-6:]]))
                self.cond.wait(left)

    def close(self):
        self._closing = True
        self._reader.join(5)
        self.sock.close()

    def verdict(self, watchdog_s):
        """None when READY=1 came in time, else why systemd would have failed the start.

        The watchdog: systemd stops it on entering the start state and arms it at READY=1,
        but a WATCHDOG=1 before READY=1 arms it too (src/core/service.c: service_notify_message
        -> service_reset_watchdog, which checks no state); from then on a gap of more than
        WatchdogSec= between pings kills the service."""
        deadline = self.t0 + self.timeout_start_s
        watchdog_deadline = None
        for at, msg in self.received:
            if at > deadline:
                return "start timeout fired {:.2f} s before {!r}".format(at - deadline, msg)
            if watchdog_deadline is not None and at > watchdog_deadline:
                return "watchdog fired during start-up {:.2f} s before {!r}".format(
                    at - watchdog_deadline, msg)
            fields = dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)
            if fields.get("READY") == "1":
                return None
            if "EXTEND_TIMEOUT_USEC" in fields:
                deadline = max(deadline, at + int(fields["EXTEND_TIMEOUT_USEC"]) / 1e6)
            if fields.get("WATCHDOG") == "1":
                watchdog_deadline = at + watchdog_s
        return "no READY=1"


def warm_imports():
    """Import now what the agent imports while it starts: an import holds the GIL for up to a
    second on this loaded machine, which would stall every thread of this test's process
    (including the agent's extender) against a start timeout scaled down to one second. On a
    device the extender has 30 s of slack against a 300 s TimeoutStartSec=."""
    import importlib
    for name in ("onnx", "onnxruntime", "agent.backends.tensorrt",
                 "agent.backends.tensorrt.build", "agent.backends.onnxruntime",
                 "agent.backends.validation", "agent.preprocess"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def test_a_first_tensorrt_build_longer_than_the_start_timeout_does_not_fail_the_start(
        broker, tmp_path, monkeypatch):
    """Issue 11, 1.2: the first engine build happens before READY=1. Here TimeoutStartSec= is
    1 s, WatchdogSec= 0.4 s, and the build (the TensorRT 8.2 double, held on an Event by the
    test) lasts at least 3 s; the agent must keep extending the start timeout until READY=1 and
    must not arm the watchdog before it (nothing beats during a build)."""
    import threading
    from agent.config import load_config
    from agent.systemd import Notifier, StartTimeoutExtender
    from support.trt_helpers import doubles
    from support.doubles import trt_double

    timeout_start_s = 1.0
    watchdog_s = 0.4
    monkeypatch.setattr(StartTimeoutExtender, "INTERVAL_S", 0.05)
    monkeypatch.setattr(StartTimeoutExtender, "EXTEND_FACTOR", 20)  # asks 1 s each time
    held_extends = 60  # >= 3 s of build at one message per 0.05 s

    build_started = threading.Event()
    release = threading.Event()
    first_build = []

    def held(original):
        def build(self, *args, **kwargs):
            if not first_build:
                first_build.append(time.monotonic())
                build_started.set()
                assert release.wait(120), "the test never released the build"
            return original(self, *args, **kwargs)
        return build

    for cls, name in ((trt_double._BuilderCore, "build_serialized_network"),
                      (getattr(trt_double, "_BuilderLegacy", None), "build_engine")):
        if cls is not None and name in vars(cls):
            monkeypatch.setattr(cls, name, held(vars(cls)[name]))

    sock_dir = tempfile.mkdtemp(prefix="edge-start-", dir="/tmp")  # AF_UNIX path limit
    job = StartJob(os.path.join(sock_dir, "notify"), timeout_start_s)
    with doubles("8.2"):
        from agent.daemon import Agent
        config = load_config(os.path.join(ROOT, "config.yaml"), [
            "mqtt.port={}".format(broker.port), "mqtt.host=127.0.0.1", "device.id=slowbuild",
            "device.state_dir={}".format(tmp_path / "state"), "backend.kind=tensorrt",
            "backend.precision=fp16", "source.uri=file://models/samples", "source.fps=20"])
        agent = Agent(config, telemetry=False,
                      notifier=Notifier({"NOTIFY_SOCKET": os.path.join(sock_dir, "notify"),
                                         "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}))
        thread = threading.Thread(target=agent.run)
        warm_imports()
        job.begin()
        thread.start()
        try:
            assert build_started.wait(120), "the agent never started a TensorRT build"

            def extends_during_build(received):
                return len([1 for at, m in received if at >= first_build[0] and
                            m.startswith("EXTEND_TIMEOUT_USEC=")]) >= held_extends
            job.wait_for(extends_during_build, 60,
                              "no {} EXTEND_TIMEOUT_USEC messages during the build".format(
                                  held_extends))
            held_s = time.monotonic() - first_build[0]
            release.set()
            job.wait_for(lambda received: any("READY=1" in m for _, m in received), 120,
                              "no READY=1 after the build")
            job.wait_for(lambda received: any(m == "WATCHDOG=1" for _, m in received[
                [i for i, (_, m) in enumerate(received) if "READY=1" in m][0]:]), 30,
                "no WATCHDOG=1 after READY=1")
        finally:
            release.set()
            agent.stop.set()
            thread.join(60)
            job.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
    assert not thread.is_alive()
    assert held_s > timeout_start_s and held_s > 20 * 0.05, \
        "the build must outlast both the start timeout and one extension"
    timeline = ["{:.2f} {}".format(at - job.t0, m.replace("\n", " ")[:60])
                for at, m in job.received]
    verdict = job.verdict(watchdog_s)
    assert verdict is None, "{} (build started at {:.2f} s):\n{}".format(
        verdict, first_build[0] - job.t0, "\n".join(timeline))
    ready_at = [i for i, (_, m) in enumerate(job.received) if "READY=1" in m][0]
    assert "tensorrt" in job.received[ready_at][1]
    after = [m for _, m in job.received[ready_at:] if "EXTEND_TIMEOUT_USEC" in m]
    assert after == [], "the start timeout was still extended after READY=1"
    assert job.received[0][1] == "EXTEND_TIMEOUT_USEC=1000000"


def test_the_watchdog_progress_is_the_inference_loops_own():
    """The systemd watchdog's progress (InferenceStage.beats) moves with every pass of the
    inference loop, frames or not, and stops when that loop hangs in the backend; progress
    reported by a model build elsewhere (ModelLoader.start_progress) does not move it."""
    import queue
    import threading

    import numpy as np

    from agent.pipeline.capture import Captured
    from agent.pipeline.inference import BackendSlot, InferenceStage
    from agent.pipeline.frames import Frame, FrameSlot
    from agent.telemetry import StageStats
    from agent.updates.loader import ModelLoader
    from support.waiting import wait_until

    hung, release = threading.Event(), threading.Event()

    class HangingBackend(object):
        package = type("Package", (), {"ref": "hang@1"})()
        name, precision = "double", "fp32"

        def infer_frame(self, image):
            hung.set()
            release.wait(30)
            return {}

        def release_thread(self):
            pass

        def parallel(self):
            return 1

    class Model(object):
        ref, preprocessor, backend, in_flight = "hang@1", None, HangingBackend(), 1

    stop = threading.Event()
    slot = FrameSlot(live=True)
    backends = BackendSlot(config=None)
    backends.model = Model()
    stage = InferenceStage(slot, backends, queue.Queue(), StageStats(), stop)
    thread = threading.Thread(target=stage.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: stage.beats >= 3, 10, "beats of an idle inference loop")
        image = np.zeros((4, 4, 3), dtype=np.uint8)
        slot.put(Captured(Frame(image, 1, time.time(), time.monotonic())), stop)
        assert hung.wait(10), "the backend was never called"
        beats = stage.beats
        loader = ModelLoader(None, None, emit=lambda event: None)
        for _ in range(20):
            loader.start_progress("building", 0.5, "a build in another thread")
        assert stage.beats == beats
    finally:
        stop.set()
        release.set()
        thread.join(10)
    assert not thread.is_alive()
