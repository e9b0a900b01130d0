"""Cameras that only GStreamer can read: `csi://N` (Jetson CSI, nvarguscamerasrc),
`rtsp://...` (and `rtsps://`) and `gst://PIPELINE`; their URI options and error messages.

URIs follow jetson-inference's convention. CSI and RTSP need an OpenCV built with GStreamer (the
system cv2 of JetPack; pip wheels have none). Options in the URI (all optional):
`csi://0?width=1920&height=1080&fps=30&flip=rotate-180`, `rtsp://host/path?codec=h265&latency=200&
decoder=sw` (`codec`, `latency` and `decoder` are taken out of the URL given to the camera; the
rest of the query stays). Without them, width/height/fps/flip come from `source.*`.
"""

import re
from typing import Any, Dict, List
from urllib.parse import parse_qsl, urlunsplit

import numpy as np

from ..errors import SourceError
from ..redact import redact_text
from .base import Source
from .cameras import CameraSource, camera_options
from .pipelines import APPSINK, CODECS, csi_pipeline, rtsp_pipeline
from .platform import gstreamer_in_build, is_jetson, jetson_decoder_available, no_gstreamer_error

DECODERS = ("auto", "hw", "sw")
RTSP_OPTIONS = ("codec", "latency", "decoder")


def csi_open_error(uri: str, pipeline: str, jetson: bool) -> str:
    """Why a CSI camera did not open, and the fix: on a Jetson, restart Argus."""
    if jetson:
        return ("source {}: could not open the CSI camera (pipeline: {}); check that the "
                "camera is connected to that port (sensor-id) and that no other program uses it; "
                "after a crash, \"Failed to create CaptureSession\" is cured by restarting the "
                "Argus daemon: sudo systemctl restart nvargus-daemon".format(uri, pipeline))
    return ("source {}: could not open the CSI camera (pipeline: {}); csi:// works only on a "
            "Jetson (nvarguscamerasrc comes with JetPack); elsewhere use v4l2:///dev/video0 or "
            "rtsp://".format(uri, pipeline))


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


# ---------------------------------------------------------------- URI factories
# (listed in agent/sources/__init__.py)

def csi_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    target = (parts.netloc + parts.path).strip("/") or "0"
    if not target.isdigit():
        raise SourceError("source {}: the CSI sensor must be a number, e.g. csi://0 or "
                          "csi://1".format(uri))
    camera_options(uri, parts.query, kw)
    return CsiSource(uri, int(target), **kw)


def rtsp_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    if not parts.netloc:
        raise SourceError("source {}: no host; use rtsp://[user:password@]host[:port]/path"
                          .format(redact_text(uri)))
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
            redact_text(uri), ours.get("codec"), ", ".join(CODECS)))
    try:
        latency = int(ours.get("latency", "200"))
    except ValueError:
        raise SourceError("source {}: latency must be milliseconds, e.g. latency=200".format(
            redact_text(uri)))
    decoder = ours.get("decoder", "auto").lower()
    if decoder not in DECODERS:
        raise SourceError("source {}: decoder {!r} is not one of {}".format(
            redact_text(uri), decoder, ", ".join(DECODERS)))
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
