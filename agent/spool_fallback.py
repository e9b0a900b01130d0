"""FallbackSpool: the outbox in memory while the spool file cannot be opened, until it can.

A spool that cannot be opened at all (disk full, a read-only or missing state_dir, spool.db
made a directory) must not stop the agent: `FallbackSpool` then keeps the same bounded,
ordered outbox in memory (an SQLite `:memory:` database, so the bound policy is the very
same code), says why in `fault`, and `recover()` moves every pending message to the file, ids
unchanged, once it opens again. Messages held in memory are lost only if the process ends
before that.
"""

import logging
import os
import sqlite3
import threading
from typing import Dict, Iterable, List, Optional

from .spool import MEMORY, Spool, SpooledMessage

log = logging.getLogger(__name__)


class FallbackSpool(object):
    """The on-disk Spool at `path`, or, while that cannot be opened, one in memory with the
    same bound; the Spool API either way. `fault` says why it is in memory (None on disk);
    `recover()` tries the file again and moves the pending messages there."""

    def __init__(self, path: str, max_messages: int = 10000) -> None:
        self.path = str(path)
        self.max_messages = int(max_messages)
        self.fault = None  # type: Optional[str]
        self._lock = threading.RLock()
        try:
            self._spool = Spool(self.path, self.max_messages)
        except (sqlite3.Error, OSError) as exc:
            self.fault = self._reason(exc)
            log.error("spool: %s; keeping outgoing messages in memory until it works "
                      "(they are lost if the agent stops before that)", self.fault)
            self._spool = Spool(MEMORY, self.max_messages)

    def _reason(self, exc: BaseException) -> str:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if os.path.isdir(self.path):
            detail += " (it is a directory)"
        return "{} cannot be opened: {}".format(self.path, detail)

    def recover(self) -> bool:
        """True when the spool is on disk (again); on the way, the messages held in memory
        move to the file with their ids."""
        with self._lock:
            if self.fault is None:
                return True
            try:
                disk = Spool(self.path, self.max_messages)
            except (sqlite3.Error, OSError) as exc:
                self.fault = self._reason(exc)
                return False
            try:
                moved = disk.adopt(self._spool)
            except (sqlite3.Error, OSError) as exc:
                disk.close()
                self.fault = self._reason(exc)
                return False
            self._spool.close()
            self._spool = disk
            self.fault = None
        log.info("spool: %s works again; moved %d pending messages to it from memory",
                 self.path, moved)
        return True

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> int:
        with self._lock:
            return self._spool.put(topic, payload, qos, retain, kind)

    def pending(self, limit: int, after_id: int = 0) -> List[SpooledMessage]:
        with self._lock:
            return self._spool.pending(limit, after_id)

    def ack(self, msg_id: int) -> bool:
        with self._lock:
            return self._spool.ack(msg_id)

    def ack_many(self, msg_ids: Iterable[int]) -> int:
        with self._lock:
            return self._spool.ack_many(msg_ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._spool)

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return self._spool.counts()

    def dropped(self) -> Dict[str, int]:
        with self._lock:
            return self._spool.dropped()

    def close(self) -> None:
        with self._lock:
            self._spool.close()

    def __enter__(self) -> "FallbackSpool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
