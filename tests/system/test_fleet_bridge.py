"""Past one broker, all real: two Mosquitto brokers joined by a Mosquitto bridge on loopback
(edge/# both ways), one `edge-agent run` device on each, the operator on the first. The
rollout converges as on one broker: each device gets its install once, activates once, and
both brokers end with both devices' retained status on the new version."""

import json
import uuid

import pytest

from support.agent_process import AgentProcess
from support.broker import Broker
from support.durable_recorder import DurableRecorder
from support.model_store import LABELS, FileServer, publish_model, sha
from support.tiny_fleet import activations, serving, tiny_agent


@pytest.fixture
def bridged(tmp_path):
    """(first, second): the second bridges edge/# both ways to the first."""
    first = Broker(str(tmp_path)).start()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = Broker(str(second_dir), extra="\n".join([
        "connection second-to-first", "address 127.0.0.1:{}".format(first.port),
        "topic edge/# both 1", "cleansession false", "try_private true",
        "restart_timeout 1 5", "bridge_protocol_version mqttv311", ""])).start()
    yield first, second
    second.stop()
    first.stop()


def test_rollout_over_two_bridged_brokers_converges(bridged, tmp_path):
    first, second = bridged
    group = "b" + uuid.uuid4().hex[:6]
    names = ["{}-{}".format(group, i) for i in range(2)]
    topics = ("edge/+/status", "edge/+/events", "edge/+/cmd/#")
    on_first = DurableRecorder(first.port, topics)
    on_second = DurableRecorder(second.port, topics)
    server = FileServer()
    procs = []
    try:
        # Device 0 on the operator's broker, device 1 behind the bridge.
        for name, broker in zip(names, (first, second)):
            procs.append(tiny_agent(broker.port, name, str(tmp_path / name), group))
        on_first.wait_for(serving(names), 90, "both devices serving, seen on the first broker")
        install = dict(publish_model(server, "2", seed=1), labels_sha256=sha(LABELS))
        (tmp_path / "install.json").write_text(json.dumps(install))
        op = AgentProcess(["fleet", "rollout", str(tmp_path / "install.json"), "--group",
                           group, "--canary", "1", "--batch", "1", "--window", "1",
                           "--max-regression", "1e6", "--activate-timeout", "120", "--json",
                           "--state", str(tmp_path / "rollout.json"),
                           "--set", "mqtt.host=127.0.0.1",
                           "--set", "mqtt.port={}".format(first.port)])
        procs.append(op)
        assert op.wait(120) == 0, op.err + op.stdout.decode()
        log = [json.loads(line) for line in op.stdout.decode().splitlines()]
        print("\n".join(json.dumps(r, sort_keys=True)[:180] for r in log))
        assert log[-1]["event"] == "done"
        assert [s["devices"] for s in log if s["event"] == "stage"] == [names[:1], names[1:]]
        assert activations(on_first.events(), log) == dict((n, 1) for n in names)
        # The device behind the bridge got its install once, over the bridge.
        installs = [p["request_id"] for c, p in on_second.commands(names[1])
                    if c == "model/install"]
        assert len(installs) == 1, installs
        for rec in (on_first, on_second):
            rec.wait_for(serving(names, "2"), 30, "both devices on version 2, both brokers")
        downloads = [p for p in server.httpd.requests if p.endswith("/model.onnx")]
        assert len(downloads) == 2, downloads
    finally:
        for proc in procs:
            proc.kill()
        on_first.close()
        on_second.close()
        server.close()
