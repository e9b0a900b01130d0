"""Benchmark: a group rollout to N simulated devices on one real Mosquitto.

For each N: starts a private Mosquitto, an HTTP server with tiny@2, the simulator
(tools/fleet/simulate.py, N agents spread over --processes processes, by default one per CPU
core: one Python process holds one GIL), waits until every device serves, then runs
`edge-agent fleet rollout` (one stage: --canary 100%, --window 0, gates off: the simulated
devices' latencies are GIL noise) as the operator and reports:
seconds from the first install sent to the last `activated`, commands lost (devices without an
outcome), duplicate activations (more than one `activated` event for one request), failures,
and the CPU seconds of the operator, the broker and the simulator during the rollout, with the
1-minute load average when the rollout began (the machine may be shared).
Every process it starts ends with it, also when it is killed (tools/fleet/children.py).

    .venv/bin/python tools/fleet/bench_rollout.py 50 100 200 [--json]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

from children import ChildGuard, exit_on_signals, stop_process  # noqa: E402  (tools/fleet/)


def cpu_seconds(pid: int) -> float:
    with open("/proc/{}/stat".format(pid)) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Events(object):
    """Every event of the group's devices, by request id (a real MQTT client)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        self.by_request = {}  # type: Dict[str, list]
        self.statuses = {}  # type: Dict[str, Any]
        self.lock = threading.Lock()
        kw = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2} \
            if hasattr(mqtt, "CallbackAPIVersion") else {}
        self.client = mqtt.Client(**kw)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("edge/+/events", 1), ("edge/+/status", 1)])
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload.decode())
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/events") and payload.get("request_id"):
                self.by_request.setdefault(payload["request_id"], []).append(payload)
            elif msg.topic.endswith("/status"):
                self.statuses[msg.topic.split("/")[1]] = payload

    def serving(self) -> int:
        with self.lock:
            return sum(1 for p in self.statuses.values() if p.get("state") == "serving")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_one(count: int, work: str, processes: int = 1,
            guard: Optional[ChildGuard] = None) -> Dict[str, Any]:
    """One rollout to `count` simulated devices; every process it starts is watched by `guard`
    (one of its own when None), so none outlives the benchmark."""
    from support.broker import Broker
    from support.model_store import FileServer, LABELS, publish_model, sha
    from simulate import MAX_PER_PROCESS
    processes = max(processes, -(-count // MAX_PER_PROCESS))  # paho's select(): see simulate.py
    own_guard = guard is None
    guard = guard or ChildGuard()
    group = "b{}".format(count)
    broker = Broker(work, extra="max_queued_messages 10000\n")
    server = None
    sims = []  # type: list
    operator = None
    events = None
    try:
        broker.start()
        guard.watch(broker.proc)
        server = FileServer()
        install = dict(publish_model(server, "2", seed=1), labels_sha256=sha(LABELS))
        install_file = os.path.join(work, "install.json")
        with open(install_file, "w") as handle:
            json.dump(install, handle)
        events = Events(broker.port)
        t0 = time.monotonic()
        for k in range(processes):
            first, last = count * k // processes, count * (k + 1) // processes
            sims.append(subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "tools/fleet/simulate.py"),
                 "--count", str(last - first), "--first", str(first),
                 "--port", str(broker.port), "--group", group,
                 "--dir", os.path.join(work, "devices")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            guard.watch(sims[-1])
        deadline = time.monotonic() + 600
        while events.serving() < count and time.monotonic() < deadline:
            time.sleep(0.5)  # a benchmark's poll, not a test's synchronisation
        start_s = time.monotonic() - t0
        if events.serving() < count:
            raise SystemExit("only {} of {} devices serving after 600 s".format(
                events.serving(), count))
        cpu0 = (cpu_seconds(broker.proc.pid), sum(cpu_seconds(s.pid) for s in sims))
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        operator = subprocess.Popen(
            [sys.executable, "-m", "agent", "fleet", "rollout", install_file, "--group", group,
             "--canary", "100%", "--window", "0", "--max-regression", "1e6", "--json",
             "--activate-timeout", "300", "--state", os.path.join(work, "rollout.json"),
             "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.port={}".format(broker.port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        guard.watch(operator)
        out, err = operator.communicate(timeout=900)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the operator, reaped
        cpu1 = (cpu_seconds(broker.proc.pid), sum(cpu_seconds(s.pid) for s in sims))
        log = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        sent = [r for r in log if r["event"] == "sent"]
        rids = [r["request_id"] for r in sent]
        with events.lock:
            activated = dict((rid, [e for e in events.by_request.get(rid, [])
                                    if e.get("state") == "activated"]) for rid in rids)
            answered = sum(1 for rid in rids if events.by_request.get(rid))
        stamps = [e["ts"] for evs in activated.values() for e in evs]
        return {
            "devices": count, "processes": processes, "start_s": round(start_s, 1),
            "loadavg": round(load, 2),
            "outcome": log[-1]["event"] if log else err.decode()[-300:],
            "sent": len(sent),
            "activated": sum(1 for evs in activated.values() if evs),
            "converge_s": round(max(stamps) - min(r["ts"] for r in sent), 2) if stamps else None,
            "lost": len(rids) - answered,
            "duplicates": sum(max(0, len(evs) - 1) for evs in activated.values()),
            "failed": sum(1 for r in log if r["event"] == "failed"),
            "why_failed": sorted(set(str(r.get("error"))[:90] for r in log
                                     if r["event"] == "failed")),
            "cpu_s": {"operator": round(children1.ru_utime + children1.ru_stime -
                                        children0.ru_utime - children0.ru_stime, 2),
                      "broker": round(cpu1[0] - cpu0[0], 2),
                      "simulator": round(cpu1[1] - cpu0[1], 2)},
        }
    finally:
        if events is not None:
            events.close()
        stop_process(operator, guard, 10)
        for sim in sims:
            if sim.poll() is None:
                sim.terminate()
        for sim in sims:
            stop_process(sim, guard)
        if server is not None:
            server.close()
        if broker.proc is not None:
            pid = broker.proc.pid
            broker.stop()
            guard.forget(pid)
        if own_guard:
            guard.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", type=int, nargs="+")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--processes", type=int, default=max(1, os.cpu_count() or 1),
                        help="simulator processes the devices are spread over (default: one "
                             "per CPU core, here %(default)s; 1 packs all in one interpreter)")
    args = parser.parse_args()
    exit_on_signals()
    rows = []
    for count in args.counts:
        work = tempfile.mkdtemp(prefix="fleet-bench-")
        try:
            row = run_one(count, work, args.processes)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row, sort_keys=True) if args.json else
              "N={devices:<4} start {start_s:>6} s  converge {converge_s} s  sent {sent} "
              "activated {activated} lost {lost} duplicates {duplicates} failed {failed} "
              "cpu {cpu_s} load {loadavg}  ({outcome})".format(**row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
