"""TEST DOUBLE for pycuda (no GPU here): contexts, pinned/device memory, streams, copies.

Follows docs/PLATFORM.md section 3 and pycuda's own behaviour (src/wrapper/wrap_cudadrv.cpp):
`Device(n).retain_primary_context()`, `ctx.push()`, the static `Context.pop()` popping the
calling thread's current context, `Context.get_current()` returning None when none is current,
`pagelocked_empty` arrays whose `.base` has `free()`, `mem_alloc` buffers with `int()` and
`free()`, `memcpy_htod_async/dtoh_async(dst, src, stream)`, `Stream().handle/synchronize()`.
CUDA's rule that a context is current per THREAD is enforced: any memory operation without a
current context raises LogicError("... invalid device context") as the real driver would.
`init()` must come first: before it every driver call raises LogicError("<cuCall> failed:
initialization error"), the text pycuda builds from CUDA_ERROR_NOT_INITIALIZED (pycuda
src/cpp/cuda.hpp `error::make_message` + cuGetErrorString; wrap_cudadrv.cpp maps that code to
LogicError). cuInit is per process, so init() once is enough for every thread.

Streams are asynchronous as on a GPU: `memcpy_htod_async`, `memcpy_dtoh_async`, kernel launches
and TensorRT executions (through `enqueue`) are queued and run only when the host waits:
`stream.synchronize()` (that stream's queue, with default-stream work queued before it),
`Context.synchronize()` or a synchronous copy (everything queued: the legacy default stream
waits for blocking streams). Until then an output host buffer keeps what it held before; new
pinned and device memory is filled with 0xFF bytes (NaN as float32) because real allocations
are uninitialised. So code that reads results without synchronising gets garbage here too.
Device memory is host bytes addressed by fake pointers, so a TensorRT double can read and
write it. Counters let tests check push/pop balance and frees-while-current.

`pycuda.compiler.SourceModule` cannot compile CUDA C here: it raises CompileError unless a test
registered a Python stand-in for the kernel in `KERNELS` (name -> callable(args, block, grid)).
"""

import itertools
import sys
import threading
import warnings
import types
from typing import Any, Callable, Dict, List, Optional

import numpy as np


class Error(Exception):
    pass


class LogicError(Error):
    pass


class CompileError(Error):
    pass


class Stats(object):
    """What the double observed; reset by install()."""

    def __init__(self) -> None:
        self.init_calls = 0
        self.retains = 0
        self.pushes = 0
        self.pops = 0
        self.detaches = 0
        self.allocs = 0
        self.frees = 0
        self.frees_without_context = 0
        self.host_allocs = 0
        self.host_frees = 0
        # pycuda's rules for page-locked memory not freed by its owner (see HostAllocation):
        self.host_leaks_out_of_thread = 0   # warned "... could not be cleaned up", kept
        self.host_leaks_dead_context = 0    # silently skipped: the wrapper was detached
        self.copies = 0
        self.launches = 0
        self.push_threads = []  # type: List[int]


STATS = Stats()
KERNELS = {}  # type: Dict[str, Callable[..., None]]
DEVICES = [{"name": "NVIDIA Tegra X1", "cc": (5, 3), "memory": 4 << 30}]

_local = threading.local()
_memory = {}  # type: Dict[int, bytearray]
_lock = threading.RLock()
_next_ptr = itertools.count(0x7F0000000000, 1 << 20)
_state = {"initialized": False}
# Work queued on streams and not yet run: (stream handle, callable), in submission order.
_pending = []  # type: List[Any]
GARBAGE = 0xFF  # uninitialised memory: 0xFFFFFFFF is a NaN as float32


def _require_init(what: str) -> None:
    if not _state["initialized"]:
        raise LogicError("{} failed: initialization error".format(what))


def _stack() -> List["Context"]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _require_context(what: str) -> "Context":
    _require_init(what)
    stack = _stack()
    if not stack:
        raise LogicError("{} failed: invalid device context".format(what))
    return stack[-1]


def init(flags: int = 0) -> None:
    STATS.init_calls += 1
    _state["initialized"] = True


def runtime_api_init() -> None:
    """What the CUDA runtime does on its first call (TensorRT uses it): cuInit, uncounted."""
    _state["initialized"] = True


class Device(object):
    def __init__(self, number: int) -> None:
        _require_init("cuDeviceGet")
        if number >= len(DEVICES):
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.number = number

    @staticmethod
    def count() -> int:
        _require_init("cuDeviceGetCount")
        return len(DEVICES)

    def name(self) -> str:
        _require_init("cuDeviceGetName")
        return DEVICES[self.number]["name"]

    def compute_capability(self):
        _require_init("cuDeviceComputeCapability")
        return DEVICES[self.number]["cc"]

    def total_memory(self) -> int:
        _require_init("cuDeviceTotalMem")
        return DEVICES[self.number]["memory"]

    def retain_primary_context(self) -> "Context":
        _require_init("cuDevicePrimaryCtxRetain")
        STATS.retains += 1
        return Context(self)


class Context(object):
    """A pycuda context wrapper: like pycuda's, it remembers the thread that made it (the
    only thread that may activate it for a clean-up) and is dead after detach()."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.detached = False
        self.thread = threading.get_ident()

    def push(self) -> None:
        if self.detached:
            raise LogicError("cuCtxPushCurrent failed: context was detached")
        STATS.pushes += 1
        STATS.push_threads.append(threading.get_ident())
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: invalid device context")
        STATS.pops += 1
        stack.pop()

    def detach(self) -> None:
        STATS.detaches += 1
        self.detached = True

    @staticmethod
    def get_current() -> Optional["Context"]:
        stack = _stack()
        return stack[-1] if stack else None

    @staticmethod
    def synchronize() -> None:
        _require_context("cuCtxSynchronize")
        _run_pending(None)


class DeviceAllocation(object):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        with _lock:
            self.ptr = next(_next_ptr)
            _memory[self.ptr] = bytearray([GARBAGE]) * nbytes
        self.freed = False

    def __int__(self) -> int:
        return self.ptr

    __index__ = __int__

    def free(self) -> None:
        if self.freed:
            return
        if Context.get_current() is None:
            STATS.frees_without_context += 1
        _run_pending(None)  # cuMemFree waits for queued work, as cudaFree does
        STATS.frees += 1
        with _lock:
            _memory.pop(self.ptr, None)
        self.freed = True


def mem_alloc(nbytes: int) -> DeviceAllocation:
    _require_context("cuMemAlloc")
    STATS.allocs += 1
    return DeviceAllocation(int(nbytes))


class HostAllocation(object):
    """The `.base` of a pagelocked array (pycuda: pagelocked_host_allocation).

    Freed by free() or when the last reference goes (pycuda's destructor), under pycuda's
    rules (src/cpp/cuda.hpp, scoped_context_activation and CUDAPP_CATCH_CLEANUP_ON_DEAD_CONTEXT):
    the memory belongs to the context current at allocation (its "ward"). If the ward is
    current in the freeing thread, or the freeing thread is the one that made the ward, the
    memory is freed. From any other thread pycuda warns "pagelocked_host_allocation in
    out-of-thread context could not be cleaned up" and the memory stays allocated; after the
    ward was detached it is skipped silently (and, the primary context being retained by
    others, stays allocated too). free() a second time raises, as pycuda does.
    """

    def __init__(self, nbytes: int, ward: "Context") -> None:
        self.buffer = bytearray([GARBAGE]) * max(1, nbytes)
        self.ward = ward
        self.stats = STATS  # the counters of the test that allocated it, even if it dies later
        self.freed = False

    def free(self) -> None:
        if self.freed:
            raise LogicError("pagelocked_host_allocation::free failed: invalid resource handle")
        self._release()

    def _release(self) -> None:
        self.freed = True
        if self.ward.detached:
            self.stats.host_leaks_dead_context += 1
            return
        if Context.get_current() is not self.ward and threading.get_ident() != self.ward.thread:
            self.stats.host_leaks_out_of_thread += 1
            warnings.warn("pagelocked_host_allocation in out-of-thread context could not be "
                          "cleaned up", UserWarning)
            return
        if Context.get_current() is None:
            self.stats.frees_without_context += 1
        _run_pending(None)  # cuMemFreeHost waits for queued work
        self.stats.host_frees += 1

    def __del__(self) -> None:
        if not self.freed:
            self._release()


def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    ward = _require_context("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape)) if shape else 1
    alloc = HostAllocation(count * dtype.itemsize, ward)
    STATS.host_allocs += 1
    array = np.frombuffer(alloc.buffer, dtype=dtype, count=count).reshape(shape)
    return _with_base(array, alloc)


class _PinnedArray(np.ndarray):
    """ndarray whose `.base` reports the HostAllocation (numpy's base is read-only)."""

    _alloc = None  # type: Any

    @property
    def base(self) -> Any:  # type: ignore[override]
        alloc = getattr(self, "_alloc", None)
        return alloc if alloc is not None else np.ndarray.base.__get__(self)

    def __array_finalize__(self, obj: Any) -> None:
        # Views of a pinned array are still pinned memory but do not own it.
        self._alloc = None


def _with_base(array: np.ndarray, alloc: HostAllocation) -> np.ndarray:
    pinned = array.view(_PinnedArray)
    pinned._alloc = alloc
    return pinned


class Stream(object):
    def __init__(self, flags: int = 0) -> None:
        _require_context("cuStreamCreate")
        self.handle = next(_next_ptr)

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        _run_pending(self.handle)

    def is_done(self) -> bool:
        _require_context("cuStreamQuery")
        with _lock:
            return not any(h == self.handle for h, _ in _pending)


def _handle(stream: Any) -> int:
    if stream is None:
        return 0
    return int(getattr(stream, "handle", stream))


def enqueue(stream: Any, work: Callable[[], None]) -> None:
    """Queue `work` on `stream` (a Stream, a handle, or None/0 for the default stream).

    It runs when the host synchronises (see the module docstring); the TensorRT double uses
    this for execute_async_v2/v3.
    """
    with _lock:
        _pending.append((_handle(stream), work))


def pending_operations() -> int:
    with _lock:
        return len(_pending)


def _run_pending(handle: Optional[int]) -> None:
    """Run queued work: all of it (handle None), or stream `handle`'s items together with the
    default-stream (0) items queued before its last one (streams are independent otherwise).

    The work runs outside the lock, so threads with their own streams do not wait for each
    other (the agent's model manager validates while the inference thread serves).
    """
    with _lock:
        if handle is None:
            todo = list(_pending)
            del _pending[:]
        else:
            last = max([i for i, (h, _) in enumerate(_pending) if h == handle] or [-1])
            todo = [item for i, item in enumerate(_pending)
                    if i <= last and item[0] in (handle, 0)]
            _pending[:] = [item for i, item in enumerate(_pending)
                           if not (i <= last and item[0] in (handle, 0))]
    for _, work in todo:
        work()


def _find(ptr: int, nbytes: int) -> memoryview:
    with _lock:
        for base, data in _memory.items():
            if base <= ptr and ptr + nbytes <= base + len(data):
                return memoryview(data)[ptr - base:ptr - base + nbytes]
    raise LogicError("invalid device pointer 0x{:x} (+{} bytes)".format(ptr, nbytes))


def device_read(ptr: int, nbytes: int) -> bytes:
    """Bytes at a device address (for the TensorRT double)."""
    return bytes(_find(int(ptr), int(nbytes)))


def device_write(ptr: int, data: bytes) -> None:
    view = memoryview(data).cast("B")
    _find(int(ptr), len(view))[:] = view


def _host_bytes(array: Any) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


def memcpy_htod_async(dest: Any, src: Any, stream: Any = None) -> None:
    """Queued: the host memory is read when the copy runs, not now (as with pinned memory)."""
    _require_context("cuMemcpyHtoDAsync")
    STATS.copies += 1
    address = int(dest)
    _find(address, np.asarray(src).nbytes)  # a bad pointer fails at the call, as in CUDA

    def copy() -> None:
        device_write(address, _host_bytes(src))

    enqueue(stream, copy)


def memcpy_htod(dest: Any, src: Any) -> None:
    _require_context("cuMemcpyHtoD")
    _run_pending(None)
    STATS.copies += 1
    device_write(int(dest), _host_bytes(src))


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
    """Queued: `dest` keeps its old contents until the stream is synchronised."""
    _require_context("cuMemcpyDtoHAsync")
    STATS.copies += 1
    address = int(src)
    _find(address, dest.nbytes)

    def copy() -> None:
        raw = device_read(address, dest.nbytes)
        dest[...] = np.frombuffer(raw, dtype=dest.dtype).reshape(dest.shape)

    enqueue(stream, copy)


def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
    _require_context("cuMemcpyDtoH")
    _run_pending(None)
    STATS.copies += 1
    raw = device_read(int(src), dest.nbytes)
    dest[...] = np.frombuffer(raw, dtype=dest.dtype).reshape(dest.shape)


class Function(object):
    def __init__(self, name: str) -> None:
        self.name = name
        self.arg_types = None  # type: Optional[str]

    def prepare(self, arg_types: str) -> "Function":
        self.arg_types = arg_types
        return self

    def prepared_async_call(self, grid: Any, block: Any, stream: Any, *args: Any) -> None:
        _require_context("cuLaunchKernel")
        if self.arg_types is None or len(self.arg_types) != len(args):
            raise LogicError("prepared_async_call: {} args for signature {!r}".format(
                len(args), self.arg_types))
        STATS.launches += 1
        kernel = KERNELS[self.name]
        enqueue(stream, lambda: kernel(args, block, grid))


class SourceModule(object):
    def __init__(self, source: str, options: Any = None, no_extern_c: bool = False,
                 **kwargs: Any) -> None:
        _require_context("cuModuleLoadData")
        self.names = [n for n in KERNELS if n in source]
        if not self.names:
            raise CompileError("nvcc compilation failed: this is the pycuda test double and no "
                               "kernel stand-in is registered")

    def get_function(self, name: str) -> Function:
        if name not in self.names:
            raise LogicError("cuModuleGetFunction failed: named symbol not found")
        return Function(name)


def install(devices: Optional[List[Dict[str, Any]]] = None) -> types.ModuleType:
    """Put this double in sys.modules as `pycuda`, `pycuda.driver`, `pycuda.compiler`."""
    global STATS
    STATS = Stats()
    KERNELS.clear()
    _memory.clear()
    del _pending[:]
    _state["initialized"] = False
    _local.__dict__.clear()
    DEVICES[:] = devices or [{"name": "NVIDIA Tegra X1", "cc": (5, 3), "memory": 4 << 30}]
    this = sys.modules[__name__]
    package = types.ModuleType("pycuda")
    package.__path__ = []  # type: ignore[attr-defined]
    package.VERSION_TEXT = "double"  # type: ignore[attr-defined]
    compiler = types.ModuleType("pycuda.compiler")
    compiler.SourceModule = SourceModule  # type: ignore[attr-defined]
    package.driver = this  # type: ignore[attr-defined]
    package.compiler = compiler  # type: ignore[attr-defined]
    sys.modules["pycuda"] = package
    sys.modules["pycuda.driver"] = this
    sys.modules["pycuda.compiler"] = compiler
    sys.modules.pop("pycuda.autoinit", None)
    return this


def stats() -> Stats:
    return STATS


def live_device_buffers() -> int:
    return len(_memory)
