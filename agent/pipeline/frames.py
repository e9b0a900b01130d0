"""Frame and FrameSlot: one camera image as it goes through the pipeline threads, and the
hand-over from the capture thread to the inference thread.

A Frame is written once, by the capture thread that makes it, and only read afterwards. What
each later stage adds travels beside it in that stage's own object, written by one thread:
pipeline/capture.py's `Captured` (the tensor and the preprocessing that made it) goes through
the FrameSlot to the inference thread, pipeline/inference.py's `Inferred` (outputs, model,
timings) through a queue to the publish thread. The slot's lock and the queue are the
hand-overs, so no field needs a lock of its own.
"""

import threading
from collections import deque
from typing import Any, Deque, Optional

import numpy as np


class Frame(object):
    """One captured frame: written by the capture thread only, read-only once handed over."""

    __slots__ = ("image", "seq", "ts", "t_capture", "name", "capture_ms")

    def __init__(self, image: np.ndarray, seq: int, ts: float, t_capture: float,
                 name: Optional[str] = None) -> None:
        # Capture thread, at creation; read-only afterwards.
        self.image = image
        self.seq = seq
        self.ts = ts                  # wall clock at capture (for messages)
        self.t_capture = t_capture    # monotonic at capture (for latency)
        self.name = name
        self.capture_ms = 0.0         # set by the capture thread before the hand-over


class FrameSlot(object):
    """Hands frames (the capture thread's `Captured`: a Frame and its tensor) from the capture
    thread to the inference thread.

    live=True: the slot keeps only the newest frame (an unconsumed one is dropped and counted),
    so inference always works on the latest view. live=False: up to `depth` frames wait, in
    order, and put() waits while it is full, so every frame is processed. Capture then works
    `depth` frames ahead: at idle priority (agent/priority.py) it runs only in the gaps that
    inference leaves, and with one frame of slack the inference thread found the next frame
    not yet made ~1 ms of every ~8 ms frame on 2 cores.
    """

    def __init__(self, live: bool, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("FrameSlot depth must be at least 1, got {}".format(depth))
        self.live = live
        self.depth = 1 if live else depth
        self._cond = threading.Condition()
        self._frames = deque()  # type: Deque[Any]
        self._ended = False
        self._putters = 0  # put() calls waiting for room in the slot (non-live)
        self._woken = False  # wake() since the last get(): get() returns at once
        self.dropped = 0

    def put(self, frame: Any, stop: threading.Event) -> bool:
        with self._cond:
            if self.live:
                self.dropped += len(self._frames)
                self._frames.clear()
            else:
                while len(self._frames) >= self.depth and not stop.is_set():
                    self._putters += 1
                    try:
                        self._cond.wait(0.1)
                    finally:
                        self._putters -= 1
                if stop.is_set():
                    return False
            self._frames.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Any:
        """The next frame, or None after `timeout` or at the end of the stream."""
        with self._cond:
            if not self._frames and not self._ended and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
            frame = self._frames.popleft() if self._frames else None
            if frame is not None and self._putters:
                # Only a put() waiting for the slot needs waking (profiled: notifying every
                # frame cost ~1 % of the inference thread on 2 cores).
                self._cond.notify_all()
            return frame

    def wake(self) -> None:
        """End a get() waiting now, or the next one, without a frame (the inference thread's
        frames in flight call it as they finish)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def clear(self) -> int:
        """Drop the frames still waiting (at shutdown: they may hold pinned buffers); how
        many there were."""
        with self._cond:
            n = len(self._frames)
            self._frames.clear()
            self._cond.notify_all()
            return n

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and not self._frames
