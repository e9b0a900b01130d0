"""TensorRT engine building from ONNX, the engine cache, and INT8 calibration.

Engines are not portable across GPUs, boards or TensorRT versions (docs/PLATFORM.md section 2),
so every engine is stored with the fingerprint it was built for and refused with the reason when
anything differs. The builder is asked what it can do (FP16, INT8, DLA, memory pools) instead of
checking version numbers; code here works with TensorRT 8.2 (JetPack 4.6) up to 10.x, and with
TensorRT 11's strongly typed builder. `tensorrt` and `onnx` are imported only when used.
"""

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomicfile import write_atomic
from ..errors import BackendError
from ..store.package import InputSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
# Bump when the way engines are built changes, so cached engines from older code are rebuilt.
BUILD_RECIPE = "edge-agent-trt-1"
TRT_MISSING = ("TensorRT is not installed: on a Jetson it comes with JetPack "
               "(python3-libnvinfer); on x86 `pip install tensorrt`")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# progress(phase, fraction or None, detail); may be called from a helper thread while building.
Progress = Callable[[str, Optional[float], str], None]


# ---------------------------------------------------------------------------------------------
# TensorRT import and logger
# ---------------------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    """The `tensorrt` module, or a BackendError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(TRT_MISSING)
    except Exception as exc:  # a broken install (missing libnvinfer symbol, numpy mismatch...)
        raise BackendError("{} (`import tensorrt` failed: {}: {})".format(
            TRT_MISSING, type(exc).__name__, exc))
    if not hasattr(trt, "Builder"):
        # e.g. only the `tensorrt-stubs` package: a namespace package with .pyi files.
        raise BackendError("{} (found only a `tensorrt` package without the library at {})"
                           .format(TRT_MISSING, list(getattr(trt, "__path__", []))))
    return trt


def trt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


_LOGGERS = {}  # type: Dict[int, Any]
_LOGGERS_LOCK = threading.Lock()


def make_logger(trt: Any) -> Any:
    """THE trt.ILogger of this process: forwards to Python logging, remembers recent errors.

    One per process (per `tensorrt` module), because TensorRT before 8.4 keeps only the first
    logger it is given and sends every later message there (NVIDIA/TensorRT#1475): a second
    logger would never see its build's errors. Callers take `mark()` before their work and
    read `recent_errors(since=mark)` after it.
    """
    with _LOGGERS_LOCK:
        held = _LOGGERS.get(id(trt))
        if held is None or held[0] is not trt:
            held = (trt, _new_logger(trt))
            _LOGGERS[id(trt)] = held
    return held[1]


def _new_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors = []  # type: List[str]
            self.count = 0  # errors ever logged
            self._lock = threading.Lock()

        def mark(self) -> int:
            return self.count

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                with self._lock:
                    self.errors.append(str(msg))
                    self.count += 1
                    del self.errors[:-20]
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.INFO:
                log.info("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def recent_errors(self, n: int = 3, since: int = 0) -> str:
            with self._lock:
                fresh = min(len(self.errors), max(0, self.count - since))
                errors = self.errors[len(self.errors) - fresh:] if fresh else []
            return " | ".join(errors[-n:])

    return _Logger()


_PLUGINS_READY = {}  # type: Dict[int, Any]


def init_plugins(trt: Any, logger: Any) -> None:
    """Register TensorRT's bundled plugins once per process, before parsing: the 8.x ONNX
    parser imports NonMaxSuppression (and others) as plugins from that registry."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        return
    with _LOGGERS_LOCK:
        if _PLUGINS_READY.get(id(trt)) is trt:
            return
        _PLUGINS_READY[id(trt)] = trt
    init(logger, "")


# ---------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------
def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` so a crash leaves the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    write_atomic(path, data, prefix="." + os.path.basename(path) + ".")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text).strip("_") or "unknown"


# ---------------------------------------------------------------------------------------------
# Fingerprint and engine cache
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Preflight: what this TensorRT generation is known to reject, before a long build
# ---------------------------------------------------------------------------------------------
class PreflightReport(object):
    """Facts read from the ONNX file and the problems found for the installed TensorRT."""

    def __init__(self) -> None:
        self.checked = False
        self.opset = None  # type: Optional[int]
        self.inputs = []  # type: List[Tuple[str, List[Any], str]]
        self.operators = set()  # type: set
        self.float16_model = False
        self.problems = []  # type: List[str]
        self.notes = []  # type: List[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(onnx_path: str, trt_version_str: str, compute_capability: Optional[str] = None,
              max_batch: int = 1) -> PreflightReport:
    """Read the ONNX (opset, inputs, operators) and name what this TensorRT will reject.

    Rules from docs/PLATFORM.md section 2. Skipped (with a note) when `onnx` is not installed.
    """
    report = PreflightReport()
    try:
        import onnx
    except Exception as exc:  # ImportError, or a broken install raising anything else
        report.notes.append("onnx package not installed or unusable ({}: {}): ONNX preflight "
                            "skipped (pip install onnx to get early warnings)".format(
                                type(exc).__name__, exc))
        return report
    try:
        model = onnx.load(onnx_path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        report.problems.append("{} does not parse as ONNX: {}".format(onnx_path, exc))
        return report
    report.checked = True
    parts = (trt_version_str.split(".") + ["0", "0"])[:2]
    try:
        major, minor = int(parts[0]), int(parts[1])
    except ValueError:
        major, minor = 99, 0
    gen82 = (major, minor) < (8, 4)      # the JetPack 4.6 generation (8.0 / 8.2)
    before80 = major < 8                  # no ONNX NonMaxSuppression at all
    before85 = (major, minor) < (8, 5)   # before UINT8 I/O, dynamic Pad
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            report.opset = int(opset.version)
    graph = model.graph
    initializers = set(t.name for t in graph.initializer)
    constants = set(initializers)
    for node in graph.node:
        report.operators.add(node.op_type)
        if node.op_type == "Constant":
            constants.update(node.output)
    float_inits = [t for t in graph.initializer if t.data_type in (1, 10)]
    if float_inits:
        half = sum(1 for t in float_inits if t.data_type == 10)
        report.float16_model = half * 2 > len(float_inits)
    elem_names = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}
    for inp in graph.input:
        if inp.name in initializers:
            continue
        ttype = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in ttype.shape.dim]
        dtype = elem_names.get(ttype.elem_type, "type{}".format(ttype.elem_type))
        report.inputs.append((inp.name, dims, dtype))
    where = "TensorRT {}".format(trt_version_str)

    if gen82 and report.opset is not None and report.opset > 13:
        report.problems.append("opset {} is newer than {} supports (13 at most): export with "
                               "opset 11-13".format(report.opset, where))
    if before85:
        for node in graph.node:
            if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] and \
                    node.input[1] not in constants:
                report.problems.append(
                    "Pad node {!r} takes its pads from a computed tensor; {} needs constant "
                    "pads: fold constants (e.g. `onnxsim`)".format(node.name or node.output[0],
                                                                  where))
                break
    if gen82 and "HardSwish" in report.operators:
        report.problems.append("operator HardSwish is not supported by {}: export it as "
                               "x * HardSigmoid(x) (opset 13) or upgrade TensorRT".format(where))
    if before80 and "NonMaxSuppression" in report.operators:
        report.problems.append("operator NonMaxSuppression is not supported by {}: remove it "
                               "from the graph and do NMS after inference".format(where))
    elif before85 and "NonMaxSuppression" in report.operators:
        report.notes.append("operator NonMaxSuppression is experimental in {} (a plugin, "
                            "EfficientNMS_ONNX_TRT); check its outputs".format(where))
    if compute_capability == "5.3" and "ArgMax" in report.operators:
        report.problems.append("operator ArgMax fails on the Jetson Nano (SM 5.3) with {}: "
                               "remove it and take the argmax after inference".format(where))
    for name, dims, dtype in report.inputs:
        if dtype == "uint8" and before85:
            report.problems.append("input {!r} is uint8, which {} does not accept as a network "
                                   "input: export with a float32 input".format(name, where))
        elif dtype != "float32":
            report.problems.append("input {!r} is {}; the agent feeds float32: export with a "
                                   "float32 input".format(name, dtype))
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
        if [i for i in dynamic if i != 0]:
            report.problems.append(
                "input {!r} has dynamic dimensions {} beyond the batch; the agent makes an "
                "optimization profile for the batch only: export with a static shape (e.g. "
                "`onnxsim --overwrite-input-shape`)".format(name, dims))
        elif dynamic:
            report.notes.append("input {!r} has a dynamic batch: profile min 1, opt/max {}"
                                .format(name, max_batch))
    return report


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------
def resolve_precision(trt: Any, builder: Any, requested: str, gpu: str,
                      compute_capability: str, float16_model: bool = False
                      ) -> Tuple[str, List[str]]:
    """What can really be built for `requested`, asking the builder; returns (precision, notes).

    TensorRT 11 has no FP16/INT8 builder flags (strongly typed networks): there the precision
    is the model's own. Nano (SM 5.3) and TX2 (SM 6.2) report no fast INT8.
    """
    if requested not in PRECISIONS:
        raise BackendError("backend.precision: {!r} is not one of {}".format(
            requested, ", ".join(PRECISIONS)))
    notes = []  # type: List[str]
    flags = trt.BuilderFlag
    if not hasattr(flags, "FP16"):
        model = "fp16" if float16_model else "fp32"
        if requested != model:
            notes.append("TensorRT {} builds strongly typed networks (no FP16/INT8 builder "
                         "flags): the engine takes the model's own precision, {}; {} was asked"
                         "{}".format(trt_version(trt), model, requested,
                                     "" if requested == "fp32" else
                                     " (export an FP16 ONNX model to get FP16)"))
        return model, notes
    where = "{} (SM {})".format(gpu, compute_capability)
    if requested == "int8":
        fast_int8 = getattr(builder, "platform_has_fast_int8", True)
        if not hasattr(flags, "INT8") or not fast_int8:
            notes.append("INT8 is not available on {}: TensorRT reports no fast INT8 (Nano SM "
                         "5.3 and TX2 SM 6.2 have none); building FP16 instead".format(where))
            requested = "fp16"
        else:
            return "int8", notes
    if requested == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            notes.append("FP16 is not fast on {}: building FP32 instead".format(where))
            return "fp32", notes
        return "fp16", notes
    return "fp32", notes


# ---------------------------------------------------------------------------------------------
# INT8 calibration
# ---------------------------------------------------------------------------------------------
def calibration_images(folder: str, limit: int = 512) -> List[str]:
    """Image files in `folder` (sorted), at most `limit`."""
    if not folder or not os.path.isdir(folder):
        raise BackendError("INT8 calibration folder {!r} does not exist: set "
                           "backend.calibration_dir to a folder of representative images "
                           "(100-500 photos)".format(folder))
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise BackendError("INT8 calibration folder {} has no images ({}); add representative "
                           "photos or use precision fp16".format(folder, ", ".join(
                               IMAGE_SUFFIXES)))
    return files[:limit]


def calibration_digest(files: Sequence[str]) -> str:
    """Identity of a calibration set (names and sizes), part of an INT8 engine's fingerprint."""
    digest = hashlib.sha256()
    for path in files:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        digest.update("{}\0{}\n".format(os.path.basename(path), size).encode("utf-8"))
    return digest.hexdigest()[:16]


def calibration_batches(files: Sequence[str], spec: InputSpec, batch_size: int) -> Any:
    """Yield float32 batches (batch_size, C, H, W) made by the model's own Preprocessor."""
    import cv2
    from ..preprocess import Preprocessor
    pre = Preprocessor(spec)
    batch = []  # type: List[np.ndarray]
    for path in files:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            log.warning("calibration: %s is not a readable image; skipped", path)
            continue
        batch.append(pre(frame)[0])
        if len(batch) == batch_size:
            yield np.ascontiguousarray(np.stack(batch))
            batch = []
    # A short last batch is dropped: TensorRT expects get_batch_size() images each time.


_CALIBRATOR_CLASSES = {}  # type: Dict[int, Any]


def int8_calibrator_class(trt: Any) -> Any:
    """`Int8Calibrator`, a subclass of this TensorRT's IInt8EntropyCalibrator2."""
    cls = _CALIBRATOR_CLASSES.get(id(trt))
    if cls is not None:
        return cls
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendError("TensorRT {} has no INT8 calibrators (removed in TensorRT 11): use "
                           "an ONNX model with Q/DQ nodes, or precision fp16".format(
                               trt_version(trt)))

    class Int8Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds preprocessed calibration batches to TensorRT; caches the result on disk."""

        def __init__(self, batches: Any, batch_size: int, input_shape: Sequence[int],
                     cache_path: str, cuda: Any) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._batch_size = int(batch_size)
            self.cache_path = cache_path
            self._cuda = cuda
            self._shape = (self._batch_size,) + tuple(int(d) for d in input_shape[1:])
            self._host = None  # type: Any
            self._device = None  # type: Any
            self.batches_fed = 0

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: Any, p_str: Any = None) -> Any:
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            if self._device is None:
                self._host = self._cuda.pinned(self._shape, np.float32)
                self._device = self._cuda.device_alloc(self._host.nbytes)
            np.copyto(self._host, batch.reshape(self._shape))
            self._cuda.htod_async(self._device, self._host)
            self._cuda.synchronize()
            self.batches_fed += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> Any:
            if os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as handle:
                    data = handle.read()
                if data:
                    log.info("INT8: using calibration cache %s", self.cache_path)
                    return data
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write(self.cache_path, bytes(cache))

    _CALIBRATOR_CLASSES[id(trt)] = Int8Calibrator
    return Int8Calibrator


def create_int8_calibrator(trt: Any, cuda: Any, spec: InputSpec, files: Sequence[str],
                           batch_size: int, cache_path: str) -> Any:
    """An Int8Calibrator over `files`, preprocessed as the model's manifest says."""
    cls = int8_calibrator_class(trt)
    return cls(calibration_batches(files, spec, batch_size), batch_size, spec.shape,
               cache_path, cuda)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
class BuildResult(object):
    """A serialized engine and what was really built."""

    def __init__(self, data: bytes, precision: str, notes: List[str], seconds: float,
                 tensorrt: str, input_shapes: Dict[str, List[int]]) -> None:
        self.data = data
        self.precision = precision
        self.notes = notes
        self.seconds = seconds
        self.tensorrt = tensorrt
        self.input_shapes = input_shapes


class _BuildTimer(object):
    """Reports 'building' with elapsed seconds every `interval` s from a small thread."""

    def __init__(self, progress: Optional[Progress], interval: float) -> None:
        self._progress = progress
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        self.started = time.monotonic()
        self.phase = ""

    def __enter__(self) -> "_BuildTimer":
        if self._progress is not None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="trt-build-timer")
            self._thread.daemon = True
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            detail = "{:.0f} s elapsed".format(time.monotonic() - self.started)
            if self.phase:
                detail += " ({})".format(self.phase)
            _report(self._progress, "building", None, detail)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _progress_monitor(trt: Any, timer: _BuildTimer, progress: Optional[Progress]) -> Any:
    """A trt.IProgressMonitor (TensorRT 10+) that names the builder's current phase."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: Any, num_steps: int) -> None:
            timer.phase = phase_name
            if parent_phase is None:
                _report(progress, "building", None, "{} ({} steps)".format(phase_name,
                                                                           num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            if timer.phase == phase_name:
                timer.phase = ""

    return _Monitor()


def _report(progress: Optional[Progress], phase: str, fraction: Optional[float],
            detail: str) -> None:
    if progress is None:
        return
    try:
        progress(phase, fraction, detail)
    except Exception:  # a broken progress sink must not break a build
        log.exception("progress callback failed")


def builder_flags_for(precision: str, dla_core: Optional[int]) -> List[str]:
    """The recipe part of the fingerprint: what this code asks the builder for."""
    flags = ["explicit_batch", "timing_cache", "dynamic_batch_profile"]
    if precision in ("fp16", "int8"):
        flags.append("fp16")
    if precision == "int8":
        flags.append("int8_entropy2")
    if dla_core is not None:
        flags.append("dla_gpu_fallback")
    return flags


def build_engine(onnx_path: str, precision: str = "fp16", workspace_mb: int = 256,
                 max_batch: int = 1, dla_core: Optional[int] = None,
                 input_spec: Optional[InputSpec] = None,
                 calibration_files: Optional[Sequence[str]] = None,
                 calibration_cache: Optional[str] = None, timing_cache: Optional[str] = None,
                 gpu: str = "unknown", compute_capability: str = "unknown",
                 cuda: Any = None, progress: Optional[Progress] = None,
                 progress_interval: float = 5.0, trt: Any = None) -> BuildResult:
    """Parse `onnx_path` and build a serialized engine (like `trtexec --onnx --saveEngine`).

    Raises BackendError naming what failed: the preflight problems, each parser error, an
    impossible precision, or a builder that returned no engine. INT8 needs `input_spec`,
    `calibration_files` (or an existing `calibration_cache`) and an open CudaContext `cuda`.
    """
    trt = trt or import_tensorrt()
    started = time.monotonic()
    version = trt_version(trt)
    notes = []  # type: List[str]

    _report(progress, "preflight", 0.0, "checking {}".format(onnx_path))
    report = preflight(onnx_path, version, compute_capability, max_batch)
    notes.extend(report.notes)
    if report.problems:
        raise BackendError("{} cannot be built with TensorRT {}: {}".format(
            onnx_path, version, "; ".join(report.problems)))

    _report(progress, "parsing", 0.05, "parsing {}".format(os.path.basename(onnx_path)))
    logger = make_logger(trt)
    since = logger.mark()
    init_plugins(trt, logger)
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "EXPLICIT_BATCH"):
        flags = 1 << int(creation.EXPLICIT_BATCH)  # needed for ONNX before 10, ignored in 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        model_bytes = handle.read()
    if not parser.parse(model_bytes):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append("node {}: {}".format(err.node(), err.desc()))
        raise BackendError("TensorRT {} could not parse {}: {}".format(
            version, onnx_path,
            "; ".join(errors) or logger.recent_errors(since=since) or "no details"))

    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace

    built, precision_notes = resolve_precision(trt, builder, precision, gpu, compute_capability,
                                               report.float16_model)
    notes.extend(precision_notes)
    if built in ("fp16", "int8") and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)

    # Optimization profile: batch 1..max_batch for inputs with a dynamic batch dimension.
    input_shapes = {}  # type: Dict[str, List[int]]
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape[1:]):
            raise BackendError("input {!r} of {} has dynamic dimensions {} beyond the batch; "
                               "export with a static shape".format(tensor.name, onnx_path, shape))
        if shape and shape[0] < 0:
            profile = profile or builder.create_optimization_profile()
            rest = tuple(shape[1:])
            profile.set_shape(tensor.name, (1,) + rest, (max_batch,) + rest, (max_batch,) + rest)
            shape = [max_batch] + list(rest)
        elif max_batch > 1 and shape and shape[0] != max_batch:
            notes.append("input {!r} has a fixed batch of {}; max_batch {} does not apply".format(
                tensor.name, shape[0], max_batch))
        input_shapes[tensor.name] = shape
    if profile is not None:
        config.add_optimization_profile(profile)

    if built == "int8":
        if calibration_cache and os.path.isfile(calibration_cache):
            files = list(calibration_files or [])
        else:
            files = list(calibration_files or [])
            if not files:
                raise BackendError("INT8 needs calibration images: set backend.calibration_dir "
                                   "(or `build --calib DIR`), or use precision fp16")
        if input_spec is None or cuda is None:
            raise BackendError("INT8 calibration needs the model manifest (input preprocessing) "
                               "and a CUDA context")
        batch = max(1, min(max_batch, 8)) if profile is not None else \
            max(1, int(next(iter(input_shapes.values()))[0]))
        calibrator = create_int8_calibrator(trt, cuda, input_spec, files, batch,
                                            calibration_cache or os.path.join(
                                                os.path.dirname(onnx_path), "calibration.cache"))
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)

    if dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if cores > int(dla_core):
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(dla_core)
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            notes.append("DLA core {} with GPU fallback".format(dla_core))
        else:
            notes.append("DLA core {} asked but this device has {} DLA core(s): building for "
                          "the GPU".format(dla_core, cores))

    timing = None
    if timing_cache is not None and hasattr(config, "create_timing_cache"):
        blob = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as handle:
                blob = handle.read()
        try:
            timing = config.create_timing_cache(blob)
        except Exception as exc:  # a corrupt cache file: start a fresh one
            notes.append("timing cache {} unusable ({}); starting a new one".format(
                timing_cache, exc))
            timing = config.create_timing_cache(b"")
        config.set_timing_cache(timing, False)

    _report(progress, "building", 0.1, "building {} engine (workspace {} MiB)".format(
        built, workspace_mb))
    with _BuildTimer(progress, progress_interval) as timer:
        if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
            monitor = _progress_monitor(trt, timer, progress)
            config.progress_monitor = monitor
        if hasattr(builder, "build_serialized_network"):
            serialized = builder.build_serialized_network(network, config)
        else:  # TensorRT 7 era
            engine = builder.build_engine(network, config)
            serialized = engine.serialize() if engine is not None else None
    if serialized is None:
        raise BackendError(
            "TensorRT {} could not build a {} engine for {} (workspace {} MiB): {}; try a larger "
            "backend.workspace_mb or precision fp32".format(
                version, built, os.path.basename(onnx_path), workspace_mb,
                logger.recent_errors(since=since) or "the builder returned no engine"))

    _report(progress, "serializing", 0.95, "serializing engine")
    data = bytes(serialized)
    if timing_cache is not None and timing is not None:
        try:
            atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
        except (OSError, AttributeError) as exc:
            notes.append("timing cache {} not saved: {}".format(timing_cache, exc))
    seconds = time.monotonic() - started
    _report(progress, "done", 1.0, "{} engine built in {:.1f} s ({} bytes)".format(
        built, seconds, len(data)))
    return BuildResult(data, built, notes, seconds, version, input_shapes)
