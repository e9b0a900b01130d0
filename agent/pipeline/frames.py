"""Frame and FrameSlot: what one camera image carries through the pipeline threads, and how
the capture thread hands it to the inference thread.

A frame has one owner at a time, and only its owner writes it:

  capture thread    makes the Frame and fills the capture and preprocess fields, then put()s
                    it into the FrameSlot and never touches it again;
  inference thread  owns it after FrameSlot.get(): may redo the preprocessing (a model swap
                    since capture) and drops `tensor`, then queues it for the publish thread;
  publish thread    owns it after the queue: only reads it (and hands it to listeners, which
                    must only read it too).

The slot's lock and the queue are the hand-overs, so no field needs a lock of its own.
"""

import threading
from typing import Any, Optional

import numpy as np


class Frame(object):
    """One captured frame and what the pipeline learns about it on its way (see the module
    doc for which thread writes which field)."""

    __slots__ = ("image", "seq", "ts", "t_capture", "name", "tensor", "prep", "capture_ms",
                 "preprocess_ms")

    def __init__(self, image: np.ndarray, seq: int, ts: float, t_capture: float,
                 name: Optional[str] = None) -> None:
        # Capture thread, at creation; read-only afterwards.
        self.image = image
        self.seq = seq
        self.ts = ts                  # wall clock at capture (for messages)
        self.t_capture = t_capture    # monotonic at capture (for latency)
        self.name = name
        self.capture_ms = 0.0
        # Capture thread (preprocessing ahead of inference); then the inference thread, which
        # may redo it (adding to preprocess_ms) and sets `tensor` to None once inferred.
        self.tensor = None            # type: Optional[np.ndarray]
        self.prep = None              # type: Any  # the Preprocessor that made `tensor`
        self.preprocess_ms = 0.0


class FrameSlot(object):
    """Hands frames from the capture thread to the inference thread.

    live=True: the slot keeps only the newest frame (an unconsumed one is dropped and counted),
    so inference always works on the latest view. live=False: put() waits until the previous
    frame was taken, so every frame is processed while capture works one frame ahead.
    """

    def __init__(self, live: bool) -> None:
        self.live = live
        self._cond = threading.Condition()
        self._frame = None  # type: Optional[Frame]
        self._ended = False
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        with self._cond:
            if self.live:
                if self._frame is not None:
                    self.dropped += 1
            else:
                while self._frame is not None and not stop.is_set():
                    self._cond.wait(0.1)
                if stop.is_set():
                    return False
            self._frame = frame
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Optional[Frame]:
        """The next frame, or None after `timeout` or at the end of the stream."""
        with self._cond:
            if self._frame is None and not self._ended:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._frame is None
