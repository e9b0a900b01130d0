"""TensorRTBackend: a model package run through an engine built for this exact device.

The thread that calls load() owns the CUDA context (see cuda.py) and must be the one that calls
infer() and close(). An engine comes from the engine cache or is built (build.py), checked
against ONNX Runtime by the validation gate when freshly built, and run through the engine's
buffers (buffers.py) and an I/O adapter (io.py); GPU preprocessing is optional.
"""

import logging
from typing import Any, Dict, List, Optional

import numpy as np

from ...environment import board_model
from ...errors import AgentError, BackendError
from ...store.package import ModelPackage
from ..base import PRECISIONS, Backend, BackendOptions, Progress
from ..validation import check_against_onnxruntime, failed_when_built
from .buffers import EngineBuffers
from .build import BuildResult, build_engine, builder_flags_for
from .calibrator import calibration_digest, calibration_images
from .cuda import CudaContext
from .engine_cache import CacheLookup, EngineCache, make_fingerprint
from .frame_pool import PinnedFramePool
from .gpu_preprocess import checked_gpu_preprocessor
from .io import io_adapter
from .runtime import import_tensorrt, make_logger, trt_version

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """Runs a model package through a TensorRT engine built for this exact device."""

    name = "tensorrt"
    precisions = PRECISIONS

    def __init__(self, package: ModelPackage, options: BackendOptions,
                 progress: Optional[Progress] = None, board_root: str = "/",
                 device: int = 0, cancel: Any = None) -> None:
        super(TensorRTBackend, self).__init__(package, options, progress, cancel)
        self.board_root = board_root
        self.device = device
        self.engine_key = None  # type: Optional[str]
        self.engine_path = None  # type: Optional[str]
        self.trt_version = None  # type: Optional[str]
        self.gpu = None  # type: Optional[str]
        self.compute_capability = None  # type: Optional[str]
        self.io_api = None  # type: Optional[str]
        self.preprocess_mode = "cpu"
        self.from_cache = False
        self.notes = []  # type: List[str]
        self.validation = None  # type: Optional[Dict[str, Any]]
        self._trt = None  # type: Any
        self._cuda = None  # type: Optional[CudaContext]
        self._runtime = None  # type: Any
        self._engine = None  # type: Any
        self._context = None  # type: Any
        self._buffers = None  # type: Optional[EngineBuffers]
        self._gpu_pre = None  # type: Any
        self._frame_pool = None  # type: Optional[PinnedFramePool]

    @classmethod
    def available(cls) -> bool:
        try:
            return import_tensorrt() is not None
        except BackendError:
            return False

    # -- load --------------------------------------------------------------------------------
    def _load_impl(self) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self.trt_version = trt_version(trt)
        cuda = CudaContext(self.device)
        cuda.open()  # current in THIS thread from here until close()
        self._cuda = cuda
        cuda.own("TensorRT objects", self._release_trt)
        try:
            self._load_in_context(trt, cuda)
        except BaseException:
            self._teardown()
            raise

    def _release_trt(self) -> None:
        # Execution context before engine before runtime, while the CUDA context is current.
        self._gpu_pre = None
        self._buffers = None
        self._context = None
        self._engine = None
        self._runtime = None

    def _teardown(self) -> None:
        if self._frame_pool is not None:
            self._frame_pool.close()
        cuda, self._cuda = self._cuda, None
        self._buffers = None
        if cuda is not None:
            cuda.close()

    def _load_in_context(self, trt: Any, cuda: CudaContext) -> None:
        package, options = self.package, self.options
        self.gpu = cuda.device_name()
        self.compute_capability = "{}.{}".format(*cuda.compute_capability())
        onnx_sha = package.verify()
        calib_files = None  # type: Optional[List[str]]
        if options.precision == "int8":
            calib_files = calibration_images(options.calibration_dir or "")
        fingerprint = engine_fingerprint(package, options, onnx_sha, self.trt_version, self.gpu,
                                         self.compute_capability, board_model(self.board_root),
                                         calib_files)
        cache = EngineCache(options.state_dir, package.name, package.version)
        lookup = cache.lookup(fingerprint)
        self.engine_key = lookup.key
        self.engine_path = lookup.engine_path

        logger = make_logger(trt)
        since = logger.mark()
        self._runtime = open_runtime(trt, logger, options.dla_core)
        self._engine = self._engine_from_cache(lookup, cache)
        fresh = None  # type: Optional[BuildResult]
        if self._engine is None:
            fresh = self._build(cache, calib_files)
            self._engine = self._runtime.deserialize_cuda_engine(fresh.data)
            if self._engine is None:
                raise BackendError("TensorRT {} could not load the engine it just built for {} "
                                   "({})".format(self.trt_version, package.ref,
                                                 logger.recent_errors(since=since) or "no details"))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError("TensorRT could not create an execution context for {} (out of "
                               "GPU memory? {})".format(
                                   package.ref, logger.recent_errors(since=since) or "no details"))
        self._setup_io(trt, cuda)
        self._setup_preprocess()
        if fresh is not None:
            self._validate_and_store(cache, fingerprint, fresh)
        else:  # a cached engine that failed the gate when it was built is refused again
            recorded = self.validation = lookup.meta.get("validation")
            if recorded and failed_when_built(recorded, options.validate):
                raise BackendError("model {}: cached {} engine {} failed validation when it was "
                                   "built: {}".format(package.ref, self.precision,
                                                      self.engine_path, recorded.get("reason")))

    def _engine_from_cache(self, lookup: CacheLookup, cache: EngineCache) -> Any:
        """The cached engine, deserialized; None (with the reason noted) when it must be built."""
        if not lookup.hit:
            self._note(lookup.reason)
            self._report("cache", None, lookup.reason)
            return None
        logger = make_logger(self._trt)
        since = logger.mark()
        engine = self._runtime.deserialize_cuda_engine(lookup.data)
        if engine is None:
            self._note("cached engine {} could not be deserialized ({}); rebuilding".format(
                lookup.engine_path, logger.recent_errors(since=since) or "no details"))
            cache.evict(lookup.key)
            return None
        self.from_cache = True
        self.precision = lookup.meta.get("built_precision", self.options.precision)
        self.notes.extend(lookup.meta.get("notes", []))
        self._report("cache", 1.0, lookup.reason)
        return engine

    def _build(self, cache: EngineCache, calib_files: Optional[List[str]]) -> BuildResult:
        options, version = self.options, self.trt_version or "unknown"
        fresh = build_engine(
            self.package.onnx_path, precision=options.precision,
            workspace_mb=options.workspace_mb, max_batch=options.max_batch,
            dla_core=options.dla_core, input_spec=self.package.input,
            calibration_files=calib_files,
            calibration_cache=cache.calibration_cache_path(version),
            timing_cache=cache.timing_cache_path(version, self.gpu or "unknown"),
            gpu=self.gpu or "unknown", compute_capability=self.compute_capability or "unknown",
            cuda=self._cuda, progress=self.progress, cancel=self.cancel, trt=self._trt)
        self.precision = fresh.precision
        for note in fresh.notes:
            self._note(note)
        return fresh

    def _setup_io(self, trt: Any, cuda: CudaContext) -> None:
        io = io_adapter(trt, self._engine, self._context)
        self.io_api = io.api
        tensors = io.tensors()
        inputs = [t for t in tensors if t.is_input]
        first = inputs[0] if inputs else None
        self._adopt_io("engine", [t.name for t in inputs], first.shape if first else (),
                       first is not None and np.dtype(first.dtype) == np.float32,
                       str(np.dtype(first.dtype)) if first else "",
                       [t.name for t in tensors if not t.is_input], check_batch=False)
        self._buffers = EngineBuffers(io, cuda, self.package.ref, tuple(self.package.input.shape),
                                      self.options.max_batch)

    def _setup_preprocess(self) -> None:
        mode = getattr(self.options, "preprocess", "auto") or "auto"
        if mode == "cpu":
            return
        try:
            self._gpu_pre = checked_gpu_preprocessor(self._cuda, self.package.input)
            self.preprocess_mode = "gpu"
            self._frame_pool = PinnedFramePool(self._cuda)
        except AgentError as exc:
            if mode == "gpu":
                raise BackendError("model {}: backend.preprocess is gpu but GPU preprocessing is "
                                   "unusable: {}; set backend.preprocess to auto or cpu".format(
                                       self.package.ref, exc))
            self._note("GPU preprocessing unavailable ({}); preprocessing on the CPU".format(exc))

    def _validate_and_store(self, cache: EngineCache, fingerprint: Dict[str, Any],
                            fresh: BuildResult) -> None:
        """Run the validation gate on a fresh engine, store it with the result, refuse a fail."""
        result = check_against_onnxruntime(self.name, self._infer_impl, self.package,
                                           self.options, self._report, self._note)
        if result is not None:
            self.validation = result.to_dict()
        facts = {"built_precision": self.precision, "notes": list(fresh.notes),
                 "build_seconds": round(fresh.seconds, 2), "tensorrt": self.trt_version,
                 "io_api": self.io_api, "validation": self.validation}
        self.engine_path = cache.store(fingerprint, fresh.data, facts)
        self._report("cache", 1.0, "engine saved to {}".format(self.engine_path))
        if result is not None and not result.passed:
            raise BackendError("model {}: {} engine refused by the validation gate: {}".format(
                self.package.ref, self.precision, result.reason))

    def _note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)
            log.info("tensorrt %s: %s", self.package.ref, text)

    # -- inference ------------------------------------------------------------------------------
    def _infer_impl(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        cuda, buffers = self._cuda, self._buffers
        assert cuda is not None and buffers is not None
        cuda.check_thread("infer()")
        tensor = np.asarray(tensor)
        if tensor.dtype != np.float32:
            raise BackendError("model {}: input tensor is {}; the engine takes float32".format(
                self.package.ref, tensor.dtype))
        if tensor.ndim != len(buffers.input.shape):
            raise BackendError("model {}: input tensor has shape {}; the engine takes {}".format(
                self.package.ref, tensor.shape, buffers.input.shape))
        buffers.upload(tensor)
        return buffers.execute_and_fetch()

    def accepts_frames(self) -> bool:
        return self._gpu_pre is not None

    def infer_frame(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        """Upload a BGR uint8 frame, preprocess it on the GPU into the input, run the engine."""
        if not self.loaded or self.closed:
            raise BackendError("tensorrt: infer_frame() on a backend that is not loaded")
        if self._gpu_pre is None:
            return super(TensorRTBackend, self).infer_frame(frame)
        cuda, buffers = self._cuda, self._buffers
        assert cuda is not None and buffers is not None
        cuda.check_thread("infer_frame()")
        buffers.set_shape(tuple(self.package.input.shape))
        pool = self._frame_pool
        pinned = False
        if pool is not None:
            pool.serve()  # allocates the pinned frames capture asked for, in this context
            pinned = pool.owns(frame)
        self._gpu_pre.run(frame, buffers.input_device, pinned=pinned)
        return buffers.execute_and_fetch()

    def frame_pool(self) -> Optional[PinnedFramePool]:
        """The pinned frame buffers the capture thread writes frames into (GPU preprocessing)."""
        return self._frame_pool

    def release_thread(self) -> None:
        """Hand the backend to another thread: call in the thread that loaded (or last used) it.

        The CUDA context stops being current here (one pop); the next thread that calls
        infer(), infer_frame() or close() adopts it (one push). Needed when a model manager
        loads and validates in its own thread and the inference thread then serves.
        """
        if self._cuda is not None and self.loaded and not self.closed:
            self._cuda.release_thread()

    def _close_impl(self) -> None:
        self._teardown()

    def describe(self) -> Dict[str, Any]:
        info = super(TensorRTBackend, self).describe()
        info.update({"engine_key": self.engine_key, "engine_path": self.engine_path,
                     "tensorrt": self.trt_version, "gpu": self.gpu,
                     "compute_capability": self.compute_capability, "io_api": self.io_api,
                     "preprocess": self.preprocess_mode, "from_cache": self.from_cache})
        if self.notes:
            info["notes"] = list(self.notes)
        if self.validation:
            info["validation"] = dict(self.validation)
        return info


def open_runtime(trt: Any, logger: Any, dla_core: Optional[int]) -> Any:
    """A trt.Runtime; for a DLA engine, set to the core the engine was built for."""
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        # A DLA engine runs on the core the runtime names; TensorRT 8+ leaves it at -1.
        cores = int(getattr(runtime, "num_DLA_cores", 0) or 0)
        if cores > int(dla_core):
            runtime.DLA_core = int(dla_core)
    return runtime


def engine_fingerprint(package: ModelPackage, options: BackendOptions, onnx_sha256: str,
                       tensorrt: Optional[str], gpu: Optional[str],
                       compute_capability: Optional[str], board: Optional[str],
                       calib_files: Optional[List[str]]) -> Dict[str, Any]:
    """What the engine for this package, these options and this device depends on."""
    return make_fingerprint(
        onnx_sha256=onnx_sha256, tensorrt=tensorrt or "unknown", gpu=gpu or "unknown",
        compute_capability=compute_capability or "unknown", board=board,
        precision=options.precision, input_shapes={package.input.name: package.input.shape},
        max_batch=options.max_batch, workspace_mb=options.workspace_mb,
        dla_core=options.dla_core,
        builder_flags=builder_flags_for(options.precision, options.dla_core),
        calibration=calibration_digest(calib_files) if calib_files is not None else None)
