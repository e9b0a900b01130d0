"""Frame sources by URI, and the slot that hands frames from the capture thread to inference.

URIs: `file://PATH` (an image, a directory of images, or a video file) and `synthetic://`
(generated frames; `synthetic://?fps=0` runs unpaced). Live sources (cameras, paced synthetic)
hand over only the latest frame; file sources can run every frame.
"""

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .errors import SourceError
from .redact import redact_text

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FLIP_CODES = {"none": None, "rotate-180": -1, "horizontal": 1, "vertical": 0}


class Frame(object):
    """One captured frame and what the pipeline learns about it on its way."""

    __slots__ = ("image", "seq", "ts", "t_capture", "name", "tensor", "prep", "capture_ms",
                 "preprocess_ms")

    def __init__(self, image: np.ndarray, seq: int, ts: float, t_capture: float,
                 name: Optional[str] = None) -> None:
        self.image = image
        self.seq = seq
        self.ts = ts                  # wall clock at capture (for messages)
        self.t_capture = t_capture    # monotonic at capture (for latency)
        self.name = name
        self.tensor = None            # type: Optional[np.ndarray]
        self.prep = None              # type: Any  # the Preprocessor that made `tensor`
        self.capture_ms = 0.0
        self.preprocess_ms = 0.0


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


class FileSource(Source):
    """An image, a directory of images (sorted by name) or a video file.

    Decoded images are kept in memory while they fit in `cache_mb`, so looping over a folder of
    photos costs no JPEG decoding after the first pass.
    """

    scheme = "file"

    def __init__(self, uri: str, path: str, cache_mb: int = 256, **kw: Any) -> None:
        Source.__init__(self, uri, **kw)
        self.path = path
        self.cache_mb = cache_mb
        self._files = []  # type: List[str]
        self._index = 0
        self._cache = {}  # type: Dict[str, np.ndarray]
        self._cache_bytes = 0
        self._video = None  # type: Any
        self.bad_frames = 0

    def open(self) -> None:
        try:
            import cv2
        except Exception as exc:  # ImportError, or a cv2 built for another numpy
            raise SourceError("source {}: OpenCV is not importable ({}: {}); on a Jetson use "
                              "JetPack's OpenCV, elsewhere pip install opencv-python-headless"
                              .format(self.uri, type(exc).__name__, exc))
        path = self.path
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                raise SourceError("source {}: cannot list directory {}: {}".format(
                    self.uri, path, exc))
            self._files = [os.path.join(path, n) for n in names
                           if n.lower().endswith(IMAGE_EXTENSIONS)]
            if not self._files:
                raise SourceError("source {}: directory {} holds no images ({})".format(
                    self.uri, path, ", ".join(IMAGE_EXTENSIONS)))
        elif os.path.isfile(path):
            if path.lower().endswith(IMAGE_EXTENSIONS):
                self._files = [path]
            else:
                cap = cv2.VideoCapture(path)
                if not cap.isOpened():
                    cap.release()
                    raise SourceError("source {}: cannot open {} as a video or image (is it a "
                                      "format this OpenCV build decodes?)".format(self.uri, path))
                self._video = cap
        else:
            raise SourceError("source {}: {} does not exist; set source.uri to an image, a "
                              "directory of images or a video (relative paths are relative to "
                              "the config file)".format(self.uri, path))
        self._index = 0

    def read(self) -> Optional[np.ndarray]:
        if self._video is not None:
            return self._read_video()
        while self._files:
            if self._index >= len(self._files):
                if not self.loop:
                    return None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            image = self._cache.get(path)
            if image is None:
                image = self._decode(path)
                if image is None:
                    # Not an image: leave it out of later passes.
                    self._index -= 1
                    del self._files[self._index]
                    if not self._files:
                        raise SourceError("source {}: none of the images could be decoded"
                                          .format(self.uri))
                    continue
            self.last_name = os.path.basename(path)
            return self._flip(image)
        return None

    def _decode(self, path: str) -> Optional[np.ndarray]:
        import cv2
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            self.bad_frames += 1
            log.warning("source %s: skipping %s: not a decodable image", self.uri, path)
            return None
        if self._cache_bytes + image.nbytes <= self.cache_mb * 1024 * 1024:
            self._cache[path] = image
            self._cache_bytes += image.nbytes
        return image

    def _read_video(self) -> Optional[np.ndarray]:
        ok, image = self._video.read()
        if not ok:
            if not self.loop:
                return None
            self._video.set(1, 0)  # CAP_PROP_POS_FRAMES
            ok, image = self._video.read()
            if not ok:
                return None
        self.last_name = os.path.basename(self.path)
        return self._flip(image)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


class SyntheticSource(Source):
    """Generated frames (moving gradient with noise) at width x height; live when paced."""

    scheme = "synthetic"

    def __init__(self, uri: str, pattern: str = "noise", **kw: Any) -> None:
        Source.__init__(self, uri, **kw)
        self.pattern = pattern
        self.live = self.fps > 0
        self._frames = []  # type: List[np.ndarray]
        self._index = 0

    def open(self) -> None:
        rng = np.random.RandomState(1234)
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(8):
            base = ((xx + 40 * i) % 256).astype(np.uint8)
            frame = np.empty((h, w, 3), dtype=np.uint8)
            frame[..., 0] = base
            frame[..., 1] = ((yy + 25 * i) % 256).astype(np.uint8)
            frame[..., 2] = rng.randint(0, 256, size=(h, w), dtype=np.uint8) \
                if self.pattern == "noise" else 128
            self._frames.append(frame)

    def read(self) -> Optional[np.ndarray]:
        frame = self._frames[self._index % len(self._frames)]
        self._index += 1
        self.last_name = "synthetic-{}".format(self._index % len(self._frames))
        return self._flip(frame)


SourceFactory = Callable[..., Source]
_SCHEMES = {}  # type: Dict[str, SourceFactory]


def register_scheme(scheme: str, factory: SourceFactory) -> None:
    """Camera modules register csi/v4l2/rtsp here; the factory takes (uri, parts, base_dir, **kw)."""
    _SCHEMES[scheme] = factory


def _file_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    path = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
    if not path:
        raise SourceError("source {}: no path after file://".format(uri))
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir, path))
    return FileSource(uri, path, **kw)


def _synthetic_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    query = parse_qs(parts.query)
    try:
        for key in ("width", "height"):
            if key in query:
                kw[key] = int(query[key][0])
        if "fps" in query:
            kw["fps"] = float(query["fps"][0])
    except ValueError:
        raise SourceError("source {}: width, height and fps must be numbers".format(uri))
    pattern = query.get("pattern", ["noise"])[0]
    if pattern not in ("noise", "gradient"):
        raise SourceError("source {}: pattern {!r} is not one of noise, gradient".format(
            uri, pattern))
    return SyntheticSource(uri, pattern=pattern, **kw)


register_scheme("file", _file_factory)
register_scheme("synthetic", _synthetic_factory)


def make_source(uri: str, base_dir: str = ".", width: int = 1280, height: int = 720,
                fps: float = 30.0, loop: bool = True, flip: str = "none") -> Source:
    """The source for `uri` (not yet opened). Errors never show the URI's credentials."""
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if not scheme:
            # A bare path is a file source: friendlier than refusing it.
            parts = urlsplit("file://" + uri)
            scheme = "file"
    except ValueError as exc:  # e.g. an unescaped '[' in a camera password
        raise SourceError("source {}: not a valid URI ({}); percent-encode special characters "
                          "in the user name and password (e.g. '[' as %5B)".format(
                              redact_text(uri), redact_text(str(exc))))
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise SourceError("source {}: unknown scheme {!r}; use one of {}".format(
            redact_text(uri), scheme, ", ".join(s + "://" for s in sorted(_SCHEMES))))
    try:
        return factory(uri, parts, base_dir, width=width, height=height, fps=fps, loop=loop,
                       flip=flip)
    except SourceError as exc:
        raise SourceError(redact_text(str(exc)))
    except ValueError as exc:  # urllib on a bad port or host, deep in a factory
        raise SourceError("source {}: not a valid URI ({})".format(
            redact_text(uri), redact_text(str(exc))))


def source_from_config(section: Any, base_dir: str, **changes: Any) -> Source:
    """The source the config's `source` section describes (not yet opened); `changes`
    override its keys (uri, fps, loop, ...)."""
    keys = {"uri": section.uri, "width": section.width, "height": section.height,
            "fps": section.fps, "loop": section.loop, "flip": section.flip}
    keys.update(changes)
    uri = keys.pop("uri")
    return make_source(uri, base_dir, **keys)


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


from . import cameras  # noqa: E402,F401  (registers csi://, v4l2://, rtsp://, gst://)
