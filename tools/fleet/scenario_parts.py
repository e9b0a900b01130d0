"""The parts tools/fleet/scenarios.py builds its runs from: Mosquitto brokers (persistent,
restartable on the same port, bridged), the model server, simulators, real agents, the operator,
a recorder that outlives broker restarts, and the rollout's metrics. Every process started here
gets SIGTERM when this one dies (PDEATHSIG) and is stopped by Fleet.__exit__."""

import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIMULATE = os.path.join(ROOT, "tools", "fleet", "simulate.py")


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


def spawn(args: List[str], log: str, **kw: Any) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                preexec_fn=_die_with_parent, **kw)


def stop(proc: Optional[subprocess.Popen], grace: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Mosquitto(object):
    """One mosquitto on 127.0.0.1:port; stop() and start() again keep the port (and, with
    persistence, the retained messages, sessions and queued messages)."""

    def __init__(self, work: str, name: str, persistent: bool = False,
                 bridge_to: Optional["Mosquitto"] = None) -> None:
        from support.net import free_port
        self.port = free_port()
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        lines = ["listener {} 127.0.0.1".format(self.port), "allow_anonymous true",
                 "max_queued_messages 100000", "log_dest stdout"]
        if os.geteuid() == 0:
            lines.append("user root")
        if persistent:
            lines += ["persistence true", "persistence_location {}/".format(self.dir),
                      "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if bridge_to is not None:
            lines += ["connection {}-to-{}".format(name, bridge_to.name),
                      "address 127.0.0.1:{}".format(bridge_to.port),
                      "topic edge/# both 1", "cleansession false", "try_private true",
                      "restart_timeout 1 5", "bridge_protocol_version mqttv311"]
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.proc = None  # type: Optional[subprocess.Popen]
        self.cpu_done = 0.0  # CPU seconds of the processes stopped before

    def start(self) -> "Mosquitto":
        import socket
        binary = next(p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
                      if os.path.exists(p))
        self.proc = spawn([binary, "-c", self.conf], os.path.join(self.dir, "log"))
        deadline = time.monotonic() + 10
        while True:  # a start-up poll, not a test's synchronisation
            if self.proc.poll() is not None:
                raise SystemExit("mosquitto {} exited; see {}/log".format(self.name, self.dir))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mosquitto {} does not listen".format(self.name))
                time.sleep(0.05)

    def cpu(self) -> float:
        return self.cpu_done + (cpu_seconds(self.proc.pid) if self.proc else 0.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.cpu_done += cpu_seconds(self.proc.pid)
            stop(self.proc, 10)
            self.proc = None


class Fleet(object):
    """Everything one scenario starts, stopped in reverse on exit."""

    def __init__(self, work: str, group: str = "scn") -> None:
        from support.model_store import FileServer, LABELS, publish_model, sha
        self.work = work
        self.group = group
        self.brokers = []  # type: List[Mosquitto]
        self.devices = []  # type: List[subprocess.Popen]
        self.recorders = []  # type: List[Any]
        self.op = None  # type: Optional[subprocess.Popen]
        self.server = FileServer()
        install = dict(publish_model(self.server, "2", seed=1), labels_sha256=sha(LABELS))
        self.install = os.path.join(work, "install.json")
        self.write_install(install)
        self.state_file = os.path.join(work, "rollout.json")

    def write_install(self, payload: Dict[str, Any]) -> None:
        with open(self.install, "w") as handle:
            json.dump(payload, handle)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: Any) -> None:
        stop(self.op, 10)
        for proc in self.devices:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.devices:
            stop(proc, 60)
        for rec in self.recorders:
            rec.close()
        for broker in reversed(self.brokers):
            broker.stop()
        self.server.close()

    def broker(self, persistent: bool = False,
               bridge_to: Optional[Mosquitto] = None) -> Mosquitto:
        broker = Mosquitto(self.work, "broker{}".format(len(self.brokers)), persistent,
                           bridge_to)
        self.brokers.append(broker.start())
        return broker

    def recorder(self, broker: Mosquitto) -> Any:
        from support.durable_recorder import DurableRecorder
        rec = DurableRecorder(broker.port, ("edge/+/status", "edge/+/events", "edge/+/cmd/#"))
        self.recorders.append(rec)
        return rec

    def simulators(self, count: int, brokers: List[Mosquitto], first: int = 0) -> None:
        """`count` simulated devices in one simulate.py process on brokers[0]."""
        self.devices.append(spawn(
            [sys.executable, SIMULATE, "--count", str(count), "--first", str(first),
             "--port", str(brokers[0].port), "--group", self.group,
             "--dir", os.path.join(self.work, "devices")],
            os.path.join(self.work, "simulate-{}.log".format(first))))

    def agent(self, name: str, broker: Mosquitto, *sets: str) -> subprocess.Popen:
        """A real `edge-agent run` process of the group."""
        args = [sys.executable, "-m", "agent", "run", "-c", os.path.join(ROOT, "config.yaml")]
        for item in ("mqtt.host=127.0.0.1", "mqtt.port={}".format(broker.port),
                     "device.id=" + name, "device.group=" + self.group,
                     "device.state_dir=" + os.path.join(self.work, name)) + sets:
            args += ["--set", item]
        proc = spawn(args, os.path.join(self.work, name + ".log"))
        self.devices.append(proc)
        return proc

    def operator(self, broker: Mosquitto, *args: str, gates_off: bool = True) -> Any:
        cmd = [sys.executable, "-m", "agent", "fleet", "rollout", self.install, "--group",
               self.group, "--json", "--activate-timeout", "300", "--state", self.state_file,
               "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.port={}".format(broker.port)]
        if gates_off:  # simulated devices' latencies are GIL noise
            cmd += ["--max-regression", "1e6"]
        self.op_out = os.path.join(self.work, "operator.jsonl")
        self.op = spawn(cmd + list(args), self.op_out)
        self.op_started = time.time()
        return self.op

    def rollout_events(self, rec: Any) -> Dict[str, List[Dict[str, Any]]]:
        return dict((rid, evs) for rid, evs in rec.events().items()
                    if not rid.startswith("auto-"))


def counting(match: Callable[[str, Any], Optional[str]], need: int) -> Callable[[List[Any]], bool]:
    """A recorder predicate: True once `need` distinct keys matched; scans each message once."""
    seen = set()  # type: set
    where = [0]

    def predicate(messages: List[Any]) -> bool:
        for topic, payload, _ in messages[where[0]:]:
            key = match(topic, payload)
            if key is not None:
                seen.add(key)
        where[0] = len(messages)
        return len(seen) >= need
    return predicate


def wait_serving(rec: Any, group: str, count: int, timeout: float = 600) -> None:
    def serving(topic: str, payload: Any) -> Optional[str]:
        if topic.endswith("/status") and isinstance(payload, dict) and \
                payload.get("state") == "serving" and payload.get("group") in (group, None):
            return topic.split("/")[1]
        return None
    rec.wait_for(counting(serving, count), timeout, "{} devices serving".format(count))


def cpu_of(fleet: Fleet) -> Dict[str, float]:
    return {"brokers": sum(b.cpu() for b in fleet.brokers),
            "devices": sum(cpu_seconds(p.pid) for p in fleet.devices),
            "children": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])}


def operator_log(fleet: Fleet) -> List[Dict[str, Any]]:
    out = []
    with open(fleet.op_out) as handle:
        for line in handle:
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def rollout_metrics(fleet: Fleet, rec: Any, op: Any, cpu0: Dict[str, float],
                    timeout: float = 900) -> Dict[str, Any]:
    """Wait for the operator, then count what happened, from the broker's side."""
    code = op.wait(timeout)
    cpu1 = cpu_of(fleet)
    log = operator_log(fleet)
    time.sleep(1.0)  # let the recorder take the last events in flight (a report, not a test)
    events = fleet.rollout_events(rec)
    sent = [r for r in log if r["event"] == "sent"]
    rids = [r["request_id"] for r in sent]
    copies = dict((rid, [e for e in events.get(rid, []) if e.get("state") == "activated"])
                  for rid in rids)
    # A copy of one event (same payload and ts) is QoS 1 delivering it again, not a second
    # activation: `redelivered` counts those, `duplicates` the activations beyond one.
    activated = dict((rid, [json.loads(t) for t in sorted(set(json.dumps(e, sort_keys=True)
                                                                for e in evs))])
                     for rid, evs in copies.items())
    per_device = {}  # type: Dict[str, int]
    for r in sent:
        per_device[r["device"]] = per_device.get(r["device"], 0) + len(activated[r["request_id"]])
    downloads = sum(1 for p in fleet.server.httpd.requests if p.endswith("model.onnx"))
    stamps = [e["ts"] for evs in activated.values() for e in evs]
    row = {
        "devices": len(per_device), "exit_code": code,
        "outcome": log[-1]["event"] if log else None,
        "sent": len(sent), "resent": sum(1 for r in log if r["event"] == "resent"),
        "activated": sum(1 for evs in activated.values() if evs),
        "converge_s": round(max(stamps) - min(r["ts"] for r in sent), 2) if stamps else None,
        "lost": sum(1 for rid in rids if not events.get(rid)),
        "duplicates": sum(max(0, len(evs) - 1) for evs in activated.values()) +
        sum(max(0, n - 1) for n in per_device.values()),
        "redelivered": sum(len(copies[rid]) - len(activated[rid]) for rid in rids),
        "downloads": downloads,
        "failed": sum(1 for r in log if r["event"] == "failed"),
        "why_failed": sorted(set(str(r.get("error"))[:90] for r in log
                                 if r["event"] == "failed")),
        "cpu_s": {"operator": round(cpu1["children"] - cpu0["children"], 2),
                  "brokers": round(cpu1["brokers"] - cpu0["brokers"], 2),
                  "devices": round(cpu1["devices"] - cpu0["devices"], 2)},
    }
    row["ok"] = (row["outcome"] == "done" and row["lost"] == 0 and row["duplicates"] == 0 and
                 row["activated"] == row["devices"] and downloads == row["devices"])
    return row
