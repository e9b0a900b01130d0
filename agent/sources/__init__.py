"""Frame sources by URI: the table of schemes, and make_source/source_from_config that build
the source a URI or the config's `source` section names.

  file://PATH           an image, a directory of images, or a video file   files.py
  synthetic://          generated frames (`?fps=0` runs unpaced)           files.py
  v4l2:///dev/videoN    a USB camera                                       cameras.py
  csi://N               a Jetson CSI camera                                gstreamer.py
  rtsp://, rtsps://     a network camera                                   gstreamer.py
  gst://PIPELINE        a GStreamer pipeline ending in appsink             gstreamer.py

Live sources (cameras, paced synthetic) hand over only the latest frame; file sources can run
every frame. Every factory takes (uri, urlsplit(uri), base_dir, **source keywords).
"""

from typing import Any, Callable, Dict
from urllib.parse import urlsplit

from ..errors import SourceError
from ..redact import redact_text
from .base import Pacer, Source
from .cameras import v4l2_factory
from .files import file_factory, synthetic_factory
from .gstreamer import csi_factory, gst_factory, rtsp_factory

__all__ = ["Pacer", "Source", "make_source", "register_scheme", "source_from_config"]

SourceFactory = Callable[..., Source]
_SCHEMES = {
    "file": file_factory,
    "synthetic": synthetic_factory,
    "v4l2": v4l2_factory,
    "csi": csi_factory,
    "rtsp": rtsp_factory,
    "rtsps": rtsp_factory,
    "gst": gst_factory,
}  # type: Dict[str, SourceFactory]


def register_scheme(scheme: str, factory: SourceFactory) -> None:
    """Add a scheme (test doubles); the factory takes (uri, parts, base_dir, **kw)."""
    _SCHEMES[scheme] = factory


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
