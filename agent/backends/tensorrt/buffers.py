"""The engine's memory: a pinned host and a device buffer per tensor, shapes, execute-and-fetch.

Sized once for the largest batch the engine takes (the profile's max for a dynamic batch); a
smaller batch uses the front of each buffer. Every call runs in the thread that owns the CUDA
context (see cuda.py).
"""

from typing import Any, Dict, List, Tuple

import numpy as np

from ...errors import BackendError
from .cuda import CudaContext
from .io import IOAdapter, TensorInfo


class _Buffer(object):
    """A pinned host array and a device buffer of the same capacity for one tensor."""

    def __init__(self, host: np.ndarray, device: Any) -> None:
        self.host = host
        self.device = device


class EngineBuffers(object):
    """Buffers bound to one execution context through its I/O adapter."""

    def __init__(self, io: IOAdapter, cuda: CudaContext, ref: str, shape: Tuple[int, ...],
                 max_batch: int) -> None:
        """`shape` is the manifest's input shape, `ref` the model named in errors."""
        tensors = io.tensors()
        self.io = io
        self.cuda = cuda
        self.ref = ref
        self.input = [t for t in tensors if t.is_input][0]  # type: TensorInfo
        self.outputs = [t for t in tensors if not t.is_input]  # type: List[TensorInfo]
        self.by_name = {}  # type: Dict[str, _Buffer]  # tensor name -> its buffers
        self._shapes = {}  # type: Dict[str, Tuple[int, ...]]
        inp = self.input
        if inp.dynamic:
            capacity_shape = (max(int(max_batch), shape[0]),) + tuple(shape[1:])
            io.set_input_shape(inp.name, capacity_shape)
        else:
            capacity_shape = inp.shape
        self.capacity = int(capacity_shape[0])
        sizes = {inp.name: (int(np.prod(capacity_shape)), inp.dtype)}
        for out in self.outputs:
            out_shape = io.context_shape(out.name)
            if any(d < 0 for d in out_shape):
                raise BackendError("model {}: output {!r} has unresolved shape {}".format(
                    ref, out.name, out_shape))
            sizes[out.name] = (int(np.prod(out_shape)), out.dtype)
        addresses = {}
        for name, (count, dtype) in sizes.items():
            host = cuda.pinned((max(1, count),), dtype)
            device = cuda.device_alloc(host.nbytes)
            self.by_name[name] = _Buffer(host, device)
            addresses[name] = int(device)
        io.bind(addresses)
        self.set_shape(tuple(shape))

    @property
    def input_device(self) -> int:
        """The device address of the input buffer (GPU preprocessing writes there)."""
        return int(self.by_name[self.input.name].device)

    def set_shape(self, shape: Tuple[int, ...]) -> None:
        """Make `shape` the input shape (for a dynamic batch) and read the output shapes."""
        io, inp = self.io, self.input
        if self._shapes.get(inp.name) == shape:
            return
        if inp.dynamic:
            if shape[0] > self.capacity or shape[0] < 1:
                raise BackendError("model {}: batch {} is outside the engine's range 1..{} "
                                   "(backend.max_batch)".format(self.ref, shape[0],
                                                               self.capacity))
            io.set_input_shape(inp.name, shape)
        elif shape != inp.shape:
            raise BackendError("model {}: input shape {} does not match the engine's fixed "
                               "shape {}".format(self.ref, shape, inp.shape))
        shapes = {inp.name: shape}
        for out in self.outputs:
            shapes[out.name] = io.context_shape(out.name)
        self._shapes = shapes

    def upload(self, tensor: np.ndarray) -> None:
        """Copy a float32 input tensor into the input buffer (asynchronously, on the stream)."""
        self.set_shape(tuple(int(d) for d in tensor.shape))
        buf = self.by_name[self.input.name]
        host = buf.host[:tensor.size]
        np.copyto(host.reshape(tensor.shape), tensor)
        self.cuda.htod_async(buf.device, host)

    def execute_and_fetch(self) -> Dict[str, np.ndarray]:
        """Run the engine on the input buffer; the outputs, copied out for the caller."""
        cuda = self.cuda
        self.io.execute(cuda.stream.handle)
        views = {}
        for out in self.outputs:
            shape = self._shapes[out.name]
            buf = self.by_name[out.name]
            view = buf.host[:int(np.prod(shape))]
            cuda.dtoh_async(view, buf.device)
            views[out.name] = view.reshape(shape)
        cuda.synchronize()
        return {name: view.copy() for name, view in views.items()}
