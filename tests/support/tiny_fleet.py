"""Real `edge-agent run` processes serving the tiny ONNX model (tiny@1 seeded in each store,
as after `edge-agent models install`), with the simulator's settings, for the fleet system
tests; and the predicates those tests wait on."""

import json
import os
from typing import Any, Callable, Dict, List

from support.agent_process import AgentProcess, agent_args
from support.model_store import make_package_dir

# tools/fleet/simulate.py's device settings, for a process of its own.
TINY_SETTINGS = ("model.name=tiny", "backend.kind=onnxruntime", "backend.threads=1",
                 "source.uri=synthetic://", "source.width=64", "source.height=48",
                 "source.fps=5", "telemetry.interval_s=1", "telemetry.power=none",
                 "updates.probation_frames=3", "updates.max_latency_factor=1000")


def tiny_agent(port: int, name: str, state_dir: str, group: str) -> AgentProcess:
    from agent.store.store import ModelStore
    package = os.path.join(os.path.dirname(state_dir), "tiny-1-package")
    if not os.path.isdir(package):
        make_package_dir(package, "tiny", "1", seed=0)
    store = ModelStore(state_dir)
    ref = store.import_package(package)
    store.activate(ref.name, ref.version)
    extra = ["--set", "device.group=" + group]
    for item in TINY_SETTINGS:
        extra += ["--set", item]
    return AgentProcess(agent_args(port, name, state_dir, *extra))


def serving(names: List[str], version: str = None) -> Callable[[List[Any]], bool]:
    """A recorder predicate: every device's latest status is `serving` (on `version`)."""
    def check(messages: List[Any]) -> bool:
        last = {}  # type: Dict[str, Any]
        for topic, payload, _ in messages:
            if topic.endswith("/status") and isinstance(payload, dict):
                last[topic.split("/")[1]] = payload
        return all(last.get(n, {}).get("state") == "serving" and
                   (version is None or (last[n].get("model") or {}).get("version") == version)
                   for n in names)
    return check


def activations(events: Dict[str, List[Dict[str, Any]]], log: List[Dict[str, Any]]
                ) -> Dict[str, int]:
    """Per device the rollout sent to: distinct `activated` events over all its request_ids.
    A copy of one event (the same payload, the same `ts`) is QoS 1 delivering it again across
    the broker restart, not a second activation: it counts once."""
    counts = {}  # type: Dict[str, int]
    for record in log:
        if record["event"] == "sent":
            counts.setdefault(record["device"], 0)
            counts[record["device"]] += len(set(
                json.dumps(e, sort_keys=True) for e in events.get(record["request_id"], [])
                if e.get("state") == "activated"))
    return counts
