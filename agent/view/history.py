"""The live view's memory of the last minutes: one chart point per telemetry message, and the
events worth marking on the charts' time axis (model activated, rolled back, degraded or
recovered, reload).

`History` is fed by the telemetry and event listeners (cheap: a few numbers per message) and
read by the web page through `/history.json`.
"""

import threading
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from .overlay import lookup

SPAN_S = 600.0          # what the charts show: the last ten minutes
MAX_POINTS = 1200       # telemetry at 0.5 s for ten minutes
MAX_EVENTS = 200
COVERAGES = ("board", "gpu", "cpu_package")

# Health problem keys as people name them on a timeline.
_PROBLEM_NAMES = {"source": "camera"}


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def power_coverage(message: Optional[Dict[str, Any]]) -> str:
    """What the power figure covers: board, gpu or cpu_package; `unknown` where telemetry does
    not say (the field `power_coverage`, or `power.coverage`) or there is no power sensor."""
    value = lookup(message, "power_coverage")
    if value is None:
        value = lookup(message, "power", "coverage")
    return value if value in COVERAGES else "unknown"


def chart_point(message: Dict[str, Any]) -> Dict[str, Any]:
    """The numbers the page charts from one telemetry message (None where unknown).

    power_w is the window's mean power (energy.mean_w) where there is one, else the last
    reading (power.total_w); temp_c is the hottest thermal zone.
    """
    temps = [_number(v) for v in (lookup(message, "temperature_c") or {}).values()] \
        if isinstance(lookup(message, "temperature_c"), dict) else []
    temps = [t for t in temps if t is not None]
    power = _number(lookup(message, "energy", "mean_w"))
    if power is None:
        power = _number(lookup(message, "power", "total_w"))
    return {
        "t": _number(message.get("ts")),
        "fps": _number(message.get("fps")),
        "infer_p50": _number(lookup(message, "latency_ms", "infer", "p50")),
        "infer_p99": _number(lookup(message, "latency_ms", "infer", "p99")),
        "e2e_p50": _number(lookup(message, "latency_ms", "end_to_end", "p50")),
        "e2e_p99": _number(lookup(message, "latency_ms", "end_to_end", "p99")),
        "power_w": power,
        "inf_per_j": _number(lookup(message, "energy", "inferences_per_joule")),
        "temp_c": max(temps) if temps else None,
        "coverage": power_coverage(message),
    }


def timeline_event(event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """{t, kind, text} for an event worth a mark on the time axis, else None.

    kinds: activated, rolled_back, degraded, recovered, reload.
    """
    command, state = event.get("command"), event.get("state")
    detail = event.get("detail")
    if state == "activated":
        kind = "rolled_back" if command == "model/rollback" or \
            str(event.get("request_id") or "").startswith("auto-rollback") else "activated"
        text = "rolled back" if kind == "rolled_back" else "model activated"
    elif command == "health" and state in ("degraded", "recovered"):
        kind = state
        text = "{} {}".format(_PROBLEM_NAMES.get(str(detail), str(detail)), state)
        detail = event.get("error")
    elif command == "reload" and state in ("done", "failed"):
        kind = "reload"
        text = "reload" if state == "done" else "reload failed"
        detail = event.get("detail") or event.get("error")
    else:
        return None
    if detail:
        text += ": " + str(detail)
    return {"t": _number(event.get("ts")), "kind": kind, "text": text[:200]}


class History(object):
    """Chart points and timeline events of the last `span_s` seconds (thread-safe)."""

    def __init__(self, span_s: float = SPAN_S, max_points: int = MAX_POINTS,
                 max_events: int = MAX_EVENTS) -> None:
        self.span_s = span_s
        self._lock = threading.Lock()
        self._points = deque(maxlen=max_points)  # type: Deque[Dict[str, Any]]
        self._events = deque(maxlen=max_events)  # type: Deque[Dict[str, Any]]
        self.version = 0  # changes with every point or event kept

    def add_telemetry(self, message: Dict[str, Any]) -> None:
        point = chart_point(message)
        if point["t"] is None:
            return
        with self._lock:
            self._points.append(point)
            self._trim(point["t"])
            self.version += 1

    def add_event(self, event: Dict[str, Any]) -> None:
        mark = timeline_event(event)
        if mark is None or mark["t"] is None:
            return
        with self._lock:
            self._events.append(mark)
            self._trim(mark["t"])
            self.version += 1

    def _trim(self, now: float) -> None:
        for items in (self._points, self._events):
            while items and items[0]["t"] < now - self.span_s:
                items.popleft()

    def snapshot(self) -> Dict[str, Any]:
        """{version, span_s, points, events}: what /history.json serves."""
        with self._lock:
            points = list(self._points)  # type: List[Dict[str, Any]]
            events = list(self._events)  # type: List[Dict[str, Any]]
            version = self.version
        return {"version": version, "span_s": self.span_s, "points": points,
                "events": events}
