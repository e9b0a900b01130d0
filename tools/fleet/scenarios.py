"""Rollout scenarios from issue 14, each a real run with its numbers:

  restart      a group rollout to N simulated devices; the Mosquitto broker (persistence on) is
               stopped and started again on the same port in the middle; the rollout must
               complete with each device downloading and activating once
  bridge       two Mosquitto brokers joined by a bridge (edge/# both ways), the devices split
               over them, the operator on the first: the rollout converges as on one broker
  slow-canary  real `edge-agent run` processes; the install is a model about 3x slower than the
               serving one: the rollout stops at the canary, rolls it back, touches no other
  compare      the same small rollout with real `edge-agent run` processes and with simulated
               devices: per-device event sequences, converge seconds, lost, duplicates

    .venv/bin/python tools/fleet/scenarios.py restart --devices 100 [--json]

Every child (brokers, simulators, agents, the operator) dies with this process (PDEATHSIG) and is
stopped on the way out. Metrics as in tools/fleet/bench_rollout.py: converge_s (first install
sent -> last `activated`), lost (installs without any answer), duplicates (a second `activated`
for one request, or a second for one device), CPU seconds of operator, brokers and devices.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

from scenario_parts import (Fleet, counting, cpu_of, rollout_metrics,  # noqa: E402
                            wait_serving)


def restart(fleet: Fleet, devices: int, down_s: float = 3.0) -> Dict[str, Any]:
    """Stop the broker once a third of the devices activated; start it again after down_s."""
    broker = fleet.broker(persistent=True)
    fleet.simulators(devices, [broker])
    rec = fleet.recorder(broker)
    wait_serving(rec, fleet.group, devices)
    cpu0 = cpu_of(fleet)
    op = fleet.operator(broker, "--canary", "1", "--batch", str(max(1, devices // 4)),
                        "--window", "1")
    third = max(1, devices // 3)
    enough = counting(lambda t, p: t.split("/")[1] if t.endswith("/events") and
                      isinstance(p, dict) and p.get("state") == "activated" else None, third)
    # Or the operator ended first (rolled back, say): then the numbers say why.
    rec.wait_for(lambda m: enough(m) or op.poll() is not None, 600,
                 "{} activated devices".format(third))
    broker.stop()
    stopped = time.time()
    time.sleep(down_s)  # the outage itself, not a synchronisation
    broker.start()
    down = round(time.time() - stopped, 1)
    row = rollout_metrics(fleet, rec, op, cpu0)
    row.update(scenario="restart", broker_down_s=down,
               restarted_after_activated=third)
    return row


def bridge(fleet: Fleet, devices: int, bridged: bool = True) -> Dict[str, Any]:
    """Devices split over two bridged brokers; the operator and the recorder on the first.
    bridged=False: the same two simulators on the first broker only (the control run)."""
    first = fleet.broker()
    second = fleet.broker(bridge_to=first) if bridged else first
    half = devices // 2
    fleet.simulators(half, [first])
    fleet.simulators(devices - half, [second], first=half)
    rec = fleet.recorder(first)
    wait_serving(rec, fleet.group, devices)
    cpu0 = cpu_of(fleet)
    op = fleet.operator(first, "--canary", "1", "--batch", str(devices), "--window", "1")
    row = rollout_metrics(fleet, rec, op, cpu0)
    row.update(scenario="bridge" if bridged else "bridge control (one broker)",
               split=[half, devices - half])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("scenario", choices=("restart", "bridge", "slow-canary", "compare"))
    parser.add_argument("--devices", type=int, default=None,
                        help="devices (default: restart 50, bridge 50, slow-canary 3, "
                             "compare 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--one-broker", action="store_true",
                        help="bridge: the control run, both halves on one broker")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # run the clean-ups below
    work = tempfile.mkdtemp(prefix="fleet-scenario-")
    try:
        with Fleet(work) as fleet:
            if args.scenario == "restart":
                row = restart(fleet, args.devices or 50)
            elif args.scenario == "bridge":
                row = bridge(fleet, args.devices or 50, not args.one_broker)
            elif args.scenario == "slow-canary":
                from scenario_real import slow_canary
                row = slow_canary(fleet, args.devices or 3)
            else:
                from scenario_real import compare
                row = compare(fleet, args.devices or 5)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row, sort_keys=True) if args.json else
          "\n".join("{:<26} {}".format(k, json.dumps(v)) for k, v in sorted(row.items())))
    return 0 if row.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
