"""Command events: each step of a command as an event dict, and throttled progress events.

Events are dicts: {ts, request_id, command, state} plus, where they apply, `progress` (0..1),
`detail`, `error` and, for model/list, `models`. States: accepted -> downloading -> verifying ->
building -> validating -> activated | installed, `done` for ping, list and remove, or
`rejected` (never started: bad payload, duplicate request_id, queue full) / `failed` (started,
did not finish; the active model is unchanged) with `error`.
"""

import logging
import time
from typing import Any, Callable, Dict, Optional

log = logging.getLogger(__name__)

Emit = Callable[[Dict[str, Any]], None]
# The states that end a command: its last event has one of them.
FINAL_OK = ("done", "activated", "installed")
FINAL_BAD = ("rejected", "failed")
FINAL_STATES = FINAL_OK + FINAL_BAD
# progress(phase, fraction 0..1 or None, detail): the same shape as agent.backends.Progress.
Progress = Callable[[str, Optional[float], str], None]


class Reporter(object):
    """Builds events and hands them to the transport's `emit` callback, which must be
    thread-safe; a failing callback is logged and never stops model management."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def __call__(self, command: str, request_id: Optional[str], state: str,
                 progress: Optional[float] = None, detail: Optional[str] = None,
                 error: Optional[str] = None, **extra: Any) -> None:
        event = {"ts": round(time.time(), 3), "request_id": request_id, "command": command,
                 "state": state}  # type: Dict[str, Any]
        if progress is not None:
            event["progress"] = round(max(0.0, min(1.0, progress)), 4)
        if detail is not None:
            event["detail"] = detail
        if error is not None:
            event["error"] = error
        event.update(extra)
        try:
            self._emit(event)
        except Exception:  # a broken publisher must not stop model management
            log.exception("could not emit event %s", event)

    def progress(self, command: str, request_id: Optional[str], building: bool) -> Progress:
        """A progress callback for a download (`building` False: the phase is the state) or a
        build (phase "validating" is state "validating", any other phase "building")."""
        throttle = _Throttle()

        def report(phase: str, fraction: Optional[float], detail: str) -> None:
            if building:
                state = "validating" if phase == "validating" else "building"
                if phase not in ("building", "validating") and detail:
                    detail = "{}: {}".format(phase, detail)
            else:
                state = phase
            if throttle.admit(state, fraction):
                self(command, request_id, state, progress=fraction, detail=detail or None)
        return report


class _Throttle(object):
    """Lets a progress event through on a state change, every 5 %, or every 2 s."""

    def __init__(self) -> None:
        self.state = None  # type: Optional[str]
        self.fraction = None  # type: Optional[float]
        self.when = 0.0

    def admit(self, state: str, fraction: Optional[float]) -> bool:
        now = time.monotonic()
        if (state != self.state or fraction == 1.0 or now - self.when >= 2.0 or
                (fraction is not None and (self.fraction is None or
                                           fraction - self.fraction >= 0.05))):
            if state == self.state and fraction == self.fraction:
                return False
            self.state, self.fraction, self.when = state, fraction, now
            return True
        return False
