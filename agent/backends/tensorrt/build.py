"""Building a TensorRT engine from ONNX, one step per function (like `trtexec --saveEngine`).

The builder is asked what it can do (FP16, INT8, DLA, memory pools) instead of checking version
numbers; code here works with TensorRT 8.2 (JetPack 4.6) up to 10.x, and with TensorRT 11's
strongly typed builder. `tensorrt` and `onnx` are imported only when used.
"""

import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import BackendError, Cancelled
from ...store.package import InputSpec
from ..base import Progress, check_precision, report_progress
from .calibrator import create_int8_calibrator
from .engine_cache import atomic_write
from .preflight import preflight
from .runtime import import_tensorrt, init_plugins, make_logger, trt_version

log = logging.getLogger(__name__)


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
            report_progress(self._progress, "building", None, detail)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _progress_monitor(trt: Any, timer: _BuildTimer, progress: Optional[Progress],
                      cancel: Any) -> Any:
    """A trt.IProgressMonitor (TensorRT 10+) that names the builder's current phase and stops
    the build at the next step once `cancel.is_set()` (step_complete returning False)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: Any, num_steps: int) -> None:
            timer.phase = phase_name
            if parent_phase is None:
                report_progress(progress, "building", None, "{} ({} steps)".format(phase_name,
                                                                           num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            return cancel is None or not cancel.is_set()

        def phase_finish(self, phase_name: str) -> None:
            if timer.phase == phase_name:
                timer.phase = ""

    return _Monitor()


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


def resolve_precision(trt: Any, builder: Any, requested: str, gpu: str,
                      compute_capability: str, float16_model: bool = False
                      ) -> Tuple[str, List[str]]:
    """What can really be built for `requested`, asking the builder; returns (precision, notes).

    TensorRT 11 has no FP16/INT8 builder flags (strongly typed networks): there the precision
    is the model's own. Nano (SM 5.3) and TX2 (SM 6.2) report no fast INT8.
    """
    check_precision(requested)
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


def build_engine(onnx_path: str, precision: str = "fp16", workspace_mb: int = 256,
                 max_batch: int = 1, dla_core: Optional[int] = None,
                 input_spec: Optional[InputSpec] = None,
                 calibration_files: Optional[Sequence[str]] = None,
                 calibration_cache: Optional[str] = None, timing_cache: Optional[str] = None,
                 gpu: str = "unknown", compute_capability: str = "unknown",
                 cuda: Any = None, progress: Optional[Progress] = None,
                 progress_interval: float = 5.0, cancel: Any = None,
                 trt: Any = None) -> BuildResult:
    """Parse `onnx_path` and build a serialized engine (like `trtexec --onnx --saveEngine`).

    Raises BackendError naming what failed: the preflight problems, each parser error, an
    impossible precision, or a builder that returned no engine. INT8 needs `input_spec`,
    `calibration_files` (or an existing `calibration_cache`) and an open CudaContext `cuda`.
    Cancelled once `cancel.is_set()`: before the builder runs, and on TensorRT 10+ (whose
    IProgressMonitor may stop it) at the builder's next step; TensorRT 8 builds to the end.
    """
    trt = trt or import_tensorrt()
    started = time.monotonic()
    version = trt_version(trt)
    notes = []  # type: List[str]

    report_progress(progress, "preflight", 0.0, "checking {}".format(onnx_path))
    float16_model = _preflight(onnx_path, version, compute_capability, max_batch, notes)

    report_progress(progress, "parsing", 0.05, "parsing {}".format(os.path.basename(onnx_path)))
    logger = make_logger(trt)
    since = logger.mark()
    builder, network, parser = _parse(trt, logger, since, onnx_path, version)

    config = builder.create_builder_config()
    _set_workspace(trt, config, workspace_mb)
    built, precision_notes = resolve_precision(trt, builder, precision, gpu, compute_capability,
                                               float16_model)
    notes.extend(precision_notes)
    if built in ("fp16", "int8") and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None  # type: Any
    profile, input_shapes = _batch_profile(builder, network, max_batch, onnx_path, notes)
    if profile is not None:
        config.add_optimization_profile(profile)
    if built == "int8":
        batch = max(1, min(max_batch, 8)) if profile is not None else \
            max(1, int(next(iter(input_shapes.values()))[0]))
        calibrator = _set_int8(trt, config, profile, batch, onnx_path, input_spec,
                               calibration_files, calibration_cache, cuda)
    if dla_core is not None:
        _set_dla(trt, builder, config, int(dla_core), notes)
    timing = _load_timing_cache(config, timing_cache, notes)

    _check_cancel(cancel, version, onnx_path, "before the build")
    report_progress(progress, "building", 0.1, "building {} engine (workspace {} MiB)".format(
        built, workspace_mb))
    serialized = _build_serialized(trt, builder, network, config, progress, progress_interval,
                                   cancel)
    del parser, calibrator  # held until the build is done
    if serialized is None:
        _check_cancel(cancel, version, onnx_path, "during the build")
        raise BackendError(
            "TensorRT {} could not build a {} engine for {} (workspace {} MiB): {}; try a larger "
            "backend.workspace_mb or precision fp32".format(
                version, built, os.path.basename(onnx_path), workspace_mb,
                logger.recent_errors(since=since) or "the builder returned no engine"))

    report_progress(progress, "serializing", 0.95, "serializing engine")
    data = bytes(serialized)
    if timing is not None:
        _save_timing_cache(config, timing_cache, notes)
    seconds = time.monotonic() - started
    report_progress(progress, "done", 1.0, "{} engine built in {:.1f} s ({} bytes)".format(
        built, seconds, len(data)))
    return BuildResult(data, built, notes, seconds, version, input_shapes)


def _preflight(onnx_path: str, version: str, compute_capability: str, max_batch: int,
               notes: List[str]) -> bool:
    """Refuse what this TensorRT is known to reject; returns whether the model is FP16."""
    found = preflight(onnx_path, version, compute_capability, max_batch)
    notes.extend(found.notes)
    if found.problems:
        raise BackendError("{} cannot be built with TensorRT {}: {}".format(
            onnx_path, version, "; ".join(found.problems)))
    return found.float16_model


def _parse(trt: Any, logger: Any, since: int, onnx_path: str,
           version: str) -> Tuple[Any, Any, Any]:
    """Builder, explicit-batch network and parser, with the ONNX file parsed into the network."""
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
    return builder, network, parser


def _set_workspace(trt: Any, config: Any, workspace_mb: int) -> None:
    workspace = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace


def _batch_profile(builder: Any, network: Any, max_batch: int, onnx_path: str,
                   notes: List[str]) -> Tuple[Any, Dict[str, List[int]]]:
    """Optimization profile: batch 1..max_batch for inputs with a dynamic batch dimension.

    Returns the profile (None when no input is dynamic) and each input's build shape.
    """
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
    return profile, input_shapes


def _set_int8(trt: Any, config: Any, profile: Any, batch: int, onnx_path: str,
              input_spec: Optional[InputSpec], calibration_files: Optional[Sequence[str]],
              calibration_cache: Optional[str], cuda: Any) -> Any:
    """INT8 with the entropy calibrator over the calibration images (or its cache)."""
    files = list(calibration_files or [])
    if not files and not (calibration_cache and os.path.isfile(calibration_cache)):
        raise BackendError("INT8 needs calibration images: set backend.calibration_dir "
                           "(or `build --calib DIR`), or use precision fp16")
    if input_spec is None or cuda is None:
        raise BackendError("INT8 calibration needs the model manifest (input preprocessing) "
                           "and a CUDA context")
    calibrator = create_int8_calibrator(trt, cuda, input_spec, files, batch,
                                        calibration_cache or os.path.join(
                                            os.path.dirname(onnx_path), "calibration.cache"))
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    if profile is not None and hasattr(config, "set_calibration_profile"):
        config.set_calibration_profile(profile)
    return calibrator


def _set_dla(trt: Any, builder: Any, config: Any, dla_core: int, notes: List[str]) -> None:
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if cores > dla_core:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        notes.append("DLA core {} with GPU fallback".format(dla_core))
    else:
        notes.append("DLA core {} asked but this device has {} DLA core(s): building for "
                     "the GPU".format(dla_core, cores))


def _load_timing_cache(config: Any, path: Optional[str], notes: List[str]) -> Any:
    """The builder's timing cache from `path` (a fresh one when unreadable); None without one."""
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    blob = b""
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            blob = handle.read()
    try:
        timing = config.create_timing_cache(blob)
    except Exception as exc:  # a corrupt cache file: start a fresh one
        notes.append("timing cache {} unusable ({}); starting a new one".format(path, exc))
        timing = config.create_timing_cache(b"")
    config.set_timing_cache(timing, False)
    return timing


def _save_timing_cache(config: Any, path: Optional[str], notes: List[str]) -> None:
    if path is None:
        return
    try:
        atomic_write(path, bytes(config.get_timing_cache().serialize()))
    except (OSError, AttributeError) as exc:
        notes.append("timing cache {} not saved: {}".format(path, exc))


def _check_cancel(cancel: Any, version: str, onnx_path: str, when: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("TensorRT {} engine build for {} stopped {} (model/cancel, or the agent "
                        "stopping); nothing was cached".format(
                            version, os.path.basename(onnx_path), when))


def _build_serialized(trt: Any, builder: Any, network: Any, config: Any,
                      progress: Optional[Progress], progress_interval: float,
                      cancel: Any) -> Any:
    """Run the builder, reporting elapsed time (and the phase on TensorRT 10+) meanwhile."""
    with _BuildTimer(progress, progress_interval) as timer:
        monitor = None
        if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
            monitor = _progress_monitor(trt, timer, progress, cancel)
            config.progress_monitor = monitor
        if hasattr(builder, "build_serialized_network"):
            return builder.build_serialized_network(network, config)
        engine = builder.build_engine(network, config)  # TensorRT 7 era
        return engine.serialize() if engine is not None else None
