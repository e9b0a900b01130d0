"""Nothing lost in a broker outage, even when the agent restarts during it.

Scenario (issue: reliability): a real Mosquitto with persistence, an operator-side subscriber
with a persistent session, agent A streaming telemetry. The broker stops for OUTAGE_S seconds;
during the outage agent A is reloaded (an event), stopped, and agent B starts on the same state
directory and is reloaded too. When the broker is back, every QoS 1 event and telemetry
message both agents produced must arrive, in production order. The test prints sent vs
received.
"""

import os
import signal
import threading

from support.agent_process import AgentProcess, agent_args
from support.broker import persistent_broker

from support.sessions import SessionRecorder

OUTAGE_S = float(os.environ.get("EDGE_AGENT_OUTAGE_S", "30"))


def _telemetry(messages, boot=None):
    return [p for t, p in messages if t.endswith("/telemetry") and
            (boot is None or p.get("boot") == boot)]


def test_broker_outage_with_agent_restart_loses_nothing(tmp_path):
    broker = persistent_broker(str(tmp_path), "autosave_interval 1")
    operator = SessionRecorder(broker.port, ["edge/outage/telemetry", "edge/outage/events"])
    state = str(tmp_path / "state")
    common = ("--set", "source.uri=synthetic://?fps=15", "--set", "telemetry.interval_s=0.5")
    agents = []
    stop_outage = threading.Event()
    try:
        a = AgentProcess(agent_args(broker.port, "outage", state, *common))
        agents.append(a)
        operator.wait_for(lambda m: len(_telemetry(m)) >= 3, 60, "agent A's telemetry")
        boot_a = _telemetry(operator.messages)[0]["boot"]

        broker.stop()                               # --- the outage starts
        stop_outage.wait(OUTAGE_S / 3)              # scenario time, not synchronisation
        a.signal(signal.SIGHUP)                     # an event produced during the outage
        stop_outage.wait(OUTAGE_S / 6)
        a.signal(signal.SIGTERM)                    # the agent restarts during the outage
        assert a.wait(30) == 0, a.err
        assert "stay spooled" in a.err
        b = AgentProcess(agent_args(broker.port, "outage", state, *common))
        agents.append(b)
        stop_outage.wait(OUTAGE_S / 3)
        b.signal(signal.SIGHUP)
        stop_outage.wait(OUTAGE_S / 6)
        broker.start()                              # --- the outage ends (same port, same db)

        def b_streaming(m):
            boots = [p["boot"] for p in _telemetry(m)]
            return len(set(boots)) == 2 and boots.count(boots[-1]) >= 3 and \
                boots[-1] != boot_a
        try:
            operator.wait_for(b_streaming, 90, "agent B's telemetry after the outage")
        except AssertionError:
            b.signal(signal.SIGTERM)
            b.wait(30)
            raise AssertionError("B never streamed; boots seen {}; B's log:\n{}".format(
                [(p["boot"], p["seq"]) for p in _telemetry(operator.messages)][-5:],
                b.err[-3000:]))
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.err
        operator.wait_for(lambda m: sum(1 for p in _telemetry(m) if p.get("final")) == 2, 30,
                          "both agents' final telemetry")
        reloads = lambda m: [p for t, p in m if t.endswith("/events")
                             and p.get("command") == "reload"]
        operator.wait_for(lambda m: len(reloads(m)) == 2, 30, "both reload events")
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
        operator.close()
        broker.stop()

    received = list(operator.messages)
    boots = []
    for p in _telemetry(received):
        if p["boot"] not in boots:
            boots.append(p["boot"])
    assert boots[0] == boot_a and len(boots) == 2
    report = []
    for boot in boots:
        seqs = [p["seq"] for p in _telemetry(received, boot)]
        unique = sorted(set(seqs))
        last = max(unique)
        assert unique == list(range(1, last + 1)), "telemetry lost: {}".format(
            sorted(set(range(1, last + 1)) - set(unique)))
        first_seen = []
        for s in seqs:
            if s not in first_seen:
                first_seen.append(s)
        assert first_seen == unique, "telemetry out of order for boot {}".format(boot)
        assert any(p.get("final") and p["seq"] == last for p in _telemetry(received, boot))
        report.append((boot, last, len(seqs) - len(unique)))
    # All of A's telemetry arrives before B's (A's spool is delivered first).
    order = [p["boot"] for p in _telemetry(received)]
    assert order.index(boots[1]) > max(i for i, b in enumerate(order) if b == boots[0])
    reload_events = [p for t, p in received if t.endswith("/events")
                     and p.get("command") == "reload"]
    assert [e["state"] for e in reload_events] == ["done", "done"]
    for boot, sent, dups in report:
        print("outage {:.0f} s: boot {} telemetry produced {} received {} (+{} duplicates)"
              .format(OUTAGE_S, boot, sent, sent, dups))
    print("outage: reload events produced 2 received {}".format(len(reload_events)))
