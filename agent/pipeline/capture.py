"""The capture stage: read frames from the source, preprocess them, hand them to inference.

One thread. It opens the source (retrying with backoff while it fails, reporting the
`source` problem), reads frames at the source's pace, and preprocesses each one with the
preprocessor of the model serving at that moment, so preprocessing overlaps inference. The
inference stage redoes it only when a swap came in between. It puts a `Captured` in the
FrameSlot and never touches it again.
"""

import logging
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from ..config import Config
from ..errors import SourceError
from ..preprocess import Preprocessor
from ..sources import Pacer, Source, source_from_config
from .frames import Frame, FrameSlot
from ..telemetry import StageStats

log = logging.getLogger("edge-agent")


class Captured(object):
    """A frame on its way to inference: the frame and the input tensor made from it by `prep`
    (None when the backend takes frames itself)."""

    __slots__ = ("frame", "tensor", "prep", "preprocess_ms")

    def __init__(self, frame: Frame, tensor: Optional[np.ndarray] = None,
                 prep: Optional[Preprocessor] = None, preprocess_ms: float = 0.0) -> None:
        self.frame = frame
        self.tensor = tensor
        self.prep = prep
        self.preprocess_ms = preprocess_ms


def probe_live(config: Config) -> bool:
    """Whether the configured source is live (the slot then keeps only the newest frame)."""
    try:
        return source_from_config(config.source, config.base_dir).live
    except SourceError:
        return True


class CaptureStage(object):
    """The capture thread (`run`). `preprocessor()` is the serving model's, or None."""

    def __init__(self, config: Config, slot: FrameSlot,
                 preprocessor: Callable[[], Optional[Preprocessor]], stats: StageStats,
                 stop: threading.Event, problem: Callable[[str, Optional[str]], None],
                 frame_pool: Callable[[], Any] = lambda: None) -> None:
        self.config = config
        # The serving backend's pinned buffers (GPU preprocessing): frames are copied into
        # one here, in this thread, so the inference thread uploads them without a copy.
        self.frame_pool = frame_pool
        self.slot = slot
        self.preprocessor = preprocessor
        self.stats = stats
        self.stop = stop
        self.problem = problem
        self.seq = 0  # across reconnects: gaps in frame_seq are lost frames
        self.last_image = None  # type: Any  # the newest frame, for a new model's check

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                source = source_from_config(self.config.source, self.config.base_dir)
                source.open()
            except SourceError as exc:
                self.problem("source", str(exc))
                log.error("%s (retrying in %.0f s)", exc, backoff)
                if self.stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 30.0)
                continue
            self.problem("source", None)
            first = self.seq
            try:
                ended = self._read(source)
            except SourceError as exc:
                self.problem("source", str(exc))
                ended = False
                # A source that opens but fails at once must not be reopened in a tight loop.
                backoff = 1.0 if self.seq - first >= 30 else min(backoff * 2, 30.0)
                log.error("%s (reconnecting in %.0f s)", exc, backoff)
                if self.stop.wait(backoff):
                    break  # `finally` closes the source
            finally:
                source.close()
            if ended:
                break
        if self.stop.is_set():
            self.last_image = None  # a pinned pool buffer must not outlive the backend's close
        self.slot.end()

    def _read(self, source: Source) -> bool:
        """Read frames until stopped (False) or the stream ends (True)."""
        pacer = Pacer(source.fps if source.paced else 0.0, self.stop)
        while not self.stop.is_set():
            if not pacer.wait():
                return False
            t0 = time.monotonic()
            image = source.read()
            if image is None:
                log.info("source %s: end of stream", source.describe())
                return True
            image = self._pinned(image)
            t1 = time.monotonic()
            self.seq += 1
            frame = Frame(image, self.seq, time.time(), t1, source.last_name)
            frame.capture_ms = (t1 - t0) * 1000.0
            self.last_image = image
            item = Captured(frame)
            prep = self.preprocessor()
            if prep is not None:
                try:
                    item.tensor = prep(image)
                except ValueError as exc:
                    self.stats.record_error()
                    log.warning("source %s: dropping a bad frame: %s", source.describe(), exc)
                    continue
                item.prep = prep
                item.preprocess_ms = (time.monotonic() - t1) * 1000.0
            self.slot.put(item, self.stop)
        return False

    def _pinned(self, image: Any) -> Any:
        """`image` copied into a free buffer of the backend's pinned pool, where there is one
        (else `image` itself)."""
        pool = self.frame_pool()
        if pool is None or getattr(image, "dtype", None) != np.uint8:
            return image
        buf = pool.acquire(image.shape)
        if buf is None:
            return image
        np.copyto(buf, image)
        return buf
