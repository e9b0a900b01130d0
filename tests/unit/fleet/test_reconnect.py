"""Both ends of a fleet across a broker restart (a real Mosquitto, stopped and started again on
the same port): the operator's FleetWatch subscribes again and sees what is published after
the restart; a device's MQTT link calls its on_reconnect (the daemon republishes the retained
status there, which the Last Will may have replaced) at each reconnect, not at the first connect;
the rollout sends an install that got no answer again, with the same request_id.
"""

import json
import os
import threading
import time

import pytest

from support.broker import persistent_broker
from support.durable_recorder import DurableRecorder
from support.mqtt_recorder import Recorder
from support.paths import ROOT
from support.waiting import wait_until


def _config(port, device="dev-1"):
    from agent.config import load_config
    return load_config(os.path.join(ROOT, "config.yaml"), [
        "mqtt.host=127.0.0.1", "mqtt.port={}".format(port), "device.id=" + device])


@pytest.fixture
def restartable(tmp_path):
    broker = persistent_broker(str(tmp_path))
    yield broker
    broker.stop()


def test_fleet_watch_subscribes_again_after_a_broker_restart(restartable):
    from agent.fleet.watch import FleetWatch
    with FleetWatch(_config(restartable.port), "test") as watch:
        watch.sync()
        assert watch.connects == 1
        restartable.stop()
        wait_until(lambda: not watch.connected, 30, "the watch to see the broker gone")
        restartable.start()
        wait_until(lambda: watch.connects == 2, 30, "the watch to reconnect")
        watch.sync()  # the marker's round trip needs the subscription made again
        device = Recorder(restartable.port)
        try:
            device.publish("edge/dev-9/status", {"state": "serving", "device": "dev-9",
                                                 "model": {"name": "m", "version": "2"}})
        finally:
            device.close()
        assert watch.wait(lambda: watch.inventory.online("dev-9"), 10)
        # A command sent while the broker is away is not an error: paho sends it later.
        rec = DurableRecorder(restartable.port, ("edge/dev-9/cmd/#",))
        try:
            restartable.stop()
            wait_until(lambda: not watch.connected, 30, "the watch to see the broker gone")
            assert watch.send("dev-9", "ping", {"request_id": "while-away"}) == "while-away"
            restartable.start()
            rec.wait_for(lambda m: any(p.get("request_id") == "while-away" for _, p, _ in m),
                         30, "the ping sent while the broker was away")
        finally:
            rec.close()


def test_link_calls_on_reconnect_at_each_reconnect_only(restartable, tmp_path):
    from agent.mqtt import MqttLink
    from agent.spool import Spool
    calls = []
    spool = Spool(str(tmp_path / "spool.db"))
    link = MqttLink(_config(restartable.port).mqtt, "dev-1", None, spool)
    link.on_reconnect = lambda: calls.append(link.connected)
    link.start()
    try:
        wait_until(lambda: link.connected, 30, "the first connect")
        link.publish("status", {"state": "serving"}, kind="status", retain=True)
        wait_until(lambda: len(spool) == 0, 30, "the status delivered")
        assert calls == []
        restartable.stop()
        wait_until(lambda: not link.connected, 30, "the link to see the broker gone")
        restartable.start()
        wait_until(lambda: calls, 30, "on_reconnect")
        assert calls == [True]
    finally:
        link.stop(0.5)
        spool.close()


class DeafOnce(object):
    """A device over MQTT (a real client) that loses its first install, as one sent while it
    was away would be, and answers a repeat of a request_id as the agent does."""

    def __init__(self, port, name):
        import paho.mqtt.client as mqtt
        self.name = name
        self.seen = []  # request_ids received
        self.done = set()  # request_ids run
        kw = {"client_id": "deaf-" + name}
        self.client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
                       if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client(**kw))
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("edge/{}/cmd/#".format(name), qos=1)
        self.status("1")

    def publish(self, suffix, payload, retain=False):
        self.client.publish("edge/{}/{}".format(self.name, suffix), json.dumps(payload), qos=1,
                            retain=retain).wait_for_publish()

    def status(self, version):
        self.publish("status", {"state": "serving", "device": self.name, "group": "deaf",
                                "boot": "b1", "model": {"name": "tiny", "version": version},
                                "ts": time.time()}, retain=True)

    def telemetry(self, version):
        self.publish("telemetry", {"boot": "b1", "model": "tiny@" + version, "frames": 10,
                                   "window_s": 0.0, "ts": time.time() + 0.01,
                                   "latency_ms": {"infer": {"p50": 1.0}}})

    def _on_message(self, client, userdata, message):
        rid = json.loads(message.payload.decode())["request_id"]
        self.seen.append(rid)
        if len(self.seen) == 1:
            return  # lost
        if rid in self.done:
            threading.Thread(target=self.publish, args=("events", {
                "request_id": rid, "state": "rejected", "error": "duplicate request_id: a "
                "command with this request_id was already received"})).start()
            return
        self.done.add(rid)
        threading.Thread(target=self._activate, args=(rid,)).start()

    def _activate(self, rid):
        # In the agent's order: the status shows the new model before the `activated` event
        # (the rollout reads a device whose status still shows the old one as gone back).
        self.publish("events", {"request_id": rid, "state": "accepted", "ts": time.time()})
        self.status("2")
        self.publish("events", {"request_id": rid, "state": "activated", "ts": time.time()})
        self.telemetry("2")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_rollout_sends_an_unanswered_install_again_with_the_same_request_id(
        restartable, tmp_path, monkeypatch):
    from agent.fleet import rollout as ro
    from agent.fleet import state as st
    from agent.fleet.watch import FleetWatch
    monkeypatch.setattr(ro, "RESEND_S", 0.5)
    device = DeafOnce(restartable.port, "deaf-0")
    try:
        records = []
        with FleetWatch(_config(restartable.port), "test") as watch:
            watch.sync()
            state = st.RolloutState.create(
                str(tmp_path / "r.json"), "deaf", {"name": "tiny", "version": "2"},
                [["deaf-0"]], {"window_s": 0.0, "max_failures": 0, "max_regression": 1e6,
                               "activate_timeout_s": 30.0, "offline_wait_s": 1.0})
            rollout = ro.Rollout(watch, state, records.append)
            device.telemetry("1")  # the baseline: telemetry is not retained
            assert rollout.run() == "done", records
        rid = state.device("deaf-0")["request_id"]
        assert device.seen == [rid, rid]  # lost, then the same request again: one activation
        assert [r["event"] for r in records if r.get("device") == "deaf-0"] == [
            "sent", "resent", "activated", "ok"]
    finally:
        device.close()
