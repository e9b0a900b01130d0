"""The rollout engine over a real Mosquitto with scripted devices (support.scripted_device):
`fleet pause` stops a rollout between stages and `--resume` finishes it with no second install;
devices offline during a stage (from the start, before activating, or during their telemetry
window) are reported and retried, never counted as done."""

import argparse
import json
import threading
import uuid

import pytest

from agent.cli import fleet_rollout
from agent.config import load_config
from agent.fleet import state as st
from agent.fleet.rollout import Rollout
from agent.fleet.watch import FleetWatch
from support.scripted_device import ScriptedDevice

INSTALL = {"name": "m", "version": "2", "url": "http://127.0.0.1:9/m.onnx",
           "sha256": "0" * 64, "manifest": {}}


@pytest.fixture
def devices(broker):
    """make(count) -> booted ScriptedDevices of a new group, named GROUP-0, GROUP-1, ..."""
    made = []

    def make(count):
        group = "u" + uuid.uuid4().hex[:6]
        made.extend(ScriptedDevice(broker.port, "{}-{}".format(group, i), group)
                    for i in range(count))
        return [d.boot() for d in made[-count:]]
    yield make
    for device in made:
        device.close()


@pytest.fixture
def config(broker):
    return load_config(overrides=["mqtt.host=127.0.0.1", "mqtt.port={}".format(broker.port)])


def _args(**kw):
    base = dict(install=None, group=None, canary="1", batch=1, window=0.0, max_failures=0,
                max_regression=0.5, activate_timeout=20.0, offline_wait=20.0, resume=False,
                json=True, state=None, fleet_command="rollout")
    base.update(kw)
    return argparse.Namespace(**base)


def _records(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_pause_stops_between_stages_and_resume_installs_nothing_twice(
        config, devices, tmp_path, capsys):
    fleet = devices(3)
    group = fleet[0].group
    path = str(tmp_path / "rollout.json")
    install = tmp_path / "install.json"
    install.write_text(json.dumps(INSTALL))

    # The operator runs `fleet pause` while batch 1's install is on its way to device 1.
    def pause(name, payload):
        fleet_rollout.dispatch(config, argparse.Namespace(fleet_command="pause", state=path,
                                                          group=None))
    fleet[1].on_install = pause
    args = _args(install=str(install), group=group, state=path)
    assert fleet_rollout.rollout(config, args, path) == fleet_rollout.EXIT["paused"]
    log = _records(capsys.readouterr().out)
    assert log[-1]["event"] == "paused"
    state = json.loads(open(path).read())
    assert state["outcome"] == "paused"
    steps = dict((d.name, state["devices"][d.name]["step"]) for d in fleet)
    # The stage in flight finished (device 1 judged on its window), the next never started.
    assert steps == {fleet[0].name: "ok", fleet[1].name: "ok", fleet[2].name: "pending"}
    assert [r["devices"] for r in log if r["event"] == "stage"] == [[fleet[0].name],
                                                                    [fleet[1].name]]
    assert fleet[2].installs == []

    fleet[1].on_install = None
    assert fleet_rollout.rollout(config, _args(resume=True, state=path), path) == 0
    log = _records(capsys.readouterr().out)
    assert log[0]["event"] == "resumed" and log[-1]["event"] == "done"
    sent = [r["device"] for r in log if r["event"] in ("sent", "resent")]
    assert sent == [fleet[2].name]
    assert [len(d.installs) for d in fleet] == [1, 1, 1]
    state = json.loads(open(path).read())
    assert state["outcome"] == "done"
    assert set(e["step"] for e in state["devices"].values()) == {"ok"}
    assert st.read_control(path) is None


def _engine(config, fleet, path, emit, canary=1, batch=10, offline_wait=20.0):
    watch = FleetWatch(config, "test-rollout").__enter__()
    watch.sync()
    stages = st.plan([d.name for d in fleet], canary, batch)
    state = st.RolloutState.create(path, fleet[0].group, dict(INSTALL), stages, {
        "window_s": 0.0, "max_failures": 0, "max_regression": 0.5,
        "activate_timeout_s": 20.0, "offline_wait_s": offline_wait})
    return watch, Rollout(watch, state, emit)


def _run(config, fleet, tmp_path, **kw):
    """One rollout of the engine to its end: (outcome, every record it emitted, the Rollout)."""
    log = []
    watch, rollout = _engine(config, fleet, str(tmp_path / "r.json"), log.append, **kw)
    try:
        outcome = rollout.run()
    finally:
        watch.close()
    return outcome, log, rollout


def test_offline_devices_are_reported_and_retried_never_counted_done(config, devices,
                                                                     tmp_path):
    fleet = devices(4)
    canary, away, dies_early, dies_in_window = fleet
    away.crash()  # offline (its Last Will) before the rollout starts
    dies_early.behaviours = ["crash_before_activation"]
    dies_in_window.behaviours = ["crash_in_window"]
    log = []
    seen_offline = threading.Event()

    def emit(record):
        log.append(record)
        if record["event"] == "waiting_for_offline":
            seen_offline.set()
            # What the rollout knew then: three devices offline, none of them done.
            counts = dict(rollout.state.counts())
            assert counts == {"ok": 1, "offline": 3}, counts
            threading.Thread(target=lambda: [d.boot() for d in fleet[1:]]).start()
    watch, rollout = _engine(config, fleet, str(tmp_path / "r.json"), emit)
    try:
        outcome = rollout.run()
    finally:
        watch.close()
    print("\n".join(json.dumps(r, sort_keys=True)[:200] for r in log))
    assert seen_offline.is_set()
    offline = [r["device"] for r in log if r["event"] == "offline"]
    assert sorted(offline) == sorted([away.name, dies_early.name, dies_in_window.name])
    assert [r for r in log if r["event"] == "waiting_for_offline"][0]["devices"] == \
        sorted(offline)
    assert outcome == "done", log[-1]
    assert set(e["step"] for e in rollout.state.doc["devices"].values()) == {"ok"}
    # Retried: the device that never got it and the one that died before activating get an
    # install now; the one that died in its window is back on the target and only watched.
    assert len(away.installs) == 1
    assert len(dies_early.installs) == 2 and len(set(dies_early.installs)) == 2
    assert len(dies_in_window.installs) == 1
    assert any("its window again" in (r.get("detail") or "") for r in log
               if r["event"] == "activated" and r["device"] == dies_in_window.name)
    assert all(r["event"] != "failed" for r in log)


def test_a_device_that_stays_offline_leaves_the_rollout_incomplete(config, devices, tmp_path):
    fleet = devices(2)
    fleet[1].crash()
    outcome, log, rollout = _run(config, fleet, tmp_path, offline_wait=0.5)
    assert outcome == "incomplete"
    assert log[-1]["event"] == "incomplete" and log[-1]["offline"] == [fleet[1].name]
    assert log[-1]["counts"] == {"ok": 1, "offline": 1}
    assert fleet[1].installs == []
    entry = rollout.state.doc["devices"][fleet[1].name]
    assert entry["step"] == "offline" and entry["attempts"] == 2  # the stage, then the retry


def test_a_rollback_does_not_call_an_offline_device_rolled_back(config, devices, tmp_path):
    fleet = devices(2)
    away, bad = fleet
    away.behaviours = ["crash_in_window"]  # changed by the rollout, then its Last Will
    bad.behaviours = ["fail"]
    outcome, log, rollout = _run(config, fleet, tmp_path, canary=2)
    assert outcome == "rolled_back"
    print("\n".join(json.dumps(r, sort_keys=True)[:200] for r in log))
    entry = rollout.state.doc["devices"][away.name]
    assert entry["step"] == "offline", entry  # not "rolled_back": it may still run m@2
    failed = [r for r in log if r["event"] == "rollback_failed"]
    assert [r["device"] for r in failed] == [away.name]
    assert "offline" in failed[0]["error"] and away.name in failed[0]["hint"]
    assert rollout.state.touched() == [away.name]
    assert log[-1]["counts"] == {"failed": 1, "offline": 1}


def test_a_connection_drop_during_the_install_gets_the_same_request_not_a_second(
        config, devices, tmp_path):
    fleet = devices(2)
    steady, dropped = fleet
    dropped.behaviours = ["drop_during_install"]
    log = []

    def emit(record):
        log.append(record)
        if record["event"] == "waiting_for_offline":  # the same run of the agent reconnects
            threading.Thread(target=dropped.boot, kwargs={"same_run": True}).start()
    watch, rollout = _engine(config, fleet, str(tmp_path / "r.json"), emit, canary=2)
    try:
        assert rollout.run() == "done", log[-1]
    finally:
        watch.close()
    print("\n".join(json.dumps(r, sort_keys=True)[:200] for r in log))
    assert [r["device"] for r in log if r["event"] == "offline"] == [dropped.name]
    resent = [r for r in log if r["event"] == "resent"]
    assert [(r["device"], r["request_id"]) for r in resent] == [(dropped.name,
                                                                  dropped.installs[0])]
    assert len(dropped.installs) == 1 and len(steady.installs) == 1
    assert set(e["step"] for e in rollout.state.doc["devices"].values()) == {"ok"}


def test_a_device_whose_new_status_is_lost_is_judged_on_its_telemetry(config, devices,
                                                                      tmp_path):
    # Its `activated` event arrives, its retained status still names m@1 (published before
    # the activation), its telemetry names m@2: it did not go back, it is serving m@2.
    fleet = devices(2)
    fleet[0].behaviours = ["status_lost"]
    outcome, log, rollout = _run(config, fleet, tmp_path)
    assert outcome == "done", log
    assert [rollout.state.doc["devices"][d.name]["step"] for d in fleet] == ["ok", "ok"]
    assert all(r["event"] != "failed" for r in log)


def test_a_device_that_goes_back_after_activating_fails_and_no_batch_starts(
        config, devices, tmp_path):
    fleet = devices(2)
    fleet[0].behaviours = ["goes_back"]  # a status newer than its activation names m@1
    outcome, log, rollout = _run(config, fleet, tmp_path)
    assert outcome == "rolled_back", log
    failed = [r for r in log if r["event"] == "failed"]
    assert [r["device"] for r in failed] == [fleet[0].name]
    assert "went back to m@1" in failed[0]["error"]
    assert fleet[1].installs == []
