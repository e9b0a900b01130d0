"""Sources that need no camera: `file://PATH` (an image, a directory of images, or a video
file) and `synthetic://` (generated frames; `synthetic://?fps=0` runs unpaced)."""

import logging
import os
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs

import numpy as np

from ..errors import SourceError
from .base import Source, take_size_and_rate

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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


# ---------------------------------------------------------------- URI factories
# (listed in agent/sources/__init__.py)

def file_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    path = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
    if not path:
        raise SourceError("source {}: no path after file://".format(uri))
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir, path))
    return FileSource(uri, path, **kw)


def synthetic_factory(uri: str, parts: Any, base_dir: str, **kw: Any) -> Source:
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    take_size_and_rate(uri, query, kw)
    pattern = query.get("pattern", "noise")
    if pattern not in ("noise", "gradient"):
        raise SourceError("source {}: pattern {!r} is not one of noise, gradient".format(
            uri, pattern))
    return SyntheticSource(uri, pattern=pattern, **kw)
