"""Both ends of a fleet across a broker restart (a real Mosquitto, stopped and started again on
the same port): the operator's FleetWatch subscribes again and sees what is published after
the restart; a device's MQTT link calls its on_reconnect (the daemon republishes the retained
status there, which the Last Will may have replaced) at each reconnect, not at the first connect.
"""

import os

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
