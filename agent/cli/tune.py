"""`edge-agent tune`: measures candidate setups with bench's machinery and picks the best one.

Each candidate (agent/tune/search.py) is loaded as a backend of its own and run through the
agent's whole pipeline unpaced (bench.measure_pipeline) while the power meter integrates its
energy (bench.EnergyProbe): fps, capture-to-publish p50/p99, mean watts and inferences per
joule. The table, a PNG (or SVG) plot of fps against watts with the Pareto front, and the best
setup under --max-watts/--min-fps/--max-p99-ms as a config overlay YAML (--out).
"""

import json
import os
import sys
from typing import Any, Dict, List, Optional

from ..backends import backend_class, open_backend
from ..config import Config, load_config
from ..errors import AgentError
from ..preprocess import Preprocessor
from ..tune import search
from ..tune import plot as tune_plot
from ..tune.power_modes import PowerModes
from ..updates.loader import backend_options
from .bench import (EnergyProbe, _median_run, _source_tensors, inference_device,
                    measure_pipeline, measure_raw, resolve_package)
from .progress import bar as progress_bar


def candidate_config(config: Config, candidate: search.Candidate) -> Config:
    """`config` with the candidate's keys set (validated like --set)."""
    cfg = load_config(None, search.config_overrides(candidate), data=config.to_dict())
    cfg.base_dir = config.base_dir
    return cfg


def candidates_for(config: Config, backend: Any) -> List[search.Candidate]:
    """The candidate setups of the backend that loads for `config` (already open)."""
    b = config.backend
    if backend.name == "onnxruntime":
        return search.onnxruntime_candidates(os.cpu_count() or 1, b.threads, b.spin,
                                             workers=b.workers)
    if backend.name == "tensorrt":
        precisions = [p for p in backend_class("tensorrt").precisions
                      if p != "int8" or b.calibration_dir]
        runtime = getattr(backend, "_runtime", None)
        dla_cores = int(getattr(runtime, "num_DLA_cores", 0) or 0)
        try:
            import pycuda  # noqa: F401  (GPU preprocessing needs it)
            gpu = True
        except ImportError:
            gpu = False
        return search.tensorrt_candidates(precisions, b.precision, b.preprocess, gpu,
                                          b.workspace_mb, dla_cores=min(dla_cores, 2))
    return [search.make_candidate({"backend.kind": b.kind})]


def measure_candidate(config: Config, package: Any, candidate: search.Candidate,
                      probe: EnergyProbe, uri: str, frames: int, rounds: int) -> Dict[str, Any]:
    """One candidate: its backend loaded, `rounds` unpaced pipeline runs (the median by fps)
    with the energy over each; errors and fallbacks are recorded, never raised."""
    row = {"setup": search.describe(candidate), "candidate": dict(candidate)}  # type: Dict
    try:
        cfg = candidate_config(config, candidate)
        backend, reasons = open_backend(package, backend_options(cfg))
    except AgentError as exc:
        row["error"] = str(exc)
        return row
    try:
        row["backend"], row["precision"] = backend.name, backend.precision
        row["degraded"] = reasons  # a fallback measures another setup than the candidate's
        device = inference_device(backend)
        tensors = _source_tensors(cfg, uri, Preprocessor(package.input), count=4)
        measure_raw(backend, tensors, 20)  # warm-up of this backend on this thread
        backend.release_thread()           # the pipeline's inference thread takes it over
        runs = []
        for _ in range(rounds):
            mark = probe.mark()
            run = measure_pipeline(cfg, backend, uri, 0.0, frames)
            run["energy"] = probe.energy(mark, run["frames"], device)
            runs.append(run)
        run = _median_run(runs)
    except AgentError as exc:
        row["error"] = str(exc)
        return row
    finally:
        backend.close()
    e2e = run["stages_ms"].get("end_to_end") or {}
    energy = run.get("energy") or {}
    meter_w = energy.get("mean_w")
    covered = meter_w is not None and not energy.get("note")
    row.update({"fps": run["fps"], "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"),
                "device": device, "meter_w": meter_w, "watts": meter_w if covered else None,
                "fps_rounds": [r["fps"] for r in runs]})
    row["inferences_per_joule"] = round(run["fps"] / meter_w, 3) \
        if covered and run["fps"] and meter_w else None
    return row


def _progress(i: int, total: int, label: str, done: Optional[Dict[str, Any]] = None) -> None:
    bar = progress_bar(i, total)
    if done is None:
        print("tune [{}] {}/{} {} ...".format(bar, i + 1, total, label), file=sys.stderr)
    elif done.get("error"):
        print("tune [{}] {}/{} {}: failed: {}".format(bar, i, total, label, done["error"]),
              file=sys.stderr)
    else:
        print("tune [{}] {}/{} {}: {} fps".format(bar, i, total, label, done.get("fps")),
              file=sys.stderr)
    sys.stderr.flush()


def run_tune(config: Config, model: Optional[str] = None, frames: int = 200, rounds: int = 1,
             source: Optional[str] = None, out: Optional[str] = None,
             plot: Optional[str] = "tune.png", objective: str = "auto",
             max_watts: Optional[float] = None, min_fps: Optional[float] = None,
             max_p99_ms: Optional[float] = None, power_modes: Optional[List[int]] = None,
             max_candidates: Optional[int] = None, as_json: bool = False,
             modes: Optional[PowerModes] = None, probe: Optional[EnergyProbe] = None) -> int:
    """Measure every candidate, print the table, write the plot and the overlay; 0 when a
    setup meets the constraints, 1 when none does. `modes` and `probe` default to this
    machine's nvpmodel and power meter (tests pass their own)."""
    package = resolve_package(config, model)
    package.verify()
    uri = source or config.source.uri
    backend, _ = open_backend(package, backend_options(config))
    try:
        candidates = candidates_for(config, backend)
    finally:
        backend.close()
    notes = []  # type: List[str]
    if power_modes:
        modes = modes or PowerModes()
        if modes.problem is not None:
            notes.append(modes.problem)
            power_modes = []
        candidates = search.with_power_modes(candidates, power_modes or [])
    if max_candidates:
        candidates = candidates[:max_candidates]
    probe = probe or EnergyProbe(config)
    results = []  # type: List[Dict[str, Any]]
    try:
        for i, cand in enumerate(candidates):
            label = search.describe(cand)
            _progress(i, len(candidates), label)
            if "power.nvpmodel" in cand and modes is not None:
                modes.switch(cand["power.nvpmodel"])
            row = measure_candidate(config, package, cand, probe, uri, frames, rounds)
            row["n"] = i + 1
            results.append(row)
            _progress(i + 1, len(candidates), label, row)
    finally:
        if modes is not None:
            modes.restore()
        probe.close()
    info = probe.describe("")
    covered = any(r.get("watts") is not None for r in results)
    if info["power_source"] == "none":
        notes.append("no power meter here: ranked by fps and latency only (no W, no "
                     "inferences/J)")
    elif not covered:
        notes.append("the power meter ({}, {}) does not cover the device running the "
                     "inferences: W shown as the meter's, ranked by fps and latency only"
                     .format(info["power_source"], info["power_coverage_label"]))
    if max_watts is not None and not covered:
        raise AgentError("tune: --max-watts needs a power meter that covers the device "
                         "running the inferences; this machine has none (" +
                         info["power_coverage_label"] + ")")
    best = search.choose_best(results, objective, max_watts, min_fps, max_p99_ms)
    front = search.pareto_front(results)
    for r in front:
        r["pareto"] = True
    summary = {"model": package.ref, "source": uri, "frames": frames, "rounds": rounds,
               "cpu_count": os.cpu_count(), "power_source": info["power_source"],
               "power_coverage": info["power_coverage"], "notes": notes,
               "constraints": {"max_watts": max_watts, "min_fps": min_fps,
                               "max_p99_ms": max_p99_ms}, "objective": objective,
               "results": results, "best": best["n"] if best else None}
    if plot:
        summary["plot_format"] = write_plot(plot, results, front, best, covered)
        summary["plot"] = plot
    if out and best is not None:
        write_overlay(out, best, summary)
        summary["overlay"] = out
    if as_json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_table(summary, best)
    return 0 if best is not None else 1


def write_plot(path: str, results: List[Dict[str, Any]], front: List[Dict[str, Any]],
               best: Optional[Dict[str, Any]], covered: bool) -> str:
    """fps against W with the Pareto front where a meter covered the inferences, else fps
    against p99; PNG, or SVG for a name ending in .svg. Returns the format written."""
    if covered:
        return tune_plot.write_plot(path, results, front, "watts", "mean watts",
                                    "fps against power", best)
    return tune_plot.write_plot(path, results, [], "p99_ms",
                                "p99 capture-to-publish ms (no power meter)",
                                "fps against p99 latency", best)


def write_overlay(path: str, best: Dict[str, Any], summary: Dict[str, Any]) -> None:
    """The best candidate's keys as YAML, with a header saying what was measured."""
    import yaml
    body = yaml.safe_dump(json.loads(json.dumps(search.overlay(best["candidate"]))),
                          default_flow_style=False, sort_keys=True)
    header = ["# edge-agent tune: best setup #{} ({}) for {}".format(
        best["n"], best["setup"], summary["model"]),
        "# measured: {} fps, p99 {} ms, {} W, {} inferences/J ({} cores, power: {})".format(
            best.get("fps"), _cell(best.get("p99_ms")), _cell(best.get("watts")),
            _cell(best.get("inferences_per_joule"), "{:.3f}"), summary["cpu_count"],
            summary["power_source"]),
        "# constraints: {}; objective {}".format(
            ", ".join("{}={}".format(k, v) for k, v in summary["constraints"].items()
                      if v is not None) or "none", summary["objective"])]
    if "power.nvpmodel" in best["candidate"]:
        header.append("# and nvpmodel mode {} (set it with `sudo nvpmodel -m {}`)".format(
            best["candidate"]["power.nvpmodel"], best["candidate"]["power.nvpmodel"]))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(header) + "\n" + body)


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_table(summary: Dict[str, Any], best: Optional[Dict[str, Any]]) -> None:
    print("edge-agent tune: {} on {} ({} cores), {} frames x {} round(s) per setup, "
          "power: {}".format(summary["model"], summary["source"], summary["cpu_count"],
                             summary["frames"], summary["rounds"], summary["power_source"]))
    for note in summary["notes"]:
        print("  note: " + note)
    print("")
    print("{:>3} {:<36} {:>8} {:>8} {:>8} {:>8} {:>8}  {}".format(
        "#", "setup", "fps", "p50 ms", "p99 ms", "W", "inf/J", ""))
    for r in summary["results"]:
        mark = ("best " if best is r else "") + ("pareto" if r.get("pareto") else "")
        if r.get("error"):
            print("{:>3} {:<36} failed: {}".format(r["n"], r["setup"][:36], r["error"]))
            continue
        watts = r.get("watts") if r.get("watts") is not None else r.get("meter_w")
        print("{:>3} {:<36} {:>8} {:>8} {:>8} {:>8} {:>8}  {}".format(
            r["n"], r["setup"][:36], _cell(r["fps"]), _cell(r["p50_ms"]), _cell(r["p99_ms"]),
            _cell(watts), _cell(r.get("inferences_per_joule"), "{:.3f}"), mark.strip()))
        for reason in r.get("degraded") or []:
            print("      fell back: " + reason)
    print("")
    print("latency: capture to publish in an unpaced run (the pipeline saturated)")
    if best is None:
        print("no setup meets the constraints; nothing written")
    else:
        print("best: #{} {}{}".format(best["n"], best["setup"],
                                      " -> " + summary["overlay"] if "overlay" in summary
                                      else ""))
    if "plot" in summary:
        print("plot: {} ({})".format(summary["plot"], summary["plot_format"]))


def cmd_tune(args: Any) -> int:
    from . import config_from_args
    from ..logs import configure_logging
    config = config_from_args(args)
    configure_logging("WARNING" if config.logging.level == "INFO" else config.logging.level)
    modes = [int(m) for m in args.power_modes.split(",") if m.strip()] \
        if args.power_modes else None
    return run_tune(config, model=args.model, frames=max(20, args.frames),
                    rounds=max(1, args.rounds), source=args.source, out=args.out,
                    plot=args.plot or None, objective=args.objective,
                    max_watts=args.max_watts, min_fps=args.min_fps,
                    max_p99_ms=args.max_p99_ms, power_modes=modes,
                    max_candidates=args.max_candidates, as_json=args.json)
