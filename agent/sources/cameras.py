"""Live cameras read through OpenCV by a reader thread (CameraSource), and USB cameras
(`v4l2:///dev/videoN`, V4l2Source); the GStreamer-only cameras are in gstreamer.py.

A reader thread per opened camera owns the `cv2.VideoCapture`: read() waits for its next frame
at most `stall_timeout_s` and open() for the pipeline at most `open_timeout_s`, so a camera that
hangs (OpenCV 4.1 on JetPack 4.6 has no read timeout) becomes a SourceError, which the agent
answers by reconnecting with backoff and reporting `degraded`, instead of a stuck agent.

USB cameras use GStreamer when cv2 has it and OpenCV's V4L2 backend otherwise. Options in the
URI (all optional): `v4l2:///dev/video0?format=mjpeg&width=1920&height=1080&fps=30&flip=
rotate-180` (or `v4l2://0`); without them, width/height/fps/flip come from `source.*`.
"""

import logging
import os
import re
import threading
import time
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qsl

import numpy as np

from ..errors import SourceError
from ..redact import redact_text
from .base import FLIP_CODES, Source, take_size_and_rate
from .pipelines import V4L2_FORMATS, launch_command, v4l2_pipeline
from .platform import JETPACK_CV2, gstreamer_in_build, video_devices

log = logging.getLogger(__name__)


class _Session(object):
    """One opened capture: what its reader thread hands to read(). A stuck reader left behind
    after close() keeps its own session and cannot disturb the next one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frame = None  # type: Optional[np.ndarray]
        self.frames = 0
        self.error = None  # type: Optional[str]
        self.opened = threading.Event()
        self.closing = threading.Event()
        self.thread = None  # type: Optional[threading.Thread]

    def fail(self, message: str) -> None:
        message = redact_text(message)  # it may quote OpenCV's error, pipeline and all
        with self.cond:
            if self.error is None:
                self.error = message
            self.cond.notify_all()
        self.opened.set()

    def deliver(self, image: np.ndarray) -> None:
        with self.cond:
            self.frame = image
            self.frames += 1
            self.cond.notify_all()


class CameraSource(Source):
    """A live camera read through cv2.VideoCapture by a reader thread (see the module doc)."""

    live = True
    paced = False      # read() blocks on the camera
    open_timeout_s = 20.0
    stall_timeout_s = 5.0
    stop_timeout_s = 2.0  # how long close() waits for the reader to release the capture
    kind = "camera"

    def __init__(self, uri: str, root: str = "/", **kw: Any) -> None:
        Source.__init__(self, uri, **kw)
        self.root = root
        self.pipeline = None  # type: Optional[str]  # GStreamer launch string, when used
        self._session = None  # type: Optional[_Session]
        if self.fps and self.fps > 0:
            # A slow camera is not a stalled one: allow three frame periods at least.
            self.stall_timeout_s = max(self.stall_timeout_s, 3.0 / self.fps)

    # -- hooks
    def _prepare(self, cv2: Any) -> None:
        """Checks before the reader starts (e.g. GStreamer present); raise SourceError."""

    def _capture(self, cv2: Any) -> Any:
        """Make the cv2.VideoCapture (runs in the reader thread; may block)."""
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)

    def _open_error(self) -> str:
        return ("source {}: could not open the {} (pipeline: {}); to see GStreamer's own "
                "error run: gst-launch-1.0 {}".format(
                    self.describe(), self.kind, self.safe_pipeline(),
                    launch_command(self.safe_pipeline())))

    def _read_error(self, frames: int) -> str:
        return ("source {}: the {} stopped delivering frames after {} (disconnected, or the "
                "stream ended); reconnecting".format(self.describe(), self.kind, frames))

    def _post(self, image: np.ndarray) -> np.ndarray:
        return self._flip(image)

    # -- Source
    def describe(self) -> str:
        return redact_text(self.uri)

    def safe_pipeline(self) -> str:
        """The pipeline as shown in logs and errors: credentials hidden."""
        return redact_text(self.pipeline) if self.pipeline is not None else "none"

    def open(self) -> None:
        try:
            import cv2
        except Exception as exc:  # ImportError, or a cv2 built for another numpy
            raise SourceError("source {}: OpenCV is not importable ({}); on a Jetson use "
                              "{}".format(self.describe(), exc, JETPACK_CV2))
        self._prepare(cv2)
        session = _Session()
        session.thread = threading.Thread(target=self._reader, args=(cv2, session),
                                          name="camera-reader", daemon=True)
        self._session = session
        if self.pipeline is not None:
            log.info("source %s: GStreamer pipeline: %s", self.describe(), self.safe_pipeline())
        session.thread.start()
        if not session.opened.wait(self.open_timeout_s):
            session.closing.set()
            self._session = None
            raise SourceError("source {}: the {} did not open within {:.0f} s (pipeline: {}); "
                              "is it connected and reachable?".format(
                                  self.describe(), self.kind, self.open_timeout_s,
                                  self.safe_pipeline()))
        if session.error is not None and session.frame is None:
            self._session = None
            # Wait for the reader to release the capture: a process that exits while a thread
            # is still tearing down OpenCV's GStreamer pipeline can abort in C++.
            self._stop(session)
            raise SourceError(session.error)

    def _reader(self, cv2: Any, session: _Session) -> None:
        try:
            cap = self._capture(cv2)
        except Exception as exc:  # cv2.error, or a bad pipeline string
            session.fail("{} ({})".format(self._open_error(), exc))
            return
        try:
            if session.closing.is_set():
                return
            if cap is None or not cap.isOpened():
                session.fail(self._open_error())
                return
            session.opened.set()
            while not session.closing.is_set():
                ok, image = cap.read()
                if session.closing.is_set():
                    break
                if not ok or image is None:
                    session.fail(self._read_error(session.frames))
                    break
                session.deliver(image)
        except Exception as exc:
            session.fail("source {}: reading the {} failed: {}".format(
                self.describe(), self.kind, exc))
        finally:
            if cap is not None:
                cap.release()

    def read(self) -> Optional[np.ndarray]:
        session = self._session
        if session is None:
            raise SourceError("source {}: read() before open()".format(self.describe()))
        deadline = time.monotonic() + self.stall_timeout_s
        with session.cond:
            while session.frame is None and session.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SourceError(
                        "source {}: no frame from the {} for {:g} s (stalled or "
                        "disconnected); reconnecting".format(self.describe(), self.kind,
                                                             self.stall_timeout_s))
                session.cond.wait(left)
            if session.frame is None:
                raise SourceError(session.error or "source {}: failed".format(self.describe()))
            image, session.frame = session.frame, None
        self.last_name = None
        return self._post(image)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._stop(session)

    def _stop(self, session: _Session) -> None:
        session.closing.set()
        thread = session.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.stop_timeout_s)
            if thread.is_alive():
                # cv2.VideoCapture.read() cannot be interrupted; the thread releases the
                # capture when that read returns (OpenCV >= 4.6 gives up after 30 s).
                log.warning("source %s: the camera reader is still blocked in a read; "
                            "leaving it behind", self.describe())


class V4l2Source(CameraSource):
    """`v4l2:///dev/videoN`: a USB (UVC) camera; GStreamer when cv2 has it, else OpenCV's V4L2."""

    kind = "V4L2 camera"
    scheme = "v4l2"

    def __init__(self, uri: str, device: str, fmt: str = "raw", **kw: Any) -> None:
        CameraSource.__init__(self, uri, **kw)
        self.device = device
        self.fmt = fmt
        self.use_gstreamer = False

    def _prepare(self, cv2: Any) -> None:
        if not os.path.exists(self.device):
            found = video_devices(self.root)
            raise SourceError("source {}: {} does not exist (cameras here: {}); plug the camera "
                              "in or set source.uri to one of them".format(
                                  self.uri, self.device, ", ".join(found) or "none"))
        self.use_gstreamer = gstreamer_in_build(cv2.getBuildInformation())
        if self.use_gstreamer:
            self.pipeline = v4l2_pipeline(self.device, self.width, self.height, self.fps,
                                          self.fmt)
        else:
            self.pipeline = None
            log.info("source %s: OpenCV has no GStreamer; using its V4L2 backend", self.uri)

    def _capture(self, cv2: Any) -> Any:
        if self.use_gstreamer:
            return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        return open_v4l2_capture(cv2, self.device, self.width, self.height, self.fps, self.fmt)

    def _open_error(self) -> str:
        how = "pipeline: {}".format(self.pipeline) if self.use_gstreamer else \
            "OpenCV V4L2 backend"
        return ("source {}: could not open {} ({}); check that no other program uses it, "
                "that the user is in group video, and that the camera supports {}x{}{}{}".format(
                    self.uri, self.device, how, self.width, self.height,
                    " at {:g} fps".format(self.fps) if self.fps else "",
                    "" if self.fmt == "mjpeg" else
                    " raw (many USB cameras send HD only as JPEG: add ?format=mjpeg)"))


def v4l2_index(device: str) -> Optional[int]:
    match = re.match(r"^/dev/video(\d+)$", device)
    return int(match.group(1)) if match else None


def open_v4l2_capture(cv2: Any, device: str, width: int, height: int, fps: float,
                      fmt: str) -> Any:
    """cv2.VideoCapture(index or path, CAP_V4L2) with the size, rate and format set."""
    index = v4l2_index(device)
    cap = cv2.VideoCapture(index if index is not None else device, cv2.CAP_V4L2)
    if cap.isOpened():
        if fmt == "mjpeg":
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


# ---------------------------------------------------------------- URI options and factories
# (factories: see agent/sources/__init__.py)

COMMON_OPTIONS = ("width", "height", "fps", "flip")


def camera_options(uri: str, query: str, kw: Dict[str, Any],
                   extra: Tuple[str, ...] = ()) -> Dict[str, str]:
    """A camera URI's query options: unknown ones refused, COMMON_OPTIONS moved into the
    source's keyword arguments `kw`; returns them all."""
    allowed = COMMON_OPTIONS + extra
    opts = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise SourceError("source {}: unknown option {!r}; options: {}".format(
                redact_text(uri), key, ", ".join(allowed)))
        opts[key] = value
    take_size_and_rate(uri, opts, kw)
    if "flip" in opts:
        kw["flip"] = opts["flip"]
    if kw.get("flip", "none") not in FLIP_CODES:
        raise SourceError("source {}: flip {!r} is not one of {}".format(
            uri, kw.get("flip"), ", ".join(FLIP_CODES)))
    return opts


def v4l2_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    device = parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path
    if device.isdigit():
        device = "/dev/video" + device
    if not device:
        raise SourceError("source {}: no device; use v4l2:///dev/video0 (three slashes) or "
                          "v4l2://0".format(uri))
    opts = camera_options(uri, parts.query, kw, extra=("format",))
    fmt = opts.get("format", "raw").lower()
    if fmt not in V4L2_FORMATS:
        raise SourceError("source {}: format {!r} is not one of {}".format(
            uri, fmt, ", ".join(V4L2_FORMATS)))
    return V4l2Source(uri, device, fmt=fmt, **kw)
