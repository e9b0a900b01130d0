"""Edges of the on-disk spool (agent/spool.py) that mutation testing found untested: the bound
of 1, field round trips, topic checks, which retained messages supersede, a failure inside a
put, the warnings per episode, the documented SQLite settings, and two corrupt files moved
aside in the same second."""

import logging
import os
import sqlite3

import pytest

from agent import spool as spool_mod
from agent.spool import SCHEMA_VERSION, Spool

TOPIC = "edge/dev/events"
STATUS = "edge/dev/status"


def test_a_bound_of_one_is_allowed_and_zero_is_not(tmp_path):
    with Spool(str(tmp_path / "one.db"), max_messages=1) as spool:
        spool.put(TOPIC, b"a", 1, False, "prediction")
        spool.put(TOPIC, b"b", 1, False, "prediction")
        assert [m.payload for m in spool.pending(10)] == [b"b"]
    with pytest.raises(ValueError, match="max_messages must be at least 1, got 0"):
        Spool(str(tmp_path / "zero.db"), max_messages=0)


@pytest.mark.parametrize("qos,retain", [(0, True), (1, False), (2, True), (1, True)])
def test_qos_and_retain_round_trip_independently(tmp_path, qos, retain):
    with Spool(str(tmp_path / "s.db")) as spool:
        spool.put(TOPIC, b"x", qos, retain, "event")
        (msg,) = spool.pending(10)
        assert (msg.qos, msg.retain, msg.kind, msg.topic) == (qos, retain, "event", TOPIC)


@pytest.mark.parametrize("topic", ["", None, b"edge/dev/events", 7])
def test_topic_must_be_a_non_empty_string(tmp_path, topic):
    with Spool(str(tmp_path / "s.db")) as spool:
        with pytest.raises(ValueError, match="topic must be a non-empty string"):
            spool.put(topic, b"x", 1, False, "event")
        assert len(spool) == 0


def test_only_a_retained_status_supersedes_the_pending_retained_status(tmp_path):
    with Spool(str(tmp_path / "s.db")) as spool:
        spool.put(STATUS, b"retained-1", 1, True, "status")
        spool.put(STATUS, b"not-retained", 1, False, "status")   # history: kept
        spool.put(STATUS, b"event", 1, True, "event")            # another kind: kept
        assert [m.payload for m in spool.pending(10)] == [b"retained-1", b"not-retained",
                                                           b"event"]
        spool.put(STATUS, b"retained-2", 1, True, "status")
        assert [m.payload for m in spool.pending(10)] == [b"not-retained", b"event",
                                                           b"retained-2"]
        assert spool.counts()["status"] == 2 and spool.dropped()["status"] == 0


def test_a_failure_inside_a_put_is_rolled_back_and_the_spool_goes_on(tmp_path, monkeypatch):
    with Spool(str(tmp_path / "s.db")) as spool:
        spool.put(TOPIC, b"before", 1, False, "event")
        real_time = spool_mod.time.time

        def broken():
            raise OSError("clock unreadable")
        monkeypatch.setattr(spool_mod.time, "time", broken)
        with pytest.raises(OSError):
            spool.put(TOPIC, b"lost", 1, False, "event")
        monkeypatch.setattr(spool_mod.time, "time", real_time)
        spool.put(TOPIC, b"after", 1, False, "event")
        assert [m.payload for m in spool.pending(10)] == [b"before", b"after"]
        assert len(spool) == 2


def _warnings(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


def test_warnings_once_per_episode_and_again_after_recovering(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agent.spool"), \
            Spool(str(tmp_path / "s.db"), max_messages=2) as spool:
        # Dropping keeps it at the bound: "reached" once, never "over".
        for i in range(4):
            spool.put(TOPIC, b"p%d" % i, 1, False, "prediction")
        assert len(_warnings(caplog, "reached its bound")) == 1
        assert _warnings(caplog, "over its bound") == []
        for m in spool.pending(10):
            spool.ack(m.id)
        # Only events: over the bound, warned once.
        ids = [spool.put(TOPIC, b"e%d" % i, 1, False, "event") for i in range(3)]
        assert len(_warnings(caplog, "over its bound")) == 1
        spool.ack(ids[0])                                   # back at the bound, not under
        spool.put(TOPIC, b"e3", 1, False, "event")          # the same episode: no new warning
        assert len(_warnings(caplog, "over its bound")) == 1
        for m in spool.pending(10)[:2]:
            spool.ack(m.id)                                 # under the bound: episode over
        spool.put(TOPIC, b"e4", 1, False, "event")
        spool.put(TOPIC, b"e5", 1, False, "event")          # over again: a new warning
        assert len(_warnings(caplog, "over its bound")) == 2
        assert len(_warnings(caplog, "reached its bound")) == 1
        assert _warnings(caplog, "does not support WAL") == []


def test_a_spool_reopened_over_its_bound_warns(tmp_path, caplog):
    path = str(tmp_path / "s.db")
    with Spool(path, max_messages=10) as spool:
        for i in range(3):
            spool.put(TOPIC, b"e%d" % i, 1, False, "event")
        spool.put(TOPIC, b"t", 1, False, "telemetry")
    with caplog.at_level(logging.WARNING, logger="agent.spool"), \
            Spool(path, max_messages=2) as spool:
        spool.put(TOPIC, b"p", 1, False, "prediction")
        assert len(_warnings(caplog, "over its bound")) == 1
        assert len(_warnings(caplog, "reached its bound")) == 1


def test_documented_sqlite_settings(tmp_path):
    """spool.py's docstring promises WAL, synchronous=NORMAL, the autocheckpoint interval and
    a WAL size limit; and the file records its schema version."""
    path = str(tmp_path / "s.db")
    with Spool(path) as spool:
        conn = spool._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == \
            spool_mod.WAL_AUTOCHECKPOINT_PAGES
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == \
            spool_mod.WAL_SIZE_LIMIT_BYTES
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_two_corrupt_files_in_the_same_second_are_both_kept(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(spool_mod.time, "strftime", lambda fmt, *a: "20260101-000000")
    path = str(tmp_path / "spool.db")
    for n in range(3):
        with open(path, "wb") as handle:
            handle.write(b"not sqlite %d\n" % n * 300)
        with caplog.at_level(logging.ERROR, logger="agent.spool"):
            Spool(path).close()
    aside = sorted(name for name in os.listdir(str(tmp_path)) if ".corrupt-" in name)
    assert aside == ["spool.db.corrupt-20260101-000000", "spool.db.corrupt-20260101-000000-2",
                     "spool.db.corrupt-20260101-000000-3"]
    contents = set(open(str(tmp_path / name), "rb").read()[:14] for name in aside)
    assert len(contents) == 3


# -- Spool.adopt: moving a memory spool (FallbackSpool's) into the file ----------------------

def test_last_id_of_a_new_spool_is_zero(tmp_path):
    with Spool(str(tmp_path / "s.db")) as spool:
        assert spool.last_id() == 0
        spool.put(TOPIC, b"a", 1, False, "event")
        assert spool.last_id() == 1


def test_adopt_keeps_ids_and_drop_counts_and_supersedes_only_retained_status(tmp_path):
    memory = Spool(spool_mod.MEMORY, max_messages=2)
    for n in range(4):  # two predictions are dropped by the bound of 2
        memory.put(TOPIC, str(n).encode(), 1, False, "prediction")
    memory.put(STATUS, b"new", 1, True, "status")
    with Spool(str(tmp_path / "s.db")) as disk:
        disk.put(STATUS, b"old retained", 1, True, "status")       # superseded
        disk.put(STATUS, b"old live", 1, False, "status")          # not retained: kept
        disk.put("edge/dev/info", b"info", 1, True, "status")      # other topic: kept
        disk.put(STATUS, b"same topic event", 1, True, "event")    # not a status: kept
        ids = [m.id for m in memory.pending(10)]
        moved = disk.adopt(memory)
        assert moved == len(ids)
        rows = disk.pending(20)
        assert [m.id for m in rows[:moved]] == ids
        assert [m.payload for m in rows[moved:]] == [b"old live", b"info", b"same topic event"]
        assert all(m.id > memory.last_id() for m in rows[moved:])
        assert disk.dropped()["prediction"] == memory.dropped()["prediction"] > 0
    memory.close()


def test_a_failed_adopt_leaves_the_file_as_it_was(tmp_path):
    class Broken(object):
        """A spool whose pending rows repeat an id, so the move fails halfway."""
        def pending(self, limit, after_id=0):
            row = spool_mod.SpooledMessage(7, TOPIC, b"x", 1, False, "event", 1.0)
            return [row, row]

        def dropped(self):
            return {}

        def last_id(self):
            return 7

        def __len__(self):
            return 2

    with Spool(str(tmp_path / "s.db")) as disk:
        disk.put(TOPIC, b"kept", 1, False, "event")
        with pytest.raises(sqlite3.IntegrityError):
            disk.adopt(Broken())
        assert [m.payload for m in disk.pending(10)] == [b"kept"]
        disk.put(TOPIC, b"after", 1, False, "event")  # still usable: no transaction left open
        assert len(disk) == 2
