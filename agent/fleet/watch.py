"""The operator's MQTT session over the fleet: one connection that follows every device's status,
info, telemetry and events into an Inventory, knows when the broker's retained messages are all
in (a round-trip marker, not a sleep), and sends commands. A lost connection (a broker restart)
is retried in the background and the subscriptions are made again at every connect; what was
published meanwhile is not replayed (a clean session): the retained status is, and the rollout
re-sends a command that got no answer (the agents drop a request_id they have seen)."""

import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from ..errors import AgentError
from .inventory import Inventory, decode, split_topic

Listener = Callable[[str, str, Dict[str, Any]], None]  # (device, suffix, payload)


class FleetWatch(object):
    """`with FleetWatch(config) as watch:` connected and subscribed; `sync()` returns once
    every retained status/info has arrived."""

    def __init__(self, config: Any, name: str = "fleet") -> None:
        self.config = config
        self.prefix = config.mqtt.prefix
        self.inventory = Inventory(self.prefix)
        self.cond = threading.Condition()
        self.listeners = []  # type: List[Listener]  # called under the lock, keep them short
        self.session = uuid.uuid4().hex[:12]
        self._marker_topic = "{}/_operator/{}".format(self.prefix, self.session)
        self._markers = set()  # type: set
        self._subscribed = threading.Event()
        self.messages = 0
        self.connects = 0  # successful connects; more than 1 = reconnected after a loss
        self.connected = False
        from ..mqtt import make_client
        self.client = make_client(config.mqtt, "edge-agent-{}-{}".format(name, self.session))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)

    def __enter__(self) -> "FleetWatch":
        try:
            self.client.connect(self.config.mqtt.host, self.config.mqtt.port, keepalive=30)
        except OSError as exc:
            raise AgentError("cannot reach the broker {}:{}: {} (check mqtt.host/mqtt.port)"
                             .format(self.config.mqtt.host, self.config.mqtt.port, exc))
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            self.close()
            raise AgentError("broker {}:{} did not confirm the subscriptions".format(
                self.config.mqtt.host, self.config.mqtt.port))
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, *props: Any) -> None:
        """Subscribe at every connect: a clean session forgets them when the link drops."""
        if getattr(rc, "value", rc) != 0:
            return  # refused: paho retries; __enter__ reports it when nothing confirms
        topics = [("{}/+/{}".format(self.prefix, s), 1)
                  for s in ("status", "info", "telemetry", "events")]
        client.subscribe(topics + [(self._marker_topic, 1)])
        with self.cond:
            self.connects += 1
            self.connected = True
            self.cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, *rest: Any) -> None:
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:  # never connected: nothing to close
            pass

    def sync(self, timeout: float = 10.0) -> None:
        """Return once everything the broker had for us when we subscribed has arrived: the
        broker sends a subscription's retained messages before a message published later."""
        marker = uuid.uuid4().hex
        self.client.publish(self._marker_topic, marker, qos=1)
        if not self.wait(lambda: marker in self._markers, timeout):
            raise AgentError("the broker did not echo a message within {:.0f} s".format(timeout))

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until predicate() (checked under the lock, at every message) or timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return value
                self.cond.wait(min(left, 1.0))

    def send(self, device: str, command: str, payload: Dict[str, Any]) -> str:
        """Publish a command to one device (never retained); returns its request_id."""
        body = dict(payload)
        body.setdefault("request_id", uuid.uuid4().hex[:12])
        body.setdefault("ts", round(time.time(), 3))
        topic = "{}/{}/cmd/{}".format(self.prefix, device, command)
        info = self.client.publish(topic, json.dumps(body), qos=1)
        if info.rc == 0:  # else not connected: paho sends it after the reconnect
            try:
                info.wait_for_publish(10.0)
            except (RuntimeError, ValueError):  # the link dropped meanwhile: the same
                pass
        return body["request_id"]

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic == self._marker_topic:
            with self.cond:
                self._markers.add(message.payload.decode("utf-8", "replace"))
                self.cond.notify_all()
            return
        where = split_topic(self.prefix, message.topic)
        payload = decode(message.payload)
        if where is None or payload is None:
            return
        device, suffix = where
        with self.cond:
            self.messages += 1
            self.inventory.feed(device, suffix, payload)
            for listener in list(self.listeners):  # under the lock: waiters see it all
                listener(device, suffix, payload)
            self.cond.notify_all()
