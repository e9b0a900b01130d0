"""A fleet simulator: N devices in one process, each the agent's own `Agent` (MQTT link, spool,
command handling, model store, download, validation, probation, telemetry), with only capture
and inference made cheap: a small synthetic source at a low frame rate and a tiny ONNX model
(32x32 input, one convolution) on ONNX Runtime with one thread.

    .venv/bin/python tools/fleet/simulate.py --count 50 --port 1883 --group sim --dir /tmp/sim

Runs until SIGTERM/SIGINT; prints `ready N` once every agent thread is started. Each device
`sim-<group>-<i>` has its own state directory under --dir, seeded with tiny@1 (active). The
tiny model helpers come from tests/support (the onnx package is needed, as for the tests).
One process holds one GIL and at most MAX_PER_PROCESS (150) devices: start one simulator per
CPU core or more (--first numbers them apart; bench_rollout.py --processes does it).
SCALE.md has the figures.
"""

import argparse
import os
import signal
import sys
import threading
from typing import Any, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


# paho's network loop uses select(), which cannot watch a file descriptor above 1023; each
# agent holds 6 (its MQTT socket, paho's wake-up socket pair, the spool's 3 SQLite files), so
# past ~165 agents in one process the newest cannot connect at all (measured: 170 of 200).
MAX_PER_PROCESS = 150


def device_overrides(name: str, state_dir: str, port: int, group: str,
                     fps: float, telemetry_s: float) -> List[str]:
    return ["device.id=" + name, "device.state_dir=" + state_dir, "device.group=" + group,
            "mqtt.host=127.0.0.1", "mqtt.port={}".format(port),
            "source.uri=synthetic://", "source.width=64", "source.height=48",
            "source.fps={}".format(fps), "model.name=tiny", "backend.kind=onnxruntime",
            "backend.threads=1", "backend.validate.frames=2", "telemetry.power=none",
            "telemetry.interval_s={}".format(telemetry_s), "updates.probation_frames=3",
            # Hundreds of agents share one Python process and 2 cores: a tiny model's inference
            # time varies 100x with the GIL, and probation would roll back on that noise.
            "updates.max_latency_factor=1000",
            # Not a device's CPU to share with inference: and each agent's starvation check
            # would read every one of the process's ~1,500 threads twice a second.
            "backend.helper_priority=normal",
            "logging.level=WARNING"]


def seed_store(state_dir: str, package_dir: str) -> None:
    """tiny@1 in the device's store, active (as after `edge-agent models install DIR`)."""
    from agent.store.store import ModelStore
    store = ModelStore(state_dir)
    if store.active_ref() is None:
        package = store.import_package(package_dir)
        store.activate(package.name, package.version)


def start_fleet(count: int, port: int, group: str, base: str, fps: float = 1.0,
                telemetry_s: float = 2.0, first: int = 0,
                cancel: Optional[threading.Event] = None) -> List[Any]:
    """Start `count` agents in threads; returns them (stop each with agent.stop.set()).
    Setting `cancel` stops starting more (a SIGTERM during a long start-up)."""
    from agent.config import load_config
    from agent.daemon import Agent
    from support.model_store import make_package_dir
    package_dir = os.path.join(base, "tiny-1-{}".format(first))
    if not os.path.isdir(package_dir):
        make_package_dir(package_dir, "tiny", "1", seed=0)
    agents = []
    for i in range(first, first + count):
        if cancel is not None and cancel.is_set():
            break
        name = "sim-{}-{}".format(group, i)
        state_dir = os.path.join(base, name)
        os.makedirs(state_dir, exist_ok=True)
        seed_store(state_dir, package_dir)
        config = load_config(None, device_overrides(name, state_dir, port, group, fps,
                                                    telemetry_s))
        agent = Agent(config)
        thread = threading.Thread(target=agent.run, name="agent-" + name, daemon=True)
        thread.start()
        agent.thread = thread
        agents.append(agent)
    return agents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--group", default="sim")
    parser.add_argument("--first", type=int, default=0,
                        help="number of the first device (several simulators, one group)")
    parser.add_argument("--dir", required=True, help="state directories go here")
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--telemetry-s", type=float, default=2.0)
    parser.add_argument("--switch-interval", type=float, default=0.05,
                        help="seconds between forced GIL hand-overs in this process "
                             "(Python's default: 0.005); longer wastes less CPU when hundreds "
                             "of agent threads wait for the GIL (default 0.05)")
    args = parser.parse_args()
    if args.count > MAX_PER_PROCESS:
        parser.error("--count {}: at most {} devices per process (paho's select() cannot use "
                     "file descriptors above 1023, and each agent holds 6); start several "
                     "simulators with --first, as bench_rollout.py --processes does".format(
                         args.count, MAX_PER_PROCESS))
    from agent.logs import configure_logging
    configure_logging("WARNING")
    threading.stack_size(512 * 1024)  # hundreds of agents, ~8 threads each
    # Simulator only (a device runs one agent, ~8 threads): with hundreds of agents in one
    # interpreter, a burst of work (a group install reaches 100 agents at once) leaves
    # hundreds of threads waiting for the GIL, and each waiter wakes every switch interval to
    # ask for it: measured at 100 agents a process, 100k context switches/s and 60 % system
    # CPU, starving the MQTT threads past their keepalive. Waking them 10x less often keeps the
    # CPU for the agents' own work; the threads still hand the GIL over at every blocking call.
    sys.setswitchinterval(args.switch_interval)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    agents = start_fleet(args.count, args.port, args.group, args.dir, args.fps,
                         args.telemetry_s, args.first, cancel=done)
    print("ready {}".format(len(agents)), flush=True)
    done.wait()
    for agent in agents:
        agent.stop.set()
    for agent in agents:
        agent.thread.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
