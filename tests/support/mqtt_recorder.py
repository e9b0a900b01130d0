"""A real MQTT client that records messages."""

import json
import threading
import time
from typing import Any, Callable, List


class Recorder(object):
    """A real MQTT client that records every message under a topic filter."""

    def __init__(self, port: int, topic: str = "#", **client_kw: Any) -> None:
        import paho.mqtt.client as mqtt
        self.messages = []  # type: List[Any]
        self.cond = threading.Condition()
        self._subscribed = threading.Event()
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        else:
            self.client = mqtt.Client()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(10):
            raise AssertionError("recorder could not subscribe to {}".format(topic))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload.decode("utf-8")) if msg.payload else None
        except ValueError:
            payload = msg.payload
        with self.cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self.cond.notify_all()

    def of(self, suffix: str) -> List[Any]:
        with self.cond:
            return [p for t, p, _ in self.messages if t.endswith("/" + suffix)]

    def wait_for(self, predicate: Callable[[List[Any]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [t for t, _, _ in self.messages][-10:]
                    raise AssertionError("timed out waiting for {} (last topics: {})".format(
                        what, topics))
                self.cond.wait(left)

    def mark(self) -> int:
        """A position in the message list, for `wait_topic(..., since=mark)`."""
        with self.cond:
            return len(self.messages)

    def wait_topic(self, suffix: str, predicate: Callable[[Any], bool], timeout: float,
                   what: str, since: int = 0) -> Any:
        def find(messages: List[Any]) -> Any:
            for topic, payload, _ in messages[since:]:
                if topic.endswith("/" + suffix) and predicate(payload):
                    return payload
            return None
        return self.wait_for(find, timeout, what)

    def publish(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.client.publish(topic, data, qos=1).wait_for_publish()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
