"""A stand-in for the agent's MqttLink that keeps what it is asked to publish, in order."""

from typing import Any, Dict, List, Optional, Tuple


class RecordingLink(object):
    """`publish(suffix, payload, kind, retain, qos)` as MqttLink takes it; `sent` holds
    (suffix, payload) pairs."""

    def __init__(self) -> None:
        self.sent = []  # type: List[Tuple[str, Dict[str, Any]]]

    def publish(self, suffix: str, payload: Dict[str, Any], kind: str, retain: bool = False,
                qos: Optional[int] = None) -> None:
        self.sent.append((suffix, payload))

    def events(self) -> List[Dict[str, Any]]:
        return [p for s, p in self.sent if s == "events"]
