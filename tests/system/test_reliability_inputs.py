"""Bad input survived, with figures: fuzzed commands and manifests, a disk that fills up during
a download, a camera that disappears. Each test prints its figure."""

import json
import os
import shutil
import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.updates.commands import COMMANDS, CommandError, parse_command
from agent.updates.worker import ModelManager
from agent.errors import AgentError, ModelError, SourceError
from agent.store.store import ModelStore
from agent.store.package import ModelPackage
from support.paths import MODEL_DIR, ROOT

# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=4), max_leaves=12)
field_names = st.sampled_from(["name", "version", "url", "sha256", "size", "manifest",
                               "manifest_url", "labels_url", "activate", "signature",
                               "request_id", "extra"])
command_bodies = st.dictionaries(field_names, json_values, max_size=8)
command_names = st.sampled_from(list(COMMANDS) + ["model/explode", "", "cmd/../x", "ping/"])
raw_payloads = st.one_of(
    command_bodies.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")
                              if False else t.encode("utf-8", "replace")),
    st.just(b"x" * 70000), st.just(b"[1,2]"), st.just(b"NaN"), st.just(b'{"size": 1e999}'))

# Installs that pass the parser (a URL, a sha256), so the manager's queue and worker are
# fuzzed too; the URLs fail at once (nothing listens on port 9; the file does not exist).
valid_installs = st.fixed_dictionaries(
    {"name": st.sampled_from(["tiny", "efficientnet_lite0"]),
     "version": st.sampled_from(["1", "2", "10"]),
     "url": st.sampled_from(["http://127.0.0.1:9/model.onnx", "file:///nonexistent/m.onnx"]),
     "sha256": st.just("0" * 64)},
    optional={"manifest": json_values, "activate": st.booleans(), "size": st.integers(),
              "request_id": st.text(max_size=20)}).map(lambda d: json.dumps(d).encode())
MIN_EXAMPLES = 1000


def run_counted(fuzz):
    """Run a hypothesis-decorated function; return how many examples it ran. Each fuzz test
    counts and reports its own examples, so it passes or fails alone, in any order."""
    counter = {"n": 0}
    fuzz(counter)
    return counter["n"]


def test_fuzz_parse_command_never_crashes():
    @settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(command=command_names, payload=raw_payloads)
    def fuzz(counter, command, payload):
        counter["n"] += 1
        try:
            cmd = parse_command(command, payload)
        except CommandError as exc:
            assert str(exc)  # every refusal says why
            return
        assert cmd.name in COMMANDS

    count = run_counted(fuzz)
    print("fuzzing: {} command payloads parsed; 0 crashes".format(count))
    assert count >= MIN_EXAMPLES


class _Events(object):
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event):
        json.dumps(event, allow_nan=False)  # must be publishable as JSON
        with self.lock:
            self.events.append(event)


@pytest.fixture
def manager(tmp_path):
    """A real ModelManager on a real store; prepare/activate are the app's seam and are
    replaced by functions that refuse (nothing must get that far with fuzzed input)."""
    store = ModelStore(str(tmp_path / "fuzzstore"))
    events = _Events()
    stop = threading.Event()

    def prepare(package, progress, cancel):
        raise AgentError("fuzz: prepare is not reached by valid-looking fuzz input")

    def activate(backend, package):
        raise AgentError("fuzz: activate is not reached")

    mgr = ModelManager(store, events, prepare, activate, stop, queue_size=4).start()
    yield mgr, events
    stop.set()
    mgr.join(10)


def test_fuzz_every_command_is_answered_with_an_event(manager):
    mgr, events = manager
    names = list(COMMANDS) + ["model/explode", ""]
    assert "model/install" in names

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(command=st.sampled_from(names),
           payload=st.one_of(raw_payloads, valid_installs))
    def fuzz(counter, command, payload):
        counter["n"] += 1
        before = len(events.events)
        mgr.submit_raw(command, payload)
        # Immediate answers (rejected, ping, list, accepted) arrive synchronously.
        assert len(events.events) > before

    count = run_counted(fuzz)
    answered = sorted(set(e.get("command") for e in events.events))
    print("fuzzing: {} commands through the manager, each answered (commands: {})".format(
        count, ", ".join(str(c) for c in answered)))
    assert count >= MIN_EXAMPLES
    assert "model/install" in answered
    assert any(e.get("command") == "model/install" and e["state"] == "accepted"
               for e in events.events), "no fuzzed install got past the parser"


def test_fuzz_manifests_fail_only_with_model_errors():
    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=st.dictionaries(st.sampled_from(["name", "version", "file", "sha256", "labels",
                                                "task", "input", "output"]), json_values,
                               max_size=8))
    def fuzz(counter, raw):
        counter["n"] += 1
        try:
            ModelPackage.from_dict("/tmp", raw, "fuzz/model.yaml")
        except ModelError as exc:
            assert "fuzz/model.yaml" in str(exc)

    count = run_counted(fuzz)
    print("fuzzing: {} manifests; 0 crashes".format(count))
    assert count >= MIN_EXAMPLES


# ---------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)],
                              stderr=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    yield mount
    subprocess.call(["umount", "-l", str(mount)])


def test_disk_full_during_a_download_is_reported_and_serving_continues(
        broker, recorder, run_agent, small_disk, tmp_path):
    import hashlib
    from support.model_server import MANIFEST, FileServer
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(os.path.join(MODEL_DIR, "model.onnx"), str(www / "model.onnx"))
    shutil.copy(os.path.join(MODEL_DIR, "labels.txt"), str(www / "labels.txt"))
    server = FileServer(www)
    try:
        since = recorder.mark()
        proc = run_agent("diskfull", "--set", "device.state_dir={}".format(small_disk),
                         "--set", "source.uri=synthetic://?fps=10")
        recorder.wait_topic("diskfull/status", lambda p: p.get("state") == "serving", 60,
                            "serving", since=since)
        recorder.publish("edge/diskfull/cmd/model/install", {
            "name": "efficientnet_lite0", "version": "2", "url": server.url("model.onnx"),
            "sha256": hashlib.sha256((www / "model.onnx").read_bytes()).hexdigest(),
            "manifest": MANIFEST, "labels_url": server.url("labels.txt"),
            "labels_sha256": hashlib.sha256((www / "labels.txt").read_bytes()).hexdigest(),
            "request_id": "full"})
        failed = recorder.wait_topic("diskfull/events", lambda p: p.get("request_id") == "full"
                                     and p["state"] in ("failed", "activated"), 60, "result")
        assert failed["state"] == "failed"
        assert "space" in failed["error"].lower() or "No space" in failed["error"]
        mark = recorder.mark()
        recorder.wait_topic("diskfull/predictions", lambda p: True, 20,
                            "predictions after the failed install", since=mark)
        print("disk full: {}".format(failed["error"][:160]))
        proc.signal(15)
        assert proc.wait(30) == 0, proc.err
    finally:
        server.close()


def _fill(directory):
    """Write a filler file until the filesystem says it is full; returns its path."""
    import errno
    path = os.path.join(str(directory), "filler")
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path


@pytest.mark.parametrize("fault", ["disk full", "spool.db is a directory"])
def test_agent_starts_without_a_usable_spool_and_recovers_it(
        broker, recorder, run_agent, tmp_path, request, fault):
    """Start with the disk full (a real tmpfs) or spool.db unusable: the agent serves anyway
    (predictions arrive), the status says degraded and why, and once the fault is cleared the
    spool is back on disk and the status is serving again."""
    device = "nospool" + str(len(fault))
    source = ("--set", "source.uri=synthetic://?fps=10")
    if fault == "disk full":
        state = request.getfixturevalue("small_disk")
        first = run_agent(device, "--set", "device.state_dir={}".format(state), *source,
                          "--max-frames", "2")  # imports the model, makes spool.db
        assert first.wait(120) == 0, first.err
        for name in os.listdir(str(state)):
            if name.startswith("spool.db"):
                os.remove(os.path.join(str(state), name))
        filler = _fill(state)
        clear = lambda: os.remove(filler)  # noqa: E731
        expected = "disk is full"
    else:
        state = tmp_path / "s"
        (state / "spool.db").mkdir(parents=True)
        clear = lambda: (state / "spool.db").rmdir()  # noqa: E731
        expected = "it is a directory"
    since = recorder.mark()
    proc = run_agent(device, "--set", "device.state_dir={}".format(state), *source)
    degraded = recorder.wait_topic(device + "/status", lambda p: p.get("state") == "degraded",
                                   90, "degraded status", since=since)
    assert "spool.db cannot be opened" in degraded["detail"], degraded
    assert expected in degraded["detail"] and "messages wait in memory" in degraded["detail"]
    mark = recorder.mark()
    recorder.wait_topic(device + "/predictions", lambda p: True, 30, "predictions while degraded",
                        since=mark)
    clear()
    recorder.wait_topic(device + "/events", lambda p: p.get("command") == "health" and
                        p["detail"] == "spool" and p["state"] == "recovered", 30,
                        "the spool recovered", since=mark)
    recorder.wait_topic(device + "/status", lambda p: p.get("state") == "serving", 30,
                        "serving again", since=mark)
    assert os.path.isfile(os.path.join(str(state), "spool.db"))
    mark = recorder.mark()
    recorder.wait_topic(device + "/predictions", lambda p: True, 30, "predictions after",
                        since=mark)
    proc.signal(15)
    assert proc.wait(30) == 0, proc.err
    assert "Traceback" not in proc.err, proc.err
    print("{}: degraded ({}), recovered once cleared".format(fault, degraded["detail"][:120]))


# ---------------------------------------------------------------- a camera that disappears


class VanishingCamera(object):
    """Test double of a live camera (tests only): serves frames, then reads fail as when a USB
    camera is unplugged, then it cannot be opened `absent` times, then it is back."""

    live = True
    paced = False
    scheme = "vanishing"

    def __init__(self, state, fps=20.0):
        import numpy as np
        self.state = state
        self.fps = fps
        self.frame = np.full((240, 320, 3), 90, np.uint8)
        self.last_name = "vanishing"
        self.uri = "vanishing://0"
        self.stop = threading.Event()

    def open(self):
        if self.state["absent"] > 0:
            self.state["absent"] -= 1
            raise SourceError("source vanishing://0: /dev/video0 does not exist (unplugged?)")
        self.state["opens"] += 1

    def read(self):
        self.stop.wait(1.0 / self.fps)
        self.state["reads"] += 1
        if self.state["opens"] == 1 and self.state["reads"] > 15:
            raise SourceError("source vanishing://0: read failed: device disconnected")
        return self.frame

    def close(self):
        pass

    def describe(self):
        return self.uri


def test_camera_disappears_events_say_so_and_serving_resumes(broker, recorder, tmp_path):
    from agent import sources
    from agent.daemon import Agent
    from agent.config import load_config
    state = {"absent": 0, "opens": 0, "reads": 0}

    def factory(uri, parts, base_dir, **kw):
        if state["opens"] == 1 and state["reads"] > 15 and "gone" not in state:
            state["gone"] = True
            state["absent"] = 2
        return VanishingCamera(state)

    sources.register_scheme("vanishing", factory)
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "mqtt.port={}".format(broker.port), "mqtt.host=127.0.0.1", "device.id=cam",
        "device.state_dir={}".format(tmp_path / "s"), "source.uri=vanishing://0"])
    agent = Agent(config)
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        degraded = recorder.wait_topic("cam/events", lambda p: p.get("command") == "health" and
                                       p["state"] == "degraded", 60, "a degraded event")
        assert "disconnected" in degraded["error"] or "unplugged" in degraded["error"]
        status = recorder.wait_topic("cam/status", lambda p: p.get("state") == "degraded", 10,
                                     "degraded status")
        assert "vanishing://0" in status["detail"]
        recorder.wait_topic("cam/events", lambda p: p.get("command") == "health" and
                            p["state"] == "recovered", 60, "a recovered event")
        recorder.wait_topic("cam/status", lambda p: p.get("state") == "serving" and
                            p["ts"] > status["ts"], 10, "serving again")
        mark = recorder.mark()
        recorder.wait_topic("cam/predictions", lambda p: True, 10, "predictions again",
                            since=mark)
    finally:
        agent.stop.set()
        thread.join(30)
        sources._SCHEMES.pop("vanishing", None)
    assert state["opens"] >= 2
    print("camera gone: degraded -> recovered after {} failed opens; predictions resumed"
          .format(2))
