"""Test helpers shared by several test modules (from tests/system/test_reliability_outage.py)."""

import threading


class SessionRecorder(object):
    """An MQTT client with a persistent session (clean_session=False): the broker keeps its
    subscription and queues its messages across the broker's own restart."""

    def __init__(self, port, topics):
        import paho.mqtt.client as mqtt
        self.messages = []
        self.cond = threading.Condition()
        kw = {"client_id": "operator-outage", "clean_session": False}
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        else:
            self.client = mqtt.Client(**kw)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg):
        import json
        with self.cond:
            self.messages.append((msg.topic, json.loads(msg.payload.decode())))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout, what):
        import time
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for " + what)
                self.cond.wait(left)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
