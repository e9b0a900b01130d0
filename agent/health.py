"""The agent's health: its state, the problems that degrade it, the status and the events.

The one owner of the retained status. Every part reports through it: `problem(key, reason)`
records or clears a reason for `degraded` (and says so on the events topic), `set_state`
moves the base state (starting, building, serving, offline), `set_building` marks a model
being built while the old one serves. The status is republished on every change.
"""

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .redact import redact_text

log = logging.getLogger("edge-agent")

Describe = Callable[[], Optional[Any]]  # the active model (ref, describe()) or None


class Health(object):
    """State, problems and the building model; publishes status and events on the link."""

    def __init__(self, device_id: str, boot: str, source_uri: str, model: Describe,
                 telemetry: Callable[[], Optional[Dict[str, Any]]] = lambda: None,
                 notifier: Any = None, group: Optional[str] = None) -> None:
        self.device_id = device_id
        self.group = group        # device.group, so fleet tools can select by group
        self.boot = boot          # identifies this process's messages
        self.source_uri = source_uri  # already redacted
        self._model = model
        self._telemetry = telemetry
        self.notifier = notifier
        self.link = None  # type: Any  # set by attach(); nothing is published before
        self.state = "starting"
        self._base_state = "starting"
        self.problems = {}  # type: Dict[str, str]
        self.building = None  # type: Optional[str]  # model built in the background
        # Called with every event published (the live view marks some on its charts).
        self.event_listeners = []  # type: List[Callable[[Dict[str, Any]], None]]
        self._lock = threading.Lock()

    def attach(self, link: Any) -> None:
        """Publish status and events on `link` from now on."""
        self.link = link

    def status_payload(self) -> Dict[str, Any]:
        model = self._model()
        payload = {
            "state": self.state,
            "agent": __version__,
            "device": self.device_id,
            "group": self.group,
            "model": model.describe() if model else None,
            "source": self.source_uri,
            "boot": self.boot,
            "ts": round(time.time(), 3),
        }
        if self.building:
            payload["building"] = self.building
        if self.problems:
            payload["detail"] = "; ".join("{}: {}".format(k, v)
                                          for k, v in sorted(self.problems.items()))
        return payload

    def set_state(self, state: Optional[str] = None) -> None:
        """Publish the retained status; `degraded` wins while any problem is recorded."""
        with self._lock:
            if state is not None:
                self._base_state = state
            base = self._base_state
            new = "degraded" if self.problems and base == "serving" else base
            if new == "serving" and self.building:
                new = "building"
            self.state = new
            payload = self.status_payload()
        if self.link is not None:
            self.link.publish("status", payload, kind="status", retain=True, qos=1)
        if self.notifier is not None:
            self.notifier.status(self.status_line())

    def set_building(self, ref: Optional[str]) -> None:
        """A model being built (status `building` while the old one serves), or None."""
        if ref == self.building:
            return
        self.building = ref
        self.set_state()

    def problem(self, key: str, reason: Optional[str], announce: bool = True) -> None:
        """Record (reason) or clear (None) a reason for `degraded`; on a change republish the
        status and say so on the events topic (command `health`). announce=False only records
        it, for the next status."""
        changed = False
        if reason is not None:
            reason = redact_text(reason)  # camera credentials in a source error, say
        with self._lock:
            if reason is None:
                changed = self.problems.pop(key, None) is not None
            elif self.problems.get(key) != reason:
                self.problems[key] = reason
                changed = True
        if changed and announce:
            self.set_state()
            event = {"command": "health", "request_id": None, "detail": key,
                     "state": "degraded" if reason else "recovered"}
            if reason:
                event["error"] = reason
            self.emit_event(event)

    def offline_payload(self) -> Dict[str, Any]:
        """The last status, at shutdown."""
        with self._lock:
            self.state = self._base_state = "offline"
            payload = self.status_payload()
        payload["reason"] = "shutdown"
        return payload

    def status_line(self) -> str:
        """One line for systemd's STATUS=: state, model, fps, watts, inferences/J."""
        model = self._model()
        if model is None:
            return "{}: no model".format(self.state)
        d = model.describe()
        line = "{} {} on {} {}".format(self.state, model.ref, d.get("backend"),
                                       d.get("precision"))
        tele = self._telemetry()
        if tele is not None:
            line += ", {} fps".format(tele.get("fps"))
            watts = (tele.get("power") or {}).get("total_w")
            if watts is not None:
                line += ", {:.1f} W".format(watts)
            per_j = (tele.get("energy") or {}).get("inferences_per_joule")
            if per_j is not None:
                line += ", {:.1f} inferences/J".format(per_j)
        return line

    def emit_event(self, event: Dict[str, Any]) -> None:
        event = dict(event)
        event.setdefault("ts", round(time.time(), 3))
        if self.link is not None:
            self.link.publish("events", event, kind="event", qos=1)
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")
