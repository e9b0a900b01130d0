"""`edge-agent models build` and `models profile`: TensorRT engines and layer times, printed.

The printing front of agent/backends/tensorrt: each command returns its exit status (0 done,
1 failed with the reason printed, 2 no TensorRT) and writes through `log`.
"""

import json
import os
from typing import Any, Callable, Optional, Tuple

from ..backends.base import BackendOptions, Progress
from ..backends.tensorrt import TensorRTBackend
from ..backends.tensorrt.build import build_engine
from ..backends.tensorrt.calibrator import calibration_images
from ..backends.tensorrt.cuda import CudaContext
from ..backends.tensorrt.engine_cache import EngineCache, atomic_write
from ..backends.tensorrt.profile import profile
from ..backends.tensorrt.runtime import import_tensorrt, trt_version
from ..environment import board_model
from ..errors import AgentError, BackendError
from ..store.package import ModelPackage, sha256_file


def _trt_or_message(log_line: Callable[[str], None]) -> Any:
    try:
        return import_tensorrt()
    except BackendError as exc:
        log_line(str(exc))
        return None


def _progress_printer(log_line: Callable[[str], None]) -> Progress:
    def progress(phase: str, fraction: Optional[float], detail: str) -> None:
        pct = "{:3.0f}% ".format(fraction * 100) if fraction is not None else ""
        log_line("[{}] {}{}".format(phase, pct, detail))
    return progress


def _manifest_beside(onnx_path: str) -> Optional[ModelPackage]:
    folder = os.path.dirname(os.path.abspath(onnx_path))
    if not os.path.isfile(os.path.join(folder, "model.yaml")):
        return None
    try:
        package = ModelPackage.load(folder)
    except AgentError:
        return None
    return package if os.path.basename(package.onnx_path) == os.path.basename(onnx_path) \
        else None


def _open_cuda(required: bool,
               log: Callable[[str], None]) -> Tuple[Optional[CudaContext], str, str]:
    """The CUDA context, GPU name and compute capability for a build; without a GPU, none
    (unless `required`: INT8 calibration runs on the GPU)."""
    cuda = None  # type: Optional[CudaContext]
    try:
        cuda = CudaContext(0).open()
        return cuda, cuda.device_name(), "{}.{}".format(*cuda.compute_capability())
    except BackendError as exc:
        if cuda is not None:
            cuda.close()
        if required:
            raise
        log("note: {}; the engine record will not name the GPU".format(exc))
        return None, "unknown", "unknown"


def cmd_build(onnx_path: str, precision: str = "fp16", calib_dir: Optional[str] = None,
              out: Optional[str] = None, workspace_mb: int = 256, max_batch: int = 1,
              dla_core: Optional[int] = None, state_dir: str = "./var",
              log: Callable[[str], None] = print) -> int:
    """`edge-agent models build`: ONNX -> engine file (like trtexec --onnx --saveEngine).

    Returns 0 on success, 1 when the build fails (the reason is printed), 2 without TensorRT.
    """
    trt = _trt_or_message(log)
    if trt is None:
        return 2
    if not os.path.isfile(onnx_path):
        log("build: {} does not exist".format(onnx_path))
        return 1
    out = out or os.path.splitext(onnx_path)[0] + ".engine"
    package = _manifest_beside(onnx_path)
    cuda = None  # type: Optional[CudaContext]
    try:
        cuda, gpu, cc = _open_cuda(precision == "int8", log)
        files = None
        if precision == "int8":
            if package is None:
                raise BackendError("INT8 calibration preprocesses images as the model's "
                                   "model.yaml says: put model.yaml beside {}".format(onnx_path))
            files = calibration_images(calib_dir or "")
        version = trt_version(trt)
        name = package.name if package else os.path.splitext(os.path.basename(onnx_path))[0]
        cache = EngineCache(state_dir, name, package.version if package else "local")
        result = build_engine(
            onnx_path, precision=precision, workspace_mb=workspace_mb, max_batch=max_batch,
            dla_core=dla_core, input_spec=package.input if package else None,
            calibration_files=files, calibration_cache=cache.calibration_cache_path(version),
            timing_cache=cache.timing_cache_path(version, gpu), gpu=gpu, compute_capability=cc,
            cuda=cuda, progress=_progress_printer(log), trt=trt)
        for note in result.notes:
            log("note: {}".format(note))
        atomic_write(out, result.data)
        record = {"onnx": os.path.abspath(onnx_path), "onnx_sha256": sha256_file(onnx_path),
                  "tensorrt": version, "gpu": gpu, "compute_capability": cc,
                  "board": board_model("/"), "requested_precision": precision,
                  "built_precision": result.precision, "workspace_mb": workspace_mb,
                  "max_batch": max_batch, "dla_core": dla_core,
                  "input_shapes": result.input_shapes, "notes": result.notes}
        atomic_write(out + ".json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        log("wrote {} ({} bytes, {}, built in {:.1f} s)".format(out, len(result.data),
                                                                result.precision, result.seconds))
        return 0
    except AgentError as exc:
        log("build failed: {}".format(exc))
        return 1
    finally:
        if cuda is not None:
            cuda.close()


def cmd_profile(package: Any, options: BackendOptions, runs: int = 50,
                log: Callable[[str], None] = print) -> int:
    """`edge-agent models profile`: per-layer times of the model's engine, slowest first."""
    if _trt_or_message(log) is None:
        return 2
    try:
        if not isinstance(package, ModelPackage):
            package = ModelPackage.load(str(package))
        backend = TensorRTBackend(package, options.copy(kind="tensorrt"),
                                  progress=_progress_printer(log)).load()
    except AgentError as exc:
        log("profile: {}".format(exc))
        return 1
    try:
        rows = profile(backend, runs)
    except AgentError as exc:
        log("profile: {}".format(exc))
        return 1
    finally:
        backend.close()
    width = max([len("layer")] + [len(r.name) for r in rows])
    log("{} ({} engine, TensorRT {}, {} runs)".format(package.ref, backend.precision,
                                                      backend.trt_version, runs))
    log("{:<{w}}  {:>9}  {:>6}".format("layer", "avg ms", "%", w=width))
    for row in rows:
        log("{:<{w}}  {:>9.4f}  {:>6.1f}".format(row.name, row.avg_ms, row.percent, w=width))
    log("{:<{w}}  {:>9.4f}".format("total", sum(r.avg_ms for r in rows), w=width))
    return 0
