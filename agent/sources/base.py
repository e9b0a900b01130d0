"""Source, the interface every frame source implements, and what all sources share: the Pacer
that keeps a source which does not block on its own at its frame rate, and the size and rate
options of source URIs."""

import threading
import time
from typing import Any, Dict, Optional

import numpy as np

from ..errors import SourceError

FLIP_CODES = {"none": None, "rotate-180": -1, "horizontal": 1, "vertical": 0}


class Source(object):
    """A frame source. read() returns a BGR uint8 image, or None at the end of the stream."""

    live = False
    paced = True      # False for sources whose read() blocks until the next frame (cameras)
    scheme = ""

    def __init__(self, uri: str, width: int = 1280, height: int = 720, fps: float = 30.0,
                 loop: bool = True, flip: str = "none") -> None:
        self.uri = uri
        self.width = width
        self.height = height
        self.fps = fps
        self.loop = loop
        self.flip = flip
        self.last_name = None  # type: Optional[str]

    def open(self) -> None:
        pass

    def read(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.uri

    def _flip(self, image: np.ndarray) -> np.ndarray:
        code = FLIP_CODES.get(self.flip)
        if code is None:
            return image
        import cv2
        return cv2.flip(image, code)


class Pacer(object):
    """Keeps a source at `fps` without accumulating backlog; waits on the stop Event."""

    def __init__(self, fps: float, stop: Optional[threading.Event] = None) -> None:
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.stop = stop or threading.Event()
        self._next = None  # type: Optional[float]

    def wait(self) -> bool:
        """Block until the next frame is due; False when stopped."""
        if self.period <= 0:
            return not self.stop.is_set()
        now = time.monotonic()
        if self._next is None or now - self._next > self.period:
            self._next = now  # first frame, or we fell behind: do not burst to catch up
        delay = self._next - now
        if delay > 0 and self.stop.wait(delay):
            return False
        self._next += self.period
        return not self.stop.is_set()


def take_size_and_rate(uri: str, options: Dict[str, str], kw: Dict[str, Any]) -> None:
    """Move width, height and fps from a URI's options into a source's keyword arguments."""
    try:
        for key in ("width", "height"):
            if key in options:
                kw[key] = int(options[key])
        if "fps" in options:
            kw["fps"] = float(options["fps"])
    except ValueError:
        raise SourceError("source {}: width, height and fps must be numbers".format(uri))
