"""A broker restart while one agent's MQTT link keeps running (agent/mqtt.py with the real
spool): what was in flight when the broker died, what was produced during the outage and what
is produced right after the reconnect all arrive, in production order, nothing lost.

The broker is a real Mosquitto with persistence, stopped and started again on the same port;
the operator's subscriber has a persistent session, so the broker queues for it while it is
away. The in-flight case: the broker is frozen (SIGSTOP) while messages are handed to paho, so
they are on the wire without a PUBACK, then killed; after the reconnect paho re-sends them and
new messages must wait behind them and behind the spool.

Whether a new message could overtake the re-sent ones is a race between the link's sender
thread and paho's network thread, which re-sends right after the on_connect callback. To make
it deterministic, the test holds the network thread at the link's "MQTT connected" log line
(written in on_connect, after the link marks itself connected) until the sender thread has
decided: it either declined to send (what the link must do while re-sent messages are
unacknowledged) or handed a new message to paho.
"""

import logging
import os
import signal
import threading
import time

from agent.spool import Spool
from support.paths import ROOT
from support.broker import persistent_broker
from support.waiting import wait_until
from support.sessions import SessionRecorder

DEVICE = "reconnect"


class Producer(object):
    """Publishes {"n": 1, 2, ...} through the link, numbering in production order."""

    def __init__(self, link):
        self.link = link
        self.n = 0
        self.lock = threading.Lock()

    def send(self, count):
        for _ in range(count):
            with self.lock:
                self.n += 1
                self.link.publish("events", {"n": self.n}, kind="event", qos=1)


def _numbers(operator):
    with operator.cond:
        return [p["n"] for t, p in operator.messages if t.endswith("/events")]


def _check(numbers, produced):
    first_seen = []
    seen = set()
    for n in numbers:
        if n not in seen:
            seen.add(n)
            first_seen.append(n)
    missing = sorted(set(range(1, produced + 1)) - seen)
    assert not missing, "lost: {} of {} (first few: {})".format(len(missing), produced,
                                                                  missing[:10])
    out_of_order = [(a, b) for a, b in zip(first_seen, first_seen[1:]) if b < a]
    assert not out_of_order, "out of production order (first seen): {}".format(
        out_of_order[:10])


class HoldAtConnect(logging.Handler):
    """Holds paho's network thread at "MQTT connected" until the sender thread decides: it
    held back (its `held_back` count moved) or it handed a new message to paho (`sent_up_to`
    moved), as `MqttLink.sending()` shows."""

    def __init__(self, link):
        super(HoldAtConnect, self).__init__(logging.INFO)
        self.link = link
        self.armed = False
        self.held = 0

    def emit(self, record):
        if not self.armed or not record.getMessage().startswith("MQTT connected"):
            return
        self.armed = False
        self.held += 1
        before = self.link.sending()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            now = self.link.sending()
            if now.held_back != before.held_back:
                return  # the sender declined: paho may re-send now
            if now.sent_up_to != before.sent_up_to:
                return  # the sender handed a new message to paho first
            time.sleep(0.001)


def _make_link(tmp_path, port):
    from agent.config import load_config
    from agent.mqtt import MqttLink
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "mqtt.host=127.0.0.1", "mqtt.port={}".format(port), "device.id=" + DEVICE,
        "device.state_dir=" + str(tmp_path / "state")])
    os.makedirs(str(tmp_path / "state"))
    spool = Spool(str(tmp_path / "state" / "spool.db"))
    link = MqttLink(config.mqtt, DEVICE, None, spool)
    return link, spool, config.mqtt.prefix


def test_broker_restart_with_one_running_link_keeps_order_and_loses_nothing(tmp_path):
    broker = persistent_broker(str(tmp_path), "max_inflight_messages 0")
    link, spool, prefix = _make_link(tmp_path, broker.port)
    operator = SessionRecorder(broker.port, ["{}/{}/events".format(prefix, DEVICE)])
    producer = Producer(link)
    hold = HoldAtConnect(link)
    mqtt_log = logging.getLogger("agent.mqtt")
    old_level = mqtt_log.level
    mqtt_log.setLevel(logging.INFO)
    mqtt_log.addHandler(hold)
    try:
        link.start()
        wait_until(lambda: link.connected, 30, "the link to connect")
        producer.send(50)                                   # before the outage
        wait_until(lambda: len(set(_numbers(operator))) >= 50, 30, "the first 50 messages")
        wait_until(lambda: len(spool) == 0, 30, "the spool to drain")

        # Save the operator's session, freeze the broker, hand messages to paho (they go on
        # the wire and stay unacknowledged), then kill it: those are in flight.
        os.kill(broker.proc.pid, signal.SIGUSR1)
        wait_until(lambda: os.path.exists(os.path.join(broker.store_dir, "mosquitto.db")), 30,
                   "mosquitto to save its database")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        # Fewer than the link's in-flight window, so the window alone does not hold back
        # new messages after the reconnect.
        in_flight = link.INFLIGHT_WINDOW // 3
        producer.send(in_flight)
        wait_until(lambda: link.sending().in_flight >= in_flight or len(spool) == 0, 30,
                   "messages in flight to the frozen broker")
        broker.proc.kill()
        broker.proc.wait(10)
        broker.proc = None
        wait_until(lambda: not link.connected, 30, "the link to see the broker gone")
        producer.send(200)                                  # during the outage: spooled
        assert len(spool) >= 200

        hold.armed = True
        broker.start()                                      # same port, same database
        wait_until(lambda: link.connected, 60, "the link to reconnect")
        producer.send(200)                                  # right after the reconnect
        wait_until(lambda: len(spool) == 0, 60, "the spool to drain after the reconnect")
        producer.send(10)                                   # and once all is caught up
        total = producer.n
        wait_until(lambda: set(range(1, total + 1)) <= set(_numbers(operator)), 60,
                   "all {} messages at the operator".format(total))
    finally:
        mqtt_log.removeHandler(hold)
        mqtt_log.setLevel(old_level)
        link.stop(1.0)
        operator.close()
        if broker.proc is not None:
            try:
                os.kill(broker.proc.pid, signal.SIGCONT)
            except OSError:
                pass
        broker.stop()
        spool.close()
    assert hold.held == 1, "the reconnect was not seen in the link's log"
    _check(_numbers(operator), total)
    print("broker restart: produced {} received {} (with duplicates)".format(
        total, len(_numbers(operator))))
