"""The tuner's search space and choice: candidate setups, the Pareto front, the best setup.

A candidate is an ordered mapping of config keys (dotted, as --set takes them) to values; the
first candidate is always the configured setup. Results are dicts with `fps`, `p50_ms`,
`p99_ms`, `watts` (None without a meter covering the inferring device) and
`inferences_per_joule`. Nothing here measures: agent/cli/tune.py does, with bench's functions.
"""

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError

Candidate = Dict[str, Any]
Result = Dict[str, Any]

OBJECTIVES = ("auto", "efficiency", "fps", "latency")


def onnxruntime_candidates(cpu_count: int, threads: Optional[int], spin: bool,
                           spins: Sequence[bool] = (False, True),
                           workers: int = 1) -> List[Candidate]:
    """ONNX Runtime: one frame at a time on 1, 2, half and all the cores' intra-op threads,
    each with spin off/on; then 2, half and all the cores' frames at once (backend.workers,
    the cores shared among them, spin off)."""
    counts = sorted(set(n for n in (1, 2, cpu_count // 2, cpu_count) if 1 <= n <= cpu_count))
    out = [make_candidate({"backend.threads": threads, "backend.spin": spin,
                           "backend.workers": workers})]
    for n in counts:
        for s in spins:
            out.append(make_candidate({"backend.threads": n, "backend.spin": s,
                                       "backend.workers": 1}))
    for w in sorted(set(n for n in (2, cpu_count // 2, cpu_count) if 2 <= n <= cpu_count)):
        out.append(make_candidate({"backend.threads": None, "backend.spin": False,
                                   "backend.workers": w}))
    return _unique(out)


def tensorrt_candidates(precisions: Sequence[str], precision: str, preprocess: str,
                        gpu_preprocess: bool, workspace_mb: int,
                        workspaces: Sequence[int] = (256, 1024),
                        dla_cores: int = 0) -> List[Candidate]:
    """TensorRT: each precision the build can do, preprocessing cpu (and gpu where pycuda is
    there), the workspace sizes, and each DLA core where the device has them."""
    out = [make_candidate({"backend.precision": precision, "backend.preprocess": preprocess,
                       "backend.workspace_mb": workspace_mb, "backend.dla_core": None})]
    preps = ("cpu", "gpu") if gpu_preprocess else ("cpu",)
    for p in precisions:
        for prep in preps:
            for ws in sorted(set(workspaces)):
                out.append(make_candidate({"backend.precision": p, "backend.preprocess": prep,
                                       "backend.workspace_mb": ws, "backend.dla_core": None}))
            for core in range(dla_cores):
                if p != "fp32":  # the DLA runs fp16 / int8 only
                    out.append(make_candidate({"backend.precision": p, "backend.preprocess": prep,
                                           "backend.workspace_mb": workspace_mb,
                                           "backend.dla_core": core}))
    return _unique(out)


def with_power_modes(candidates: List[Candidate], modes: Sequence[int]) -> List[Candidate]:
    """Every candidate under each nvpmodel mode (key `power.nvpmodel`, not a config key)."""
    if not modes:
        return candidates
    out = []  # type: List[Candidate]
    for mode in modes:
        for cand in candidates:
            item = OrderedDict(cand)
            item["power.nvpmodel"] = int(mode)
            out.append(item)
    return out


def config_overrides(candidate: Candidate) -> List[str]:
    """The candidate's config keys as --set KEY=VALUE texts (power.* keys are not config)."""
    out = []
    for key, value in candidate.items():
        if key.startswith("power."):
            continue
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        out.append("{}={}".format(key, text))
    return out


def describe(candidate: Candidate) -> str:
    """A short label: `threads=2 spin=off`, `fp16 gpu ws=1024`."""
    parts = []
    for key, value in candidate.items():
        name = key.split(".")[-1]
        if isinstance(value, bool):
            parts.append("{}={}".format(name, "on" if value else "off"))
        elif value is None:
            parts.append("{}=default".format(name) if name != "dla_core" else "")
        elif name in ("precision", "preprocess"):
            parts.append(str(value))
        else:
            parts.append("{}={}".format(name, value))
    return " ".join(p for p in parts if p)


def pareto_front(results: List[Result]) -> List[Result]:
    """Results no other result beats on both fps (higher) and watts (lower), by watts; empty
    when no result has watts."""
    points = [r for r in results if r.get("watts") is not None and r.get("fps")]
    front = []
    for r in points:
        dominated = any(o is not r and o["fps"] >= r["fps"] and o["watts"] <= r["watts"] and
                        (o["fps"] > r["fps"] or o["watts"] < r["watts"]) for o in points)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r["watts"])


def feasible(results: List[Result], max_watts: Optional[float] = None,
             min_fps: Optional[float] = None,
             max_p99_ms: Optional[float] = None) -> List[Result]:
    """The measured results (no error, not degraded) that meet every given constraint."""
    out = []
    for r in results:
        if r.get("error") or r.get("degraded") or not r.get("fps"):
            continue
        if max_watts is not None and (r.get("watts") is None or r["watts"] > max_watts):
            continue
        if min_fps is not None and r["fps"] < min_fps:
            continue
        if max_p99_ms is not None and (r.get("p99_ms") is None or r["p99_ms"] > max_p99_ms):
            continue
        out.append(r)
    return out


def choose_best(results: List[Result], objective: str = "auto",
                max_watts: Optional[float] = None, min_fps: Optional[float] = None,
                max_p99_ms: Optional[float] = None) -> Optional[Result]:
    """The best result under the constraints, or None when none meets them.

    Objectives: efficiency (most inferences per joule, then fps), fps (then lower p99),
    latency (lowest p99, then fps); auto is efficiency where energy was measured, else fps.
    """
    if objective not in OBJECTIVES:
        raise ConfigError("tune: --objective {!r} is not one of {}".format(
            objective, ", ".join(OBJECTIVES)))
    pool = feasible(results, max_watts, min_fps, max_p99_ms)
    if not pool:
        return None
    if objective == "auto":
        objective = "efficiency" if all(r.get("inferences_per_joule") for r in pool) else "fps"
    if objective == "efficiency":
        pool = [r for r in pool if r.get("inferences_per_joule")]
        if not pool:
            raise ConfigError("tune: --objective efficiency needs a power meter that covers "
                              "the device running the inferences; none was measured here")
        return max(pool, key=lambda r: (r["inferences_per_joule"], r["fps"]))
    if objective == "latency":
        return min(pool, key=lambda r: (r.get("p99_ms") or float("inf"), -r["fps"]))
    return max(pool, key=lambda r: (r["fps"], -(r.get("p99_ms") or 0.0)))


def overlay(candidate: Candidate) -> Dict[str, Any]:
    """The candidate's config keys as a nested mapping, for a config overlay YAML."""
    out = OrderedDict()  # type: Dict[str, Any]
    for key, value in candidate.items():
        if key.startswith("power."):
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, OrderedDict())
        node[parts[-1]] = value
    return out


def make_candidate(values: Dict[str, Any]) -> Candidate:
    return OrderedDict(sorted(values.items()))


def _unique(candidates: List[Candidate]) -> List[Candidate]:
    seen = set()
    out = []
    for cand in candidates:
        key = tuple(cand.items())
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out
