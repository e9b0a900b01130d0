"""A rollout across a broker restart, all real: three `edge-agent run` processes, a Mosquitto
with persistence stopped and started again on the same port while the rollout runs, the
operator (`edge-agent fleet rollout`) as a process. The rollout completes, each device downloads
and activates the model once, and every device's retained status says `serving` again (the
Last Will had replaced it)."""

import json
import uuid

import pytest

from support.agent_process import AgentProcess
from support.broker import persistent_broker
from support.durable_recorder import DurableRecorder
from support.model_store import LABELS, FileServer, publish_model, sha
from support.tiny_fleet import activations, serving, tiny_agent


@pytest.fixture
def world(tmp_path):
    broker = persistent_broker(str(tmp_path), "autosave_interval 1")
    server = FileServer()
    rec = DurableRecorder(broker.port, ("edge/+/status", "edge/+/events", "edge/+/cmd/#"))
    procs = []
    yield broker, server, rec, procs
    for proc in procs:
        proc.kill()
    rec.close()
    server.close()
    broker.stop()


def test_rollout_completes_across_a_broker_restart_and_nothing_runs_twice(world, tmp_path):
    broker, server, rec, procs = world
    group = "r" + uuid.uuid4().hex[:6]
    names = ["{}-{}".format(group, i) for i in range(3)]
    for name in names:
        procs.append(tiny_agent(broker.port, name, str(tmp_path / name), group))
    rec.wait_for(serving(names), 90, "three devices serving")
    install = dict(publish_model(server, "2", seed=1), labels_sha256=sha(LABELS))
    (tmp_path / "install.json").write_text(json.dumps(install))
    op = AgentProcess(["fleet", "rollout", str(tmp_path / "install.json"), "--group", group,
                       "--canary", "1", "--batch", "1", "--window", "1",
                       "--max-regression", "1e6", "--activate-timeout", "120", "--json",
                       "--offline-wait", "60", "--state", str(tmp_path / "rollout.json"),
                       "--set", "mqtt.host=127.0.0.1",
                       "--set", "mqtt.port={}".format(broker.port)])
    procs.append(op)

    def canary_activated(messages):
        return any(t == "edge/{}/events".format(names[0]) and isinstance(p, dict) and
                   p.get("state") == "activated" for t, p, _ in messages)
    rec.wait_for(canary_activated, 90, "the canary's activated event")
    broker.stop()  # in the middle: the canary's window, the batches still to come
    broker.start()
    assert op.wait(150) == 0, op.err + op.stdout.decode()
    log = [json.loads(line) for line in op.stdout.decode().splitlines()]
    print("\n".join(json.dumps(r, sort_keys=True)[:180] for r in log))
    assert log[-1]["event"] == "done"
    assert not [r for r in log if r["event"] == "failed"]
    assert activations(rec.events(), log) == dict((n, 1) for n in names)
    for name in names:
        installs = {p["request_id"] for c, p in rec.commands(name) if c == "model/install"}
        assert len(installs) == 1, (name, installs)
    downloads = [p for p in server.httpd.requests if p.endswith("/model.onnx")]
    assert len(downloads) == 3, downloads
    rec.wait_for(serving(names, "2"), 30, "every device serving version 2")
