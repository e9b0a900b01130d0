"""Camera sources: `csi://N`, `v4l2:///dev/videoN`, `rtsp://...` (and `rtsps://`), `gst://PIPELINE`.

URIs follow jetson-inference's convention. Each camera is read through OpenCV; CSI and RTSP need
an OpenCV built with GStreamer (the system cv2 of JetPack; pip wheels have none), USB cameras use
GStreamer when cv2 has it and OpenCV's V4L2 backend otherwise. The pipelines are those of
docs/PLATFORM.md section 5, built by pure functions (`csi_pipeline`, `v4l2_pipeline`,
`rtsp_pipeline`) and all ending in `appsink drop=1 max-buffers=1 sync=false`, so the newest
frame is the one read.

A reader thread per opened camera owns the `cv2.VideoCapture`: read() waits for its next frame
at most `stall_timeout_s` and open() for the pipeline at most `open_timeout_s`, so a camera that
hangs (OpenCV 4.1 on JetPack 4.6 has no read timeout) becomes a SourceError, which the agent
answers by reconnecting with backoff and reporting `degraded`, instead of a stuck agent.

Options in the URI (all optional): `csi://0?width=1920&height=1080&fps=30&flip=rotate-180`,
`v4l2:///dev/video0?format=mjpeg` (or `v4l2://0`), `rtsp://host/path?codec=h265&latency=200&
decoder=sw` (`codec`, `latency` and `decoder` are taken out of the URL given to the camera; the
rest of the query stays). Without them, width/height/fps/flip come from `source.*`.
"""

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from fractions import Fraction
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlunsplit

import numpy as np

from .errors import SourceError
from .redact import redact_text
from .sources import FLIP_CODES, Source, register_scheme

log = logging.getLogger(__name__)

APPSINK = "appsink drop=1 max-buffers=1 sync=false"
TO_BGR = "videoconvert ! video/x-raw,format=BGR"
# nvvidconv flip-method for source.flip (0 none, 2 rotate 180, 4 horizontal, 6 vertical).
CSI_FLIP_METHODS = {"none": 0, "rotate-180": 2, "horizontal": 4, "vertical": 6}
CODECS = ("h264", "h265")
DECODERS = ("auto", "hw", "sw")
V4L2_FORMATS = ("raw", "mjpeg")
# JetPack's cv2 is NVIDIA's OpenCV 4.x with GStreamer (packages libopencv, libopencv-python,
# pulled in by nvidia-opencv / nvidia-jetpack). Ubuntu 18.04's python3-opencv is OpenCV 3.2
# WITHOUT GStreamer and, in /usr/lib/python3/dist-packages, shadows JetPack's: never advise it.
JETPACK_CV2 = ("JetPack's own cv2 (NVIDIA's OpenCV 4.x with GStreamer: sudo apt-get install "
               "nvidia-opencv; a venv needs --system-site-packages)")
NO_GSTREAMER_FIX = ("pip OpenCV wheels have no GStreamer, nor has Ubuntu's python3-opencv "
                    "(OpenCV 3.2, it shadows JetPack's); on a Jetson use " + JETPACK_CV2 + ", "
                    "pip uninstall opencv-python opencv-python-headless and sudo apt-get remove "
                    "python3-opencv; `edge-agent check` shows which cv2 is imported and whether "
                    "it has GStreamer")


# ---------------------------------------------------------------- pure helpers

def framerate_caps(fps: float) -> str:
    """`F/1` for GStreamer caps (a fraction for rates like 29.97); '' when fps is 0 (any)."""
    if not fps or fps <= 0:
        return ""
    rate = Fraction(fps).limit_denominator(1001)
    return "{}/{}".format(rate.numerator, rate.denominator)


def csi_pipeline(sensor_id: int, width: int, height: int, fps: float, flip: str = "none") -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera (PLATFORM.md section 5)."""
    if flip not in CSI_FLIP_METHODS:
        raise ValueError("flip {!r} is not one of {}".format(flip, ", ".join(CSI_FLIP_METHODS)))
    rate = framerate_caps(fps)
    return ("nvarguscamerasrc sensor-id={sid} ! video/x-raw(memory:NVMM),width={w},height={h},"
            "format=NV12{rate} ! nvvidconv flip-method={flip} ! video/x-raw,width={w},height={h},"
            "format=BGRx ! {bgr} ! {sink}").format(
                sid=sensor_id, w=width, h=height, rate=",framerate=" + rate if rate else "",
                flip=CSI_FLIP_METHODS[flip], bgr=TO_BGR, sink=APPSINK)


def v4l2_pipeline(device: str, width: int, height: int, fps: float, fmt: str = "raw") -> str:
    """The v4l2src pipeline for a USB camera; `fmt` mjpeg for cameras that send JPEG at HD sizes."""
    rate = framerate_caps(fps)
    caps = "width={},height={}{}".format(width, height, ",framerate=" + rate if rate else "")
    if fmt == "raw":
        head = "v4l2src device={} ! video/x-raw,{}".format(device, caps)
    elif fmt == "mjpeg":
        head = "v4l2src device={} ! image/jpeg,{} ! jpegdec".format(device, caps)
    else:
        raise ValueError("format {!r} is not one of {}".format(fmt, ", ".join(V4L2_FORMATS)))
    return "{} ! {} ! {}".format(head, TO_BGR, APPSINK)


def gst_quote(value: str) -> str:
    """A property value for gst_parse_launch: as is when plain, else double-quoted."""
    if value and re.match(r"^[A-Za-z0-9_.:/?&=%@+~-]+$", value):
        return value
    return '"{}"'.format(value.replace("\\", "\\\\").replace('"', '\\"'))


def rtsp_pipeline(url: str, codec: str = "h264", latency: int = 200,
                  hw_decode: bool = False) -> str:
    """rtspsrc -> depay -> parse -> decoder -> BGR appsink.

    hw_decode: `nvv4l2decoder ! nvvidconv` (Jetson); else `avdec_h264`/`avdec_h265` (FFmpeg).
    """
    if codec not in CODECS:
        raise ValueError("codec {!r} is not one of {}".format(codec, ", ".join(CODECS)))
    head = "rtspsrc location={} latency={} ! rtp{c}depay ! {c}parse".format(
        gst_quote(url), int(latency), c=codec)
    if hw_decode:
        decode = "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx"
    else:
        decode = "avdec_{}".format(codec)
    return "{} ! {} ! {} ! {}".format(head, decode, TO_BGR, APPSINK)


def redact_uri(uri: str) -> str:
    """The URI (or gst:// pipeline) with credentials hidden, fit for logs, errors and status
    messages; see agent/redact.py. Never passes an unparsable URI through."""
    return redact_text(uri)


def gstreamer_in_build(build_info: str) -> bool:
    """True when an OpenCV build-information text says `GStreamer: YES`."""
    for line in build_info.splitlines():
        stripped = line.strip()
        if stripped.startswith("GStreamer:"):
            return stripped[len("GStreamer:"):].strip().upper().startswith("YES")
    return False


def highgui_in_build(build_info: str) -> bool:
    """True when OpenCV was built with a GUI backend (GTK, QT, ...): cv2.imshow can work."""
    in_gui = False
    for line in build_info.splitlines():
        stripped = line.strip()
        if stripped.startswith("GUI:"):
            value = stripped[len("GUI:"):].strip().upper()
            if value and value != "NONE":
                return True
            in_gui = True
            continue
        if in_gui:
            if not line.startswith("    "):
                return False
            key, _, value = stripped.partition(":")
            if key.strip().upper() in ("GTK+", "GTK", "QT", "WIN32 UI", "COCOA", "FRAMEBUFFER") \
                    and value.strip().upper().startswith("YES"):
                return True
    return False


def needs_gstreamer(uri: str) -> bool:
    """Sources that cannot work without an OpenCV built with GStreamer."""
    return uri.split("://", 1)[0].lower() in ("csi", "rtsp", "rtsps", "gst")


def is_jetson(root: str = "/") -> bool:
    """A Jetson board: /proc/device-tree/model names one, or L4T's release file is there."""
    try:
        with open(os.path.join(root, "proc/device-tree/model"), "rb") as handle:
            model = handle.read().decode("utf-8", "replace").lower()
        if "jetson" in model:
            return True
    except OSError:
        pass
    return os.path.exists(os.path.join(root, "etc/nv_tegra_release"))


_ELEMENTS = {}  # type: Dict[str, bool]


def gst_element_exists(name: str) -> bool:
    """Whether GStreamer has element `name` (asks gst-inspect-1.0 once per name)."""
    if name not in _ELEMENTS:
        tool = shutil.which("gst-inspect-1.0")
        found = False
        if tool:
            try:
                found = subprocess.call([tool, "--exists", name], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, timeout=10) == 0
            except (OSError, subprocess.TimeoutExpired):
                found = False
        _ELEMENTS[name] = found
    return _ELEMENTS[name]


def jetson_decoder_available(root: str = "/") -> bool:
    """Hardware decode (`nvv4l2decoder ! nvvidconv`) is there: on a Jetson, or where both exist."""
    if is_jetson(root):
        return True
    return gst_element_exists("nvv4l2decoder") and gst_element_exists("nvvidconv")


def video_devices(root: str = "/") -> List[str]:
    """The /dev/video* nodes present, for error messages."""
    dev = os.path.join(root, "dev")
    try:
        names = sorted(n for n in os.listdir(dev) if re.match(r"^video\d+$", n))
    except OSError:
        return []
    return ["/dev/" + n for n in names]


def launch_command(pipeline: str) -> str:
    """The pipeline as a gst-launch-1.0 argument list: appsink swapped for fakesink, caps quoted."""
    parts = [p.strip() for p in pipeline.split(" ! ")]
    if parts and parts[-1].startswith("appsink"):
        parts[-1] = "fakesink"
    return " ! ".join("'{}'".format(p) if "(" in p else p for p in parts)


def csi_open_error(uri: str, pipeline: str, jetson: bool) -> str:
    if jetson:
        return ("source {}: could not open the CSI camera (pipeline: {}); check that the "
                "camera is connected to that port (sensor-id) and that no other program uses it; "
                "after a crash, \"Failed to create CaptureSession\" is cured by restarting the "
                "Argus daemon: sudo systemctl restart nvargus-daemon".format(uri, pipeline))
    return ("source {}: could not open the CSI camera (pipeline: {}); csi:// works only on a "
            "Jetson (nvarguscamerasrc comes with JetPack); elsewhere use v4l2:///dev/video0 or "
            "rtsp://".format(uri, pipeline))


def no_gstreamer_error(uri: str, cv2_version: str, cv2_path: str) -> str:
    return ("source {}: this OpenCV ({} at {}) was built without GStreamer, which {}:// sources "
            "need; {}".format(uri, cv2_version, cv2_path, uri.split("://", 1)[0],
                              NO_GSTREAMER_FIX))


# ---------------------------------------------------------------- sources

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
        return redact_uri(self.uri)

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


class GstSource(CameraSource):
    """`gst://PIPELINE`: a raw GStreamer pipeline ending in appsink (tests, power users)."""

    kind = "GStreamer pipeline"
    scheme = "gst"

    def __init__(self, uri: str, pipeline: str, **kw: Any) -> None:
        CameraSource.__init__(self, uri, **kw)
        self.pipeline = pipeline

    def _prepare(self, cv2: Any) -> None:
        if not gstreamer_in_build(cv2.getBuildInformation()):
            raise SourceError(no_gstreamer_error(self.describe(), cv2.__version__,
                                                 getattr(cv2, "__file__", "?")))

    def describe(self) -> str:
        return redact_uri(self.uri)


class CsiSource(GstSource):
    """`csi://N`: a Jetson MIPI CSI camera through nvarguscamerasrc (Argus)."""

    kind = "CSI camera"
    scheme = "csi"

    def __init__(self, uri: str, sensor_id: int, **kw: Any) -> None:
        GstSource.__init__(self, uri, "", **kw)
        self.sensor_id = sensor_id
        self.pipeline = csi_pipeline(sensor_id, self.width, self.height, self.fps, self.flip)

    def _open_error(self) -> str:
        return csi_open_error(self.uri, self.pipeline or "", is_jetson(self.root))

    def _read_error(self, frames: int) -> str:
        message = CameraSource._read_error(self, frames)
        if is_jetson(self.root):
            message += ("; if it keeps failing, restart the Argus daemon: sudo systemctl "
                        "restart nvargus-daemon")
        return message

    def _post(self, image: np.ndarray) -> np.ndarray:
        return image  # nvvidconv flip-method already applied source.flip


class RtspSource(GstSource):
    """`rtsp://` / `rtsps://`: a network camera, decoded in hardware on a Jetson."""

    kind = "RTSP stream"
    scheme = "rtsp"

    def __init__(self, uri: str, url: str, codec: str = "h264", latency: int = 200,
                 hw_decode: bool = False, **kw: Any) -> None:
        GstSource.__init__(self, uri, "", **kw)
        self.url = url
        self.codec = codec
        self.hw_decode = hw_decode
        self.pipeline = rtsp_pipeline(url, codec, latency, hw_decode)

    def _open_error(self) -> str:
        return ("source {}: could not open the RTSP stream (pipeline: {}); check the URL, "
                "the credentials and that the camera is reachable, and that it sends {} "
                "(add ?codec={} to the URI otherwise){}".format(
                    self.describe(), self.safe_pipeline(), self.codec.upper().replace(
                        "H26", "H.26"), "h265" if self.codec == "h264" else "h264",
                    "" if self.hw_decode else "; software decoding needs gstreamer1.0-libav"))


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


# ---------------------------------------------------------------- URI parsing and factories

def _options(uri: str, query: str, allowed: Tuple[str, ...]) -> Dict[str, str]:
    out = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise SourceError("source {}: unknown option {!r}; options: {}".format(
                redact_uri(uri), key, ", ".join(allowed)))
        out[key] = value
    return out


def _apply_common(uri: str, opts: Dict[str, str], kw: Dict[str, Any]) -> None:
    try:
        for key in ("width", "height"):
            if key in opts:
                kw[key] = int(opts[key])
        if "fps" in opts:
            kw["fps"] = float(opts["fps"])
    except ValueError:
        raise SourceError("source {}: width, height and fps must be numbers".format(uri))
    if "flip" in opts:
        kw["flip"] = opts["flip"]
    if kw.get("flip", "none") not in FLIP_CODES:
        raise SourceError("source {}: flip {!r} is not one of {}".format(
            uri, kw.get("flip"), ", ".join(FLIP_CODES)))


COMMON_OPTIONS = ("width", "height", "fps", "flip")


def csi_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    target = (parts.netloc + parts.path).strip("/") or "0"
    if not target.isdigit():
        raise SourceError("source {}: the CSI sensor must be a number, e.g. csi://0 or "
                          "csi://1".format(uri))
    _apply_common(uri, _options(uri, parts.query, COMMON_OPTIONS), kw)
    return CsiSource(uri, int(target), **kw)


def v4l2_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    device = parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path
    if device.isdigit():
        device = "/dev/video" + device
    if not device:
        raise SourceError("source {}: no device; use v4l2:///dev/video0 (three slashes) or "
                          "v4l2://0".format(uri))
    opts = _options(uri, parts.query, COMMON_OPTIONS + ("format",))
    _apply_common(uri, opts, kw)
    fmt = opts.get("format", "raw").lower()
    if fmt not in V4L2_FORMATS:
        raise SourceError("source {}: format {!r} is not one of {}".format(
            uri, fmt, ", ".join(V4L2_FORMATS)))
    return V4l2Source(uri, device, fmt=fmt, **kw)


RTSP_OPTIONS = ("codec", "latency", "decoder")


def rtsp_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    if not parts.netloc:
        raise SourceError("source {}: no host; use rtsp://[user:password@]host[:port]/path"
                          .format(redact_uri(uri)))
    ours = {}  # type: Dict[str, str]
    rest = []  # type: List[str]
    for piece in parts.query.split("&") if parts.query else []:
        key = piece.split("=", 1)[0]
        if key in RTSP_OPTIONS:
            ours.update(parse_qsl(piece, keep_blank_values=True))
        else:
            rest.append(piece)  # the camera's own query, passed on untouched
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(rest), ""))
    codec = ours.get("codec", "h264").lower().replace(".", "").replace("hevc", "h265")
    if codec not in CODECS:
        raise SourceError("source {}: codec {!r} is not one of {}".format(
            redact_uri(uri), ours.get("codec"), ", ".join(CODECS)))
    try:
        latency = int(ours.get("latency", "200"))
    except ValueError:
        raise SourceError("source {}: latency must be milliseconds, e.g. latency=200".format(
            redact_uri(uri)))
    decoder = ours.get("decoder", "auto").lower()
    if decoder not in DECODERS:
        raise SourceError("source {}: decoder {!r} is not one of {}".format(
            redact_uri(uri), decoder, ", ".join(DECODERS)))
    root = kw.pop("root", "/")
    hw = decoder == "hw" or (decoder == "auto" and jetson_decoder_available(root))
    return RtspSource(uri, url, codec=codec, latency=latency, hw_decode=hw, root=root, **kw)


def gst_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    pipeline = uri[len("gst://"):].strip() if uri.lower().startswith("gst://") else ""
    if not pipeline:
        raise SourceError("source gst://: no pipeline after gst://")
    if not re.search(r"\bappsink\b", pipeline.split("!")[-1]):
        raise SourceError("source {}: a gst:// pipeline must end in appsink, e.g. gst://"
                          "videotestsrc ! videoconvert ! video/x-raw,format=BGR ! {}".format(
                              uri, APPSINK))
    return GstSource(uri, pipeline, **kw)


register_scheme("csi", csi_factory)
register_scheme("v4l2", v4l2_factory)
register_scheme("rtsp", rtsp_factory)
register_scheme("rtsps", rtsp_factory)
register_scheme("gst", gst_factory)
