"""Bounded on-disk spool for outgoing MQTT messages.

The MQTT client puts every outgoing QoS 1 message here before publishing it and acks it when
the broker's PUBACK arrives, so broker outages and agent restarts lose nothing; on reconnect
it publishes `pending()` oldest first. The spool is one SQLite file (stdlib `sqlite3`).

Durability: WAL journal with `synchronous=NORMAL`. A `put` returns only after its transaction
is committed to the write-ahead log with write(2), i.e. into the operating system's page
cache, so the message survives the agent process crashing or being killed (SIGKILL, OOM
killer, systemd watchdog). On power loss or a kernel crash, the messages put since the last
WAL checkpoint may be lost (SQLite checkpoints, with fsync, every `WAL_AUTOCHECKPOINT_PAGES`
log pages: about 300 small messages, as each put writes ~3 pages), but the database stays
consistent, never half-written or corrupt (acks in that window may be undone too; those
messages are then sent again, which QoS 1 allows). `synchronous=FULL` would also survive
power loss by fsyncing the log on every commit: an fsync per message on the SD card or eMMC
of a Jetson, slow and wearing the flash (7x fewer puts/s even on our ext4 test machine). The
guarantee we need is the process one, so we do not pay for it.

Bound policy (`max_messages`, config `mqtt.spool_max_messages`, default 10000):
  When a put would make the spool hold more than `max_messages` messages, the spool drops the
  oldest pending *predictions* first, then the oldest pending *telemetry*, counting the new
  message among the candidates: a message never pushes out one of a more important kind, so
  a new prediction arriving when no older prediction is left is itself dropped rather than
  evicting telemetry. Dropping is oldest-first, not thinning, so after an outage the broker
  gets the most recent predictions and telemetry without gaps; the `seq` field of predictions
  shows where older ones were dropped. *Events* and *status* messages are never dropped: if
  only they are left, the spool grows past the bound and logs one warning (again only after
  the spool has been back under the bound). Every dropped message is counted per kind in
  `dropped()`, which is stored in the spool file and so persists across restarts.
  Retained status messages are state, not history: putting a retained `status` message
  deletes any still-pending retained `status` message on the same topic (superseded, not
  counted as dropped), so the broker receives only the newest state.

Ids are SQLite AUTOINCREMENT row ids: they increase monotonically for the life of the file,
even across restarts and after everything was acked, and their order is the delivery order.
All calls take one lock around one connection, so the publisher thread and paho's callback
thread can share a Spool, and a reader paging with `pending(after_id=...)` never sees an id
before a smaller one is visible.

Opening an existing file resumes it; the open runs SQLite's quick_check, which reads the
whole file once (a few MB at the default bound). A file SQLite reports as corrupt or not a
database, or one written with an unknown schema version, is renamed to
`<path>.corrupt-<time>` (with its -wal/-shm files) and an empty spool is started, so a damaged
file never stops the agent.
I/O errors during operation (disk full, read-only filesystem) are raised as `sqlite3.Error`
for the caller to handle.
A spool that cannot be opened at all is agent/spool_fallback.py's business.
"""

import logging
import os
import sqlite3
import threading
import time
from typing import Dict, Iterable, List, NamedTuple, Optional

log = logging.getLogger(__name__)

KINDS = ("event", "telemetry", "prediction", "status")
# Least important first: the order in which kinds are dropped at the bound.
DROPPABLE_KINDS = ("prediction", "telemetry")
SCHEMA_VERSION = 1
# SQLite's default auto-checkpoint interval: at most this many 4 KiB pages of committed
# transactions are not yet fsynced (and can be lost on power loss) at any time.
WAL_AUTOCHECKPOINT_PAGES = 1000
# After a checkpoint, truncate the WAL file back to this size so it does not keep flash space.
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
# The path of a spool kept in memory (SQLite's own name for it).
MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_kind ON outbox (kind);
CREATE TABLE IF NOT EXISTS dropped (
    kind TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
"""


class SpooledMessage(NamedTuple):
    """One pending message as stored; `id` is what `ack` takes."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    created_ts: float


class CorruptSpool(Exception):
    """The spool file cannot be used as it is; it will be moved aside."""


def _connect(path: str) -> sqlite3.Connection:
    """Connect to `path`, check the file and create or verify the schema; CorruptSpool if
    unusable."""
    # isolation_level=None: no implicit transactions; put() uses explicit BEGIN/COMMIT.
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path != MEMORY:
            log.warning("spool: %s: filesystem does not support WAL (journal_mode=%s); "
                        "the spool still works, with slower writes", path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=%d" % WAL_AUTOCHECKPOINT_PAGES)
        conn.execute("PRAGMA journal_size_limit=%d" % WAL_SIZE_LIMIT_BYTES)
        check = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        if check != ["ok"]:
            # One row can hold many lines of detail; the first few say enough.
            detail = " ".join(" ".join(check).split("\n")[:3])
            raise CorruptSpool("integrity check failed: %s" % detail)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise CorruptSpool("schema version %d, this agent knows %d"
                               % (version, SCHEMA_VERSION))
        conn.executescript(_SCHEMA)
        conn.executemany("INSERT OR IGNORE INTO dropped (kind, n) VALUES (?, 0)",
                         [(kind,) for kind in KINDS])
        conn.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
        return conn
    except sqlite3.OperationalError:
        # Locked, unreadable, disk full: not corruption; moving the file would lose data.
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CorruptSpool(str(exc))
    except CorruptSpool:
        conn.close()
        raise


def _move_aside(path: str) -> str:
    """Rename the database and its WAL/SHM files; a stale WAL must not meet a new file."""
    aside = "%s.corrupt-%s" % (path, time.strftime("%Y%m%d-%H%M%S"))
    n = 1
    while os.path.exists(aside):
        n += 1
        aside = "%s.corrupt-%s-%d" % (path, time.strftime("%Y%m%d-%H%M%S"), n)
    for suffix in ("-wal", "-shm", "-journal", ""):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


class Spool(object):
    """Bounded, crash-safe FIFO of outgoing MQTT messages in one SQLite file."""

    def __init__(self, path: str, max_messages: int = 10000) -> None:
        if int(max_messages) < 1:
            raise ValueError("spool: max_messages must be at least 1, got %r" % (max_messages,))
        self.path = str(path)
        self.max_messages = int(max_messages)
        self._lock = threading.Lock()
        self._over_bound_warned = False
        self._dropping_warned = False
        if self.path != MEMORY:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            self._conn = _connect(self.path)  # type: Optional[sqlite3.Connection]
        except CorruptSpool as exc:
            aside = _move_aside(self.path)
            log.error("spool: %s is unusable (%s); moved it to %s and started an empty spool. "
                      "Its messages will not be sent; the file is kept for inspection.",
                      self.path, exc, aside)
            self._conn = _connect(self.path)
        self._counts = self._load_counts()

    def _load_counts(self) -> Dict[str, int]:
        conn = self._connection()
        counts = dict((kind, 0) for kind in KINDS)
        for kind, n in conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind"):
            counts[kind] = n
        return counts

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("spool: %s is closed" % self.path)
        return self._conn

    # -- public API ------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> int:
        """Store a message durably and return its id (ids increase in delivery order).

        The id is returned even when the bound policy dropped this very message at once (a
        prediction arriving when nothing less important is left); `dropped()` counts it.
        """
        if kind not in KINDS:
            raise ValueError("spool: kind %r is not one of %s" % (kind, ", ".join(KINDS)))
        if qos not in (0, 1, 2):
            raise ValueError("spool: qos %r is not 0, 1 or 2" % (qos,))
        if not isinstance(topic, str) or not topic:
            raise ValueError("spool: topic must be a non-empty string, got %r" % (topic,))
        if isinstance(payload, str):
            raise TypeError("spool: payload must be bytes, got str (encode it first)")
        blob = bytes(payload)
        retain = bool(retain)
        with self._lock:
            conn = self._connection()
            delta = {}  # type: Dict[str, int]
            newly_dropped = {}  # type: Dict[str, int]
            conn.execute("BEGIN IMMEDIATE")
            try:
                if kind == "status" and retain:
                    cur = conn.execute("DELETE FROM outbox WHERE kind = 'status' AND retain = 1 "
                                       "AND topic = ?", (topic,))
                    if cur.rowcount > 0:
                        delta["status"] = -cur.rowcount
                cur = conn.execute("INSERT INTO outbox (topic, payload, qos, retain, kind, "
                                   "created_ts) VALUES (?, ?, ?, ?, ?, ?)",
                                   (topic, blob, qos, int(retain), kind, time.time()))
                msg_id = cur.lastrowid
                if msg_id is None:  # cannot happen after an INSERT into a rowid table
                    raise RuntimeError("spool: SQLite returned no row id for a put")
                delta[kind] = delta.get(kind, 0) + 1
                total = sum(self._counts.values()) + sum(delta.values())
                excess = total - self.max_messages
                for victim in DROPPABLE_KINDS:
                    if excess <= 0:
                        break
                    cur = conn.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                                       "WHERE kind = ? ORDER BY id LIMIT ?)", (victim, excess))
                    if cur.rowcount > 0:
                        conn.execute("UPDATE dropped SET n = n + ? WHERE kind = ?",
                                     (cur.rowcount, victim))
                        newly_dropped[victim] = cur.rowcount
                        delta[victim] = delta.get(victim, 0) - cur.rowcount
                        excess -= cur.rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full)
                    conn.execute("ROLLBACK")
                raise
            for k, d in delta.items():
                self._counts[k] = self._counts.get(k, 0) + d
            self._note_bound(newly_dropped, excess)
        return msg_id

    def pending(self, limit: int, after_id: int = 0) -> List[SpooledMessage]:
        """Up to `limit` messages with id > `after_id`, oldest first."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT id, topic, payload, qos, retain, kind, created_ts FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit))).fetchall()
        return [SpooledMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6])
                for r in rows]

    def ack(self, msg_id: int) -> bool:
        """Delete a delivered message; False if it was already gone (acked or superseded)."""
        return self.ack_many([msg_id]) == 1

    def ack_many(self, msg_ids: Iterable[int]) -> int:
        """Delete delivered messages in one transaction; how many of them were still there
        (one acked twice, or superseded, is skipped)."""
        with self._lock:
            conn = self._connection()
            delta = {}  # type: Dict[str, int]
            conn.execute("BEGIN IMMEDIATE")
            try:
                for msg_id in msg_ids:
                    row = conn.execute("SELECT kind FROM outbox WHERE id = ?",
                                       (int(msg_id),)).fetchone()
                    if row is None:
                        continue
                    conn.execute("DELETE FROM outbox WHERE id = ?", (int(msg_id),))
                    delta[row[0]] = delta.get(row[0], 0) + 1
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            for kind, n in delta.items():
                self._counts[kind] -= n
            self._note_bound({}, 0)  # re-arms the warnings once back under the bound
            return sum(delta.values())

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> Dict[str, int]:
        """Pending messages per kind (every kind present, zeros included)."""
        with self._lock:
            return dict(self._counts)

    def dropped(self) -> Dict[str, int]:
        """Messages dropped by the bound policy per kind, over the life of the spool file."""
        with self._lock:
            rows = self._connection().execute("SELECT kind, n FROM dropped").fetchall()
        return dict((kind, n) for kind, n in rows)

    def last_id(self) -> int:
        """The highest id this spool has given out (0 when none), acked messages included."""
        with self._lock:
            row = self._connection().execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def adopt(self, other: "Spool") -> int:
        """Move every pending message of `other` (a memory spool) here, keeping their ids, so
        a sender that already handed some of them to the broker still acks them by id. What
        this file held before (from an earlier run) follows them, minus retained status the
        adopted messages supersede. Adds `other`'s drop counts. Returns the number moved."""
        rows = other.pending(max(1, len(other)) + 1000000)
        dropped = other.dropped()
        floor = other.last_id()
        newest_status = set(m.topic for m in rows if m.kind == "status" and m.retain)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                earlier = conn.execute("SELECT topic, payload, qos, retain, kind, created_ts "
                                       "FROM outbox ORDER BY id").fetchall()
                conn.execute("DELETE FROM outbox")
                conn.executemany("INSERT INTO outbox (id, topic, payload, qos, retain, kind, "
                                 "created_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(m.id, m.topic, m.payload, m.qos, int(m.retain), m.kind,
                                   m.created_ts) for m in rows])
                # Ids chosen by SQLite from here on are above every id `other` ever gave
                # out, acked ones included: the sender pages on from the last it saw.
                if conn.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = "
                                "'outbox'", (floor,)).rowcount == 0:
                    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                                 (floor,))
                conn.executemany("INSERT INTO outbox (topic, payload, qos, retain, kind, "
                                 "created_ts) VALUES (?, ?, ?, ?, ?, ?)",
                                 [r for r in earlier
                                  if not (r[4] == "status" and r[3] and r[0] in newest_status)])
                for kind, n in dropped.items():
                    if n:
                        conn.execute("UPDATE dropped SET n = n + ? WHERE kind = ?", (n, kind))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._counts = self._load_counts()
        return len(rows)

    def close(self) -> None:
        """Close the file (checkpointing the WAL); further calls raise RuntimeError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _note_bound(self, newly_dropped: Dict[str, int], excess: int) -> None:
        """Warn once per episode at the bound; never per message."""
        total = sum(self._counts.values())
        if total < self.max_messages:
            self._over_bound_warned = False
            self._dropping_warned = False
            return
        if newly_dropped and not self._dropping_warned:
            self._dropping_warned = True
            log.warning("spool: %s reached its bound of %d messages (mqtt.spool_max_messages); "
                        "dropping the oldest %s until the broker takes messages again",
                        self.path, self.max_messages, " then ".join(DROPPABLE_KINDS))
        if excess > 0 and not self._over_bound_warned:
            self._over_bound_warned = True
            counts = self._counts
            log.warning("spool: %s holds %d messages, over its bound of %d, because events "
                        "(%d) and status (%d) are never dropped", self.path, total,
                        self.max_messages, counts.get("event", 0), counts.get("status", 0))
