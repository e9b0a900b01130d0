"""Replay protection for commands: the persisted window of recent request_ids and the age
check of a command's `ts`.

The last `size` request_ids are kept in `state_dir/commands-seen.json`, written atomically, so
a restart does not forget them; a command with `ts` older than updates.command_max_age_s (or
more than MAX_FUTURE_S in the future) is refused.
"""

import collections
import json
import logging
import os
import threading
import time
from typing import Deque, Optional, Set

from ..atomicfile import write_atomic

log = logging.getLogger(__name__)

# A command's `ts` may be this far in the future (clock skew between sender and device).
MAX_FUTURE_S = 60.0
SEEN_FILE = "commands-seen.json"
DEFAULT_COMMAND_MAX_AGE_S = 300.0


def stale_reason(ts: Optional[float], max_age_s: Optional[float]) -> Optional[str]:
    """Why a command sent at `ts` is too old (or from the future) to run, or None."""
    if ts is None or max_age_s is None:
        return None
    age = time.time() - ts
    if age > max_age_s:
        return ("expired: the command's ts is {:.0f} s old, over updates.command_max_age_s "
                "({:g} s); send it again with the current time as ts (and check the "
                "sender's and the device's clocks)".format(age, max_age_s))
    if -age > MAX_FUTURE_S:
        return ("the command's ts is {:.0f} s in the future (more than {:g} s ahead of the "
                "device's clock); fix the sender's or the device's clock".format(
                    -age, MAX_FUTURE_S))
    return None


class ReplayWindow(object):
    """The last `size` request_ids, persisted in `state_dir/commands-seen.json` (not persisted
    when `state_dir` is None). Thread-safe."""

    def __init__(self, state_dir: Optional[str], size: int = 512) -> None:
        self.size = size
        self.path = os.path.join(state_dir, SEEN_FILE) if state_dir else None
        self._lock = threading.Lock()
        self._seen = collections.deque()  # type: Deque[str]
        self._seen_set = set()  # type: Set[str]
        self._load()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def remember(self, request_id: str) -> bool:
        """Add a request_id; False when it is in the window already (a replay)."""
        with self._lock:
            if request_id in self._seen_set:
                return False
            self._seen.append(request_id)
            self._seen_set.add(request_id)
            while len(self._seen) > self.size:
                self._seen_set.discard(self._seen.popleft())
            self._save()
            return True

    def forget(self, request_id: Optional[str]) -> None:
        """Drop a request_id: a command refused for a full queue may be sent again with it."""
        with self._lock:
            if request_id in self._seen_set:
                self._seen_set.discard(request_id)
                self._seen.remove(request_id)
                self._save()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
            ids = data.get("request_ids") if isinstance(data, dict) else None
        except FileNotFoundError:
            return
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("replay window %s unreadable (%s); starting with an empty one",
                        self.path, exc)
            return
        for rid in (ids or [])[-self.size:]:
            if isinstance(rid, str) and rid not in self._seen_set:
                self._seen.append(rid)
                self._seen_set.add(rid)

    def _save(self) -> None:
        """Called under _lock. A failed write is logged: commands keep working."""
        if self.path is None:
            return
        data = json.dumps({"request_ids": list(self._seen)}, separators=(",", ":"))
        try:
            write_atomic(self.path, data.encode("utf-8"))
        except OSError as exc:
            log.warning("cannot save the replay window %s: %s", self.path, exc)
