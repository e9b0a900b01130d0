"""TEST DOUBLE for the TensorRT Python API (no machine here has TensorRT).

It implements the surface edge-agent uses, per API generation, as documented in
docs/PLATFORM.md section 2 (and section 3 for the CUDA side) and in NVIDIA/TensorRT
`python/src/infer/pyCore.cpp` (8.2: binding API, `max_workspace_size`, `build_engine` +
`build_serialized_network`; 8.5+/10.x: tensor API `num_io_tensors`/`set_tensor_address`/
`execute_async_v3`, `set_memory_pool_limit`, `IProgressMonitor`, no binding API, no
`build_engine`) and `pyOnnx.cpp`/`pyInt8.cpp` (OnnxParser errors, IInt8EntropyCalibrator2).
`make_module("8.2" | "8.5" | "10.3" | "11")` returns a `tensorrt` module of that generation;
"8.5" (JetPack 5.1) has both I/O APIs and both workspace APIs, as 8.5 really has; "11" has no
FP16/INT8 builder flags, no EXPLICIT_BATCH, no `platform_has_fast_*` and no calibrators.
The 10.x surface is checked against the `tensorrt-stubs` package, the 8.2 and 8.5 surfaces
against lists written from NVIDIA/TensorRT's python/src at tags 8.2.1 and 8.5.3
(tests/support/trt_surface.py), by tests/unit/backends/test_trt_stubs.py.

Strictness, as the real libraries: on 8.x the ONNX parser refuses a network created without
EXPLICIT_BATCH (onnx-tensorrt's importModel assertion text); 10.x ignores the flag; 11 has
none. Before 8.4 only the first logger of the process receives messages (#1475). 8.2 imports
NonMaxSuppression as a plugin, so parsing it needs `init_libnvinfer_plugins` first (stricter
than a parser built with ENABLE_STD_PLUGIN, which registers them itself). Deserialising and
creating an execution context need a current CUDA context (stricter than the runtime API, which
would fall back to the primary context: the agent's contract is that TensorRT objects live in
the context it pushed); a DLA engine needs `runtime.DLA_core` set (8.x defaults it to -1).
Executions are queued on the stream (pycuda double) and run when it is synchronised.

What is NOT real: no kernels are chosen or timed. The "engine" is a header (TensorRT version,
GPU, precision, I/O shapes, profile) plus the ONNX bytes; executing it runs the real ONNX file
with ONNX Runtime (CPU), so outputs are real. Precision is a documented stand-in: FP16 rounds
inputs and outputs through float16, INT8 quantizes inputs with the calibrated range (then
float16). Per-layer times reported to an IProfiler are deterministic stand-ins per ONNX node.
Device memory is read and written through the pycuda double (or real pycuda on a GPU machine).

Failure modes, as TensorRT shows them: `parser.parse` returns False with per-node errors (bad
bytes, ops the generation lacks); `build_serialized_network` returns None with logged errors
(injected failure, workspace below KNOBS.min_workspace, dynamic input without a profile, INT8
without calibrator or on a GPU without fast INT8, DLA core that does not exist);
`deserialize_cuda_engine` returns None for a plan of another TensorRT version or GPU; wrong
tensor names and missing shapes for dynamic inputs make the calls return False.
"""

import json
import sys
import threading
import types
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


def _load_onnx(data: bytes) -> Any:
    """The model as `onnx.load_from_string` gives it; where `onnx` cannot be imported (the
    JetPack 4.6 stack), tests/support/reference_onnx.py's reader, which has the same attribute names."""
    try:
        import onnx
    except Exception:
        return _reference().load_model(data)
    return onnx.load_from_string(data)


def _session(data: bytes) -> Any:
    """An ONNX Runtime CPU session; where onnxruntime cannot be imported (no wheel works with
    numpy 1.13), tests/support/reference_onnx.py's numpy runner, which has the same `run`."""
    try:
        import onnxruntime as ort
    except Exception:
        return _reference().ReferenceSession(data)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _reference() -> Any:
    import os
    from support import reference_onnx
    return reference_onnx

MAGIC = b"TRT-DOUBLE-PLAN\n"
VERSIONS = {"8.2": "8.2.1.8", "8.5": "8.5.2.2", "10.3": "10.3.0.26", "11": "11.0.0.9"}


class Knobs(object):
    """Failure injection and counters shared by the modules made by make_module()."""

    def __init__(self) -> None:
        self.fail_build = False
        self.min_workspace = 1 << 20
        self.corrupt_outputs = set()  # type: set  # precisions whose outputs get scrambled
        self.builds = 0
        self.cancelled_builds = 0  # stopped by an IProgressMonitor's step_complete -> False
        self.build_steps_hook = None  # type: Any  # called before each build step (tests)
        self.deserializations = 0
        self.calibration_batches = 0
        self.timing_cache_hits = 0
        self.executions = 0
        self.last_config = None  # type: Any


KNOBS = Knobs()


def reset_knobs() -> Knobs:
    global KNOBS
    KNOBS = Knobs()
    for module in list(_MODULES):
        module.KNOBS = KNOBS
    return KNOBS


_MODULES = []  # type: List[Any]


# ---------------------------------------------------------------------------------------------
# Device memory: through the pycuda double, or real pycuda on a GPU machine
# ---------------------------------------------------------------------------------------------
def _driver() -> Any:
    drv = sys.modules.get("pycuda.driver")
    if drv is None:
        import pycuda.driver as drv  # real pycuda
    return drv


def _context_current() -> bool:
    return _driver().Context.get_current() is not None


def _gpu(trt: Any) -> Dict[str, Any]:
    """GPU facts of device 0, read on first use as TensorRT does (through the CUDA runtime,
    which calls cuInit itself: so building or loading never needs pycuda's init() first)."""
    if trt._gpu is None:
        drv = _driver()
        if hasattr(drv, "runtime_api_init"):
            drv.runtime_api_init()
        else:
            drv.init()
        dev = drv.Device(0)
        trt._gpu = gpu_facts(dev.name(), dev.compute_capability())
    return trt._gpu


def _log_sink(trt: Any, logger: Any) -> Any:
    """Where TensorRT sends messages for an object made with `logger`.

    TensorRT before 8.4 keeps the FIRST logger of the process and ignores later ones
    (NVIDIA/TensorRT#1475): a second Builder's errors go to the first logger. 8.4+ routes
    each object's messages to its own logger.
    """
    if trt._first_logger_only:
        if trt._first_logger is None:
            trt._first_logger = logger
        return trt._first_logger
    return logger


def _mem_read(ptr: int, nbytes: int) -> bytes:
    drv = _driver()
    if hasattr(drv, "device_read"):
        return drv.device_read(ptr, nbytes)
    drv.Context.synchronize()
    host = np.empty(nbytes, dtype=np.uint8)
    drv.memcpy_dtoh(host, int(ptr))
    return host.tobytes()


def _mem_write(ptr: int, data: bytes) -> None:
    drv = _driver()
    if hasattr(drv, "device_write"):
        drv.device_write(ptr, data)
        return
    drv.memcpy_htod(int(ptr), np.frombuffer(data, dtype=np.uint8))
    drv.Context.synchronize()


# ---------------------------------------------------------------------------------------------
# Enums, Dims, host memory
# ---------------------------------------------------------------------------------------------
class _EnumMember(object):
    def __init__(self, kind: str, name: str, value: int) -> None:
        self._kind = kind
        self._name = name
        self._value = value

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _EnumMember) and other._kind == self._kind and \
            other._value == self._value

    def __hash__(self) -> int:
        return hash((self._kind, self._value))

    def __repr__(self) -> str:
        return "<{}.{}: {}>".format(self._kind, self._name, self._value)


def _enum(kind: str, names: List[str]) -> type:
    cls = type(kind, (object,), {"__module__": __name__})
    for value, name in enumerate(names):
        setattr(cls, name, _EnumMember(kind, name, value))
    return cls


class Dims(tuple):
    """TensorRT Dims behave like tuples (pyFoundationalTypes.cpp)."""


class IHostMemory(bytes):
    """Serialized plan: supports the buffer protocol like the real IHostMemory."""

    @property
    def nbytes(self) -> int:
        return len(self)


class ITimingCache(object):
    def __init__(self, blob: bytes) -> None:
        text = bytes(blob).decode("utf-8", "replace")
        if blob and not text.startswith("TIMING-CACHE-DOUBLE\n"):
            raise RuntimeError("timing cache blob is corrupt or from another TensorRT")
        self._entries = [line for line in text.splitlines()[1:] if line]

    def serialize(self) -> IHostMemory:
        return IHostMemory(("TIMING-CACHE-DOUBLE\n" + "\n".join(self._entries) + "\n")
                           .encode("utf-8"))

    def reset(self) -> bool:
        self._entries = []
        return True

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        for entry in input_cache._entries:
            if entry not in self._entries:
                self._entries.append(entry)
        return True


def _base_initialized(obj: Any, cls_name: str) -> None:
    if not getattr(obj, "_trt_base_init", False):
        raise TypeError("{}.__init__() must be called when overriding __init__".format(cls_name))


class ILogger(object):
    def __init__(self) -> None:
        self._trt_base_init = True

    def log(self, severity: Any, msg: str) -> None:
        raise RuntimeError("Tried to call pure virtual function ILogger::log")


_SEVERITY = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
ILogger.Severity = _SEVERITY  # type: ignore[attr-defined]
for _name in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"):
    setattr(ILogger, _name, getattr(_SEVERITY, _name))


class Logger(ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        ILogger.__init__(self)
        self.min_severity = min_severity if min_severity is not None else ILogger.WARNING

    def log(self, severity: Any, msg: str) -> None:
        if int(severity) <= int(self.min_severity):
            sys.stderr.write("[TRT-double] {}\n".format(msg))


class IProfiler(object):
    def __init__(self) -> None:
        self._trt_base_init = True

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        raise RuntimeError("Tried to call pure virtual function IProfiler::reportLayerTime")


class IProgressMonitor(object):
    def __init__(self) -> None:
        self._trt_base_init = True

    def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
        raise RuntimeError("pure virtual")

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise RuntimeError("pure virtual")

    def phase_finish(self, phase_name: str) -> None:
        raise RuntimeError("pure virtual")


class IInt8Calibrator(object):
    def __init__(self) -> None:
        self._trt_base_init = True

    def get_batch_size(self) -> int:
        raise RuntimeError("pure virtual")

    def get_batch(self, names: List[str]) -> Any:
        raise RuntimeError("pure virtual")

    def read_calibration_cache(self) -> Any:
        raise RuntimeError("pure virtual")

    def write_calibration_cache(self, cache: Any) -> None:
        raise RuntimeError("pure virtual")


class IInt8EntropyCalibrator2(IInt8Calibrator):
    def get_algorithm(self) -> Any:
        return "ENTROPY_CALIBRATION_2"


# ---------------------------------------------------------------------------------------------
# Network, parser, profile
# ---------------------------------------------------------------------------------------------
class ITensor(object):
    def __init__(self, name: str, shape: Tuple[int, ...], dtype: Any) -> None:
        self.name = name
        self.shape = Dims(shape)
        self.dtype = dtype


class INetworkDefinition(object):
    def __init__(self, trt: Any, flags: int) -> None:
        self._trt = trt
        self._flags = flags
        # 8.x: without the EXPLICIT_BATCH bit a network has an implicit batch dimension.
        # 10.x: the flag is ignored (always explicit); 11 has no such flag.
        self._implicit_batch = trt._generation in ("8.2", "8.5") and not (int(flags) & 1)
        self._inputs = []  # type: List[ITensor]
        self._outputs = []  # type: List[ITensor]
        self._onnx = None  # type: Optional[bytes]

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError(object):
    def __init__(self, desc: str, node: int = -1, func: str = "parse",
                 code_name: str = "UNSUPPORTED_NODE") -> None:
        self._desc = desc
        self._node = node
        self._func = func
        self._code_name = code_name

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def code(self) -> int:
        return 8  # UNSUPPORTED_NODE / INVALID_GRAPH in the real enum; not interpreted here

    def __str__(self) -> str:
        return "In node {} ({}): {}: {}".format(self._node, self._func, self._code_name,
                                                self._desc)


_ELEM = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "HALF"}


class OnnxParser(object):
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        _base_initialized(logger, "ILogger")
        self._network = network
        self._logger = _log_sink(network._trt, logger)
        self._errors = []  # type: List[ParserError]

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse(self, model: bytes, path: Optional[str] = None) -> bool:
        trt = self._network._trt
        if self._network._implicit_batch:
            # onnx-tensorrt (8.x) ModelImporter::importModel asserts this before anything else.
            self._errors.append(ParserError(
                "Assertion failed: !_importer_ctx.network()->hasImplicitBatchDimension() && "
                "\"This version of the ONNX parser only supports TensorRT INetworkDefinitions "
                "with an explicit batch dimension. Please ensure the network was created using "
                "the EXPLICIT_BATCH NetworkDefinitionCreationFlag.\"", -1, "importModel",
                "INVALID_VALUE"))
            return False
        try:
            proto = _load_onnx(bytes(model))
        except Exception as exc:
            self._errors.append(ParserError("Failed to parse ONNX model: {}".format(exc)))
            return False
        opset = max([o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] or [0])
        if opset > trt._max_opset:
            self._errors.append(ParserError(
                "Unsupported ONNX opset {} (this parser supports up to {})".format(
                    opset, trt._max_opset)))
        for index, node in enumerate(proto.graph.node):
            if node.op_type in trt._unsupported_ops:
                self._errors.append(ParserError(
                    "No importer registered for op: {}".format(node.op_type), index))
            elif node.op_type in trt._plugin_ops and not trt._plugins_initialized:
                # 8.2 imports NonMaxSuppression as the EfficientNMS_ONNX_TRT plugin: its creator
                # is in the registry only after init_libnvinfer_plugins (onnx-tensorrt 8.2
                # builtin_op_importers.cpp / importPluginCreator).
                self._errors.append(ParserError(
                    "Assertion failed: creator && \"Plugin not found, are the plugin name, "
                    "version, and namespace correct?\"", index, node.op_type,
                    "UNSUPPORTED_NODE"))
        if self._errors:
            return False
        inits = set(t.name for t in proto.graph.initializer)
        for value in proto.graph.input:
            if value.name in inits:
                continue
            ttype = value.type.tensor_type
            dtype_name = _ELEM.get(ttype.elem_type, "FLOAT")
            if not hasattr(trt.DataType, dtype_name):
                self._errors.append(ParserError("input {}: unsupported data type {}".format(
                    value.name, dtype_name)))
                return False
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                          for d in ttype.shape.dim)
            self._network._inputs.append(ITensor(value.name, shape,
                                                 getattr(trt.DataType, dtype_name)))
        for value in proto.graph.output:
            self._network._outputs.append(ITensor(value.name, (), trt.DataType.FLOAT))
        self._network._onnx = bytes(model)
        return True


class IOptimizationProfile(object):
    def __init__(self) -> None:
        self._shapes = {}  # type: Dict[str, Tuple[Tuple[int, ...], ...]]

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        if not (len(lo) == len(mid) == len(hi)) or any(
                a > b or b > c for a, b, c in zip(lo, mid, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> List[Dims]:  # noqa: A002
        return [Dims(s) for s in self._shapes.get(input, ())]


# ---------------------------------------------------------------------------------------------
# Builder config and builder
# ---------------------------------------------------------------------------------------------
class _ConfigCore(object):
    def __init__(self, trt: Any) -> None:
        self._trt = trt
        self._flags = set()  # type: set
        self._workspace = None  # type: Optional[int]
        self._profiles = []  # type: List[IOptimizationProfile]
        self._calibrator = None  # type: Any
        self._timing = None  # type: Optional[ITimingCache]
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._timing


class _ConfigInt8(object):
    @property
    def int8_calibrator(self) -> Any:
        return self._calibrator  # type: ignore[attr-defined]

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        if calibrator is not None:
            _base_initialized(calibrator, "IInt8Calibrator")
        self._calibrator = calibrator  # type: ignore[attr-defined]

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._calibration_profile = profile  # type: ignore[attr-defined]
        return True


class _ConfigWorkspace82(object):
    @property
    def max_workspace_size(self) -> Optional[int]:
        return self._workspace  # type: ignore[attr-defined]

    @max_workspace_size.setter
    def max_workspace_size(self, size: int) -> None:
        self._workspace = int(size)  # type: ignore[attr-defined]


class _ConfigPools(object):
    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        if pool == self._trt.MemoryPoolType.WORKSPACE:  # type: ignore[attr-defined]
            self._workspace = int(pool_size)  # type: ignore[attr-defined]

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._workspace or 0  # type: ignore[attr-defined]


class _ConfigProgress(object):
    @property
    def progress_monitor(self) -> Any:
        return getattr(self, "_monitor", None)

    @progress_monitor.setter
    def progress_monitor(self, monitor: Any) -> None:
        if monitor is not None:
            _base_initialized(monitor, "IProgressMonitor")
        self._monitor = monitor


class _BuilderCore(object):
    def __init__(self, logger: ILogger) -> None:
        _base_initialized(logger, "ILogger")
        self.logger = logger
        self._trt = _THIS_MODULE_BY_CLASS[type(self)]
        self._sink = _log_sink(self._trt, logger)
        _gpu(self._trt)  # the CUDA runtime initialises here

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(self._trt, flags)

    def create_builder_config(self) -> Any:
        return self._trt.IBuilderConfig(self._trt)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    @property
    def num_DLA_cores(self) -> int:
        return _gpu(self._trt)["dla_cores"]

    def _error(self, msg: str) -> None:
        self._sink.log(ILogger.ERROR, msg)

    def build_serialized_network(self, network: INetworkDefinition, config: Any) -> Any:
        trt = self._trt
        knobs = trt.KNOBS
        knobs.last_config = config
        if network._onnx is None:
            self._error("Network must have at least one output")
            return None
        monitor = getattr(config, "_monitor", None)
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)
        try:
            return self._build(network, config, monitor)
        finally:
            if monitor is not None:
                monitor.phase_finish("Building engine")

    def _step(self, monitor: Any, step: int) -> bool:
        """A build step; False when the monitor asks to stop (TensorRT 10's IProgressMonitor:
        stepComplete returning false cancels the build, which then returns no engine)."""
        knobs = self._trt.KNOBS
        if knobs.build_steps_hook is not None:
            knobs.build_steps_hook(step)
        if monitor is None:
            return True
        go_on = monitor.step_complete("Building engine", step)
        if not isinstance(go_on, bool):  # pybind11 casts the override's result to bool
            raise TypeError("IProgressMonitor.step_complete must return bool, got {!r}".format(
                go_on))
        if not go_on:
            knobs.cancelled_builds += 1
            self._error("Build was cancelled by the progress monitor")
        return go_on

    def _build(self, network: INetworkDefinition, config: Any, monitor: Any) -> Any:
        trt, knobs = self._trt, self._trt.KNOBS
        if knobs.fail_build:
            self._error("[builder] Internal error: injected build failure (test double)")
            return None
        if config._workspace is not None and config._workspace < knobs.min_workspace:
            self._error("Insufficient workspace: {} bytes; some tactics need {} bytes".format(
                config._workspace, knobs.min_workspace))
            return None
        profile_shapes = {}  # type: Dict[str, Any]
        for profile in config._profiles:
            profile_shapes.update(profile._shapes)
        for tensor in network._inputs:
            if any(d < 0 for d in tensor.shape) and tensor.name not in profile_shapes:
                self._error("Network has dynamic or shape inputs, but no optimization profile "
                            "has been defined.")
                return None
        flags = trt.BuilderFlag
        precision = "fp32"
        if hasattr(flags, "FP16") and config.get_flag(flags.FP16):
            precision = "fp16"
        ranges = {}  # type: Dict[str, float]
        if hasattr(flags, "INT8") and config.get_flag(flags.INT8):
            if not _gpu(trt)["fast_int8"]:
                self._error("INT8 is not supported on this platform ({} SM {}.{})".format(
                    _gpu(trt)["name"], *_gpu(trt)["cc"]))
                return None
            calibrator = config._calibrator
            if calibrator is None:
                self._error("Int8 precision requested but no calibrator and no dynamic ranges")
                return None
            ranges = self._calibrate(network, calibrator)
            if ranges is None:
                return None
            precision = "int8"
        if config.default_device_type == trt.DeviceType.DLA:
            if not 0 <= config.DLA_core < _gpu(trt)["dla_cores"]:
                self._error("DLA core {} requested but the device has {} DLA cores".format(
                    config.DLA_core, _gpu(trt)["dla_cores"]))
                return None
        if not self._step(monitor, 0):
            return None
        import hashlib
        onnx_digest = hashlib.sha256(network._onnx).hexdigest()[:16]
        if config._timing is not None:
            entry = "{}:{}:{}".format(onnx_digest, precision, _gpu(trt)["name"])
            if entry in config._timing._entries:
                knobs.timing_cache_hits += 1
            else:
                config._timing._entries.append(entry)
        if not self._step(monitor, 1):
            return None
        header = {
            "version": trt.__version__, "gpu": _gpu(trt)["name"], "cc": list(_gpu(trt)["cc"]),
            "precision": precision, "ranges": ranges,
            "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network._inputs],
            "outputs": [t.name for t in network._outputs],
            "profiles": {k: [list(s) for s in v] for k, v in profile_shapes.items()},
            "dla_core": config.DLA_core if config.default_device_type == trt.DeviceType.DLA
            else None,
        }
        knobs.builds += 1
        if not self._step(monitor, 2):
            return None
        return IHostMemory(MAGIC + json.dumps(header).encode("utf-8") + b"\n" + network._onnx)

    def _calibrate(self, network: INetworkDefinition, calibrator: Any) -> Any:
        trt = self._trt
        names = [t.name for t in network._inputs]
        cache = calibrator.read_calibration_cache()
        if cache:
            try:
                text = bytes(cache).decode("utf-8")
                lines = text.splitlines()
                if not lines or not lines[0].startswith("TRT-DOUBLE-EntropyCalibration2"):
                    raise ValueError("bad header")
                return {k: float(v) for k, v in (ln.split(": ") for ln in lines[1:] if ln)}
            except ValueError:
                self._error("Calibration cache is corrupt; recalibrating")
        batch = int(calibrator.get_batch_size())
        absmax = dict((n, 0.0) for n in names)
        count = 0
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            for name, pointer in zip(names, pointers):
                tensor = next(t for t in network._inputs if t.name == name)
                shape = (batch,) + tuple(d for d in tensor.shape[1:])
                nbytes = int(np.prod(shape)) * 4
                data = np.frombuffer(_mem_read(int(pointer), nbytes), dtype=np.float32)
                absmax[name] = max(absmax[name], float(np.max(np.abs(data))))
            count += 1
            trt.KNOBS.calibration_batches += 1
        if not count:
            self._error("Calibration failure occurred with no scaling factors detected "
                        "(the calibrator returned no batches)")
            return None
        text = "TRT-DOUBLE-EntropyCalibration2 {}\n".format(trt.__version__) + "".join(
            "{}: {!r}\n".format(k, v) for k, v in sorted(absmax.items()))
        calibrator.write_calibration_cache(IHostMemory(text.encode("utf-8")))
        return absmax


class _BuilderPlatform(object):
    @property
    def platform_has_fast_fp16(self) -> bool:
        return _gpu(self._trt)["fast_fp16"]  # type: ignore[attr-defined]

    @property
    def platform_has_fast_int8(self) -> bool:
        return _gpu(self._trt)["fast_int8"]  # type: ignore[attr-defined]


class _BuilderLegacy(object):
    def build_engine(self, network: INetworkDefinition, config: Any) -> Any:
        plan = self.build_serialized_network(network, config)  # type: ignore[attr-defined]
        if plan is None:
            return None
        runtime = self._trt.Runtime(self.logger)  # type: ignore[attr-defined]
        if config.default_device_type == self._trt.DeviceType.DLA:  # type: ignore[attr-defined]
            runtime.DLA_core = config.DLA_core
        return runtime.deserialize_cuda_engine(plan)


# ---------------------------------------------------------------------------------------------
# Runtime, engine, execution context
# ---------------------------------------------------------------------------------------------
class _Plan(object):
    """A deserialized plan: header facts, an ONNX Runtime session, output shapes."""

    def __init__(self, header: Dict[str, Any], onnx_bytes: bytes) -> None:
        self.header = header
        self.onnx = onnx_bytes
        self.session = _session(onnx_bytes)
        self.inputs = [(n, tuple(s), d) for n, s, d in header["inputs"]]
        self.outputs = list(header["outputs"])
        self.profiles = {k: [tuple(x) for x in v] for k, v in header["profiles"].items()}
        probe = {}
        for name, shape, _ in self.inputs:
            probe[name] = np.zeros([1 if d < 0 else d for d in shape], dtype=np.float32)
        results = self.session.run(self.outputs, probe)
        self.output_rest = {n: tuple(r.shape[1:]) for n, r in zip(self.outputs, results)}
        self.output_batch_static = {n: int(r.shape[0]) for n, r in zip(self.outputs, results)}
        self.dynamic_batch = any(s and s[0] < 0 for _, s, _ in self.inputs)
        graph = _load_onnx(onnx_bytes).graph
        self.layers = [n.name or "{}_{}".format(n.op_type, i) for i, n in enumerate(graph.node)]


class _EngineCore(object):
    def __init__(self, trt: Any, plan: _Plan, logger: Any) -> None:
        self._trt = trt
        self._plan = plan
        self._logger = logger

    @property
    def num_layers(self) -> int:
        return len(self._plan.layers)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def serialize(self) -> IHostMemory:
        return IHostMemory(MAGIC + json.dumps(self._plan.header).encode("utf-8") + b"\n" +
                           self._plan.onnx)

    def create_execution_context(self) -> Any:
        if not _context_current():
            self._logger.log(ILogger.ERROR, "1: [executionContext.cpp] Error Code 1: Cuda "
                             "Runtime (invalid device context): no CUDA context is current in "
                             "this thread")
            return None
        return self._trt.IExecutionContext(self._trt, self)

    # helpers shared by both APIs
    def _names(self) -> List[str]:
        return [n for n, _, _ in self._plan.inputs] + self._plan.outputs

    def _is_input(self, name: str) -> bool:
        return any(n == name for n, _, _ in self._plan.inputs)

    def _engine_shape(self, name: str) -> Dims:
        for n, shape, _ in self._plan.inputs:
            if n == name:
                return Dims(shape)
        batch = -1 if self._plan.dynamic_batch else self._plan.output_batch_static[name]
        return Dims((batch,) + self._plan.output_rest[name])

    def _dtype(self, name: str) -> Any:
        for n, _, d in self._plan.inputs:
            if n == name:
                return getattr(self._trt.DataType, d)
        return self._trt.DataType.FLOAT


class _EngineBindingAPI(object):
    @property
    def num_bindings(self) -> int:
        return len(self._names())  # type: ignore[attr-defined]

    @property
    def max_batch_size(self) -> int:
        return 1

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return False

    def get_binding_name(self, index: int) -> Optional[str]:
        names = self._names()  # type: ignore[attr-defined]
        return names[index] if 0 <= index < len(names) else None

    def get_binding_index(self, name: str) -> int:
        names = self._names()  # type: ignore[attr-defined]
        return names.index(name) if name in names else -1

    def binding_is_input(self, index: Any) -> bool:
        name = index if isinstance(index, str) else self.get_binding_name(index)
        return self._is_input(name)  # type: ignore[attr-defined]

    def get_binding_shape(self, index: Any) -> Dims:
        name = index if isinstance(index, str) else self.get_binding_name(index)
        return self._engine_shape(name)  # type: ignore[attr-defined]

    def get_binding_dtype(self, index: Any) -> Any:
        name = index if isinstance(index, str) else self.get_binding_name(index)
        return self._dtype(name)  # type: ignore[attr-defined]


class _EngineTensorAPI(object):
    @property
    def num_io_tensors(self) -> int:
        return len(self._names())  # type: ignore[attr-defined]

    def get_tensor_name(self, index: int) -> str:
        return self._names()[index]  # type: ignore[attr-defined]

    def get_tensor_mode(self, name: str) -> Any:
        trt = self._trt  # type: ignore[attr-defined]
        if name not in self._names():  # type: ignore[attr-defined]
            return trt.TensorIOMode.NONE
        return trt.TensorIOMode.INPUT if self._is_input(name) else \
            trt.TensorIOMode.OUTPUT  # type: ignore[attr-defined]

    def get_tensor_shape(self, name: str) -> Dims:
        if name not in self._names():  # type: ignore[attr-defined]
            return Dims(())
        return self._engine_shape(name)  # type: ignore[attr-defined]

    def get_tensor_dtype(self, name: str) -> Any:
        return self._dtype(name)  # type: ignore[attr-defined]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
        return [Dims(s) for s in self._plan.profiles.get(name, [])]  # type: ignore[attr-defined]


class _ContextCore(object):
    def __init__(self, trt: Any, engine: Any) -> None:
        self._trt = trt
        self._engine = engine
        self._shapes = {}  # type: Dict[str, Tuple[int, ...]]
        self._addresses = {}  # type: Dict[str, int]
        self._profiler = None  # type: Any
        plan = engine._plan
        for name, shape, _ in plan.inputs:
            if all(d >= 0 for d in shape):
                self._shapes[name] = tuple(shape)

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def profiler(self) -> Any:
        return self._profiler

    @profiler.setter
    def profiler(self, profiler: Any) -> None:
        if profiler is not None:
            _base_initialized(profiler, "IProfiler")
        self._profiler = profiler

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(n in self._shapes for n, _, _ in self._engine._plan.inputs)

    def _error(self, msg: str) -> None:
        self._engine._logger.log(ILogger.ERROR, msg)

    def _set_shape(self, name: str, shape: Any) -> bool:
        plan = self._engine._plan
        for n, engine_shape, _ in plan.inputs:
            if n != name:
                continue
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(engine_shape) or any(
                    e >= 0 and e != s for e, s in zip(engine_shape, shape)):
                self._error("setInputShape: {} does not match engine shape {}".format(
                    shape, engine_shape))
                return False
            if name in plan.profiles:
                lo, _, hi = plan.profiles[name]
                if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                    self._error("setInputShape: {} is outside the profile [{}, {}]".format(
                        shape, lo, hi))
                    return False
            self._shapes[name] = shape
            return True
        self._error("setInputShape: {!r} is not an input tensor".format(name))
        return False

    def _shape(self, name: str) -> Dims:
        plan = self._engine._plan
        if name in self._shapes:
            return Dims(self._shapes[name])
        if name in plan.outputs:
            if not plan.dynamic_batch:
                return Dims((plan.output_batch_static[name],) + plan.output_rest[name])
            batches = [s[0] for s in self._shapes.values()]
            batch = batches[0] if batches else -1
            return Dims((batch,) + plan.output_rest[name])
        return self._engine._engine_shape(name)

    def _run(self, stream_handle: int) -> bool:
        plan = self._engine._plan
        if not _context_current():
            self._error("Cuda Runtime (invalid device context): no CUDA context is current in "
                        "this thread")
            return False
        for name, _, _ in plan.inputs:
            if name not in self._shapes:
                self._error("Not all input shapes are specified: {!r} is missing".format(name))
                return False
        for name in [n for n, _, _ in plan.inputs] + plan.outputs:
            if not self._addresses.get(name):
                self._error("Address is not set for tensor {!r}".format(name))
                return False
        addresses = dict(self._addresses)
        shapes = dict(self._shapes)
        profiler = self._profiler
        drv = _driver()

        def work() -> None:
            self._compute(addresses, shapes, profiler)

        if hasattr(drv, "enqueue"):  # the pycuda double: runs when the stream is synchronised
            drv.enqueue(int(stream_handle), work)
        else:  # real pycuda: _mem_read synchronises the context first
            work()
        return True

    def _compute(self, addresses: Dict[str, int], shapes: Dict[str, Tuple[int, ...]],
                 profiler: Any) -> None:
        trt, plan = self._trt, self._engine._plan
        precision = plan.header["precision"]
        feeds = {}
        for name, _, _ in plan.inputs:
            shape = shapes[name]
            raw = _mem_read(addresses[name], int(np.prod(shape)) * 4)
            x = np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()
            if precision == "int8":
                scale = max(plan.header["ranges"].get(name, 1.0), 1e-8) / 127.0
                x = (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)
            if precision in ("fp16", "int8"):
                x = x.astype(np.float16).astype(np.float32)
            feeds[name] = x
        results = plan.session.run(plan.outputs, feeds)
        for name, value in zip(plan.outputs, results):
            value = np.asarray(value, dtype=np.float32)
            if precision in ("fp16", "int8"):
                value = value.astype(np.float16).astype(np.float32)
            if precision in trt.KNOBS.corrupt_outputs or "any" in trt.KNOBS.corrupt_outputs:
                value = np.ascontiguousarray(value[..., ::-1])
            _mem_write(addresses[name], value.tobytes())
        trt.KNOBS.executions += 1
        if profiler is not None:
            for index, layer in enumerate(plan.layers):
                profiler.report_layer_time(layer, 0.01 * (1 + index % 7))


class _ContextBindingAPI(object):
    def _binding_name(self, index: int) -> Optional[str]:
        return self._engine.get_binding_name(index)  # type: ignore[attr-defined]

    def set_binding_shape(self, binding: int, shape: Any) -> bool:
        name = self._binding_name(binding)
        if name is None:
            self._error("setBindingDimensions: binding {} out of range".format(  # type: ignore
                binding))
            return False
        return self._set_shape(name, shape)  # type: ignore[attr-defined]

    def get_binding_shape(self, binding: int) -> Dims:
        name = self._binding_name(binding)
        return self._shape(name) if name else Dims(())  # type: ignore[attr-defined]

    def execute_async_v2(self, bindings: List[int], stream_handle: int,
                         input_consumed: Any = None) -> bool:
        names = self._engine._names()  # type: ignore[attr-defined]
        if len(bindings) != len(names):
            self._error("execute_async_v2: {} bindings for {} tensors".format(  # type: ignore
                len(bindings), len(names)))
            return False
        self._addresses = dict(zip(names, (int(b) for b in bindings)))
        return self._run(stream_handle)  # type: ignore[attr-defined]

    def execute_v2(self, bindings: List[int]) -> bool:
        return self.execute_async_v2(bindings, 0)


class _ContextTensorAPI(object):
    def set_input_shape(self, name: str, shape: Any) -> bool:
        return self._set_shape(name, shape)  # type: ignore[attr-defined]

    def get_tensor_shape(self, name: str) -> Dims:
        if name not in self._engine._names():  # type: ignore[attr-defined]
            self._error("getTensorShape: invalid tensor name {!r}".format(name))  # type: ignore
            return Dims((-1,))
        return self._shape(name)  # type: ignore[attr-defined]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self._engine._names():  # type: ignore[attr-defined]
            self._error("setTensorAddress: Given invalid tensor name: {}".format(  # type: ignore
                name))
            return False
        self._addresses[name] = int(memory)  # type: ignore[attr-defined]
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)  # type: ignore[attr-defined]

    def execute_async_v3(self, stream_handle: int) -> bool:
        return self._run(stream_handle)  # type: ignore[attr-defined]


class _RuntimeCore(object):
    def __init__(self, logger: ILogger) -> None:
        _base_initialized(logger, "ILogger")
        self.logger = logger
        self._trt = _THIS_MODULE_BY_CLASS[type(self)]
        self._sink = _log_sink(self._trt, logger)
        self._dla_core = -1  # TensorRT 8+: -1 until set ("not specified")
        _gpu(self._trt)  # the CUDA runtime initialises here

    @property
    def num_DLA_cores(self) -> int:
        return _gpu(self._trt)["dla_cores"]

    @property
    def DLA_core(self) -> int:
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:
        self._dla_core = int(core)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        trt = self._trt
        data = bytes(serialized_engine)
        trt.KNOBS.deserializations += 1
        if not _context_current():
            self._sink.log(ILogger.ERROR, "1: [runtime.cpp::deserializeCudaEngine] Error Code "
                           "1: Cuda Runtime (invalid device context): no CUDA context is "
                           "current in this thread")
            return None
        if not data.startswith(MAGIC):
            self._sink.log(ILogger.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error "
                            "Code 1: Serialization (Serialization assertion magicTagRead == "
                            "kMAGIC_TAG failed.Magic tag does not match)")
            return None
        head, _, onnx_bytes = data[len(MAGIC):].partition(b"\n")
        try:
            header = json.loads(head.decode("utf-8"))
        except ValueError:
            self._sink.log(ILogger.ERROR, "Serialization: corrupt plan header")
            return None
        if header["version"] != trt.__version__:
            self._sink.log(ILogger.ERROR, "The engine plan file is not compatible with this "
                            "version of TensorRT, expecting library version {} got {}, please "
                            "rebuild.".format(trt.__version__, header["version"]))
            return None
        if header["gpu"] != _gpu(trt)["name"] or tuple(header["cc"]) != tuple(_gpu(trt)["cc"]):
            self._sink.log(ILogger.ERROR, "The engine plan file is generated on an incompatible "
                            "device ({} SM {}), expecting {}".format(
                                header["gpu"], header["cc"], _gpu(trt)["name"]))
            return None
        if header.get("dla_core") is not None:
            cores = _gpu(trt)["dla_cores"]
            if not 0 <= self._dla_core < cores:
                # UNCONFIRMED text; the rule is TensorRT's: a DLA engine runs on the core the
                # runtime names (IRuntime::setDLACore), and 8.x defaults that to -1.
                self._sink.log(ILogger.ERROR, "1: [dlaUtils.cpp] Error Code 1: DLA (the engine "
                               "uses DLA but the runtime's DLA core is {}; this device has {} "
                               "DLA core(s): set IRuntime::setDLACore)".format(
                                   self._dla_core, cores))
                return None
        try:
            plan = _Plan(header, onnx_bytes)
        except Exception as exc:
            self._sink.log(ILogger.ERROR, "Deserialization failed: {}".format(exc))
            return None
        engine = trt.ICudaEngine(trt, plan, self._sink)
        engine._dla_core = self._dla_core if header.get("dla_core") is not None else None
        return engine


def _init_plugins_for(module: Any) -> Any:
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        """Registers the bundled plugin creators (EfficientNMS_ONNX_TRT among them)."""
        if not isinstance(namespace, str):
            raise TypeError("init_libnvinfer_plugins(): namespace must be a str")
        module._plugins_initialized = True
        return True
    return init_libnvinfer_plugins


def _nptype(trt_type: Any) -> Any:
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
             "BOOL": np.bool_, "UINT8": np.uint8, "INT64": np.int64}
    return table[trt_type.name]


def _volume(iterable: Any) -> int:
    out = 1
    for d in iterable:
        out *= int(d)
    return out


# ---------------------------------------------------------------------------------------------
# Module factory
# ---------------------------------------------------------------------------------------------
_THIS_MODULE_BY_CLASS = {}  # type: Dict[type, Any]
_factory_lock = threading.Lock()


def gpu_facts(name: str, cc: Tuple[int, int]) -> Dict[str, Any]:
    """What the builder reports for a GPU (docs/PLATFORM.md section 2, precision by GPU)."""
    cc = (int(cc[0]), int(cc[1]))
    return {"name": name, "cc": cc, "fast_fp16": cc >= (5, 3) and cc != (6, 1),
            "fast_int8": cc == (6, 1) or cc >= (7, 0),
            "dla_cores": 2 if cc in ((7, 2), (8, 7)) else 0}


def make_module(generation: str = "10.3", gpu: Optional[Dict[str, Any]] = None) -> Any:
    """A `tensorrt` module of one API generation ("8.2", "8.5", "10.3" or "11")."""
    if generation not in VERSIONS:
        raise ValueError("generation must be one of {}".format(", ".join(VERSIONS)))
    module = types.ModuleType("tensorrt")
    module.__doc__ = "TensorRT {} TEST DOUBLE (tests/support/doubles/trt_double.py)".format(generation)
    module.__version__ = VERSIONS[generation]  # type: ignore[attr-defined]
    module._gpu = gpu  # type: ignore[attr-defined]  # None: read from device 0 on first use
    module._first_logger = None  # type: ignore[attr-defined]
    module._first_logger_only = generation == "8.2"  # type: ignore[attr-defined]  # < 8.4
    module._plugins_initialized = False  # type: ignore[attr-defined]
    module._plugin_ops = {"NonMaxSuppression"} if generation == "8.2" \
        else set()  # type: ignore[attr-defined]  # 8.5+ has INMSLayer
    module.KNOBS = KNOBS  # type: ignore[attr-defined]
    module._generation = generation  # type: ignore[attr-defined]
    old = generation == "8.2"
    v85 = generation == "8.5"  # JetPack 5.1: both I/O APIs, both workspace APIs
    v8 = old or v85
    v11 = generation == "11"
    module._max_opset = 13 if old else 17 if v85 else 21  # type: ignore[attr-defined]
    module._unsupported_ops = {"HardSwish"} if old else set()  # type: ignore[attr-defined]

    flag_names = ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                  "SPARSE_WEIGHTS"]
    if v11:
        flag_names = [f for f in flag_names if f not in ("FP16", "INT8")]
    dtypes = ["FLOAT", "HALF", "INT8", "INT32", "BOOL"] + \
        ([] if old else ["UINT8"] if v85 else ["UINT8", "INT64"])
    ns = {
        "BuilderFlag": _enum("BuilderFlag", flag_names),
        "DataType": _enum("DataType", dtypes),
        "DeviceType": _enum("DeviceType", ["GPU", "DLA"]),
        "NetworkDefinitionCreationFlag": _enum(
            "NetworkDefinitionCreationFlag",
            [] if v11 else ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"] if v8
            else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]),
        "Dims": Dims, "IHostMemory": IHostMemory, "ITimingCache": ITimingCache,
        "ILogger": ILogger, "Logger": Logger, "IProfiler": IProfiler,
        "INetworkDefinition": INetworkDefinition, "ITensor": ITensor,
        "OnnxParser": OnnxParser, "ParserError": ParserError,
        "IOptimizationProfile": IOptimizationProfile,
        "nptype": _nptype, "volume": _volume,
        "init_libnvinfer_plugins": _init_plugins_for(module),
    }
    if not old:
        ns["MemoryPoolType"] = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM",
                                                        "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"] +
                                     ([] if v85 else ["TACTIC_DRAM"]))
        ns["TensorIOMode"] = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    if not v8:
        ns["IProgressMonitor"] = IProgressMonitor
    if not v11:
        ns["IInt8Calibrator"] = IInt8Calibrator
        ns["IInt8EntropyCalibrator2"] = IInt8EntropyCalibrator2

    config_bases = [_ConfigCore] + ([] if v11 else [_ConfigInt8]) + \
        ([_ConfigWorkspace82] if v8 else []) + ([] if old else [_ConfigPools]) + \
        ([] if v8 else [_ConfigProgress])
    builder_bases = [_BuilderCore] + ([] if v11 else [_BuilderPlatform]) + \
        ([_BuilderLegacy] if v8 else [])
    engine_bases = [_EngineCore] + ([_EngineBindingAPI] if v8 else []) + \
        ([] if old else [_EngineTensorAPI])
    context_bases = [_ContextCore] + ([_ContextBindingAPI] if v8 else []) + \
        ([] if old else [_ContextTensorAPI])
    attrs = {"__module__": __name__}
    ns["IBuilderConfig"] = type("IBuilderConfig", tuple(config_bases), dict(attrs))
    ns["Builder"] = type("Builder", tuple(builder_bases), dict(attrs))
    ns["ICudaEngine"] = type("ICudaEngine", tuple(engine_bases), dict(attrs))
    ns["IExecutionContext"] = type("IExecutionContext", tuple(context_bases), dict(attrs))
    ns["Runtime"] = type("Runtime", (_RuntimeCore,), dict(attrs))
    for name, value in ns.items():
        setattr(module, name, value)
    with _factory_lock:
        _THIS_MODULE_BY_CLASS[ns["Builder"]] = module
        _THIS_MODULE_BY_CLASS[ns["Runtime"]] = module
        _MODULES.append(module)
    return module


def install(generation: str = "10.3", gpu: Optional[Dict[str, Any]] = None) -> Any:
    """Make `import tensorrt` return a fresh double of `generation`."""
    module = make_module(generation, gpu)
    sys.modules["tensorrt"] = module
    return module
