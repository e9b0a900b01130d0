"""Page-locked frame buffers for the capture thread, allocated in the inference thread's context.

With GPU preprocessing every frame goes host -> device once. From ordinary (pageable) memory
the driver first copies it into a pinned staging buffer, in the inference thread, on the
critical path: on an H100 that copy (~0.3 ms for 1280x720) was most of the GPU path's time.
With this pool the capture thread copies (or decodes) each frame into a page-locked buffer
while the previous frame is on the GPU, and the inference thread uploads from it directly.

Threads: buffers are allocated only in the thread where the CUDA context is current (the
inference thread calls `serve()` before each frame; the capture thread only asks for a frame
size with `acquire()`). A buffer is handed out again only when nothing but the pool refers to
it (CPython reference counts, calibrated when it is allocated): a frame in the slot, in the
publish queue, in a listener or held as the newest image keeps its buffer, so no reader ever
sees it overwritten. When every buffer is in use, capture falls back to ordinary memory for
that frame (`misses`).

Freeing: pycuda frees page-locked memory only where its context is current or from the thread
that made the context's wrapper; anywhere else it warns ("... in out-of-thread context could
not be cleaned up") and the memory stays allocated, and after the context is detached it is
skipped silently. So no buffer is ever left to the garbage collector: sizes dropped from the
pool are freed by `serve()` (the context's thread) once no frame holds them, and at close the
context (CudaContext.close, context current) waits up to `release_wait_s` for the frames still
in flight, frees every buffer, and keeps the rare one still held after that alive until the
process exits (`parked`, logged) rather than leaking it to a thread that cannot free it.
"""

import logging

import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger("edge-agent")

# capture making one, two waiting in the slot (FrameSlot depth 2), one on the GPU, one being
# published
POOL_SIZE = 5
MAX_SHAPES = 8  # frame sizes kept at once (a folder of photos has several)
RELEASE_WAIT_S = 1.0  # at close, how long frames in flight may still hold a buffer
_PARKED = []  # type: List[Any]  # buffers still held after close: kept until the process exits

Shape = Tuple[int, int, int]


class _Buffer(object):
    __slots__ = ("array", "root", "array_refs", "root_refs")

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        # Views of the array may point at its memory's owner instead of the array itself
        # (numpy collapses view bases), so both are counted.
        self.root = array.base if array.base is not None else array
        self.array_refs = self.root_refs = 0

    def calibrate(self) -> None:
        """Count the references while only the pool holds the buffer (call once, with no
        local variable or argument referring to it)."""
        self.array_refs = sys.getrefcount(self.array)
        self.root_refs = sys.getrefcount(self.root)

    def free(self) -> bool:
        """True when nothing outside the pool refers to the buffer or its memory."""
        return (sys.getrefcount(self.array) <= self.array_refs and
                sys.getrefcount(self.root) <= self.root_refs)

    def release(self) -> None:
        """Free the page-locked memory now (the context must be current; nothing may hold it)."""
        root, self.array, self.root = self.root, None, None
        release = getattr(root, "free", None)
        if release is not None:
            release()


class PinnedFramePool(object):
    """Up to `size` page-locked uint8 HxWx3 buffers for each of the last `max_shapes` frame
    sizes (a camera has one; a folder of photos several).

    `cuda` is the backend's CudaContext (its `pinned(owned=False)` allocates: a buffer is
    freed when its last reference goes, so a frame still held after a model swap stays valid
    after the old backend's context closes). `acquire(shape)` (capture thread) gives a free
    buffer or None; `serve()` (the context's thread) allocates the sizes asked for;
    `owns(array)` tells the backend a frame is already pinned.
    """

    def __init__(self, cuda: Any, size: int = POOL_SIZE, max_shapes: int = MAX_SHAPES) -> None:
        self.cuda = cuda
        self.size = int(size)
        self.max_shapes = int(max_shapes)
        self._lock = threading.Lock()
        self._pools = OrderedDict()  # type: Dict[Shape, List[_Buffer]]
        self._wanted = []  # type: List[Shape]
        self._retired = []  # type: List[_Buffer]  # dropped sizes, freed when no frame holds them
        self.closed = False
        self.release_wait_s = RELEASE_WAIT_S
        self.parked = 0
        cuda.own("pinned frame pool", self.release_all)
        self.hits = 0
        self.misses = 0

    def acquire(self, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
        """A free pinned buffer of `shape` (HxWx3) to write a frame into, else None (and a new
        size is asked for: the inference thread allocates it before its next frame)."""
        key = tuple(int(s) for s in shape)
        with self._lock:
            if self.closed or len(key) != 3 or key[2] != 3:
                return None
            buffers = self._pools.get(key)
            if buffers is None:
                if key not in self._wanted:
                    self._wanted.append(key)
                self.misses += 1
                return None
            self._pools.move_to_end(key)
            for buf in buffers:
                if buf.free():
                    self.hits += 1
                    return buf.array
            self.misses += 1
            return None

    def serve(self) -> None:
        """In the context's thread: allocate the buffers of the frame sizes capture asked for;
        beyond `max_shapes` sizes the least recently used size is dropped from the pool
        (frames still holding its buffers keep them alive)."""
        with self._lock:
            if self._retired:
                self._retired = self._free_unheld(self._retired)
            if self.closed or not self._wanted:
                return
            wanted, self._wanted = self._wanted, []
        for key in wanted:
            with self._lock:
                if key in self._pools:
                    # Asked again while its buffers were being allocated: it has them already
                    # (replacing them would drop buffers frames may hold).
                    continue
            buffers = [_Buffer(self.cuda.pinned(key, np.uint8, owned=False))
                       for _ in range(self.size)]
            for buf in buffers:
                buf.calibrate()
            with self._lock:
                self._pools[key] = buffers
                while len(self._pools) > self.max_shapes:
                    self._retired.extend(self._pools.popitem(last=False)[1])

    def owns(self, array: Any) -> bool:
        """True when `array` is one of the pool's buffers (already page-locked)."""
        with self._lock:
            buffers = self._pools.get(tuple(getattr(array, "shape", ())), [])
            return any(buf.array is array for buf in buffers)

    def close(self) -> None:
        """No more buffers are handed out (the context's close frees them: `release_all`)."""
        with self._lock:
            self.closed = True
            self._wanted = []

    @staticmethod
    def _free_unheld(buffers: List[_Buffer]) -> List[_Buffer]:
        """Free the buffers no frame holds (context current); return the others."""
        held = []
        for buf in buffers:
            if buf.free():
                buf.release()
            else:
                held.append(buf)
        return held

    def release_all(self) -> None:
        """At the context's close, while it is current: wait up to `release_wait_s` for frames
        in flight (the slot, the publish queue, the newest image) to let go, free every
        buffer, and park the ones still held (kept alive: freeing them would pull memory from
        under a frame; leaving them to the garbage collector would leak them with a warning)."""
        self.close()
        with self._lock:
            buffers = [buf for pool in self._pools.values() for buf in pool] + self._retired
            self._pools.clear()
            self._retired = []
        waiter = threading.Event()
        deadline = time.monotonic() + self.release_wait_s
        while True:
            buffers = self._free_unheld(buffers)
            if not buffers or time.monotonic() >= deadline:
                break
            waiter.wait(0.01)  # frames are dropped by other threads; no event tells us when
        if buffers:
            _PARKED.extend(buf.root for buf in buffers)
            self.parked = len(buffers)
            log.info("pinned frame pool: %d pinned frame buffer(s) (%.1f MB) still held by "
                        "frames %.1f s after the model was closed; kept until the agent exits",
                        len(buffers), sum(b.array.nbytes for b in buffers) / 1e6,
                        self.release_wait_s)
