"""The newest frame, prediction and telemetry of the live view, rendered and encoded on demand.

`LiveView` is fed by the agent's publish and telemetry threads (`on_prediction`,
`on_telemetry`) and only keeps references to the newest frame, prediction and telemetry: the
publish thread pays nothing for it. Drawing the overlay and JPEG encoding happen on demand,
in the thread that shows the frame (the window loop, or the HTTP thread of a connected
client), at most once per frame.
"""

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np

from .overlay import draw_overlay, overlay_text

JPEG_QUALITY = 80


class LiveView(object):
    """The newest frame, prediction and telemetry; renders and encodes them on demand.

    `model_info` (the serving model's description) and `status` (a status snapshot) are
    functions called from the showing thread; both may be None.
    """

    def __init__(self, model_info: Optional[Callable[[], Optional[Dict[str, Any]]]] = None,
                 status: Optional[Callable[[], Dict[str, Any]]] = None,
                 jpeg_quality: int = JPEG_QUALITY) -> None:
        self.model_info = model_info
        self.status = status
        self.jpeg_quality = jpeg_quality
        self._cond = threading.Condition()
        self._image = None  # type: Optional[np.ndarray]
        self._payload = None  # type: Optional[Dict[str, Any]]
        self._telemetry = None  # type: Optional[Dict[str, Any]]
        self._seq = 0
        self._times = deque(maxlen=30)  # type: Deque[float]
        self._render_lock = threading.Lock()
        self._rendered = (0, None)  # type: Tuple[int, Optional[np.ndarray]]
        self._jpeg = (0, None)  # type: Tuple[int, Optional[bytes]]
        self.encoded = 0  # JPEGs made (the stream costs CPU only while watched)

    # -- the agent's threads (publish, telemetry): keep references, nothing more
    def on_prediction(self, frame: Any, payload: Dict[str, Any]) -> None:
        with self._cond:
            self._image = frame.image
            self._payload = payload
            self._seq += 1
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def on_telemetry(self, message: Dict[str, Any]) -> None:
        with self._cond:
            self._telemetry = message

    # -- the showing threads
    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    def wait_newer(self, seq: int, timeout: float) -> int:
        """The current frame number once it differs from `seq`, or after `timeout`."""
        with self._cond:
            if self._seq == seq:
                self._cond.wait(timeout)
            return self._seq

    def fps(self) -> Optional[float]:
        with self._cond:
            times = list(self._times)
        if len(times) < 2 or time.monotonic() - times[-1] > 5.0:
            return None
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else None

    def _model(self) -> Optional[Dict[str, Any]]:
        try:
            return self.model_info() if self.model_info is not None else None
        except Exception:  # the model is being swapped; the next frame will tell
            return None

    def state(self) -> Dict[str, Any]:
        """What /state.json serves: prediction, telemetry, model, status and the overlay text."""
        with self._cond:
            seq, payload, telemetry = self._seq, self._payload, self._telemetry
            image = self._image
        model = self._model()
        fps = self.fps()
        top, lines = overlay_text(payload, telemetry, model, fps)
        status = None  # type: Optional[Dict[str, Any]]
        if self.status is not None:
            try:
                status = self.status()
            except Exception:
                status = None
        return {"seq": seq, "prediction": payload, "telemetry": telemetry, "model": model,
                "status": status, "fps": round(fps, 2) if fps else None,
                "frame_size": [int(image.shape[1]), int(image.shape[0])]
                if image is not None else None,
                "overlay": {"top": [t for t, _ in top], "lines": lines}}

    def rendered(self) -> Tuple[int, Optional[np.ndarray]]:
        """(frame number, the newest frame with the overlay), drawn once per frame."""
        with self._render_lock:
            with self._cond:
                seq, image, payload, telemetry = (self._seq, self._image, self._payload,
                                                  self._telemetry)
            if image is None:
                return 0, None
            if self._rendered[0] == seq:
                return self._rendered
            top, lines = overlay_text(payload, telemetry, self._model(), self.fps())
            self._rendered = (seq, draw_overlay(image, top, lines))
            return self._rendered

    def jpeg(self) -> Tuple[int, Optional[bytes]]:
        """(frame number, JPEG of the rendered frame), encoded once per frame for all clients."""
        import cv2
        seq, canvas = self.rendered()
        if canvas is None:
            return 0, None
        with self._render_lock:
            if self._jpeg[0] == seq:
                return self._jpeg
            ok, data = cv2.imencode(".jpg", canvas, [int(cv2.IMWRITE_JPEG_QUALITY),
                                                     self.jpeg_quality])
            if not ok:
                return 0, None
            self.encoded += 1
            self._jpeg = (seq, data.tobytes())
            return self._jpeg
