"""pycuda glue: one CUDA context owned by the thread that opened it, and what it allocated.

pycuda's `autoinit` makes a context current only in the importing thread, so a daemon whose
inference runs elsewhere gets "invalid device context" (NVIDIA/TensorRT#475). `CudaContext`
instead retains the device's primary context (the one TensorRT's runtime API uses too), pushes
it in the calling thread, and on close frees everything registered with it while it is still
current, then pops it exactly once and detaches. Nothing is freed in `__del__`.
"""

import sys
import threading
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from ...errors import BackendError


def pycuda_install_hint() -> str:
    """How to get pycuda for the running Python (pycuda 2022.2+ needs Python 3.8)."""
    pin = "'pycuda<=2022.1'" if sys.version_info < (3, 8) else "pycuda"
    return ("pip install {} (it builds from source: needs nvcc on PATH or CUDA_INC_DIR, e.g. "
            "PATH=/usr/local/cuda/bin:$PATH)".format(pin))


def import_pycuda_driver() -> Any:
    """`pycuda.driver`, imported on first use; never `pycuda.autoinit`."""
    try:
        import pycuda.driver as driver
    except Exception as exc:  # ImportError, or a broken build (missing libcuda symbol...)
        raise BackendError("pycuda is not installed ({}): {}".format(exc, pycuda_install_hint()))
    return driver


def import_source_module() -> Any:
    """`pycuda.compiler.SourceModule` (compiles CUDA C with nvcc at run time)."""
    import_pycuda_driver()
    try:
        from pycuda.compiler import SourceModule
    except Exception as exc:  # ImportError, or a broken install
        raise BackendError("pycuda.compiler is unavailable ({}): {}".format(
            exc, pycuda_install_hint()))
    return SourceModule


class CudaContext(object):
    """The device's primary context, made current in the thread that calls open().

    Every allocation made through this object is registered and freed by close(), while the
    context is current. Use it as `with CudaContext(0) as cuda: ...` or open()/close().

    Handing over to another thread: the owner calls release_thread() (one pop there); the next
    thread that uses the context adopts it (one push there). Using it from a second thread
    while another owns it is refused.
    """

    def __init__(self, device: int = 0, driver: Any = None) -> None:
        self.device_index = int(device)
        self._driver = driver
        self._ctx = None  # type: Any
        self._device = None  # type: Any
        self._thread = None  # type: Optional[int]  # the thread it is current in, if any
        self._pushed = False  # opened and not yet closed
        self._stream = None  # type: Any
        # LIFO list of (what, release callable); run while the context is current.
        self._owned = []  # type: List[Tuple[str, Callable[[], None]]]

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> "CudaContext":
        """cuda.init(), retain device N's primary context and push it in THIS thread."""
        if self._pushed:
            return self
        cuda = self._driver = self._driver or import_pycuda_driver()
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as exc:  # pycuda raises its own error types
            raise BackendError("CUDA is not usable: {}; check the NVIDIA driver (nvidia-smi, or "
                               "tegrastats on a Jetson) and that this user is in group "
                               "'video'".format(_first_line(exc)))
        if self.device_index >= count:
            raise BackendError("CUDA device {} does not exist: this machine has {} CUDA "
                               "device(s)".format(self.device_index, count))
        self._device = cuda.Device(self.device_index)
        self._ctx = self._device.retain_primary_context()
        try:
            self._ctx.push()
        except Exception as exc:
            self._ctx.detach()
            self._ctx = None
            raise BackendError("cannot make the CUDA context of device {} current: {}".format(
                self.device_index, _first_line(exc)))
        self._pushed = True
        self._thread = threading.get_ident()
        return self

    def close(self) -> None:
        """Free everything registered (while current), then pop once and detach."""
        if not self._pushed:
            return
        self.check_thread("close()")
        errors = []  # type: List[str]
        try:
            if self._stream is not None:
                try:
                    self._stream.synchronize()
                except Exception as exc:
                    errors.append("stream synchronize: {}".format(_first_line(exc)))
            while self._owned:
                what, release = self._owned.pop()
                try:
                    release()
                except Exception as exc:
                    errors.append("{}: {}".format(what, _first_line(exc)))
            self._stream = None
        finally:
            self._pushed = False
            try:
                self._ctx.pop()
            finally:
                self._ctx.detach()
                self._ctx = None
                self._thread = None
        if errors:
            raise BackendError("CUDA cleanup reported errors: {}".format("; ".join(errors)))

    def __enter__(self) -> "CudaContext":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def check_thread(self, what: str) -> None:
        """Refuse use from a thread other than the owner; adopt the context if it has none."""
        if not self._pushed:
            raise BackendError("CUDA context: {} after close() or before open()".format(what))
        if self._thread is None:
            self._ctx.push()  # released by its previous thread: current here from now on
            self._thread = threading.get_ident()
        elif threading.get_ident() != self._thread:
            raise BackendError("CUDA context: {} called from thread {} but the context is current "
                               "in thread {}; use the backend only from the thread that loaded "
                               "it, or call release_thread() there first".format(
                                   what, threading.get_ident(), self._thread))

    def release_thread(self) -> None:
        """Make the context not current in the owning thread (one pop) so another may adopt it."""
        self.check_thread("release_thread()")
        if self._stream is not None:
            self._stream.synchronize()
        self._ctx.pop()
        self._thread = None

    # -- ownership ---------------------------------------------------------------------------
    def own(self, what: str, release: Callable[[], None]) -> None:
        """Run `release` at close(), while the context is current (LIFO order)."""
        self._owned.append((what, release))

    @property
    def driver(self) -> Any:
        return self._driver

    # -- device facts --------------------------------------------------------------------------
    def device_name(self) -> str:
        self.check_thread("device_name()")
        return str(self._device.name())

    def compute_capability(self) -> Tuple[int, int]:
        self.check_thread("compute_capability()")
        major, minor = self._device.compute_capability()
        return int(major), int(minor)

    def total_memory(self) -> int:
        self.check_thread("total_memory()")
        return int(self._device.total_memory())

    # -- memory and stream ------------------------------------------------------------------------
    @property
    def stream(self) -> Any:
        """The one stream all copies and launches of this context go to."""
        self.check_thread("stream")
        if self._stream is None:
            self._stream = self._driver.Stream()
        return self._stream

    def pinned(self, shape: Any, dtype: Any, owned: bool = True) -> np.ndarray:
        """A page-locked host array (fast, async-capable copies), freed at close().

        owned=False: not freed at close() but when the array is garbage collected (pycuda
        frees page-locked memory with its last reference), for buffers that other threads
        may still hold after this context closes (the capture pool's frames after a swap).
        """
        self.check_thread("pinned()")
        array = self._driver.pagelocked_empty(shape, dtype)
        base = array.base
        if owned and base is not None and hasattr(base, "free"):
            self.own("pinned host buffer", base.free)
        return array

    def device_alloc(self, nbytes: int) -> Any:
        """A device buffer of `nbytes` (int(buffer) is its address), freed at close()."""
        self.check_thread("device_alloc()")
        buf = self._driver.mem_alloc(max(1, int(nbytes)))
        self.own("device buffer", buf.free)
        return buf

    def htod_async(self, device_buf: Any, host: np.ndarray) -> None:
        self.check_thread("htod_async()")
        self._driver.memcpy_htod_async(device_buf, host, self.stream)

    def dtoh_async(self, host: np.ndarray, device_buf: Any) -> None:
        self.check_thread("dtoh_async()")
        self._driver.memcpy_dtoh_async(host, device_buf, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def compile(self, source: str, options: Optional[List[str]] = None,
                nvcc: Optional[str] = None) -> Any:
        """Compile CUDA C with pycuda's SourceModule (with this nvcc if given; pycuda's
        default is "nvcc" on PATH); the module is dropped at close()."""
        self.check_thread("compile()")
        source_module = import_source_module()
        kwargs = {"nvcc": nvcc} if nvcc else {}
        try:
            module = source_module(source, options=options or [], no_extern_c=True, **kwargs)
        except Exception as exc:
            raise BackendError("compiling the CUDA preprocessing kernel with {} failed: {}; check "
                               "the CUDA toolkit (nvcc --version)".format(
                                   nvcc or "nvcc from PATH", _first_line(exc)))
        holder = [module]
        self.own("CUDA module", holder.clear)
        return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
