"""A rollout's state on disk: the plan, each device's step and figures, the outcome, written
atomically after every change, so `fleet rollout --resume` (or a restarted operator) picks up
where it was; and the control file through which `fleet pause` and `fleet abort` reach a
running rollout."""

import json
import math
import os
import time
import uuid
from typing import Any, Dict, List, Optional

from ..atomicfile import write_atomic
from ..errors import AgentError

# Device steps. `ok` and `failed` are final for a stage; `offline` is retried, never done.
PENDING, SENT, ACTIVATED, OK, FAILED, OFFLINE, ROLLED_BACK = (
    "pending", "sent", "activated", "ok", "failed", "offline", "rolled_back")
# Rollout outcomes: running, then one of these.
FINAL = ("done", "aborted", "rolled_back")
CONTROLS = ("pause", "abort")


def default_path(group: str) -> str:
    return "fleet-rollout-{}.json".format("".join(c if c.isalnum() or c in "-_" else "_"
                                                  for c in group))


def parse_canary(text: str, total: int) -> int:
    """`N` devices or `P%` of `total` (rounded up, at least 1), never more than `total`."""
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            count = int(math.ceil(total * share / 100.0))
        else:
            count = int(text)
            if count < 1:
                raise ValueError
    except ValueError:
        raise AgentError("--canary: {!r} must be a count (2) or a percentage (10%)".format(text))
    return max(1, min(total, count))


def plan(devices: List[str], canary: int, batch: int) -> List[List[str]]:
    """Stages: the first `canary` devices, then batches of `batch`."""
    devices = sorted(devices)
    stages = [devices[:canary]]
    rest = devices[canary:]
    for i in range(0, len(rest), max(1, batch)):
        stages.append(rest[i:i + batch])
    return [s for s in stages if s]


class RolloutState(object):
    """The JSON document of one rollout and the file it lives in."""

    def __init__(self, path: str, doc: Dict[str, Any]) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def create(cls, path: str, group: str, install: Dict[str, Any], stages: List[List[str]],
               options: Dict[str, Any]) -> "RolloutState":
        doc = {"id": uuid.uuid4().hex[:10], "group": group, "install": install,
               "target": "{}@{}".format(install.get("name"), install.get("version")),
               "stages": stages, "stage": 0, "options": options, "outcome": "running",
               "created": round(time.time(), 3), "log": [],
               "devices": dict((d, {"step": PENDING, "stage": i, "attempts": 0})
                               for i, stage in enumerate(stages) for d in stage)}
        state = cls(path, doc)
        state.save()
        return state

    @classmethod
    def load(cls, path: str) -> "RolloutState":
        try:
            with open(path, "r", encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            raise AgentError("no rollout state at {}: start one with `fleet rollout "
                             "INSTALL.json --group G` (or name it with --state)".format(path))
        except (OSError, ValueError) as exc:
            raise AgentError("rollout state {} unreadable: {}".format(path, exc))
        if not isinstance(doc, dict) or "devices" not in doc or "stages" not in doc:
            raise AgentError("{} is not a rollout state file".format(path))
        return cls(path, doc)

    def save(self) -> None:
        data = json.dumps(self.doc, indent=1, sort_keys=True).encode("utf-8")
        write_atomic(self.path, data)

    # ---- devices ----
    def device(self, name: str) -> Dict[str, Any]:
        return self.doc["devices"][name]

    def set_step(self, name: str, step: str, **fields: Any) -> None:
        entry = self.device(name)
        entry["step"] = step
        entry.update(fields)
        self.note(name, step, **fields)

    def note(self, device: Optional[str], what: str, **fields: Any) -> Dict[str, Any]:
        """Append to the log and save; returns the record (printed by the caller)."""
        record = {"ts": round(time.time(), 3), "event": what}
        if device is not None:
            record["device"] = device
        record.update(dict((k, v) for k, v in fields.items() if k != "baseline"))
        self.doc["log"].append(record)
        self.save()
        return record

    def touched(self) -> List[str]:
        """Devices the rollout changed (activated the target on), not yet rolled back."""
        return sorted(d for d, e in self.doc["devices"].items() if e.get("activated_ts")
                      and e["step"] != ROLLED_BACK)

    def counts(self) -> Dict[str, int]:
        counts = {}  # type: Dict[str, int]
        for entry in self.doc["devices"].values():
            counts[entry["step"]] = counts.get(entry["step"], 0) + 1
        return counts


def control_path(state_path: str) -> str:
    return state_path + ".control"


def read_control(state_path: str) -> Optional[str]:
    try:
        with open(control_path(state_path), "r", encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError:
        return None
    return value if value in CONTROLS else None


def write_control(state_path: str, value: Optional[str]) -> None:
    """`pause` or `abort` for the running rollout; None clears it."""
    path = control_path(state_path)
    if value is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    write_atomic(path, value.encode("utf-8"))
