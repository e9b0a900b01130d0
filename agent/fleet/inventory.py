"""The fleet inventory: what the agents' retained status and info and their latest telemetry say
about each device, folded from MQTT messages into one row per device (pure, no network)."""

import json
import time
from typing import Any, Dict, List, Optional, Tuple

SUFFIXES = ("status", "info", "telemetry", "events")
COLUMNS = (("device", "DEVICE"), ("state", "STATE"), ("model", "MODEL"),
           ("backend", "BACKEND"), ("fps", "FPS"), ("infer_p50_ms", "INFER p50"),
           ("watts", "W"), ("inferences_per_joule", "INF/J"), ("temperature_c", "TEMP C"),
           ("last_seen", "LAST SEEN"), ("boot", "BOOT"))


def split_topic(prefix: str, topic: str) -> Optional[Tuple[str, str]]:
    """`P/D/suffix` -> (D, suffix) for the suffixes the fleet reads, else None."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) != 2 or parts[1] not in SUFFIXES or parts[0] == "groups":
        return None
    return parts[0], parts[1]


def decode(payload: bytes) -> Optional[Dict[str, Any]]:
    """A JSON object, or None (empty = a cleared retained message, or not JSON)."""
    if not payload:
        return None
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Inventory(object):
    """Devices seen under one MQTT prefix: the last status, info and telemetry of each."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.status = {}     # type: Dict[str, Dict[str, Any]]
        self.info = {}       # type: Dict[str, Dict[str, Any]]
        self.telemetry = {}  # type: Dict[str, Dict[str, Any]]
        self.seen = {}       # type: Dict[str, float]  # device -> newest ts of its messages

    def feed(self, device: str, suffix: str, payload: Dict[str, Any]) -> None:
        if suffix == "status":
            self.status[device] = payload
        elif suffix == "info":
            self.info[device] = payload
        elif suffix == "telemetry":
            self.telemetry[device] = payload
        ts = payload.get("ts")
        if isinstance(ts, (int, float)) and suffix != "info":
            self.seen[device] = max(self.seen.get(device, 0.0), float(ts))

    def group_of(self, device: str) -> Optional[str]:
        return (self.status.get(device) or {}).get("group")

    def online(self, device: str) -> bool:
        state = (self.status.get(device) or {}).get("state")
        return state is not None and state != "offline"

    def devices(self, group: Optional[str] = None) -> List[str]:
        """Devices with a status (in `group` when given), sorted."""
        return sorted(d for d in self.status if group is None or self.group_of(d) == group)

    def row(self, device: str) -> Dict[str, Any]:
        """One device's figures; None where the device has not said."""
        status = self.status.get(device) or {}
        model = status.get("model") or {}
        tele = self.telemetry.get(device) or {}
        if tele.get("boot") is not None and tele.get("boot") != status.get("boot"):
            tele = {}  # telemetry of an earlier run of the agent
        latency = tele.get("latency_ms") or {}
        energy = tele.get("energy") or {}
        temps = tele.get("temperature_c") or {}
        return {
            "device": device,
            "group": status.get("group"),
            "state": status.get("state"),
            "reason": status.get("reason"),
            "detail": status.get("detail"),
            "model": "{}@{}".format(model["name"], model.get("version"))
                     if model.get("name") else None,
            "backend": "{}/{}".format(model.get("backend"), model.get("precision"))
                       if model.get("backend") else None,
            "fps": tele.get("fps"),
            "infer_p50_ms": (latency.get("infer") or {}).get("p50"),
            "e2e_p99_ms": (latency.get("end_to_end") or {}).get("p99"),
            "watts": (tele.get("power") or {}).get("total_w"),
            "inferences_per_joule": energy.get("inferences_per_joule"),
            "temperature_c": max(temps.values()) if temps else None,
            "last_seen": self.seen.get(device),
            "boot": status.get("boot"),
            "board": (self.info.get(device) or {}).get("board"),
        }


def format_table(rows: List[Dict[str, Any]], now: Optional[float] = None) -> str:
    """Rows as an aligned text table; offline devices say why."""
    now = time.time() if now is None else now
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        line = []
        for key, _ in COLUMNS:
            value = row.get(key)
            if key == "last_seen":
                text = "-" if value is None else _age(now - value)
            elif key == "state" and value == "offline" and row.get("reason"):
                text = "offline ({})".format(row["reason"])
            elif isinstance(value, float):
                text = "{:.1f}".format(value)
            else:
                text = "-" if value is None else str(value)
            line.append(text)
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n"
                   for r in cells)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return "{:.0f}s ago".format(seconds)
    if seconds < 7200:
        return "{:.0f}m ago".format(seconds / 60)
    return "{:.1f}h ago".format(seconds / 3600)
