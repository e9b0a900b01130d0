"""How `fleet rollout` reports: one text line per step (a pipe, a log), or on a terminal a live
bar per stage (devices activated, failed and offline out of the stage's size, and what the
rollout waits for, with the telemetry window's countdown), notable steps printed above it, and
a summary line at the end."""

import json
import threading
import time
from typing import Any, Dict, List, Optional

from .progress import LiveLine, bar

# Outcomes of the whole rollout (records without a device).
OUTCOMES = ("done", "incomplete", "paused", "rolled_back", "aborted")
# Steps shown above the bar; the others (stage, sent, activated, ok) move the bar.
NOTABLE = ("failed", "offline", "resent", "rolling_back", "rolled_back", "rollback_failed",
           "waiting_for_offline", "resumed", "paused", "aborted")
SETTLED = ("activated", "ok", "failed", "offline", "rolled_back")  # filled in the bar
JUDGED = ("ok", "failed", "offline", "rolled_back")  # nothing more to wait for


def format_record(record: Dict[str, Any]) -> str:
    """`EVENT  DEVICE  key=value ...`: one step as a line of text."""
    extra = " ".join("{}={}".format(k, json.dumps(v)) for k, v in sorted(record.items())
                     if k not in ("ts", "event", "device", "baseline"))
    return "{:<14} {:<16} {}".format(record.get("event"), record.get("device", ""),
                                     extra).rstrip()


class RolloutBar(object):
    """The `emit` of a rollout on a terminal: `record` takes each step; `follow(rollout)` starts
    redrawing every `interval` s (the countdown), `close()` stops it."""

    def __init__(self, state_path: str, out: Any = None, interval: float = 0.5) -> None:
        self.state_path = state_path
        self.line = LiveLine(out)
        self.interval = interval
        self.rollout = None  # type: Any
        self.stage = None  # type: Optional[str]
        self.devices = []  # type: List[str]
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    def follow(self, rollout: Any) -> None:
        self.rollout = rollout
        rollout.on_phase = self._redraw
        self._thread = threading.Thread(target=self._tick, name="rollout-bar", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.line.finish()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._redraw()

    def record(self, record: Dict[str, Any]) -> None:
        event = record.get("event")
        if event == "stage":
            if self.stage is not None:
                self.line.finish(self._text())
            self.stage, self.devices = record.get("name"), list(record.get("devices") or [])
        elif event in OUTCOMES + ("waiting_for_offline",) and "device" not in record:
            if self.stage is not None:  # the stage's line stays as it ended
                self.line.finish(self._text())
            self.stage = None
            self.line.message(self._summary(record) if event in OUTCOMES
                              else format_record(record))
            return
        elif event in NOTABLE:
            self.line.message(format_record(record))
        self._redraw()

    def _redraw(self) -> None:
        if self.stage is not None and self.rollout is not None:
            self.line.update(self._text())

    def _text(self) -> str:
        devices = self.rollout.state.doc["devices"] if self.rollout else {}
        steps = [devices[d]["step"] for d in self.devices if d in devices]
        size = len(self.devices)
        activated = sum(s in ("activated", "ok") for s in steps)
        failed, offline = steps.count("failed"), steps.count("offline")
        settled = sum(s in SETTLED for s in steps)
        text = "{:<13} [{}] {}/{} activated, {} failed, {} offline".format(
            self.stage, bar(settled, size), activated, size, failed, offline)
        phase = self.rollout.phase if self.rollout else {}
        if any(s not in JUDGED for s in steps):
            text += " | " + str(phase.get("what"))
            if phase.get("ends"):
                text += " {:.0f} s left".format(max(0.0, phase["ends"] - time.monotonic()))
        return text

    def _summary(self, record: Dict[str, Any]) -> str:
        counts = record.get("counts") or (self.rollout.state.counts() if self.rollout else {})
        total = sum(counts.values())
        parts = ", ".join("{} {}".format(n, step.replace("_", " "))
                          for step, n in sorted(counts.items()))
        text = "rollout {}: {} of {} device(s) in {:.0f} s".format(
            record["event"].replace("_", " "), parts or "none", total,
            time.monotonic() - self.started)
        if record.get("reason"):
            text += "; " + str(record["reason"])
        if record.get("offline"):
            text += "; offline: " + ", ".join(record["offline"])
        if record["event"] in ("paused", "incomplete"):
            text += "; continue with `fleet rollout --resume --state {}`".format(
                self.state_path)
        return text
