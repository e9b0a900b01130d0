"""The engine cache: engines stored with the fingerprint they were built for, refused on change.

Engines are not portable across GPUs, boards or TensorRT versions (docs/PLATFORM.md section 2),
so every engine is stored with the fingerprint it was built for (its hash is the cache key) and
refused with the reason when anything differs.
"""

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...atomicfile import write_atomic

# Bump when the way engines are built changes, so cached engines from older code are rebuilt.
BUILD_RECIPE = "edge-agent-trt-1"


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` so a crash leaves the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    write_atomic(path, data, prefix="." + os.path.basename(path) + ".")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text).strip("_") or "unknown"


FINGERPRINT_FIELDS = ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "board",
                      "precision", "input_shapes", "max_batch", "workspace_mb", "dla_core",
                      "builder_flags", "calibration")


def make_fingerprint(onnx_sha256: str, tensorrt: str, gpu: str, compute_capability: str,
                     board: Optional[str], precision: str, input_shapes: Dict[str, List[int]],
                     max_batch: int, workspace_mb: int, dla_core: Optional[int],
                     builder_flags: Sequence[str] = (),
                     calibration: Optional[str] = None) -> Dict[str, Any]:
    """Everything an engine depends on; the cache key is its hash (DESIGN.md, Engine cache)."""
    return {
        "onnx_sha256": onnx_sha256, "tensorrt": tensorrt, "gpu": gpu,
        "compute_capability": compute_capability, "board": board or "none",
        "precision": precision,
        "input_shapes": {k: [int(d) for d in v] for k, v in sorted(input_shapes.items())},
        "max_batch": int(max_batch), "workspace_mb": int(workspace_mb),
        "dla_core": None if dla_core is None else int(dla_core),
        "builder_flags": sorted(set(builder_flags) | {BUILD_RECIPE}),
        "calibration": calibration,
    }


def fingerprint_key(fingerprint: Dict[str, Any]) -> str:
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def fingerprint_differences(have: Dict[str, Any], want: Dict[str, Any]) -> List[str]:
    """Human-readable 'field: engine has X, this device needs Y' lines."""
    out = []
    for field in sorted(set(have) | set(want)):
        if have.get(field) != want.get(field):
            out.append("{}: engine built for {!r}, now {!r}".format(
                field, have.get(field), want.get(field)))
    return out


class CacheLookup(object):
    """Result of EngineCache.lookup: the engine bytes on a hit, else why there is none."""

    def __init__(self, key: str, engine_path: str, data: Optional[bytes], reason: str,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        self.key = key
        self.engine_path = engine_path
        self.data = data
        self.reason = reason
        self.meta = meta or {}

    @property
    def hit(self) -> bool:
        return self.data is not None


class EngineCache(object):
    """`state_dir/engines/<name>-<version>/<key>.engine` with `<key>.json` beside it.

    The JSON holds the fingerprint, the engine's sha256 and size and build facts; it is written
    after the engine, so a JSON always describes a complete engine. Timing caches are shared
    per (TensorRT version, GPU) at `state_dir/engines/timing-<trt>-<gpu>.cache`; the INT8
    calibration cache is per model version.
    """

    def __init__(self, state_dir: str, name: str, version: str) -> None:
        self.root = os.path.join(state_dir, "engines")
        self.folder = os.path.join(self.root, "{}-{}".format(_safe(name), _safe(str(version))))

    def paths(self, key: str) -> Tuple[str, str]:
        base = os.path.join(self.folder, key)
        return base + ".engine", base + ".json"

    def timing_cache_path(self, tensorrt: str, gpu: str) -> str:
        return os.path.join(self.root, "timing-{}-{}.cache".format(_safe(tensorrt), _safe(gpu)))

    def calibration_cache_path(self, tensorrt: str) -> str:
        return os.path.join(self.folder, "calibration-{}.cache".format(_safe(tensorrt)))

    def lookup(self, fingerprint: Dict[str, Any]) -> CacheLookup:
        """The cached engine for this fingerprint, or the reason it must be (re)built."""
        key = fingerprint_key(fingerprint)
        engine_path, meta_path = self.paths(key)
        if not os.path.isfile(meta_path):
            return CacheLookup(key, engine_path, None, self._explain_miss(fingerprint))
        try:
            with open(meta_path, "r", encoding="utf-8") as handle:
                meta = json.load(handle)
            recorded = meta["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return CacheLookup(key, engine_path, None,
                               "engine record {} is unreadable ({}); rebuilding".format(
                                   meta_path, exc))
        diffs = fingerprint_differences(recorded, fingerprint)
        if diffs:
            return CacheLookup(key, engine_path, None,
                               "cached engine {} does not match this device ({}); rebuilding"
                               .format(engine_path, "; ".join(diffs)), meta)
        try:
            with open(engine_path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return CacheLookup(key, engine_path, None,
                               "cached engine {} is missing or unreadable ({}); rebuilding".format(
                                   engine_path, exc.strerror or exc), meta)
        if len(data) != meta.get("engine_bytes") or _sha256_bytes(data) != meta.get(
                "engine_sha256"):
            return CacheLookup(key, engine_path, None,
                               "cached engine {} is stale or corrupt (size/sha256 differ from its "
                               "record); rebuilding".format(engine_path), meta)
        return CacheLookup(key, engine_path, data, "cached engine {}".format(engine_path), meta)

    def _explain_miss(self, fingerprint: Dict[str, Any]) -> str:
        """Say why no engine fits: the closest engine of this model and what differs."""
        best = None  # type: Optional[Tuple[int, str, List[str]]]
        for name in sorted(os.listdir(self.folder)) if os.path.isdir(self.folder) else []:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, name), "r", encoding="utf-8") as handle:
                    recorded = json.load(handle)["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            diffs = fingerprint_differences(recorded, fingerprint)
            if best is None or len(diffs) < best[0]:
                best = (len(diffs), name[:-5], diffs)
        if best is None:
            return "no engine built yet for this model version"
        return "cached engine {} was built for a different setup ({}); building a new one".format(
            best[1], "; ".join(best[2]))

    def store(self, fingerprint: Dict[str, Any], data: bytes,
              facts: Optional[Dict[str, Any]] = None) -> str:
        """Write engine then record atomically; returns the engine path."""
        key = fingerprint_key(fingerprint)
        engine_path, meta_path = self.paths(key)
        meta = {"key": key, "fingerprint": fingerprint, "engine_bytes": len(data),
                "engine_sha256": _sha256_bytes(data),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        meta.update(facts or {})
        atomic_write(engine_path, data)
        atomic_write(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return engine_path

    def evict(self, key: str) -> None:
        for path in reversed(self.paths(key)):  # record first: it is the commit marker
            try:
                os.unlink(path)
            except OSError:
                pass

    def read_meta(self, key: str) -> Dict[str, Any]:
        try:
            with open(self.paths(key)[1], "r", encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}
