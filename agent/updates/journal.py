"""The open-command journal: every command that was accepted and has no final event yet.

A device killed in the middle of a command (kill -9, the OOM killer, a power cut, systemd's
watchdog or stop timeout during a long TensorRT build) never sent that command's final event, so
the operator's `edge-agent send` and a fleet rollout waited for it in vain. The journal,
`state_dir/commands-open.json`, is written atomically when a command is accepted, when it starts
running, and when its final event has been handed to the outbox (the spool, which keeps it across
a crash). At the next start the agent answers each command left in it with a final `failed`
event whose error says it was interrupted, so every accepted command gets a final event, at
least once: a crash between a final event and the journal's update sends both.
"""

import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional

from ..atomicfile import write_atomic

log = logging.getLogger(__name__)

OPEN_FILE = "commands-open.json"


def interrupted_error(entry: Dict[str, Any]) -> str:
    """The error of the final event that answers a command the agent did not finish."""
    since = entry.get("since")
    when = " (accepted {})".format(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))) \
        if isinstance(since, (int, float)) else ""
    return ("interrupted: the agent stopped while this command was {}{} (killed, crashed, power "
            "lost or stopped before it finished) and has restarted; it did not finish. Send it "
            "again with a new request_id if it is still wanted".format(
                entry.get("state", "queued"), when))


class CommandJournal(object):
    """The accepted commands without a final event, persisted in `state_dir/commands-open.json`
    (kept in memory only when `state_dir` is None). Thread-safe.

    `left_over()` is what an earlier run left open: read once, when the journal is made."""

    def __init__(self, state_dir: Optional[str]) -> None:
        self.path = os.path.join(state_dir, OPEN_FILE) if state_dir else None
        self._lock = threading.Lock()
        self._open = {}  # type: Dict[str, Dict[str, Any]]
        self._left = self._load()
        for entry in self._left:
            self._open[entry["request_id"]] = entry

    def left_over(self) -> List[Dict[str, Any]]:
        """The commands an earlier run accepted and never finished, oldest first."""
        return list(self._left)

    def opened(self, command: str, request_id: str) -> None:
        """A command was accepted (queued)."""
        with self._lock:
            self._open[request_id] = {"request_id": request_id, "command": command,
                                      "state": "queued", "since": round(time.time(), 3)}
            self._save()

    def running(self, request_id: str) -> None:
        with self._lock:
            entry = self._open.get(request_id)
            if entry is not None and entry["state"] != "running":
                entry["state"] = "running"
                self._save()

    def closed(self, request_id: Optional[str]) -> None:
        """The command's final event was handed on: it is no longer open."""
        with self._lock:
            if request_id in self._open:
                del self._open[request_id]
                self._save()

    def _load(self) -> List[Dict[str, Any]]:
        if self.path is None:
            return []
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return []
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("open-command journal %s unreadable (%s): commands interrupted by the "
                        "last stop are not answered; starting with an empty one", self.path, exc)
            return []
        entries = data.get("commands") if isinstance(data, dict) else None
        left = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("request_id"), str) and \
                    isinstance(entry.get("command"), str):
                left.append(entry)
        return left

    def _save(self) -> None:
        """Called under _lock. A failed write is logged: commands keep working."""
        if self.path is None:
            return
        data = json.dumps({"commands": list(self._open.values())}, separators=(",", ":"))
        try:
            write_atomic(self.path, data.encode("utf-8"))
        except OSError as exc:
            log.warning("cannot save the open-command journal %s: %s", self.path, exc)
