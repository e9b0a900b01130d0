"""Tests for agent.spool: the on-disk outbox that keeps MQTT messages across outages and restarts.

Everything here is real: SQLite files under tmp_path, threads, and a child process killed with
SIGKILL. Synchronisation is by pipes and semaphores, never by sleeping.
"""

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from agent.spool import KINDS, Spool
from support.paths import ROOT

REPO_ROOT = ROOT
PRED = "edge/dev1/predictions"
TELE = "edge/dev1/telemetry"
EVENT = "edge/dev1/events"
STATUS = "edge/dev1/status"
INFO = "edge/dev1/info"


def put_kind(spool, kind, payload, topic=None, retain=None):
    """Put a message of `kind` on the topic the MQTT contract gives that kind."""
    topic = topic or {"prediction": PRED, "telemetry": TELE, "event": EVENT, "status": STATUS}[kind]
    if retain is None:
        retain = kind == "status"
    return spool.put(topic, payload, 1, retain, kind)


def payloads(spool):
    return [m.payload for m in spool.pending(1000000)]


def test_order_preserved_and_fields_round_trip(tmp_path):
    with Spool(str(tmp_path / "spool.db")) as spool:
        ids = [spool.put(EVENT, b"e%d" % i, 1, False, "event") for i in range(5)]
        ids.append(spool.put(STATUS, b'{"state":"serving"}', 1, True, "status"))
        ids.append(spool.put(PRED, b"\x00\xff binary", 0, False, "prediction"))
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        msgs = spool.pending(100)
        assert [m.id for m in msgs] == ids
        assert [m.payload for m in msgs[:5]] == [b"e0", b"e1", b"e2", b"e3", b"e4"]
        status, pred = msgs[5], msgs[6]
        assert (status.topic, status.qos, status.retain, status.kind) == (STATUS, 1, True, "status")
        assert (pred.payload, pred.qos, pred.retain, pred.kind) == (b"\x00\xff binary", 0, False,
                                                                    "prediction")
        assert isinstance(pred.payload, bytes)
        assert abs(pred.created_ts - time.time()) < 60
        # Paging with a cursor and a limit.
        assert [m.id for m in spool.pending(2)] == ids[:2]
        assert [m.id for m in spool.pending(3, after_id=ids[1])] == ids[2:5]
        assert spool.pending(10, after_id=ids[-1]) == []
        assert len(spool) == 7
        assert spool.counts() == {"event": 5, "telemetry": 0, "prediction": 1, "status": 1}


def test_ack_removes_only_that_message(tmp_path):
    with Spool(str(tmp_path / "spool.db")) as spool:
        ids = [spool.put(TELE, b"t%d" % i, 1, False, "telemetry") for i in range(4)]
        assert spool.ack(ids[1]) is True
        assert [m.id for m in spool.pending(10)] == [ids[0], ids[2], ids[3]]
        assert spool.ack(ids[1]) is False  # a duplicate PUBACK is harmless
        assert len(spool) == 3 and spool.counts()["telemetry"] == 3
        for i in (ids[0], ids[2], ids[3]):
            spool.ack(i)
        assert len(spool) == 0 and spool.pending(10) == []


def test_ack_many_deletes_in_one_transaction_and_skips_what_is_gone(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path) as spool:
        ids = [spool.put(TELE, b"t%d" % i, 1, False, "telemetry") for i in range(3)]
        ids += [spool.put(EVENT, b"e%d" % i, 1, False, "event") for i in range(2)]
        assert spool.ack(ids[0]) is True
        # ids[0] already gone, 999 never existed: skipped, the rest deleted
        assert spool.ack_many([ids[0], ids[1], ids[3], 999]) == 2
        assert [m.id for m in spool.pending(10)] == [ids[2], ids[4]]
        assert spool.counts()["telemetry"] == 1 and spool.counts()["event"] == 1
        assert spool.ack_many([]) == 0 and len(spool) == 2
    # committed: a new connection sees the same
    with Spool(path) as again:
        assert [m.id for m in again.pending(10)] == [ids[2], ids[4]]
        # one transaction: an id that fails half way leaves every row of the call in place
        with pytest.raises((ValueError, TypeError)):
            again.ack_many([ids[2], "not an id"])
        assert [m.id for m in again.pending(10)] == [ids[2], ids[4]] and len(again) == 2


def test_restart_resumes_and_ids_keep_increasing(tmp_path):
    path = str(tmp_path / "state" / "spool.db")  # the directory is created on first open
    spool = Spool(path)
    ids = [spool.put(EVENT, b"before-%d" % i, 1, False, "event") for i in range(5)]
    spool.ack(ids[0])
    spool.ack(ids[1])
    spool.close()
    with pytest.raises(RuntimeError):
        spool.put(EVENT, b"after close", 1, False, "event")

    spool = Spool(path)
    assert [m.id for m in spool.pending(10)] == ids[2:]
    assert payloads(spool) == [b"before-2", b"before-3", b"before-4"]
    assert spool.counts()["event"] == 3
    new_id = spool.put(EVENT, b"after", 1, False, "event")
    assert new_id > ids[-1]
    assert payloads(spool)[-1] == b"after"
    # Even when everything was delivered, ids are never reused after a restart, so a
    # publisher's after_id cursor stays valid.
    for m in spool.pending(10):
        spool.ack(m.id)
    spool.close()
    spool = Spool(path)
    assert spool.put(EVENT, b"later", 1, False, "event") > new_id
    spool.close()


def test_bound_drops_predictions_then_telemetry_never_events_or_status(tmp_path, caplog):
    path = str(tmp_path / "spool.db")
    spool = Spool(path, max_messages=6)
    put_kind(spool, "event", b"e1")
    put_kind(spool, "status", b"s1")
    put_kind(spool, "telemetry", b"t1")
    put_kind(spool, "telemetry", b"t2")
    put_kind(spool, "prediction", b"p1")
    put_kind(spool, "prediction", b"p2")
    assert len(spool) == 6 and sum(spool.dropped().values()) == 0

    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        put_kind(spool, "prediction", b"p3")  # oldest prediction goes
        assert payloads(spool) == [b"e1", b"s1", b"t1", b"t2", b"p2", b"p3"]
        put_kind(spool, "telemetry", b"t3")  # telemetry pushes out a prediction, not telemetry
        put_kind(spool, "event", b"e2")
        assert payloads(spool) == [b"e1", b"s1", b"t1", b"t2", b"t3", b"e2"]
        assert spool.dropped()["prediction"] == 3

        # No older prediction left: the new one is the least important message, so it is
        # the one dropped; it still gets an id, and telemetry is untouched.
        p4 = put_kind(spool, "prediction", b"p4")
        assert p4 > 0 and p4 not in [m.id for m in spool.pending(100)]
        assert payloads(spool) == [b"e1", b"s1", b"t1", b"t2", b"t3", b"e2"]
        assert spool.dropped()["prediction"] == 4

        # Then the oldest telemetry goes.
        put_kind(spool, "event", b"e3")
        assert payloads(spool) == [b"e1", b"s1", b"t2", b"t3", b"e2", b"e3"]
        put_kind(spool, "event", b"e4")
        put_kind(spool, "event", b"e5")
        assert payloads(spool) == [b"e1", b"s1", b"e2", b"e3", b"e4", b"e5"]
        assert spool.dropped() == {"event": 0, "telemetry": 3, "prediction": 4, "status": 0}

        # Only events and status left: the bound is exceeded rather than losing them.
        put_kind(spool, "event", b"e6")
        put_kind(spool, "status", b"info", topic=INFO)
        put_kind(spool, "telemetry", b"t4")  # dropped on arrival
        assert payloads(spool) == [b"e1", b"s1", b"e2", b"e3", b"e4", b"e5", b"e6", b"info"]
        assert len(spool) == 8
        assert spool.counts() == {"event": 6, "telemetry": 0, "prediction": 0, "status": 2}
    over = [r for r in caplog.records if "over its bound" in r.getMessage()]
    full = [r for r in caplog.records if "reached its bound" in r.getMessage()]
    assert len(over) == 1 and len(full) == 1  # warned once, not once per message
    spool.close()

    # The dropped counts live in the file and survive a restart.
    with Spool(path, max_messages=6) as spool:
        assert spool.dropped() == {"event": 0, "telemetry": 4, "prediction": 4, "status": 0}
        assert len(spool) == 8


def test_smaller_bound_after_restart_is_enforced_on_next_put(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_messages=100) as spool:
        for i in range(10):
            put_kind(spool, "prediction", b"p%d" % i)
    with Spool(path, max_messages=4) as spool:
        put_kind(spool, "prediction", b"p10")
        assert payloads(spool) == [b"p7", b"p8", b"p9", b"p10"]
        assert spool.dropped()["prediction"] == 7


def test_retained_status_superseded_per_topic(tmp_path):
    with Spool(str(tmp_path / "spool.db"), max_messages=100) as spool:
        old = put_kind(spool, "status", b'{"state":"starting"}')
        put_kind(spool, "status", b'{"board":"nano"}', topic=INFO)
        put_kind(spool, "event", b"e1")
        put_kind(spool, "status", b'{"state":"building"}')
        put_kind(spool, "status", b'{"state":"serving"}')
        assert payloads(spool) == [b'{"board":"nano"}', b"e1", b'{"state":"serving"}']
        assert spool.counts()["status"] == 2
        assert spool.dropped()["status"] == 0  # superseded is not lost
        assert spool.ack(old) is False  # a late PUBACK for a superseded one is harmless
        # A non-retained status message is history, not state: nothing is superseded.
        spool.put(STATUS, b"a", 1, False, "status")
        spool.put(STATUS, b"b", 1, False, "status")
        assert payloads(spool)[-2:] == [b"a", b"b"]


def test_invalid_arguments_are_refused(tmp_path):
    with Spool(str(tmp_path / "spool.db")) as spool:
        with pytest.raises(ValueError, match="kind 'log' is not one of"):
            spool.put(EVENT, b"x", 1, False, "log")
        with pytest.raises(ValueError, match="qos"):
            spool.put(EVENT, b"x", 3, False, "event")
        with pytest.raises(TypeError, match="bytes"):
            spool.put(EVENT, "text", 1, False, "event")
        assert len(spool) == 0
    with pytest.raises(ValueError, match="max_messages"):
        Spool(str(tmp_path / "other.db"), max_messages=0)


def test_thread_safety_producers_and_consumer(tmp_path):
    producers, per_producer = 4, 300
    spool = Spool(str(tmp_path / "spool.db"), max_messages=producers * per_producer)
    put_signal = threading.Semaphore(0)
    errors = []

    def produce(p):
        try:
            for seq in range(per_producer):
                spool.put("edge/p%d" % p, b"%d:%d" % (p, seq), 1, False, "event")
                put_signal.release()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    delivered = []  # (id, producer, seq) in consumption order
    last_id = 0
    while len(delivered) < producers * per_producer:
        batch = spool.pending(50, after_id=last_id)
        if not batch:
            # Caught up: wait for some producer to commit another message.
            assert put_signal.acquire(timeout=30), "consumer starved: messages went missing"
            continue
        for msg in batch:
            p, seq = (int(x) for x in msg.payload.split(b":"))
            delivered.append((msg.id, p, seq))
            assert spool.ack(msg.id)
            last_id = msg.id
    for t in threads:
        t.join()
    assert not errors
    ids = [d[0] for d in delivered]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for p in range(producers):
        assert [seq for _, q, seq in delivered if q == p] == list(range(per_producer))
    assert len(spool) == 0 and spool.pending(10) == []
    spool.close()


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from agent.spool import Spool
spool = Spool(sys.argv[2])
i = int(sys.argv[3])
while sys.stdin.buffer.read(1) == b"g":
    msg_id = spool.put("edge/dev1/events", b"%d" % i, 1, False, "event")
    sys.stdout.write("%d %d\n" % (msg_id, i))
    sys.stdout.flush()
    i += 1
"""


def test_committed_messages_survive_sigkill(tmp_path):
    """A child puts messages and reports each id put() returned; we SIGKILL it mid-put.

    Lockstep over pipes: the child puts one message per "g" it reads, so the parent knows
    every id that put() has returned. The last "g" is followed at once by SIGKILL, which lands
    during that put (or just before or after it), and the file must hold every reported id.
    """
    path = str(tmp_path / "spool.db")
    next_index = 0
    last_round_max = 0
    for round_no in range(4):
        child = subprocess.Popen([sys.executable, "-c", CHILD, REPO_ROOT, path, str(next_index)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        reported = {}
        try:
            for _ in range(201 + 157 * round_no):
                child.stdin.write(b"g")
                child.stdin.flush()
                line = child.stdout.readline()
                assert line, "child died: %s" % child.stderr.read().decode()
                msg_id, index = (int(x) for x in line.split())
                reported[msg_id] = index
            child.stdin.write(b"g")
            child.stdin.flush()
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                stream.close()
        assert child.returncode == -signal.SIGKILL

        with Spool(path) as spool:
            stored = dict((m.id, int(m.payload)) for m in spool.pending(10 ** 7))
        # Every id the child was told is committed is there with its payload...
        for msg_id, index in reported.items():
            assert stored.get(msg_id) == index, "reported id %d lost" % msg_id
        # ...at most the killed put is there beyond them...
        assert max(stored) <= max(reported) + 1
        assert min(reported) > last_round_max  # ...ids continued after the previous kill...
        # ...and the file holds one unbroken run: nothing half-written, no holes.
        ids = sorted(stored)
        assert ids == list(range(ids[0], ids[-1] + 1))
        assert [stored[i] for i in ids] == list(range(ids[-1] - ids[0] + 1))
        last_round_max = ids[-1]
        next_index = stored[ids[-1]] + 1


def _corrupt_pages(path):
    data = bytearray(open(path, "rb").read())
    for offset in range(2 * 4096, len(data), 4096):  # keep the header page, smash the rest
        data[offset + 8:offset + 64] = b"\xff" * 56
    with open(path, "wb") as handle:
        handle.write(bytes(data))


@pytest.mark.parametrize("damage", ["not_a_database", "damaged_pages", "unknown_schema"])
def test_corrupt_file_is_moved_aside(tmp_path, caplog, damage):
    path = str(tmp_path / "spool.db")
    if damage == "not_a_database":
        with open(path, "wb") as handle:
            handle.write(b"this is not sqlite\n" * 500)
    else:
        with Spool(path) as spool:
            for i in range(500):
                put_kind(spool, "prediction", b"p%d" % i * 20)
        if damage == "damaged_pages":
            _corrupt_pages(path)
        else:
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA user_version=99")
            conn.close()
    original = open(path, "rb").read()

    with caplog.at_level(logging.ERROR, logger="agent.spool"):
        spool = Spool(path)
    try:
        assert len(spool) == 0
        new_id = put_kind(spool, "event", b"fresh")
        assert payloads(spool) == [b"fresh"] and new_id >= 1
    finally:
        spool.close()
    aside = [name for name in os.listdir(str(tmp_path)) if ".corrupt-" in name]
    assert len(aside) == 1
    assert open(str(tmp_path / aside[0]), "rb").read() == original
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 1 and aside[0] in messages[0] and "unusable" in messages[0]


def test_throughput_figure(tmp_path):
    """Prints puts/s and acks/s for 5,000 messages; a figure for the README, not a check."""
    n = 5000
    payload = b'{"ts": 1700000000.0, "seq": 1, "top": [{"index": 1, "score": 0.9}]}' * 3
    with Spool(str(tmp_path / "spool.db")) as spool:
        start = time.perf_counter()
        for _ in range(n):
            spool.put(PRED, payload, 1, False, "prediction")
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        acked = 0
        while True:
            batch = spool.pending(100)
            if not batch:
                break
            for msg in batch:
                spool.ack(msg.id)
                acked += 1
        ack_s = time.perf_counter() - start
    assert acked == n
    print("\nspool throughput (%d messages of %d bytes, sqlite %s): %.0f puts/s, %.0f acks/s "
          "(pending() paging included)" % (n, len(payload), sqlite3.sqlite_version, n / put_s,
                                           n / ack_s))


def test_kinds_are_the_mqtt_contract_ones():
    assert set(KINDS) == {"event", "telemetry", "prediction", "status"}


# ---------------------------------------------------------------- a spool that cannot be opened

def test_unopenable_spool_keeps_messages_in_memory_and_moves_them_to_the_file(tmp_path):
    """spool.db is a directory (or the disk is full): the fallback spool still queues in order
    with the same bound; when the file can be opened again every pending message moves to it
    with its id, so a sender that handed some to the broker still acks them."""
    from agent.spool_fallback import FallbackSpool
    path = tmp_path / "spool.db"
    path.mkdir()
    spool = FallbackSpool(str(path), max_messages=100)
    assert spool.fault is not None and str(path) in spool.fault and "directory" in spool.fault
    ids = [put_kind(spool, "prediction", b"p%d" % i) for i in range(5)]
    put_kind(spool, "status", b"s-old")
    put_kind(spool, "status", b"s-new")  # supersedes s-old, as on disk
    assert ids == sorted(ids)
    assert spool.ack(ids[0])
    in_flight = spool.pending(2, after_id=0)  # handed to the broker, not yet acked
    assert not spool.recover()  # still a directory
    path.rmdir()
    assert spool.recover() and spool.fault is None
    assert payloads(spool) == [b"p1", b"p2", b"p3", b"p4", b"s-new"]
    assert [m.id for m in spool.pending(10)][:4] == ids[1:]
    assert all(spool.ack(m.id) for m in in_flight)  # acked by the ids the sender has
    later = put_kind(spool, "event", b"e")
    assert later > max(ids)
    spool.close()
    with Spool(str(path)) as disk:  # really on disk now
        assert payloads(disk) == [b"p3", b"p4", b"s-new", b"e"]


def test_ids_go_on_rising_after_recovery_when_everything_was_acked(tmp_path):
    """The sender pages with `pending(after_id=last it sent)`: after the move to a fresh file,
    new ids must still be above every id the memory spool gave out."""
    from agent.spool_fallback import FallbackSpool
    path = tmp_path / "spool.db"
    path.mkdir()
    spool = FallbackSpool(str(path))
    sent = [put_kind(spool, "event", b"e%d" % i) for i in range(5)]
    for msg_id in sent:
        assert spool.ack(msg_id)
    path.rmdir()
    assert spool.recover()
    new = put_kind(spool, "event", b"after")
    assert new > max(sent)
    assert [m.payload for m in spool.pending(10, after_id=max(sent))] == [b"after"]
    spool.close()


def test_messages_from_an_earlier_run_follow_the_adopted_ones(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path) as earlier:
        put_kind(earlier, "event", b"old-event")
        put_kind(earlier, "status", b"old-status")
        for _ in range(3):
            earlier.ack(put_kind(earlier, "telemetry", b"acked"))
    memory = Spool(":memory:", max_messages=100)
    put_kind(memory, "prediction", b"p")
    put_kind(memory, "status", b"new-status")
    memory.put(PRED, b"x", 1, False, "prediction")
    memory.ack(memory.pending(10)[-1].id)
    with Spool(path) as disk:
        assert disk.adopt(memory) == 2
        got = disk.pending(10)
        assert [m.payload for m in got] == [b"p", b"new-status", b"old-event"]
        assert [m.id for m in got][:2] == [1, 2] and got[2].id > 2
        assert disk.counts()["status"] == 1 and len(disk) == 3


def test_agent_starts_when_the_spool_cannot_be_opened(tmp_path):
    """The agent's link and spool watch (no broker needed): degraded with the reason,
    recovered after."""
    from agent.daemon import Agent
    from agent.config import load_config
    from agent.uplink import SpoolWatch, open_link
    state = tmp_path / "s"
    (state / "spool.db").mkdir(parents=True)
    config = load_config(None, ["device.state_dir={}".format(state), "device.id=t",
                                "mqtt.port=1"])
    agent = Agent(config, telemetry=False)
    link = open_link(config, agent.device_id, agent.state_dir, agent.handle_command)
    agent.health.attach(link)
    link.start()
    problems = agent.health.problems
    try:
        watch = SpoolWatch(link.spool, agent.health.problem)
        assert "spool" in problems and "is a directory" in problems["spool"]
        link.publish("events", {"n": 1}, kind="event")
        (state / "spool.db").rmdir()
        watch.retry_at = 0.0
        watch.check()
        assert "spool" not in problems and link.spool.fault is None
        assert len(link.spool) >= 2  # status and the event, now in the file
    finally:
        link.stop(timeout=0.1)
        link.spool.close()
