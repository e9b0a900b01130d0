"""`edge-agent fleet rollout` with real agents on a real Mosquitto and a real HTTP server: a
3-device rollout completes; a slower model stops at the canary, which is rolled back while the
others are never touched; a killed operator resumes without redoing finished devices; a paused
one stops between stages and resumes with one install per device; a device killed in its
window is reported offline, retried when it is back, and not counted done before."""

import hashlib
import json
import signal
import uuid

import pytest

from support.agent_process import AgentProcess, agent_args
from support.model_server import MANIFEST, serve_bundled_model
from support.onnx_models import write_model


def _sha(path):
    return hashlib.sha256(open(str(path), "rb").read()).hexdigest()


def _install_file(tmp_path, root, server, version, onnx="model.onnx"):
    payload = {"name": "efficientnet_lite0", "version": version, "url": server.url(onnx),
               "sha256": _sha(root / onnx), "manifest": dict(MANIFEST),
               "labels_url": server.url("labels.txt"), "labels_sha256": _sha(root / "labels.txt")}
    path = tmp_path / "install-{}.json".format(version)
    path.write_text(json.dumps(payload))
    return str(path)


@pytest.fixture
def fleet(broker, recorder, tmp_path):
    """start(count) -> (group, device names, model directory, its HTTP server)."""
    agents = []
    root = tmp_path / "www"
    server = serve_bundled_model(root)

    def start(count):
        group = "g" + uuid.uuid4().hex[:6]
        names = ["{}-{}".format(group, i) for i in range(count)]
        for name in names:
            agents.append(AgentProcess(agent_args(
                broker.port, name, str(tmp_path / name), "--set", "device.group=" + group,
                "--set", "source.uri=synthetic://?fps=5", "--set", "telemetry.interval_s=1",
                "--set", "updates.max_latency_factor=100")))
        for name in names:
            recorder.wait_topic(name + "/telemetry", lambda p: (p.get("frames") or 0) > 0, 90,
                                "telemetry from " + name)
        return group, names, root, server

    start.agents = agents  # in start order; a test that restarts one appends it here
    yield start
    for agent in agents:
        agent.kill()
    server.close()


def _operator(broker, tmp_path, *args):
    return AgentProcess(["fleet", "rollout"] + list(args) + [
        "--state", str(tmp_path / "rollout.json"), "--json",
        "--set", "mqtt.port={}".format(broker.port), "--set", "mqtt.host=127.0.0.1"])


def _installs(recorder, device):
    """request_ids of the model/install commands the broker carried to `device`."""
    return [p["request_id"] for t, p, _ in recorder.messages
            if t == "edge/{}/cmd/model/install".format(device)]


def _version(recorder, device):
    status = [p for t, p, _ in recorder.messages if t == "edge/{}/status".format(device)][-1]
    return status["model"]["version"]


def test_three_devices_roll_out_canary_then_batch(broker, recorder, fleet, tmp_path):
    group, names, root, server = fleet(3)
    install = _install_file(tmp_path, root, server, "2")
    op = _operator(broker, tmp_path, install, "--group", group, "--canary", "1", "--batch", "2",
                   "--window", "2", "--max-regression", "3.0")
    assert op.wait(240) == 0, op.err + op.stdout.decode()
    log = [json.loads(line) for line in op.stdout.decode().splitlines()]
    print("\n".join(json.dumps(r, sort_keys=True)[:160] for r in log))
    stages = [r for r in log if r["event"] == "stage"]
    assert [s["devices"] for s in stages] == [names[:1], names[1:]]
    assert log[-1]["event"] == "done"
    for name in names:
        assert len(_installs(recorder, name)) == 1, name
        recorder.wait_topic(name + "/status", lambda p: (p.get("model") or {}).get("version")
                            == "2", 30, name + " on version 2")
    oks = [r for r in log if r["event"] == "ok"]
    assert sorted(r["device"] for r in oks) == names
    assert all(r["after"]["infer_p50_ms"] > 0 for r in oks)
    state = json.loads((tmp_path / "rollout.json").read_text())
    assert state["outcome"] == "done" and state["target"] == "efficientnet_lite0@2"


def test_slower_canary_is_rolled_back_and_no_other_device_is_touched(broker, recorder, fleet,
                                                                     tmp_path):
    group, names, root, server = fleet(3)
    write_model(root / "slow.onnx", slow=True)
    install = _install_file(tmp_path, root, server, "3", onnx="slow.onnx")
    op = _operator(broker, tmp_path, install, "--group", group, "--canary", "1", "--batch", "2",
                   "--window", "3", "--max-regression", "0.5")
    assert op.wait(240) == 1, op.err + op.stdout.decode()
    log = [json.loads(line) for line in op.stdout.decode().splitlines()]
    print("\n".join(json.dumps(r, sort_keys=True)[:200] for r in log))
    canary = names[0]
    failed = [r for r in log if r["event"] == "failed" and r["device"] == canary][0]
    assert any(g.startswith("infer_p50_ms") for g in failed["regressed"]), failed
    assert [r["device"] for r in log if r["event"] == "rolled_back" and "device" in r] == [canary]
    assert log[-1]["event"] == "rolled_back"
    recorder.wait_topic(canary + "/status", lambda p: (p.get("model") or {}).get("version")
                        == "1", 30, "the canary back on version 1")
    for other in names[1:]:
        assert not [t for t, _, _ in recorder.messages
                    if t.startswith("edge/{}/cmd/".format(other))], other
        assert _version(recorder, other) == "1"
    state = json.loads((tmp_path / "rollout.json").read_text())
    assert state["outcome"] == "rolled_back"
    assert state["devices"][canary]["step"] == "rolled_back"


def test_resume_after_the_operator_is_killed_does_not_redo_finished_devices(
        broker, recorder, fleet, tmp_path):
    group, names, root, server = fleet(3)
    install = _install_file(tmp_path, root, server, "2")
    args = (install, "--group", group, "--canary", "1", "--batch", "1", "--window", "2",
            "--max-regression", "3.0")
    op = _operator(broker, tmp_path, *args)
    # Killed (SIGKILL) once the canary is done: its state file is what the next one reads.
    for line in iter(op.proc.stdout.readline, b""):
        record = json.loads(line.decode())
        if record["event"] == "ok" and record.get("device") == names[0]:
            break
    op.proc.send_signal(signal.SIGKILL)
    op.wait(30)
    resumed = _operator(broker, tmp_path, "--resume")
    assert resumed.wait(240) == 0, resumed.err + resumed.stdout.decode()
    log = [json.loads(line) for line in resumed.stdout.decode().splitlines()]
    print("\n".join(json.dumps(r, sort_keys=True)[:160] for r in log))
    assert log[0]["event"] == "resumed" or any(r["event"] == "stage" for r in log)
    assert names[0] not in [r.get("device") for r in log if r["event"] in ("sent", "resent")]
    assert log[-1]["event"] == "done"
    for name in names:
        assert len(set(_installs(recorder, name))) == 1, (name, _installs(recorder, name))
        recorder.wait_topic(name + "/status", lambda p: (p.get("model") or {}).get("version")
                            == "2", 30, name + " on version 2")


def test_fleet_abort_rolls_back_the_canary_and_stops(broker, recorder, fleet, tmp_path):
    group, names, root, server = fleet(2)
    install = _install_file(tmp_path, root, server, "2")
    # A long window: the abort has to interrupt it.
    op = _operator(broker, tmp_path, install, "--group", group, "--canary", "1",
                   "--window", "600", "--max-regression", "3.0")
    for line in iter(op.proc.stdout.readline, b""):
        if json.loads(line.decode())["event"] == "activated":
            break
    abort = AgentProcess(["fleet", "abort", "--state", str(tmp_path / "rollout.json")])
    assert abort.wait(30) == 0, abort.err
    assert "abort requested" in abort.stdout.decode()
    assert op.wait(120) == 1, op.err
    state = json.loads((tmp_path / "rollout.json").read_text())
    assert state["outcome"] == "aborted"
    assert state["devices"][names[0]]["step"] == "rolled_back"
    assert state["devices"][names[1]]["step"] == "pending"
    recorder.wait_topic(names[0] + "/status", lambda p: (p.get("model") or {}).get("version")
                        == "1", 30, "the canary back on version 1")
    assert not [t for t, _, _ in recorder.messages
                if t.startswith("edge/{}/cmd/".format(names[1]))]


def test_pause_stops_between_stages_and_resume_finishes_it(broker, recorder, fleet,
                                                           tmp_path):
    group, names, root, server = fleet(2)
    install = _install_file(tmp_path, root, server, "2")
    op = _operator(broker, tmp_path, install, "--group", group, "--canary", "1", "--batch", "1",
                   "--window", "1", "--max-regression", "3.0")
    log = []
    for line in iter(op.proc.stdout.readline, b""):  # the canary's install is on its way
        log.append(json.loads(line.decode()))
        if log[-1]["event"] == "sent":
            break
    pause = AgentProcess(["fleet", "pause", "--state", str(tmp_path / "rollout.json")])
    assert pause.wait(30) == 0, pause.err
    assert op.wait(120) == 3, op.err + op.stdout.decode()
    log += [json.loads(line) for line in op.stdout.decode().splitlines()]
    print("\n".join(json.dumps(r, sort_keys=True)[:160] for r in log))
    assert log[-1]["event"] == "paused"
    state = json.loads((tmp_path / "rollout.json").read_text())
    assert state["outcome"] == "paused"
    # Stopped between stages: the canary's stage finished (usually the pause came while its
    # install was in flight); no device was left in between, and no later one was touched.
    steps = [state["devices"][n]["step"] for n in names]
    assert steps in (["ok", "pending"], ["ok", "ok"]), steps
    pending = [n for n, step in zip(names, steps) if step == "pending"]
    for name in pending:
        assert not [t for t, _, _ in recorder.messages
                    if t.startswith("edge/{}/cmd/".format(name))], name

    resumed = _operator(broker, tmp_path, "--resume")
    assert resumed.wait(120) == 0, resumed.err + resumed.stdout.decode()
    log = [json.loads(line) for line in resumed.stdout.decode().splitlines()]
    assert log[0]["event"] == "resumed" and log[-1]["event"] == "done"
    assert [r["device"] for r in log if r["event"] in ("sent", "resent")] == pending
    for name in names:  # one install each, never a second one
        assert len(_installs(recorder, name)) == 1, (name, _installs(recorder, name))
        recorder.wait_topic(name + "/status", lambda p: (p.get("model") or {}).get("version")
                            == "2", 30, name + " on version 2")


def test_a_device_killed_in_its_window_is_retried_when_back_not_counted_done(
        broker, recorder, fleet, tmp_path):
    group, names, root, server = fleet(2)
    install = _install_file(tmp_path, root, server, "2")
    # Gates wide open: this is about offline handling, and a restarted agent's first windows
    # can be many times slower on a loaded machine.
    op = _operator(broker, tmp_path, install, "--group", group, "--canary", "1", "--batch", "1",
                   "--window", "2", "--max-regression", "100", "--offline-wait", "120")
    log = []
    for line in iter(op.proc.stdout.readline, b""):
        log.append(json.loads(line.decode()))
        if log[-1]["event"] == "sent" and log[-1]["device"] == names[1]:
            rid = log[-1]["request_id"]
        if log[-1]["event"] == "activated" and log[-1]["device"] == names[1]:
            # Once the agent has recorded v2 (its own `activated` event comes after that; the
            # rollout may have seen the status first), killed: its Last Will, mid-window.
            recorder.wait_topic(names[1] + "/events", lambda p: p.get("request_id") == rid
                                and p.get("state") == "activated", 30, "activated event")
            fleet.agents[1].proc.send_signal(signal.SIGKILL)
        if log[-1]["event"] == "waiting_for_offline":
            fleet.agents.append(AgentProcess(fleet.agents[1].args[3:]))  # the same device
            break
    code = op.wait(240)
    log += [json.loads(line) for line in op.stdout.decode().splitlines()]
    text = "\n".join(json.dumps(r, sort_keys=True)[:200] for r in log)
    assert code == 0, op.err + text
    offline = [r for r in log if r["event"] == "offline"]
    assert [r["device"] for r in offline] == [names[1]]
    assert "during its window" in offline[0]["detail"]
    assert [r["devices"] for r in log if r["event"] == "waiting_for_offline"] == [[names[1]]]
    assert log[-1]["event"] == "done" and log[-1]["counts"] == {"ok": 2}
    # It came back on v2 (recorded before the kill): watched again, not installed again.
    assert len(_installs(recorder, names[1])) == 1, _installs(recorder, names[1])
    for name in names:
        recorder.wait_topic(name + "/status", lambda p: (p.get("model") or {}).get("version")
                            == "2" and p.get("state") == "serving", 60, name + " on 2")
