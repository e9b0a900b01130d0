#!/usr/bin/env python3
"""The agent as a user runs it, measured from outside: predictions per second at the broker.

A real Mosquitto on a free port, a real `edge-agent run` process publishing at QoS 1 on the
sample photos (unpaced, looping), and a subscriber at QoS 1 that counts the predictions the
broker delivers over a timed window (after a warm-up). Around it, in the same setup (same
Python, same config, same ONNX Runtime options, a process of its own), the raw backend:
`backend.infer` (ONNX Runtime's session.run and the backend's thin wrapper) on pre-made
tensors, with agent/cli/bench.py's own measure_raw. Order: raw, agent, raw, ... for
`--rounds`; the ratio of each round is agent / mean(raw before, raw after).

    python tools/bench/external_qos1.py [--seconds 20] [--rounds 2] [--set KEY=VALUE ...]

Prints a table and, with --json, the figures as JSON. Needs mosquitto (apt-get install
mosquitto) and paho-mqtt (in the main venv).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RAW_CODE = r"""
import json, sys, time
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
seconds, frames, start = float(sys.argv[2]), 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    frames += measure_raw(backend, tensors, 100)["frames"]
fps = frames / (time.perf_counter() - start)
backend.close()
print(json.dumps({"fps": round(fps, 2), "frames": frames}))
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


def run_raw(overrides: List[str], seconds: float) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", RAW_CODE, json.dumps(overrides), str(seconds)],
                         cwd=ROOT, stdout=subprocess.PIPE, check=True, timeout=seconds + 120)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def run_agent(overrides: List[str], port: int, tmp: str, seconds: float,
              warmup: float) -> Dict[str, Any]:
    state = tempfile.mkdtemp(prefix="state-", dir=tmp)
    sets = overrides + ["mqtt.host=127.0.0.1", "mqtt.port={}".format(port), "mqtt.qos=1",
                        "device.id=ext", "device.state_dir=" + state, "source.fps=0",
                        "source.loop=true", "predictions.max_rate_hz=null"]
    counter = Counter(port, "edge/ext/predictions")
    args = [sys.executable, "-m", "agent", "run"]
    for item in sets:
        args += ["--set", item]
    log = open(os.path.join(tmp, "agent.log"), "ab")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120.0
        while counter.first() is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("external_qos1: the agent published nothing; see " + log.name)
            time.sleep(0.1)  # waiting for the first prediction of a separate process
        t0 = counter.first() + warmup
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))  # the measured window
        count = counter.count_between(t0, t0 + seconds)
    finally:
        proc.terminate()
        proc.wait(30)
        counter.close()
    return {"predictions": count, "fps": round(count / seconds, 2)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after the first prediction before counting (5)")
    parser.add_argument("--rounds", type=int, default=2, help="agent runs (2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both the agent and raw (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="external-qos1-")
    broker, port = start_broker(tmp)
    raws = []  # type: List[Dict[str, Any]]
    agents = []  # type: List[Dict[str, Any]]
    try:
        print("raw 1 ...", file=sys.stderr)
        raws.append(run_raw(args.set, args.seconds))
        for n in range(args.rounds):
            print("agent {} ...".format(n + 1), file=sys.stderr)
            agents.append(run_agent(args.set, port, tmp, args.seconds, args.warmup))
            print("raw {} ...".format(n + 2), file=sys.stderr)
            raws.append(run_raw(args.set, args.seconds))
    finally:
        broker.terminate()
        broker.wait(10)
    ratios = [a["fps"] / ((raws[i]["fps"] + raws[i + 1]["fps"]) / 2.0)
              for i, a in enumerate(agents)]
    result = {"cpu_count": os.cpu_count(), "seconds": args.seconds, "overrides": args.set,
              "raw_fps": [r["fps"] for r in raws], "agent_fps_at_broker": [a["fps"] for a in agents],
              "ratios": [round(r, 3) for r in ratios],
              "ratio_median": round(statistics.median(ratios), 3) if ratios else None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("raw backend.infer fps (before/between/after): {}".format(result["raw_fps"]))
        print("agent predictions/s at the broker (QoS 1): {}".format(
            result["agent_fps_at_broker"]))
        print("agent / raw per round: {} (median {})".format(result["ratios"],
                                                            result["ratio_median"]))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
