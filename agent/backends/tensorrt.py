"""TensorRT backend: cached engines, pinned buffers, one stream, optional GPU preprocessing.

The thread that calls load() owns the CUDA context (see cuda.py) and must be the one that calls
infer() and close(). An engine comes from the engine cache or is built (trt_build.py), checked
against ONNX Runtime by the validation gate when freshly built, and run through an I/O adapter
chosen by one predicate (trt_io.py): the tensor API where the engine has it, else bindings.
`import agent.backends.tensorrt` works without TensorRT, pycuda or onnx installed.
"""

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AgentError, BackendError
from ..store.package import ModelPackage
from .base import Backend, BackendOptions
from .cuda import CudaContext
from .trt_build import (PRECISIONS, TRT_MISSING, EngineCache, Progress, atomic_write,
                        build_engine, builder_flags_for, calibration_digest, calibration_images,
                        fingerprint_key, import_tensorrt, make_fingerprint, make_logger,
                        trt_version)
from .trt_io import IOAdapter, TensorApiIO, TensorInfo, dims_tuple, uses_tensor_api

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class BindingApiIO(IOAdapter):
    """TensorRT 8.0-8.6: bindings by index, a pointer list, execute_async_v2."""

    api = "binding"

    def __init__(self, trt_module: Any, engine: Any, context: Any) -> None:
        self.engine = engine
        self.context = context
        self._tensors = []  # type: List[TensorInfo]
        for i in range(engine.num_bindings):
            self._tensors.append(TensorInfo(
                engine.get_binding_name(i), bool(engine.binding_is_input(i)),
                dims_tuple(engine.get_binding_shape(i)),
                trt_module.nptype(engine.get_binding_dtype(i))))
        self._bindings = [0] * len(self._tensors)
        self._shapes_set = set()  # type: set

    def tensors(self) -> List[TensorInfo]:
        return list(self._tensors)

    def _index(self, name: str) -> int:
        for i, info in enumerate(self._tensors):
            if info.name == name:
                return i
        raise self._unknown(name)

    def set_input_shape(self, name: str, shape: Sequence[int]) -> None:
        index = self._index(name)
        info = self._tensors[index]
        if not info.is_input:
            raise BackendError("TensorRT tensor {!r} is an output; only inputs take a "
                               "shape".format(name))
        if not self.context.set_binding_shape(index, tuple(int(d) for d in shape)):
            raise BackendError("TensorRT refused shape {} for input {!r} (engine shape {}); the "
                               "batch must lie within the engine's optimization profile".format(
                                   tuple(shape), name, info.shape))
        self._shapes_set.add(name)

    def context_shape(self, name: str) -> Tuple[int, ...]:
        return dims_tuple(self.context.get_binding_shape(self._index(name)))

    def bind(self, addresses: Dict[str, int]) -> None:
        for name, address in addresses.items():
            self._bindings[self._index(name)] = int(address)

    def execute(self, stream_handle: int) -> None:
        for info in self._tensors:
            if info.is_input and info.dynamic and info.name not in self._shapes_set:
                raise BackendError("input {!r} has dynamic shape {}; its shape must be set before "
                                   "inference".format(info.name, info.shape))
        missing = [t.name for t, b in zip(self._tensors, self._bindings) if not b]
        if missing:
            raise BackendError("TensorRT bindings without a device buffer: {}".format(
                ", ".join(missing)))
        if not self.context.execute_async_v2(list(self._bindings), int(stream_handle)):
            raise BackendError("TensorRT execute_async_v2 failed (see the TensorRT log)")


def io_adapter(trt_module: Any, engine: Any, context: Any) -> IOAdapter:
    """The adapter for this engine, chosen by the one predicate `uses_tensor_api`."""
    if uses_tensor_api(engine):
        return TensorApiIO(trt_module, engine, context)
    return BindingApiIO(trt_module, engine, context)


class ValidationPolicy(object):
    """config `backend.validate`: how many frames, and the top-1 agreement required."""

    def __init__(self, frames: int = 16, min_top1_agreement: float = 0.98) -> None:
        self.frames = int(frames)
        self.min_top1_agreement = float(min_top1_agreement)

    @classmethod
    def from_any(cls, value: Any) -> "ValidationPolicy":
        if value is None:
            return cls()
        if isinstance(value, ValidationPolicy):
            return value
        if isinstance(value, dict):
            return cls(value.get("frames", 16), value.get("min_top1_agreement", 0.98))
        return cls(getattr(value, "frames", 16), getattr(value, "min_top1_agreement", 0.98))


class _Buffer(object):
    """A pinned host array and a device buffer of the same capacity for one tensor."""

    def __init__(self, host: np.ndarray, device: Any) -> None:
        self.host = host
        self.device = device


class TensorRTBackend(Backend):
    """Runs a model package through a TensorRT engine built for this exact device."""

    name = "tensorrt"

    def __init__(self, package: ModelPackage, options: BackendOptions,
                 progress: Optional[Progress] = None, validate: Any = None,
                 board_root: str = "/", device: int = 0) -> None:
        super(TensorRTBackend, self).__init__(package, options)
        self.progress = progress
        self.validate_policy = ValidationPolicy.from_any(
            validate if validate is not None else getattr(options, "validate", None))
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
        self._io = None  # type: Optional[IOAdapter]
        self._buffers = {}  # type: Dict[str, _Buffer]
        self._input = None  # type: Optional[TensorInfo]
        self._outputs = []  # type: List[TensorInfo]
        self._shapes = {}  # type: Dict[str, Tuple[int, ...]]
        self._capacity = 1
        self._gpu_pre = None  # type: Any

    # -- load --------------------------------------------------------------------------------
    def _load_impl(self) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self.trt_version = trt_version(trt)
        if self.options.precision not in PRECISIONS:
            raise BackendError("backend.precision: {!r} is not one of {}".format(
                self.options.precision, ", ".join(PRECISIONS)))
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
        self._io = None
        self._context = None
        self._engine = None
        self._runtime = None

    def _teardown(self) -> None:
        cuda, self._cuda = self._cuda, None
        self._buffers = {}
        if cuda is not None:
            cuda.close()

    def _load_in_context(self, trt: Any, cuda: CudaContext) -> None:
        package, options = self.package, self.options
        self.gpu = cuda.device_name()
        self.compute_capability = "{}.{}".format(*cuda.compute_capability())
        onnx_sha = package.verify()
        calib_files = None  # type: Optional[List[str]]
        calibration = None  # type: Optional[str]
        if options.precision == "int8":
            calib_files = calibration_images(options.calibration_dir or "")
            calibration = calibration_digest(calib_files)
        fingerprint = make_fingerprint(
            onnx_sha256=onnx_sha, tensorrt=self.trt_version or "unknown", gpu=self.gpu,
            compute_capability=self.compute_capability, board=_board_model(self.board_root),
            precision=options.precision, input_shapes={package.input.name: package.input.shape},
            max_batch=options.max_batch, workspace_mb=options.workspace_mb,
            dla_core=options.dla_core,
            builder_flags=builder_flags_for(options.precision, options.dla_core),
            calibration=calibration)
        cache = EngineCache(options.state_dir, package.name, package.version)
        key = fingerprint_key(fingerprint)
        self.engine_key = key
        self.engine_path = cache.paths(key)[0]

        logger = make_logger(trt)
        since = logger.mark()
        self._runtime = trt.Runtime(logger)
        if options.dla_core is not None:
            # A DLA engine runs on the core the runtime names; TensorRT 8+ leaves it at -1.
            cores = int(getattr(self._runtime, "num_DLA_cores", 0) or 0)
            if cores > int(options.dla_core):
                self._runtime.DLA_core = int(options.dla_core)
        lookup = cache.lookup(fingerprint)
        fresh = None  # type: Any
        if lookup.hit:
            self._engine = self._runtime.deserialize_cuda_engine(lookup.data)
            if self._engine is None:
                reason = "cached engine {} could not be deserialized ({}); rebuilding".format(
                    lookup.engine_path, logger.recent_errors(since=since) or "no details")
                self._note(reason)
                cache.evict(key)
            else:
                self.from_cache = True
                self.precision = lookup.meta.get("built_precision", options.precision)
                self.notes.extend(lookup.meta.get("notes", []))
                self._report("cache", 1.0, lookup.reason)
        else:
            self._note(lookup.reason)
            self._report("cache", None, lookup.reason)
        if self._engine is None:
            fresh = build_engine(
                package.onnx_path, precision=options.precision,
                workspace_mb=options.workspace_mb, max_batch=options.max_batch,
                dla_core=options.dla_core, input_spec=package.input,
                calibration_files=calib_files,
                calibration_cache=cache.calibration_cache_path(self.trt_version or "unknown"),
                timing_cache=cache.timing_cache_path(self.trt_version or "unknown", self.gpu),
                gpu=self.gpu, compute_capability=self.compute_capability, cuda=cuda,
                progress=self.progress, trt=trt)
            self.precision = fresh.precision
            for note in fresh.notes:
                self._note(note)
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
        self._io = io_adapter(trt, self._engine, self._context)
        self.io_api = self._io.api
        self._allocate()
        self._setup_preprocess()

        if fresh is not None:
            result = self._run_validation()
            facts = {"built_precision": self.precision, "notes": list(fresh.notes),
                     "build_seconds": round(fresh.seconds, 2), "tensorrt": self.trt_version,
                     "io_api": self.io_api,
                     "validation": result.to_dict() if result is not None else None}
            self.engine_path = cache.store(fingerprint, fresh.data, facts)
            self._report("cache", 1.0, "engine saved to {}".format(self.engine_path))
            if result is not None and not result.passed:
                raise BackendError("model {}: {} engine refused by the validation gate: {}".format(
                    package.ref, self.precision, result.reason))
        else:
            recorded = lookup.meta.get("validation")
            self.validation = recorded
            if recorded and self.validate_policy.frames > 0 and recorded.get("frames") and \
                    recorded.get("top1_agreement", 1.0) < self.validate_policy.min_top1_agreement:
                raise BackendError("model {}: cached {} engine {} failed validation when it was "
                                   "built: {}".format(package.ref, self.precision,
                                                      self.engine_path, recorded.get("reason")))

    def _note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)
            log.info("tensorrt %s: %s", self.package.ref, text)

    def _report(self, phase: str, fraction: Optional[float], detail: str) -> None:
        if self.progress is not None:
            try:
                self.progress(phase, fraction, detail)
            except Exception:
                log.exception("progress callback failed")

    def _allocate(self) -> None:
        io, cuda = self._io, self._cuda
        assert io is not None and cuda is not None
        tensors = io.tensors()
        inputs = [t for t in tensors if t.is_input]
        if len(inputs) != 1:
            raise BackendError("model {}: the engine has {} inputs; image classification models "
                               "take exactly one".format(self.package.ref, len(inputs)))
        inp = inputs[0]
        want = list(self.package.input.shape)
        if len(inp.shape) != len(want) or any(h >= 0 and h != w for h, w in
                                              zip(inp.shape[1:], want[1:])):
            raise BackendError("model {}: the engine input {!r} has shape {} but the manifest "
                               "says {}; fix input.shape in model.yaml".format(
                                   self.package.ref, inp.name, list(inp.shape), want))
        if np.dtype(inp.dtype) != np.float32:
            raise BackendError("model {}: engine input {!r} is {}; the agent feeds float32 "
                               "(re-export the model with a float input)".format(
                                   self.package.ref, inp.name, np.dtype(inp.dtype)))
        self._input = inp
        self._outputs = [t for t in tensors if not t.is_input]
        self.input_name = inp.name
        self.output_names = [t.name for t in self._outputs]
        wanted = self.package.output.name
        if wanted and wanted not in self.output_names:
            raise BackendError("model {}: output {!r} named in the manifest is not in the engine "
                               "(outputs: {})".format(self.package.ref, wanted,
                                                      ", ".join(self.output_names)))
        # Capacity: the largest batch the engine takes (the profile max for a dynamic batch).
        capacity_shape = tuple(want)
        if inp.dynamic:
            capacity_shape = (max(int(self.options.max_batch), want[0]),) + tuple(want[1:])
            io.set_input_shape(inp.name, capacity_shape)
        else:
            capacity_shape = inp.shape
        self._capacity = int(capacity_shape[0])
        sizes = {inp.name: (int(np.prod(capacity_shape)), inp.dtype)}
        for out in self._outputs:
            shape = io.context_shape(out.name)
            if any(d < 0 for d in shape):
                raise BackendError("model {}: output {!r} has unresolved shape {}".format(
                    self.package.ref, out.name, shape))
            sizes[out.name] = (int(np.prod(shape)), out.dtype)
        addresses = {}
        for name, (count, dtype) in sizes.items():
            host = cuda.pinned((max(1, count),), dtype)
            device = cuda.device_alloc(host.nbytes)
            self._buffers[name] = _Buffer(host, device)
            addresses[name] = int(device)
        io.bind(addresses)
        self._set_shape(tuple(want))

    def _set_shape(self, shape: Tuple[int, ...]) -> None:
        """Make `shape` the input shape (for a dynamic batch) and read the output shapes."""
        io, inp = self._io, self._input
        assert io is not None and inp is not None
        if self._shapes.get(inp.name) == shape:
            return
        if inp.dynamic:
            if shape[0] > self._capacity or shape[0] < 1:
                raise BackendError("model {}: batch {} is outside the engine's range 1..{} "
                                   "(backend.max_batch)".format(self.package.ref, shape[0],
                                                               self._capacity))
            io.set_input_shape(inp.name, shape)
        elif shape != inp.shape:
            raise BackendError("model {}: input shape {} does not match the engine's fixed "
                               "shape {}".format(self.package.ref, shape, inp.shape))
        shapes = {inp.name: shape}
        for out in self._outputs:
            shapes[out.name] = io.context_shape(out.name)
        self._shapes = shapes

    def _setup_preprocess(self) -> None:
        mode = getattr(self.options, "preprocess", "auto") or "auto"
        if mode == "cpu":
            return
        try:
            from .gpu_preprocess import GpuPreprocessor
            pre = GpuPreprocessor(self._cuda, self.package.input)
            problem = self._check_gpu_preprocess(pre)
        except AgentError as exc:
            problem = str(exc)
        if problem is None:
            self._gpu_pre = pre
            self.preprocess_mode = "gpu"
            return
        if mode == "gpu":
            raise BackendError("model {}: backend.preprocess is gpu but GPU preprocessing is "
                               "unusable: {}; set backend.preprocess to auto or cpu".format(
                                   self.package.ref, problem))
        self._note("GPU preprocessing unavailable ({}); preprocessing on the CPU".format(problem))

    def _check_gpu_preprocess(self, pre: Any) -> Optional[str]:
        """Run the kernel once on a test frame and compare with the CPU Preprocessor."""
        from ..preprocess import Preprocessor
        cuda = self._cuda
        assert cuda is not None
        rng = np.random.RandomState(7)
        frame = rng.randint(0, 256, size=(120, 160, 3)).astype(np.uint8)
        spec = self.package.input
        count = int(np.prod(spec.shape[1:]))
        host = cuda.pinned((count,), np.float32)
        device = cuda.device_alloc(host.nbytes)
        pre.run(frame, int(device))
        cuda.dtoh_async(host, device)
        cuda.synchronize()
        want = Preprocessor(spec)(frame)[0].ravel()
        worst = float(np.max(np.abs(host - want)))
        # One uint8 level (rounding in cv2's fixed-point resize) is the most we accept.
        tolerance = 1.01 / min(spec.std) + 1e-4
        if not np.isfinite(worst) or worst > tolerance:
            return "the GPU kernel differs from the CPU preprocessing by {:.4g} (allowed " \
                   "{:.4g})".format(worst, tolerance)
        return None

    def _run_validation(self) -> Any:
        policy = self.validate_policy
        if policy.frames <= 0:
            return None
        try:
            from .onnxruntime import OnnxRuntimeBackend
            reference = OnnxRuntimeBackend(self.package, self.options).load()
        except AgentError as exc:
            self._note("validation skipped: the ONNX Runtime reference is unavailable "
                       "({})".format(exc))
            return None
        from ..validation import validate_against_reference
        self._report("validating", None, "comparing with ONNX Runtime on {} frames".format(
            policy.frames))
        try:
            tensors = validation_tensors(self.package, self.options, policy.frames)
            result = validate_against_reference(
                _Runner(self.name, self._infer_impl), reference, tensors,
                policy.min_top1_agreement, output_name=self.package.output.name,
                activation=self.package.output.activation)
        finally:
            reference.close()
        self.validation = result.to_dict()
        self._report("validating", 1.0, "top-1 agreement {:.1%}, max |diff| {:.3g}".format(
            result.top1_agreement, result.max_abs_diff))
        return result

    # -- inference ------------------------------------------------------------------------------
    def _infer_impl(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        cuda, io, inp = self._cuda, self._io, self._input
        assert cuda is not None and io is not None and inp is not None
        cuda.check_thread("infer()")
        tensor = np.asarray(tensor)
        if tensor.dtype != np.float32:
            raise BackendError("model {}: input tensor is {}; the engine takes float32".format(
                self.package.ref, tensor.dtype))
        if tensor.ndim != len(inp.shape):
            raise BackendError("model {}: input tensor has shape {}; the engine takes {}".format(
                self.package.ref, tensor.shape, inp.shape))
        self._set_shape(tuple(int(d) for d in tensor.shape))
        buf = self._buffers[inp.name]
        host = buf.host[:tensor.size]
        np.copyto(host.reshape(tensor.shape), tensor)
        cuda.htod_async(buf.device, host)
        return self._execute_and_fetch()

    def _execute_and_fetch(self) -> Dict[str, np.ndarray]:
        cuda, io = self._cuda, self._io
        assert cuda is not None and io is not None
        io.execute(cuda.stream.handle)
        views = {}
        for out in self._outputs:
            shape = self._shapes[out.name]
            buf = self._buffers[out.name]
            view = buf.host[:int(np.prod(shape))]
            cuda.dtoh_async(view, buf.device)
            views[out.name] = view.reshape(shape)
        cuda.synchronize()
        return {name: view.copy() for name, view in views.items()}

    def accepts_frames(self) -> bool:
        return self._gpu_pre is not None

    def infer_frame(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        """Upload a BGR uint8 frame, preprocess it on the GPU into the input, run the engine."""
        if not self.loaded or self.closed:
            raise BackendError("tensorrt: infer_frame() on a backend that is not loaded")
        if self._gpu_pre is None:
            return super(TensorRTBackend, self).infer_frame(frame)
        cuda, inp = self._cuda, self._input
        assert cuda is not None and inp is not None
        cuda.check_thread("infer_frame()")
        self._set_shape(tuple(self.package.input.shape))
        self._gpu_pre.run(frame, int(self._buffers[inp.name].device))
        return self._execute_and_fetch()

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


class _Runner(object):
    """Gives the validation gate an `infer` while the backend is still loading."""

    def __init__(self, name: str, infer: Callable[[np.ndarray], Dict[str, np.ndarray]]) -> None:
        self.name = name
        self.infer = infer


def _board_model(root: str) -> Optional[str]:
    path = os.path.join(root, "proc", "device-tree", "model")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


def validation_tensors(package: ModelPackage, options: BackendOptions,
                       frames: int) -> List[np.ndarray]:
    """`frames` input tensors from real photos when there are any, else smooth synthetic ones.

    Photos come from the calibration folder, the package's samples/ or the models/samples
    folder beside it; each photo is used as is, mirrored, and cropped, for variety.
    """
    import cv2
    from ..preprocess import Preprocessor
    pre = Preprocessor(package.input)
    folders = [options.calibration_dir, os.path.join(package.root, "samples"),
               os.path.join(os.path.dirname(os.path.abspath(package.root)), "samples")]
    images = []  # type: List[np.ndarray]
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
                if image is not None:
                    images.append(image)
            if len(images) >= frames:
                break
        if images:
            break
    out = []  # type: List[np.ndarray]
    variant = 0
    while images and len(out) < frames:
        for image in images:
            if len(out) >= frames:
                break
            out.append(pre(_variant(image, variant)))
        variant += 1
    rng = np.random.RandomState(1234)
    while len(out) < frames:
        out.append(pre(_synthetic_frame(rng)))
    return out


def _variant(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[:2]
    if k % 2:
        image = image[:, ::-1]
    step = k // 2
    if step:
        f = max(0.5, 1.0 - 0.1 * step)
        ch, cw = max(8, int(h * f)), max(8, int(w * f))
        y0 = (h - ch) * (step % 3) // 2
        x0 = (w - cw) * ((step + 1) % 3) // 2
        image = image[y0:y0 + ch, x0:x0 + cw]
    return np.ascontiguousarray(image)


def _synthetic_frame(rng: Any) -> np.ndarray:
    """A smooth random image (blurred noise + gradients): more image-like than white noise."""
    import cv2
    small = rng.randint(0, 256, size=(12, 16, 3)).astype(np.uint8)
    return cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------
# Per-layer profiling (like `trtexec --dumpProfile`)
# ---------------------------------------------------------------------------------------------
class LayerTime(object):
    def __init__(self, name: str, avg_ms: float, percent: float) -> None:
        self.name = name
        self.avg_ms = avg_ms
        self.percent = percent


def _profiler_class(trt: Any) -> Any:
    class LayerProfiler(trt.IProfiler):
        """Sums TensorRT's per-layer times over runs."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.total_ms = {}  # type: Dict[str, float]
            self.order = []  # type: List[str]

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if layer_name not in self.total_ms:
                self.total_ms[layer_name] = 0.0
                self.order.append(layer_name)
            self.total_ms[layer_name] += float(ms)

    return LayerProfiler


def profile(backend: TensorRTBackend, runs: int = 50,
            tensor: Optional[np.ndarray] = None) -> List[LayerTime]:
    """Average per-layer times over `runs` inferences, slowest first."""
    if not backend.loaded or backend.closed or backend._context is None:
        raise BackendError("profile(): the TensorRT backend is not loaded")
    runs = max(1, int(runs))
    if tensor is None:
        tensor = np.zeros(backend.package.input.shape, dtype=np.float32)
    backend.infer(tensor)  # warm-up outside the profile
    profiler = _profiler_class(backend._trt)()
    context = backend._context
    context.profiler = profiler
    try:
        for _ in range(runs):
            backend.infer(tensor)
    finally:
        try:
            context.profiler = None
        except (TypeError, AttributeError):
            pass
    total = sum(profiler.total_ms.values()) or 1.0
    rows = [LayerTime(name, profiler.total_ms[name] / runs, 100.0 * profiler.total_ms[name] / total)
            for name in profiler.order]
    rows.sort(key=lambda r: r.avg_ms, reverse=True)
    return rows


# ---------------------------------------------------------------------------------------------
# CLI entry points (wired into argparse by agent/__main__.py)
# ---------------------------------------------------------------------------------------------
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


def cmd_build(onnx_path: str, precision: str = "fp16", calib_dir: Optional[str] = None,
              out: Optional[str] = None, workspace_mb: int = 256, max_batch: int = 1,
              dla_core: Optional[int] = None, state_dir: str = "./var",
              log: Callable[[str], None] = print) -> int:
    """`edge-agent build`: ONNX -> engine file (like trtexec --onnx --saveEngine).

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
        try:
            cuda = CudaContext(0).open()
            gpu = cuda.device_name()
            cc = "{}.{}".format(*cuda.compute_capability())
        except BackendError as exc:
            if precision == "int8":
                raise
            log("note: {}; the engine record will not name the GPU".format(exc))
            cuda, gpu, cc = None, "unknown", "unknown"
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
        import json
        from ..store.package import sha256_file
        record = {"onnx": os.path.abspath(onnx_path), "onnx_sha256": sha256_file(onnx_path),
                  "tensorrt": version, "gpu": gpu, "compute_capability": cc,
                  "board": _board_model("/"), "requested_precision": precision,
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
    """`edge-agent profile`: per-layer times of the model's engine, slowest first."""
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


__all__ = ["TensorRTBackend", "BindingApiIO", "TensorApiIO", "io_adapter", "uses_tensor_api",
           "profile", "cmd_build", "cmd_profile", "validation_tensors", "ValidationPolicy",
           "TRT_MISSING"]
