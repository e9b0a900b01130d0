"""An MQTT recorder that outlives broker restarts: a persistent session (clean_session off, a
fixed client id), subscriptions made at every connect, so with a persistent broker it misses
nothing published while the broker was down or the recorder was reconnecting."""

import threading
import uuid
from typing import Any, Dict, List, Optional, Tuple

from support.mqtt_recorder import Recorder


class DurableRecorder(Recorder):
    """Every message under `topics` (QoS 1), kept in order as (topic, payload, retained);
    waits, reads and close() as Recorder's."""

    def __init__(self, port: int, topics: Tuple[str, ...] = ("#",),
                 client_id: Optional[str] = None) -> None:
        import paho.mqtt.client as mqtt
        self.messages = []  # type: List[Tuple[str, Any, bool]]
        self.cond = threading.Condition()
        self.connects = 0
        self.subscribed = 0  # SUBACKs: the subscriptions hold from then on
        self.topics = topics
        cid = client_id or "durable-recorder-" + uuid.uuid4().hex[:8]
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                      clean_session=False)
        else:
            self.client = mqtt.Client(client_id=cid, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait_for(lambda m: self.subscribed, 10, "the recorder's subscriptions")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, *props: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])
        with self.cond:
            self.connects += 1
            self.cond.notify_all()

    def _on_subscribe(self, *args: Any) -> None:
        with self.cond:
            self.subscribed += 1
            self.cond.notify_all()

    def events(self) -> Dict[str, List[Dict[str, Any]]]:
        """Device events by request_id, in arrival order."""
        out = {}  # type: Dict[str, List[Dict[str, Any]]]
        with self.cond:
            for topic, payload, _ in self.messages:
                if topic.endswith("/events") and isinstance(payload, dict) and \
                        payload.get("request_id"):
                    out.setdefault(str(payload["request_id"]), []).append(payload)
        return out

    def commands(self, device: str) -> List[Tuple[str, Any]]:
        """(command, payload) of every command the broker carried to `device`."""
        prefix = "edge/{}/cmd/".format(device)
        with self.cond:
            return [(t[len(prefix):], p) for t, p, _ in self.messages if t.startswith(prefix)]
