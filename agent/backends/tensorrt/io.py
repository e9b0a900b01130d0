"""TensorRT I/O adapters: how tensors are named, shaped, bound and executed.

TensorRT 8.5 added the tensor API (`num_io_tensors`, `set_tensor_address`, `execute_async_v3`)
and 10.0 removed the binding API (`num_bindings`, `execute_async_v2`). ONE predicate,
`uses_tensor_api(engine)`, picks the adapter; the rest of the backend never asks which
TensorRT it runs on. The tensor-API adapter is type-checked against the TensorRT 10 stubs
(`tensorrt-stubs`); the binding-API adapter takes its objects as `Any`, since TensorRT 10 has no
binding API to check it against.
"""

from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from ...errors import BackendError

if TYPE_CHECKING:  # pragma: no cover - only for the type checker
    import tensorrt as trt  # noqa: F401


class TensorInfo(object):
    """One engine input or output: name, direction, engine shape (-1 = dynamic), numpy dtype."""

    def __init__(self, name: str, is_input: bool, shape: Tuple[int, ...], dtype: Any) -> None:
        self.name = name
        self.is_input = is_input
        self.shape = shape
        self.dtype = dtype

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)

    def __repr__(self) -> str:
        return "TensorInfo({!r}, {}, {}, {})".format(
            self.name, "input" if self.is_input else "output", self.shape, self.dtype)


def uses_tensor_api(engine: Any) -> bool:
    """THE predicate: the engine speaks the tensor API (TensorRT 8.5+)."""
    return hasattr(engine, "num_io_tensors")


def dims_tuple(dims: Any) -> Tuple[int, ...]:
    """A TensorRT Dims (tuple-like) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class IOAdapter(object):
    """The engine/context operations the backend needs, independent of the API generation.

    A subclass reads `_tensors` in its constructor and implements `_apply_shape`,
    `context_shape`, `bind` and `execute`.
    """

    api = "none"

    def __init__(self, context: Any) -> None:
        self.context = context
        self._tensors = []  # type: List[TensorInfo]
        self._shapes_set = set()  # type: set

    def tensors(self) -> List[TensorInfo]:
        return list(self._tensors)

    def _index(self, name: str) -> int:
        for i, info in enumerate(self._tensors):
            if info.name == name:
                return i
        names = [t.name for t in self._tensors]
        raise BackendError("TensorRT engine has no tensor {!r} (its tensors: {})".format(
            name, ", ".join(names)))

    def set_input_shape(self, name: str, shape: Sequence[int]) -> None:
        index = self._index(name)
        info = self._tensors[index]
        if not info.is_input:
            raise BackendError("TensorRT tensor {!r} is an output; only inputs take a "
                               "shape".format(name))
        if not self._apply_shape(index, name, tuple(int(d) for d in shape)):
            raise BackendError("TensorRT refused shape {} for input {!r} (engine shape {}); the "
                               "batch must lie within the engine's optimization profile".format(
                                   tuple(shape), name, info.shape))
        self._shapes_set.add(name)

    def _apply_shape(self, index: int, name: str, shape: Tuple[int, ...]) -> bool:
        raise NotImplementedError

    def _check_shapes_set(self) -> None:
        for info in self._tensors:
            if info.is_input and info.dynamic and info.name not in self._shapes_set:
                raise BackendError("input {!r} has dynamic shape {}; its shape must be set before "
                                   "inference".format(info.name, info.shape))

    def context_shape(self, name: str) -> Tuple[int, ...]:
        raise NotImplementedError

    def bind(self, addresses: Dict[str, int]) -> None:
        raise NotImplementedError

    def execute(self, stream_handle: int) -> None:
        raise NotImplementedError


class TensorApiIO(IOAdapter):
    """TensorRT 8.5+ / 10.x: tensors by name, addresses set once, execute_async_v3."""

    api = "tensor"

    def __init__(self, trt_module: Any, engine: "trt.ICudaEngine",
                 context: "trt.IExecutionContext") -> None:
        super(TensorApiIO, self).__init__(context)
        self.engine = engine
        input_mode = trt_module.TensorIOMode.INPUT
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._tensors.append(TensorInfo(
                name, engine.get_tensor_mode(name) == input_mode,
                dims_tuple(engine.get_tensor_shape(name)),
                trt_module.nptype(engine.get_tensor_dtype(name))))

    def _apply_shape(self, index: int, name: str, shape: Tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(name, shape))

    def context_shape(self, name: str) -> Tuple[int, ...]:
        self._index(name)
        return dims_tuple(self.context.get_tensor_shape(name))

    def bind(self, addresses: Dict[str, int]) -> None:
        for name, address in addresses.items():
            self._index(name)
            if not self.context.set_tensor_address(name, int(address)):
                raise BackendError("TensorRT refused the device address of tensor {!r}".format(
                    name))

    def execute(self, stream_handle: int) -> None:
        self._check_shapes_set()
        if not self.context.execute_async_v3(int(stream_handle)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log: a "
                               "missing input shape or tensor address, or a CUDA error)")


class BindingApiIO(IOAdapter):
    """TensorRT 8.0-8.6: bindings by index, a pointer list, execute_async_v2."""

    api = "binding"

    def __init__(self, trt_module: Any, engine: Any, context: Any) -> None:
        super(BindingApiIO, self).__init__(context)
        self.engine = engine
        for i in range(engine.num_bindings):
            self._tensors.append(TensorInfo(
                engine.get_binding_name(i), bool(engine.binding_is_input(i)),
                dims_tuple(engine.get_binding_shape(i)),
                trt_module.nptype(engine.get_binding_dtype(i))))
        self._bindings = [0] * len(self._tensors)

    def _apply_shape(self, index: int, name: str, shape: Tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(index, shape))

    def context_shape(self, name: str) -> Tuple[int, ...]:
        return dims_tuple(self.context.get_binding_shape(self._index(name)))

    def bind(self, addresses: Dict[str, int]) -> None:
        for name, address in addresses.items():
            self._bindings[self._index(name)] = int(address)

    def execute(self, stream_handle: int) -> None:
        self._check_shapes_set()
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
