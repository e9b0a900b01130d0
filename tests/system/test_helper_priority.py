"""backend.helper_priority through the real agent: which threads run at SCHED_IDLE.

The agent serves the bundled model on ONNX Runtime from a synthetic camera and publishes to
the session's Mosquitto. From inside the publish thread (a prediction listener runs there) the
test reads every thread of the process from /proc: the capture, publish, telemetry, MQTT
sender and paho network threads must be at SCHED_IDLE; the inference thread, ONNX Runtime's
own workers (threads Python does not know) and the main thread must not, or inference would
wait for everything else on a busy CPU.
"""

import os
import threading

import pytest

from agent.config import load_config
from agent.daemon import Agent
from support.paths import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")


def _threads():
    """{tid: (policy, name)} for every thread of this process."""
    out = {}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:
            policy = os.sched_getscheduler(tid)
            with open("/proc/self/task/{}/comm".format(tid)) as handle:
                comm = handle.read().strip()
        except OSError:
            continue  # ended meanwhile
        out[tid] = (policy, comm)
    return out


def _run_and_look(tmp_path, broker, mode):
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "mqtt.port={}".format(broker.port), "mqtt.host=127.0.0.1", "device.id=prio",
        "device.state_dir={}".format(tmp_path / "state"), "source.uri=synthetic://?fps=50",
        "telemetry.interval_s=0.5", "backend.threads=2",
        "backend.helper_priority={}".format(mode)])
    agent = Agent(config)
    seen = {}
    looked = threading.Event()
    checks = []
    real_check = agent.priority.check

    def check():
        checks.append(1)
        real_check()

    agent.priority.check = check  # the main loop's starvation check must run

    def listener(frame, payload):
        if looked.is_set() or payload["seq"] < 20 or not agent.link.connected or \
                len(checks) < 2:
            return
        seen["publish"] = os.sched_getscheduler(0)
        seen["threads"] = _threads()
        seen["python"] = {t.native_id: t.name for t in threading.enumerate()}
        seen["enrolled"] = {tid: t.name for tid, t in agent.priority._enrolled.items()}
        looked.set()

    agent.listeners.append(listener)
    thread = threading.Thread(target=agent.run, name="agent-main")
    thread.start()
    try:
        assert looked.wait(120), "no 20th prediction while connected"
    finally:
        agent.stop.set()
        thread.join(30)
    return agent, seen


def test_helpers_idle_inference_and_onnxruntime_normal(broker, tmp_path):
    agent, seen = _run_and_look(tmp_path, broker, "idle")
    if not agent.priority.active:
        pytest.skip("idle priority unusable here: {}".format(agent.priority.reason))
    assert seen["publish"] == os.SCHED_IDLE
    idle = {tid for tid, (policy, _) in seen["threads"].items() if policy == os.SCHED_IDLE}
    names = set(seen["enrolled"].values())
    assert {"capture", "publish", "telemetry", "mqtt-sender"} <= names
    assert any(name.startswith("paho") for name in names), names
    # nothing at idle that was not enrolled: ONNX Runtime's workers are created by the thread
    # that opens the session and inherit its policy
    assert idle == set(seen["enrolled"]) & set(seen["threads"])
    inference = [tid for tid, name in seen["python"].items() if name == "inference"]
    assert len(inference) == 1 and seen["threads"][inference[0]][0] == os.SCHED_OTHER
    native = [tid for tid in seen["threads"] if tid not in seen["python"]]
    assert len(native) >= 1, "ONNX Runtime's worker thread not found"
    assert all(seen["threads"][tid][0] == os.SCHED_OTHER for tid in native)
    assert agent.priority.starved == 0


def test_helper_priority_normal_leaves_every_thread_normal(broker, tmp_path):
    agent, seen = _run_and_look(tmp_path, broker, "normal")
    assert seen["publish"] == os.SCHED_OTHER
    assert all(policy == os.SCHED_OTHER for policy, _ in seen["threads"].values())
    assert agent.priority.describe()["helper_priority"] == "normal"
