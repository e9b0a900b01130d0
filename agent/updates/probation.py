"""Probation of a newly activated model: its first frames decide whether it stays.

`Probation` judges one model's first frames. `ProbationWatch` arms one at each activation
(with the median inference time of the model before as the latency baseline), is fed every
frame's result by the pipeline, and on a failure calls the rollback function it was given (the
model manager's `rollback`: an `accepted` event, then a rollback ahead of the queue).
"""

import collections
import logging
import threading
from typing import Any, Callable, List, Optional

log = logging.getLogger("edge-agent")


class Probation(object):
    """The first frames of a newly activated model: it fails on MAX_ERRORS failed frames
    (load errors, NaN/Inf outputs) or when its median inference time exceeds the previous
    model's by more than `max_latency_factor`."""

    MAX_ERRORS = 3

    def __init__(self, ref: str, previous: str, frames: int, baseline_ms: Optional[float],
                 max_latency_factor: float) -> None:
        self.ref = ref
        self.previous = previous
        self.frames = frames
        self.baseline_ms = baseline_ms
        self.factor = max_latency_factor
        self.seen = 0
        self.errors = 0
        self.last_error = ""
        self.latencies = []  # type: List[float]

    def add(self, ok: bool, infer_ms: Optional[float], error: str = "") -> Optional[str]:
        """None while undecided, 'passed', or the reason it failed."""
        self.seen += 1
        if not ok:
            self.errors += 1
            self.last_error = error
            if self.errors >= self.MAX_ERRORS:
                return "{} of its first {} frames failed (last: {})".format(
                    self.errors, self.seen, error)
        elif infer_ms is not None:
            self.latencies.append(infer_ms)
        if self.seen < self.frames:
            return None
        if self.baseline_ms and self.latencies:
            values = sorted(self.latencies)
            median = values[len(values) // 2]
            if median > self.factor * self.baseline_ms:
                return ("latency regression: median inference {:.1f} ms vs {:.1f} ms before "
                        "(limit: {:g}x, updates.max_latency_factor)".format(
                            median, self.baseline_ms, self.factor))
        return "passed"


class ProbationWatch(object):
    """Arms a Probation at each activation and feeds it; rolls back when it fails.

    `updates` is the config's updates section (probation_frames, max_latency_factor, read at
    each activation); `rollback(reason, detail)` asks for the rollback (the model manager's
    `rollback`, which announces it as an `accepted` event and runs it ahead of the queue).
    """

    def __init__(self, updates: Any, rollback: Callable[[str, str], Any]) -> None:
        self.updates = updates
        self.rollback = rollback
        self.current = None  # type: Optional[Probation]
        self._lock = threading.Lock()
        self.recent_infer = collections.deque(maxlen=50)  # type: Any  # the trusted model's

    def arm(self, ref: str, previous: Optional[str]) -> None:
        """Before `ref` replaces `previous` (armed before the swap so the new model's very
        first frames count); nothing without a previous model or with probation_frames 0."""
        frames = self.updates.probation_frames
        if previous is None or frames <= 0:
            return
        with self._lock:
            self.current = Probation(ref, previous, frames, self._infer_median(),
                                     self.updates.max_latency_factor)

    def disarm(self) -> None:
        with self._lock:
            self.current = None

    def _infer_median(self) -> Optional[float]:
        values = sorted(self.recent_infer)
        return values[len(values) // 2] if values else None

    def result(self, ref: str, ok: bool, infer_ms: Optional[float], error: str = "") -> None:
        """Publish thread (or inference thread on an error): feed the probation of a
        just-activated model, or the latency baseline of a trusted one; roll back on failure."""
        with self._lock:
            probation = self.current
            if probation is None or ref != probation.ref:
                if ok and infer_ms is not None:
                    self.recent_infer.append(infer_ms)
                return
            verdict = probation.add(ok, infer_ms, error)
            if verdict is None:
                return
            self.current = None
        if verdict == "passed":
            log.info("model %s passed probation (%d frames)", probation.ref, probation.frames)
            return
        log.error("model %s failed probation: %s; rolling back to %s", probation.ref, verdict,
                  probation.previous)
        self.rollback(verdict, "automatic: {} failed probation; returning to {}".format(
            probation.ref, probation.previous))
