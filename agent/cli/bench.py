"""`edge-agent bench`: raw backend speed vs the full pipeline, in one run, on this machine.

1. raw: the backend alone on pre-made input tensors (what the hardware can do);
2. pipeline: the agent's own threads (capture, preprocess, infer, postprocess, publish) on a
   real source running unpaced, so pipeline fps / raw fps shows what the plumbing costs
   (raw and pipeline run in back-to-back pairs, alternating which goes first; the ratio is
   the median of the pairs' ratios, with their spread);
3. live-like: a paced 30 fps 1280x720 synthetic source, for capture-to-publish latency.
No broker is needed: messages are serialized and written to a local spool exactly as in a run,
then acknowledged at once (the broker's round trip is not part of the pipeline's cost).
"""

import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from ..daemon import Agent
from ..backends import open_backend
from ..config import Config, load_config
from ..store.package import ModelPackage
from ..updates.loader import backend_options, find_bundled_package
from ..power import coverage_label, covers, open_power
from ..preprocess import Preprocessor
from ..sources import source_from_config
from ..telemetry import percentiles


class LocalSink(object):
    """Bench's message sink: serializes and spools like the MQTT link, acknowledges at once."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool

    def publish(self, suffix: str, payload: Dict[str, Any], kind: str, retain: bool = False,
                qos: Optional[int] = None) -> None:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        row = self.spool.put("bench/" + suffix, data, 1, retain, kind)
        self.spool.ack(row)

    def flush(self, timeout: float) -> bool:
        return True

    def stop(self, timeout: float = 0.0) -> None:
        pass


def resolve_package(config: Config, model: Optional[str]) -> ModelPackage:
    if model and os.path.isdir(model):
        return ModelPackage.load(model)
    return find_bundled_package(config, model or config.model.name)


def _source_tensors(config: Config, uri: str, prep: Preprocessor, count: int = 16) -> List[Any]:
    source = source_from_config(config.source, config.base_dir, uri=uri, fps=0.0, loop=True)
    source.open()
    try:
        tensors = []
        for _ in range(count):
            image = source.read()
            if image is None:
                break
            tensors.append(prep(image))
    finally:
        source.close()
    if not tensors:
        raise SystemExit("bench: source {} gave no frames".format(uri))
    return tensors


def measure_raw(backend: Any, tensors: List[Any], frames: int) -> Dict[str, Any]:
    """The backend alone on pre-made tensors: `frames` inferences, as many at once as the
    pipeline runs (backend.parallel(): that many threads calling it, as ONNX Runtime's
    workers do in the agent), so raw and pipeline always compare the same setup."""
    width = backend.parallel()
    for i in range(min(20, frames)):
        backend.infer(tensors[i % len(tensors)])
    shares = [frames // width + (1 if k < frames % width else 0) for k in range(width)]
    times = [[] for _ in range(width)]  # type: List[List[float]]
    errors = []  # type: List[BaseException]

    def loop(k: int) -> None:
        try:
            for i in range(shares[k]):
                t0 = time.perf_counter()
                backend.infer(tensors[(i * width + k) % len(tensors)])
                times[k].append((time.perf_counter() - t0) * 1000.0)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    start = time.perf_counter()
    if width == 1:
        loop(0)
    else:
        threads = [threading.Thread(target=loop, args=(k,), name="raw-{}".format(k))
                   for k in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    total = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"frames": frames, "fps": round(frames / total, 2), "workers": width,
            "infer_ms": percentiles([t for part in times for t in part])}


def measure_pipeline(config: Config, backend: Any, uri: str, fps: float, frames: int,
                     width: Optional[int] = None, height: Optional[int] = None,
                     warmup: int = 10, telemetry: bool = False) -> Dict[str, Any]:
    from ..spool import Spool
    overrides = ["source.uri={}".format(uri), "source.fps={}".format(fps), "source.loop=true",
                 "telemetry.interval_s=1"]
    if width:
        overrides += ["source.width={}".format(width), "source.height={}".format(height)]
    data = config.to_dict()
    run_config = load_config(None, overrides, data=data)
    run_config.base_dir = config.base_dir
    tmp = tempfile.mkdtemp(prefix="edge-agent-bench-")
    spool = Spool(os.path.join(tmp, "spool.db"), max_messages=10000)
    sink = LocalSink(spool)
    agent = Agent(run_config, max_frames=frames + warmup, link=sink, telemetry=telemetry,
                  backend=backend)
    stamps = []  # type: List[float]
    cpu = []  # type: List[float]  # the process's CPU time (all threads) at each prediction

    def stamp(frame: Any, payload: Any) -> None:
        stamps.append(time.monotonic())
        cpu.append(time.process_time())

    agent.listeners.append(stamp)
    agent.run()
    spool.close()
    shutil.rmtree(tmp, ignore_errors=True)
    # Without telemetry nothing took a window: the stats hold every frame, in order. (With
    # telemetry on, only fps is used.)
    samples = agent.stats.take()["samples"]
    stamps, cpu = stamps[warmup:], cpu[warmup:]
    elapsed = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    stages = {stage: percentiles(values[warmup:]) for stage, values in samples.items()}
    return {"frames": len(stamps), "fps": round((len(stamps) - 1) / elapsed, 2)
            if elapsed > 0 else None, "stages_ms": stages, "dropped": agent.slot.dropped,
            "errors": agent.stats.errors, "helpers": agent.priority.describe(),
            # CPU of the whole process (every thread) per frame between the first and last
            # measured prediction: on a CPU-inferring device, what each frame costs in power
            "cpu_ms_per_frame": round((cpu[-1] - cpu[0]) * 1000.0 / (len(cpu) - 1), 3)
            if len(cpu) > 1 else None}


BENCH_IDLE_S = 5.0   # bench's idle baseline: longer than the daemon's, in parts for a spread
BENCH_IDLE_PARTS = 5


def inference_device(backend: Any) -> str:
    """Where `backend` runs its inferences: "gpu" (TensorRT, ONNX Runtime's CUDA provider),
    "dla" (TensorRT on a DLA core) or "cpu"."""
    if getattr(backend, "name", "") == "tensorrt":
        options = getattr(backend, "options", None)
        return "dla" if getattr(options, "dla_core", None) is not None else "gpu"
    providers = list(getattr(backend, "providers", []) or [])
    return "gpu" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"


class EnergyProbe(object):
    """Energy over a measured span, from the configured power source (None without one),
    with what its meter covers; the idle baseline is BENCH_IDLE_S in BENCH_IDLE_PARTS parts."""

    def __init__(self, config: Config, idle_s: float = BENCH_IDLE_S,
                 idle_parts: int = BENCH_IDLE_PARTS, root: str = "/") -> None:
        self.stop = threading.Event()
        self.idle_s = idle_s
        self.power = open_power(config.telemetry, self.stop, root=root, idle_s=idle_s,
                                idle_parts=idle_parts)
        if self.power.problem is not None:  # an explicit but absent source: bench goes on
            print("bench: no power readings: {}".format(self.power.problem), file=sys.stderr)

    @property
    def source(self) -> str:
        return self.power.source

    @property
    def coverage(self) -> Optional[str]:
        return self.power.coverage if self.power.sampler is not None else None

    def describe(self, device: str) -> Dict[str, Any]:
        """The result's power fields: source, coverage (and in words), idle baseline, whether
        the meter covers `device` (where the inferences run)."""
        return {"power_source": self.source, "power_coverage": self.coverage,
                "power_coverage_label": coverage_label(self.coverage),
                "inference_device": device,
                "energy_covers_inference": covers(self.coverage, device),
                "idle_w": _round4(self.power.idle_w),
                "idle_spread_w": _round4(self.power.idle_spread_w), "idle_s": self.idle_s}

    def mark(self) -> Any:
        return self.power.sampler.totals() if self.power.sampler is not None else None

    def energy(self, start: Any, inferences: int, device: str) -> Optional[Dict[str, Any]]:
        """Energy since `start` for `inferences` run on `device`; the per-inference figures
        are null (with `note`) where the meter does not cover that device."""
        if self.power.sampler is None or start is None:
            return None
        window = self.power.sampler.totals().since(start)
        out = window.per_inference(inferences, idle_w=self.power.idle_w,
                                   idle_spread_w=self.power.idle_spread_w,
                                   coverage=self.coverage)
        out["mean_w"] = window.mean_w
        if not covers(self.coverage, device):
            for key in ("mj_per_inference", "inferences_per_joule", "marginal_joules",
                        "marginal_mj_per_inference", "marginal_within_noise"):
                out[key] = None
            out["note"] = "the meter measures {} and the inferences run on the {}: its " \
                          "joules are not this work's energy".format(
                              coverage_label(self.coverage), device.upper())
        return {k: _round4(v) if isinstance(v, float) else v for k, v in out.items()}

    def close(self) -> None:
        self.stop.set()
        self.power.close()


def _round4(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def pair_orders(rounds: int) -> List[Tuple[str, str]]:
    """The order of raw and pipeline in each of `rounds` pairs: alternating, raw first in the
    first pair, so that a machine slowing down (or speeding up) during the run is not always
    seen by the same side."""
    return [("raw", "pipeline") if i % 2 == 0 else ("pipeline", "raw") for i in range(rounds)]


def ratio_spread(ratios: List[float]) -> Optional[Dict[str, Any]]:
    """The spread of per-pair ratios: min, quartiles, max and the pairs at or above 0.95
    (None without ratios). Quartiles interpolate linearly, as numpy.percentile does."""
    if not ratios:
        return None
    q = percentiles(ratios, (25, 50, 75))
    assert q is not None
    return {"min": round(min(ratios), 3), "p25": q["p25"], "median": q["p50"],
            "p75": q["p75"], "max": round(max(ratios), 3), "pairs": len(ratios),
            "pairs_at_or_above_0.95": sum(1 for r in ratios if r >= 0.95)}


def _median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run whose fps is the median of the rounds (its latencies come with it)."""
    ordered = sorted(runs, key=lambda r: r["fps"] or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def run_bench(config: Config, model: Optional[str] = None, frames: int = 300,
              source: Optional[str] = None, as_json: bool = False, rounds: int = 3) -> int:
    package = resolve_package(config, model)
    package.verify()
    backend, reasons = open_backend(package, backend_options(config))
    probe = EnergyProbe(config)
    try:
        prep = Preprocessor(package.input)
        uri = source or config.source.uri
        tensors = _source_tensors(config, uri, prep)
        device = inference_device(backend)
        # Raw and pipeline run in `rounds` back-to-back pairs, the order alternating (raw
        # first, then pipeline first, ...) so a drift of the machine's speed falls on both
        # sides; each pair gives one ratio and the median of the pairs is reported with its
        # spread. On a shared 2-core machine one run can be 20-30 % off a run a minute later.
        raws = []  # type: List[Dict[str, Any]]
        pipelines = []  # type: List[Dict[str, Any]]
        telemetries = []  # type: List[Dict[str, Any]]
        for order in pair_orders(rounds):
            for what in order:
                mark = probe.mark()
                if what == "raw":
                    raw = measure_raw(backend, tensors, frames)
                    raw["energy"] = probe.energy(mark, frames, device)
                    raws.append(raw)
                    backend.release_thread()  # the pipeline's inference thread takes it over
                else:
                    pipeline = measure_pipeline(config, backend, uri, 0.0, frames)
                    pipeline["energy"] = probe.energy(mark, pipeline["frames"], device)
                    pipelines.append(pipeline)
            telemetries.append(measure_pipeline(config, backend, uri, 0.0, frames,
                                                telemetry=True))
        ratios = [p["fps"] / r["fps"] for r, p in zip(raws, pipelines) if p["fps"]]
        raw = _median_run(raws)
        pipeline = _median_run(pipelines)
        with_telemetry = _median_run(telemetries)
        live = measure_pipeline(config, backend, "synthetic://", 30.0, min(frames, 150),
                                width=1280, height=720)
    finally:
        backend.close()
        probe.close()
    result = {
        "agent": __version__,
        "model": package.ref,
        "backend": backend.name,
        "precision": backend.precision,
        "degraded": reasons,
        "spin": config.backend.spin,
        "workers": raw.get("workers", 1),
        "helper_priority": pipeline["helpers"]["helper_priority"],
        "helper_priority_note": pipeline["helpers"]["helper_priority_note"],
        "cpu_count": os.cpu_count(),
        "raw": raw,
        "pipeline": pipeline,
        "live": live,
        "rounds": rounds,
        "ratio": round(_median(ratios), 3) if ratios else None,
        "ratios": [round(r, 3) for r in ratios],
        "ratio_spread": ratio_spread(ratios),
        "pair_order": ["".join(w[0] for w in order) for order in pair_orders(rounds)],
        "raw_fps_rounds": [r["fps"] for r in raws],
        "pipeline_fps_rounds": [p["fps"] for p in pipelines],
        "pipeline_with_telemetry_fps": with_telemetry["fps"],
        "telemetry_cost": round(1.0 - _median([t["fps"] / p["fps"] for t, p in
                                               zip(telemetries, pipelines)
                                               if t["fps"] and p["fps"]]), 4)
        if pipeline["fps"] and with_telemetry["fps"] else None,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    e2e = (live["stages_ms"].get("end_to_end") or {}).get("p50")
    raw_p50 = (raw["infer_ms"] or {}).get("p50")
    result.update(probe.describe(device))
    result["live_latency_over_raw_p50_ms"] = round(e2e - raw_p50, 2) \
        if e2e is not None and raw_p50 is not None else None
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(result, uri)
    return 0


def _fmt(p: Optional[Dict[str, float]]) -> str:
    if not p:
        return "{:>8} {:>8} {:>8}".format("-", "-", "-")
    return "{:8.2f} {:8.2f} {:8.2f}".format(p["p50"], p["p95"], p["p99"])


def print_table(r: Dict[str, Any], uri: str) -> None:
    print("edge-agent bench: {} on {} ({}), {} cores, backend.spin {}, {} frame(s) in flight, "
          "helper threads at {} priority".format(
              r["model"], r["backend"], r["precision"], r["cpu_count"],
              "on" if r["spin"] else "off", r["workers"], r["helper_priority"]))
    for reason in r["degraded"]:
        print("  note: " + reason)
    if r["helper_priority_note"] and r["helper_priority"] == "normal":
        print("  note: helper threads at normal priority: " + r["helper_priority_note"])
    print("")
    print("{:<34} {:>8}   {:>8} {:>8} {:>8}".format("", "fps", "p50 ms", "p95 ms", "p99 ms"))
    print("{:<34} {:8.2f}   {}".format("raw backend (infer only)" if r["workers"] == 1 else
                                       "raw backend, {} threads".format(r["workers"]),
                                       r["raw"]["fps"],
                                       _fmt(r["raw"]["infer_ms"])))
    p = r["pipeline"]
    print("{:<34} {:8.2f}   {}".format("pipeline, " + uri[:24] + " (unpaced)", p["fps"] or 0.0,
                                       _fmt(p["stages_ms"]["end_to_end"])))
    for stage in ("capture", "preprocess", "infer", "postprocess"):
        print("  {:<32} {:>8}   {}".format(stage, "", _fmt(p["stages_ms"][stage])))
    lv = r["live"]
    print("{:<34} {:8.2f}   {}".format("live-like 30 fps 1280x720", lv["fps"] or 0.0,
                                       _fmt(lv["stages_ms"]["end_to_end"])))
    for stage in ("preprocess", "infer"):
        print("  {:<32} {:>8}   {}".format(stage, "", _fmt(lv["stages_ms"][stage])))
    print("process CPU per frame: {} ms unpaced, {} ms live-like (every thread of this "
          "process)".format(p.get("cpu_ms_per_frame"), lv.get("cpu_ms_per_frame")))
    print("")
    print("pipeline fps / raw fps: {} (median of {} pairs: {}; raw fps {}, pipeline fps {})"
          .format(r["ratio"], r["rounds"], r["ratios"], r["raw_fps_rounds"],
                  r["pipeline_fps_rounds"]))
    spread = r["ratio_spread"]
    if spread:
        print("  spread of the pairs: min {min}, quartiles {p25}-{p75}, max {max}; "
              "{n} of {pairs} at or above 0.95 (pairs alternate raw/pipeline first)".format(
                  n=spread["pairs_at_or_above_0.95"], **spread))
    print("pipeline with telemetry: {} fps (cost {:.1%})".format(
        r["pipeline_with_telemetry_fps"], r["telemetry_cost"] or 0.0))
    print_energy(r)
    print("live capture-to-publish p50 - raw infer p50: {} ms".format(
        r["live_latency_over_raw_p50_ms"]))
    print("peak resident memory of this process: {} MB".format(r["max_rss_mb"]))


def energy_line(name: str, energy: Optional[Dict[str, Any]], r: Dict[str, Any]) -> Optional[str]:
    """One line of energy for the `name` measurement, labelled by what the meter covers."""
    if not energy or energy.get("mean_w") is None:
        return None
    label = r["power_coverage_label"]
    if energy.get("note"):
        return "energy, {}: no per-inference figure: {} (mean {:.2f} W, {})".format(
            name, energy["note"], energy["mean_w"], label)
    if energy.get("mj_per_inference") is None:
        return None
    if energy.get("marginal_within_noise"):
        marginal = "within noise"
    elif energy.get("marginal_mj_per_inference") is not None:
        marginal = "{:.1f} mJ/inference".format(energy["marginal_mj_per_inference"])
    else:
        marginal = "not measured"
    return ("energy, {} ({}): {:.1f} mJ/inference, {:.2f} inferences/J, mean {:.2f} W; "
            "marginal over idle: {}".format(name, label, energy["mj_per_inference"],
                                            energy["inferences_per_joule"] or 0.0,
                                            energy["mean_w"], marginal))


def print_energy(r: Dict[str, Any]) -> None:
    """The power meter, what it covers, its idle baseline and the energy lines."""
    if r["power_source"] == "none":
        print("energy: no readable power sensor here (telemetry.power: auto found none)")
        return
    idle = "idle {:.2f} W +- {:.3f} W over {:.0f} s".format(
        r["idle_w"], r["idle_spread_w"] or 0.0, r["idle_s"]) if r["idle_w"] is not None \
        else "idle baseline not measured"
    print("power: {}, {} ({}); inference on the {}".format(
        r["power_source"], r["power_coverage_label"], idle, r["inference_device"].upper()))
    if not r["energy_covers_inference"]:
        print("  note: this meter does not cover the {}: no energy per inference is "
              "reported for this work".format(r["inference_device"].upper()))
    for name in ("raw", "pipeline"):
        line = energy_line(name, r[name].get("energy"), r)
        if line:
            print(line)
