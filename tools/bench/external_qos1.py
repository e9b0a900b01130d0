#!/usr/bin/env python3
"""The agent as a user runs it, measured from outside: predictions per second at the broker.

A real Mosquitto on a free port, a real `edge-agent run` process publishing at QoS 1 on the
sample photos (unpaced, looping), and a subscriber at QoS 1 that counts the predictions the
broker delivers. Beside it, in the same setup (same Python, same config, same ONNX Runtime
options, a process of its own), the raw backend: `backend.infer` (ONNX Runtime's session.run
and the backend's thin wrapper) on pre-made tensors, in a loop that reports every 10
inferences.

Both processes start once and are then interleaved: only one runs at a time, the other held
with SIGSTOP. Each of `--rounds` pairs runs one side for `--settle` + `--seconds` seconds (the
rate is taken over the last `--seconds`) and then the other, the order alternating (raw
first, then agent first, ...), so a drift of this shared machine's speed falls on both sides
and each pair's ratio (agent / raw) compares runs a few seconds apart. Reported: the median
of the pairs' ratios and their spread, every rate, and the load average before the run.

    python tools/bench/external_qos1.py [--seconds 5] [--rounds 6] [--counter paho|sub]
        [--set KEY=VALUE ...]

--counter sub counts with mosquitto_sub (C, one stamp per message into a file) instead of the
paho subscriber in this process, to see what the observer itself costs the shared cores.

Prints a table and, with --json, the figures as JSON. Needs mosquitto (apt-get install
mosquitto; mosquitto-clients for --counter sub) and paho-mqtt (in the main venv).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # agent.cli.bench (pair_orders, ratio_spread)

RAW_CODE = r"""
import json, sys, threading, time
from agent.config import load_config
from agent.backends import open_backend
from agent.cli.bench import _source_tensors, measure_raw, resolve_package
from agent.preprocess import Preprocessor
from agent.updates.loader import backend_options
config = load_config(None, json.loads(sys.argv[1]))
package = resolve_package(config, None)
backend, _ = open_backend(package, backend_options(config))
tensors = _source_tensors(config, config.source.uri, Preprocessor(package.input))
measure_raw(backend, tensors, 50)  # warm-up
# As many calls at once as the agent runs (backend.workers): thread 0 reports the total.
width = backend.parallel()
counts = [0] * width


def loop(k):
    i = k
    while True:  # until terminated; held with SIGSTOP while the agent runs
        for _ in range(10):
            backend.infer(tensors[i % len(tensors)])
            i += width
        counts[k] += 10
        if k == 0:
            sys.stdout.write("{:.6f} {}\n".format(time.monotonic(), sum(counts)))
            sys.stdout.flush()


for k in range(1, width):
    threading.Thread(target=loop, args=(k,), daemon=True).start()
loop(0)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(tmp: str) -> Any:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit("external_qos1: mosquitto is not installed; fix: apt-get install "
                         "mosquitto")
    port = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as handle:
        handle.write("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                     .format(port))
        if os.geteuid() == 0:
            handle.write("user root\n")
    log = open(os.path.join(tmp, "mosquitto.log"), "ab")
    proc = subprocess.Popen([binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)  # polling a port that is not yet listening
    proc.kill()
    raise SystemExit("external_qos1: mosquitto did not listen on port {}; see {}".format(
        port, log.name))


class Counter(object):
    """A QoS 1 subscriber that stamps every prediction it receives."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        else:
            self.client = mqtt.Client()
        self.stamps = []  # type: List[float]
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.stamps.append(time.monotonic())

    def count_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.stamps if t0 <= t < t1)

    def first(self) -> Optional[float]:
        with self.lock:
            return self.stamps[0] if self.stamps else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SubCounter(object):
    """The same count taken by `mosquitto_sub` (C, QoS 1), which writes one wall-clock stamp
    per message to a file: the observer costs the machine far less than paho in Python does.
    Stamps are converted to CLOCK_MONOTONIC with the offset between the clocks at the start."""

    def __init__(self, port: int, topic: str, tmp: str) -> None:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            raise SystemExit("external_qos1: --counter sub needs mosquitto_sub; fix: apt-get "
                             "install mosquitto-clients (or use --counter paho)")
        self.path = os.path.join(tmp, "counter.stamps")
        self.out = open(self.path, "wb")
        self.offset = time.time() - time.monotonic()
        self.proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                                      "-q", "1", "-F", "%U"], stdout=self.out,
                                     stderr=subprocess.DEVNULL)

    def _stamps(self) -> List[float]:
        with open(self.path, "rb") as handle:
            lines = handle.read().split(b"\n")
        return [float(line) - self.offset for line in lines[:-1]]  # the last may be partial

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self._stamps() if t0 <= t < t1)

    def first(self) -> Optional[float]:
        stamps = self._stamps()
        return stamps[0] if stamps else None

    def close(self) -> None:
        stop_process(self.proc)
        self.out.close()


class RawProcess(object):
    """The raw backend loop in a process of its own; `stamps` are (monotonic, inferences so
    far) every 10 inferences (CLOCK_MONOTONIC is the same clock in every process)."""

    def __init__(self, overrides: List[str], tmp: str) -> None:
        self.stamps = []  # type: List[Tuple[float, int]]
        self.lock = threading.Lock()
        self.log = open(os.path.join(tmp, "raw.log"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", RAW_CODE, json.dumps(overrides)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log)
        self.reader = threading.Thread(target=self._read, name="raw-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            stamp, count = line.decode().split()
            with self.lock:
                self.stamps.append((float(stamp), int(count)))

    def wait_started(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.stamps:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("external_qos1: the raw backend loop reported nothing; see "
                                 + self.log.name)
            time.sleep(0.1)  # waiting for another process's first line

    def fps_between(self, t0: float, t1: float) -> Optional[float]:
        """Inferences per second between the first and last report inside [t0, t1)."""
        with self.lock:
            inside = [s for s in self.stamps if t0 <= s[0] < t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()


class AgentProcess(object):
    """`edge-agent run` publishing at QoS 1 to the broker, counted by a Counter."""

    def __init__(self, overrides: List[str], port: int, tmp: str, counter: str = "paho") -> None:
        state = tempfile.mkdtemp(prefix="state-", dir=tmp)
        sets = overrides + ["mqtt.host=127.0.0.1", "mqtt.port={}".format(port), "mqtt.qos=1",
                            "mqtt.keepalive_s=300", "device.id=ext",
                            "device.state_dir=" + state, "source.fps=0", "source.loop=true",
                            "predictions.max_rate_hz=null"]
        topic = "edge/ext/predictions"
        self.counter = (SubCounter(port, topic, tmp) if counter == "sub"
                        else Counter(port, topic))  # type: Any
        args = [sys.executable, "-m", "agent", "run"]
        for item in sets:
            args += ["--set", item]
        self.log = open(os.path.join(tmp, "agent.log"), "ab")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_started(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counter.first() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("external_qos1: the agent published nothing; see "
                                 + self.log.name)
            time.sleep(0.1)  # waiting for the first prediction of a separate process

    def fps_between(self, t0: float, t1: float) -> float:
        return self.counter.count_between(t0, t1) / (t1 - t0)

    def close(self) -> None:
        stop_process(self.proc)
        self.counter.close()
        self.log.close()


def stop_process(proc: Any) -> None:
    """Terminate `proc` (continuing it first if it was held with SIGSTOP) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_side(side: Any, settle: float, seconds: float) -> Optional[float]:
    """Let `side` run alone for settle + seconds, hold it again; its rate over `seconds`."""
    side.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic() + settle
    time.sleep(settle + seconds)  # the measured window, timed from outside
    t1 = time.monotonic()
    side.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)  # reports of the last inferences still in the pipe or at the broker
    return side.fps_between(t0, t1)


def main(argv: Optional[List[str]] = None) -> int:
    from agent.cli.bench import pair_orders, ratio_spread
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[1],
        epilog="Each pair costs 2 x (settle + seconds); the default run takes about 1.5 min.")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured window of each side in each pair (5)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds a side runs after being continued before its window (1)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds the agent runs after its first prediction before the "
                             "pairs start (5)")
    parser.add_argument("--rounds", type=int, default=6, help="raw/agent pairs (6)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both the agent and raw (repeatable)")
    parser.add_argument("--counter", choices=("paho", "sub"), default="paho",
                        help="who counts at the broker: a paho subscriber in this Python "
                             "process (paho, the default) or mosquitto_sub writing a stamp per "
                             "message to a file (sub: costs the shared cores less)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    loadavg = [round(v, 2) for v in os.getloadavg()]
    tmp = tempfile.mkdtemp(prefix="external-qos1-")
    broker, port = start_broker(tmp)
    raw = agent = None
    raws = []  # type: List[Optional[float]]
    agents = []  # type: List[float]
    orders = [("raw", "agent") if o[0] == "raw" else ("agent", "raw")
              for o in pair_orders(max(1, args.rounds))]
    try:
        print("starting the raw backend loop ...", file=sys.stderr)
        raw = RawProcess(args.set, tmp)
        raw.wait_started()
        raw.proc.send_signal(signal.SIGSTOP)
        print("starting the agent ...", file=sys.stderr)
        agent = AgentProcess(args.set, port, tmp, args.counter)
        agent.wait_started()
        time.sleep(args.warmup)  # the agent's warm-up, alone on the machine
        agent.proc.send_signal(signal.SIGSTOP)
        for n, order in enumerate(orders):
            for what in order:
                if what == "raw":
                    raws.append(run_side(raw, args.settle, args.seconds))
                else:
                    agents.append(run_side(agent, args.settle, args.seconds))
            print("pair {}/{}: raw {:.1f} fps, agent {:.1f} predictions/s".format(
                n + 1, len(orders), raws[-1] or 0.0, agents[-1]), file=sys.stderr)
    finally:
        for side in (agent, raw):
            if side is not None:
                side.close()
        broker.terminate()
        broker.wait(10)
    ratios = [a / r for a, r in zip(agents, raws) if r]
    result = {"cpu_count": os.cpu_count(), "seconds": args.seconds, "settle": args.settle,
              "overrides": args.set, "counter": args.counter, "loadavg_before": loadavg,
              "mode": "interleaved pairs (SIGSTOP/SIGCONT), order alternating",
              "pair_order": ["".join(w[0] for w in o) for o in orders],
              "raw_fps": [round(r, 2) if r else None for r in raws],
              "agent_fps_at_broker": [round(a, 2) for a in agents],
              "ratios": [round(r, 3) for r in ratios],
              "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
              "ratio_spread": ratio_spread(ratios)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("load average before: {}".format(loadavg))
        print("raw backend.infer fps per pair: {}".format(result["raw_fps"]))
        print("agent predictions/s at the broker (QoS 1) per pair: {}".format(
            result["agent_fps_at_broker"]))
        print("agent / raw per pair: {} (median {}; order {})".format(
            result["ratios"], result["ratio_median"], result["pair_order"]))
        spread = result["ratio_spread"]
        if spread:
            print("spread: min {min}, quartiles {p25}-{p75}, max {max}; {n} of {pairs} at or "
                  "above 0.95".format(n=spread["pairs_at_or_above_0.95"], **spread))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
