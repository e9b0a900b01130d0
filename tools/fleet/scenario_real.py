"""The scenarios of tools/fleet/scenarios.py with real `edge-agent run` processes: a canary
whose model is about 3x slower than the serving one (stopped and rolled back by the operator's
gate), and the same small rollout with real processes and with simulated devices, compared."""

import os
import time
from typing import Any, Dict, List

from scenario_parts import Fleet, cpu_of, operator_log, rollout_metrics, wait_serving

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED = os.path.join(ROOT, "models", "efficientnet_lite0")


def slower_model(src: str, dst: str, copies: int = 3) -> None:
    """`copies` copies of the graph in `src`, their logits averaged: the same predictions
    for `copies` times the work. The copies share the weights (so the model is not `copies`
    times as large, nor its weights out of cache), and each reads the input through its own
    `Add 0`, so ONNX Runtime cannot merge them as common subexpressions."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(src)
    graph = model.graph
    source, out = graph.input[0].name, graph.output[0].name
    nodes = []
    inits = list(graph.initializer)
    for k in range(copies):
        prefix = "c{}_".format(k)
        renamed = {source: prefix + "input"}
        # A different, negligible value per copy (k * 1e-30 vanishes next to any pixel value):
        # equal constants would be shared by ONNX Runtime and the copies merged again.
        inits.append(numpy_helper.from_array(np.array(k * 1e-30, np.float32), prefix + "zero"))
        nodes.append(helper.make_node("Add", [source, prefix + "zero"], [prefix + "input"]))
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.input[:] = [renamed.get(name, name) for name in node.input]
            for i, name in enumerate(node.output):
                renamed[name] = copy.output[i] = prefix + name
            nodes.append(copy)
    inits.append(numpy_helper.from_array(np.array(1.0 / copies, np.float32), "one_nth"))
    nodes.append(helper.make_node("Sum", ["c{}_{}".format(k, out) for k in range(copies)],
                                  ["sum_of_copies"]))
    nodes.append(helper.make_node("Mul", ["sum_of_copies", "one_nth"], [out]))
    merged = helper.make_graph(nodes, graph.name + "_x{}".format(copies), list(graph.input),
                               list(graph.output), inits)
    slow = helper.make_model(merged, opset_imports=list(model.opset_import))
    slow.ir_version = model.ir_version
    onnx.save(slow, dst)


def infer_ms(path: str, runs: int = 40, threads: int = 1) -> float:
    """Median milliseconds of one inference on ONNX Runtime (CPU, `threads` threads)."""
    import numpy as np
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    x = np.random.RandomState(0).rand(*feed.shape).astype(np.float32)
    session.run(None, {feed.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {feed.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def _install_bundled(fleet: Fleet, version: str, onnx_path: str) -> Dict[str, Any]:
    from support.model_server import MANIFEST
    from support.model_store import sha
    with open(onnx_path, "rb") as handle:
        model = handle.read()
    with open(os.path.join(BUNDLED, "labels.txt"), "rb") as handle:
        labels = handle.read()
    payload = {"name": "efficientnet_lite0", "version": version, "sha256": sha(model),
               "url": fleet.server.publish("/eff/{}/model.onnx".format(version), model),
               "manifest": dict(MANIFEST), "labels_sha256": sha(labels),
               "labels_url": fleet.server.publish("/eff/{}/labels.txt".format(version), labels)}
    fleet.write_install(payload)
    return payload


def _last_status(rec: Any, device: str) -> Dict[str, Any]:
    with rec.cond:
        found = [p for t, p, _ in rec.messages if t == "edge/{}/status".format(device)]
    return found[-1] if found else {}


def slow_canary(fleet: Fleet, devices: int, window: float = 5.0,
                max_regression: float = 1.0) -> Dict[str, Any]:
    """Real agents serve the bundled model; the install is the same model 3 times over."""
    slow = os.path.join(fleet.work, "slow3.onnx")
    slower_model(os.path.join(BUNDLED, "model.onnx"), slow)
    base_ms = infer_ms(os.path.join(BUNDLED, "model.onnx"), runs=60)
    slow_ms = infer_ms(slow, runs=60)
    _install_bundled(fleet, "3", slow)
    broker = fleet.broker()
    rec = fleet.recorder(broker)
    names = ["{}-{}".format(fleet.group, i) for i in range(devices)]
    for name in names:
        fleet.agent(name, broker, "source.uri=synthetic://?fps=5", "telemetry.interval_s=1",
                    "backend.kind=onnxruntime", "backend.threads=1",
                    "updates.max_latency_factor=100")
    wait_serving(rec, fleet.group, devices)
    op = fleet.operator(broker, "--canary", "1", "--batch", str(devices), "--window",
                        str(window), "--max-regression", str(max_regression), gates_off=False)
    code = op.wait(600)
    log = operator_log(fleet)
    import json
    with open(fleet.state_file) as handle:
        state = json.load(handle)
    canary = state["stages"][0][0]
    entry = state["devices"][canary]
    before, after = entry.get("baseline") or {}, entry.get("after") or {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and \
            (_last_status(rec, canary).get("model") or {}).get("version") == "3":
        time.sleep(0.2)  # a report's poll: the canary's status after its rollback
    others = [n for n in names if n != canary]
    touched = dict((n, [c for c, _ in rec.commands(n)]) for n in others)
    row = {
        "scenario": "slow-canary", "devices": devices, "exit_code": code,
        "outcome": log[-1]["event"] if log else None,
        "offline_factor": round(slow_ms / base_ms, 2),
        "offline_infer_ms": {"baseline": round(base_ms, 2), "canary_model": round(slow_ms, 2)},
        "gate": {"before": before, "after": after,
                 "infer_p50_factor": round(after["infer_p50_ms"] / before["infer_p50_ms"], 2)
                 if after.get("infer_p50_ms") and before.get("infer_p50_ms") else None,
                 "regressed": entry.get("regressed"), "max_regression": max_regression},
        "canary": canary, "canary_step": entry["step"],
        "canary_model_now": (_last_status(rec, canary).get("model") or {}).get("version"),
        "commands_to_others": touched,
        "others_model_now": dict((n, (_last_status(rec, n).get("model") or {}).get("version"))
                                 for n in others),
        "stages_run": [r.get("name") for r in log if r["event"] == "stage"],
    }
    row["ok"] = (row["outcome"] == "rolled_back" and entry["step"] == "rolled_back" and
                 not any(touched.values()) and row["canary_model_now"] != "3" and
                 any(g.startswith("infer_p50_ms") for g in entry.get("regressed") or []))
    return row


def _sequences(fleet: Fleet, rec: Any) -> Dict[str, List[str]]:
    """Per device (by number), the states of the rollout's events for it, in order."""
    out = {}  # type: Dict[str, List[str]]
    log = operator_log(fleet)
    events = fleet.rollout_events(rec)
    for record in log:
        if record["event"] == "sent":
            number = record["device"].rsplit("-", 1)[1]
            out.setdefault(number, []).extend(
                e["state"] for e in events.get(record["request_id"], []))
    return out


def compare(fleet: Fleet, devices: int) -> Dict[str, Any]:
    """The same rollout (canary 1, batches of 2, window 1 s, gates off) to `devices` real
    `edge-agent run` processes, then to `devices` simulated ones; each on a broker of its own."""
    from support.model_store import make_package_dir
    from agent.store.store import ModelStore
    package = make_package_dir(os.path.join(fleet.work, "tiny-1"), "tiny", "1", seed=0)
    options = ("--canary", "1", "--batch", "2", "--window", "1")
    rows = {}
    broker = fleet.broker()
    rec = fleet.recorder(broker)
    for i in range(devices):
        name = "real-{}-{}".format(fleet.group, i)
        store = ModelStore(os.path.join(fleet.work, name))
        ref = store.import_package(package)
        store.activate(ref.name, ref.version)
        # The simulator's settings (tools/fleet/simulate.py), in a process of its own.
        fleet.agent(name, broker, "source.uri=synthetic://", "source.width=64",
                    "source.height=48", "source.fps=1", "model.name=tiny",
                    "backend.kind=onnxruntime", "backend.threads=1", "backend.validate.frames=2",
                    "telemetry.power=none", "telemetry.interval_s=2",
                    "updates.probation_frames=3", "updates.max_latency_factor=1000",
                    "logging.level=WARNING")
    wait_serving(rec, fleet.group, devices)
    cpu0 = cpu_of(fleet)
    rows["real"] = rollout_metrics(fleet, rec, fleet.operator(broker, *options), cpu0)
    rows["real"]["sequences"] = _sequences(fleet, rec)
    sim_work = os.path.join(fleet.work, "simulated")
    os.makedirs(sim_work)
    with Fleet(sim_work, fleet.group) as sim:
        broker = sim.broker()
        rec = sim.recorder(broker)
        sim.simulators(devices, [broker])
        wait_serving(rec, sim.group, devices)
        cpu0 = cpu_of(sim)
        rows["simulated"] = rollout_metrics(sim, rec, sim.operator(broker, *options), cpu0)
        rows["simulated"]["sequences"] = _sequences(sim, rec)
    same = rows["real"]["sequences"] == rows["simulated"]["sequences"]
    return {"scenario": "compare", "devices": devices, "real": rows["real"],
            "simulated": rows["simulated"], "same_event_sequences": same,
            "ok": same and rows["real"]["ok"] and rows["simulated"]["ok"]}
