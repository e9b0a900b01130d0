"""A scripted device on a real broker, for tests of the rollout engine: it speaks the agent's
MQTT contract (retained status with a Last Will, telemetry, events answering model/install and
model/rollback, request_ids remembered by the agent's own ReplayWindow) without capture,
inference or downloads, and the test decides when it installs, crashes (its Last Will) and
boots again."""

import json
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from agent.updates.replay import ReplayWindow


class ScriptedDevice(object):
    """`behaviours` says what each install (in order) does: "activate" (the default), "fail"
    (a `failed` event, as for a bad sha256), "crash_before_activation", "crash_in_window"
    (activates, then the connection drops before any telemetry of the new model), or
    "drop_during_install" (the connection drops while the install is under way, the run goes
    on: after `boot(same_run=True)` it activates when the same request arrives again),
    "status_lost" (activates, but its new status never reaches the broker: only its telemetry
    shows the new model) or "goes_back" (activates, then its status shows the old model again,
    as after a probation rollback).
    Telemetry goes out every `interval` seconds while connected, like an agent's
    telemetry.interval_s."""

    def __init__(self, port: int, name: str, group: str, model: str = "m@1",
                 interval: float = 0.1, prefix: str = "edge") -> None:
        self.port, self.name, self.group, self.prefix = port, name, group, prefix
        self.model, self.interval = model, interval
        self.behaviours = []  # type: List[str]
        self.installs = []  # type: List[str]  # request_ids it ran
        self.on_install = None  # type: Optional[Callable[[str, Dict[str, Any]], None]]
        self.replay = ReplayWindow(None)  # kept across boots, as the agent's file is
        self.client = None  # type: Any
        self.boot_id = None  # type: Optional[str]
        self._previous = None  # type: Optional[str]
        self._silent = False
        self._held = None  # type: Optional[Any]  # (request_id, payload) under way
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def topic(self, suffix: str) -> str:
        return "{}/{}/{}".format(self.prefix, self.name, suffix)

    # ---- connection ----
    def boot(self, same_run: bool = False) -> "ScriptedDevice":
        """Connect with the Last Will (a new boot id, unless `same_run`: a reconnection),
        publish the retained status, and start the telemetry."""
        import paho.mqtt.client as mqtt
        kw = {"client_id": "scripted-" + self.name + "-" + uuid.uuid4().hex[:6]}
        client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
                  if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client(**kw))
        will = {"state": "offline", "device": self.name, "group": self.group,
                "reason": "connection lost"}  # as agent/uplink.py's
        client.will_set(self.topic("status"), json.dumps(will), qos=1, retain=True)
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        client.subscribe(self.topic("cmd/#"), qos=1)
        if not subscribed.wait(10):
            raise AssertionError(self.name + " could not subscribe")
        with self._lock:
            if not (same_run and self.boot_id):
                self.boot_id = uuid.uuid4().hex[:8]
            self.client, self._silent = client, False
            self.status().wait_for_publish()
        threading.Thread(target=self._tick, args=(client,), daemon=True).start()
        return self

    def crash(self, after: Any = None) -> None:
        """Drop the connection without a DISCONNECT (once `after`, a publish, is out): the
        broker publishes the Last Will."""
        if after is not None:
            after.wait_for_publish()
        with self._lock:
            client, self.client = self.client, None
        client.loop_stop()
        client.socket().shutdown(socket.SHUT_RDWR)
        client.socket().close()

    def close(self) -> None:
        """Disconnect and clear the retained status (booting once more when it had crashed)."""
        if self.client is None:
            self.boot()
        self._closed.set()
        with self._lock:
            client, self.client = self.client, None
        if client is not None:
            client.publish(self.topic("status"), b"", qos=1, retain=True).wait_for_publish()
            client.disconnect()  # first: the network loop then ends at once
            client.loop_stop()

    def _tick(self, client: Any) -> None:
        while not self._closed.wait(self.interval):
            with self._lock:
                if self.client is not client:
                    return
                if not self._silent:
                    self._publish("telemetry", {
                        "ts": round(time.time(), 3), "window_s": self.interval,
                        "boot": self.boot_id, "model": self.model, "frames": 10, "fps": 10.0,
                        "latency_ms": {"infer": {"p50": 5.0}, "end_to_end": {"p99": 20.0}},
                        "energy": {"inferences_per_joule": 40.0}})

    # ---- what an agent publishes (called under _lock; never waits: paho's thread) ----
    def _publish(self, suffix: str, payload: Dict[str, Any], retain: bool = False) -> Any:
        return self.client.publish(self.topic(suffix), json.dumps(payload), qos=1,
                                   retain=retain)

    def status(self) -> Any:
        name, version = self.model.split("@")
        return self._publish("status", {"state": "serving", "group": self.group,
                                        "boot": self.boot_id, "ts": round(time.time(), 3),
                                        "model": {"name": name, "version": version}},
                             retain=True)

    def event(self, rid: str, command: str, state: str, **fields: Any) -> Any:
        return self._publish("events", dict(fields, request_id=rid, command=command,
                                            state=state, ts=round(time.time(), 3)))

    # ---- commands (paho's thread) ----
    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        command = message.topic[len(self.topic("cmd/")):]
        payload = json.loads(message.payload.decode("utf-8"))
        rid = payload["request_id"]
        if self.on_install is not None and command == "model/install":
            self.on_install(self.name, payload)
        with self._lock:
            if self.client is not client:
                return
            if not self.replay.remember(rid):
                self.event(rid, command, "rejected", error="duplicate request_id {!r}: a "
                           "command with this request_id was already received".format(rid))
                if self._held and self._held[0] == rid:
                    self._activate(*self._held)
            elif command == "model/install":
                self._install(rid, payload)
            elif command == "model/rollback" and self._previous:
                self.model, self._previous = self._previous, None
                self.status()
                self.event(rid, command, "activated")

    def _install(self, rid: str, payload: Dict[str, Any]) -> None:
        self.installs.append(rid)
        behaviour = self.behaviours.pop(0) if self.behaviours else "activate"
        sent = self.event(rid, "model/install", "accepted")
        if behaviour == "fail":
            self.event(rid, "model/install", "failed", error="sha256 mismatch")
            return
        if behaviour == "crash_before_activation":
            self._silent = True
            threading.Thread(target=self.crash, args=(sent,)).start()  # not in paho's loop
            return
        if behaviour == "drop_during_install":
            self._held = (rid, payload)
            threading.Thread(target=self.crash, args=(sent,)).start()
            return
        sent = self._activate(rid, payload, status=behaviour != "status_lost")
        if behaviour == "goes_back":
            self.model, self._previous = self._previous, None
            self.status()
        if behaviour == "crash_in_window":
            self._silent = True
            threading.Thread(target=self.crash, args=(sent,)).start()

    def _activate(self, rid: str, payload: Dict[str, Any], status: bool = True) -> Any:
        self._held = None
        self._previous, self.model = self.model, "{}@{}".format(payload["name"],
                                                                  payload["version"])
        if status:  # the agent's order: the new status, then the event
            self.status()
        return self.event(rid, "model/install", "activated")
