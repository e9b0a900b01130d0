"""INT8 calibration: the calibration images, their digest, and TensorRT's entropy calibrator."""

import hashlib
import logging
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from ...errors import BackendError
from ...store.package import InputSpec
from ..validation import IMAGE_SUFFIXES
from .engine_cache import atomic_write
from .runtime import trt_version

log = logging.getLogger(__name__)


def calibration_images(folder: str, limit: int = 512) -> List[str]:
    """Image files in `folder` (sorted), at most `limit`."""
    if not folder or not os.path.isdir(folder):
        raise BackendError("INT8 calibration folder {!r} does not exist: set "
                           "backend.calibration_dir to a folder of representative images "
                           "(100-500 photos)".format(folder))
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise BackendError("INT8 calibration folder {} has no images ({}); add representative "
                           "photos or use precision fp16".format(folder, ", ".join(
                               IMAGE_SUFFIXES)))
    return files[:limit]


def calibration_digest(files: Sequence[str]) -> str:
    """Identity of a calibration set (names and sizes), part of an INT8 engine's fingerprint."""
    digest = hashlib.sha256()
    for path in files:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        digest.update("{}\0{}\n".format(os.path.basename(path), size).encode("utf-8"))
    return digest.hexdigest()[:16]


def calibration_batches(files: Sequence[str], spec: InputSpec, batch_size: int) -> Any:
    """Yield float32 batches (batch_size, C, H, W) made by the model's own Preprocessor."""
    import cv2
    from ...preprocess import Preprocessor
    pre = Preprocessor(spec)
    batch = []  # type: List[np.ndarray]
    for path in files:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            log.warning("calibration: %s is not a readable image; skipped", path)
            continue
        batch.append(pre(frame)[0])
        if len(batch) == batch_size:
            yield np.ascontiguousarray(np.stack(batch))
            batch = []
    # A short last batch is dropped: TensorRT expects get_batch_size() images each time.


_CALIBRATOR_CLASSES = {}  # type: Dict[int, Any]


def int8_calibrator_class(trt: Any) -> Any:
    """`Int8Calibrator`, a subclass of this TensorRT's IInt8EntropyCalibrator2."""
    cls = _CALIBRATOR_CLASSES.get(id(trt))
    if cls is not None:
        return cls
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendError("TensorRT {} has no INT8 calibrators (removed in TensorRT 11): use "
                           "an ONNX model with Q/DQ nodes, or precision fp16".format(
                               trt_version(trt)))

    class Int8Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds preprocessed calibration batches to TensorRT; caches the result on disk."""

        def __init__(self, batches: Any, batch_size: int, input_shape: Sequence[int],
                     cache_path: str, cuda: Any) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._batch_size = int(batch_size)
            self.cache_path = cache_path
            self._cuda = cuda
            self._shape = (self._batch_size,) + tuple(int(d) for d in input_shape[1:])
            self._host = None  # type: Any
            self._device = None  # type: Any
            self.batches_fed = 0

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: Any, p_str: Any = None) -> Any:
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            if self._device is None:
                self._host = self._cuda.pinned(self._shape, np.float32)
                self._device = self._cuda.device_alloc(self._host.nbytes)
            np.copyto(self._host, batch.reshape(self._shape))
            self._cuda.htod_async(self._device, self._host)
            self._cuda.synchronize()
            self.batches_fed += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> Any:
            if os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as handle:
                    data = handle.read()
                if data:
                    log.info("INT8: using calibration cache %s", self.cache_path)
                    return data
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write(self.cache_path, bytes(cache))

    _CALIBRATOR_CLASSES[id(trt)] = Int8Calibrator
    return Int8Calibrator


def create_int8_calibrator(trt: Any, cuda: Any, spec: InputSpec, files: Sequence[str],
                           batch_size: int, cache_path: str) -> Any:
    """An Int8Calibrator over `files`, preprocessed as the model's manifest says."""
    cls = int8_calibrator_class(trt)
    return cls(calibration_batches(files, spec, batch_size), batch_size, spec.shape,
               cache_path, cuda)
