"""The newest frame, prediction and telemetry of the live view, rendered and encoded on demand.

`LiveView` is fed by the agent's publish, telemetry and event listeners (`on_prediction`,
`on_telemetry`, `on_event`) and only keeps references to the newest frame, prediction and
telemetry (and a few numbers per telemetry message for the charts): the publish thread pays
nothing for it. Drawing the overlay and JPEG encoding happen on demand, in the thread that
shows the frame (the window loop, or the HTTP thread of a connected client), at most once per
frame. A frame is numbered by its prediction's `seq` (the one published on MQTT), so the page
can show a frame and the prediction of that very frame together.
"""

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np

from .history import History, power_coverage
from .overlay import draw_footer, draw_overlay, footer_text, overlay_text

JPEG_QUALITY = 80


class LiveView(object):
    """The newest frame, prediction and telemetry; renders and encodes them on demand.

    `model_info` (the serving model's description) and `status` (a status snapshot) are
    functions called from the showing thread; both may be None. `history` keeps the chart
    points and timeline events of the last minutes.
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
        self._count = 0  # frames seen (numbers frames whose prediction has no seq)
        self.history = History()
        self._times = deque(maxlen=30)  # type: Deque[float]
        self._render_lock = threading.Lock()
        self._rendered = {}  # type: Dict[bool, Tuple[int, Optional[np.ndarray], Any]]
        self._jpeg = (0, None, None)  # type: Tuple[int, Optional[bytes], Any]
        self.encoded = 0  # JPEGs made (the stream costs CPU only while watched)

    # -- the agent's threads (publish, telemetry): keep references, nothing more
    def on_prediction(self, frame: Any, payload: Dict[str, Any]) -> None:
        with self._cond:
            self._image = frame.image
            self._payload = payload
            self._count += 1
            seq = payload.get("seq") if isinstance(payload, dict) else None
            self._seq = seq if isinstance(seq, int) and not isinstance(seq, bool) \
                else self._count
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def on_telemetry(self, message: Dict[str, Any]) -> None:
        with self._cond:
            self._telemetry = message
        self.history.add_telemetry(message)

    def on_event(self, event: Dict[str, Any]) -> None:
        self.history.add_event(event)

    # -- the showing threads
    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    def wait_newer(self, seq: int, timeout: float) -> int:
        """The current frame number once it differs from `seq`, or after `timeout`
        (frame numbers are prediction seqs: a restarted agent counts from 1 again)."""
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
                "power_coverage": power_coverage(telemetry),
                "frame_size": [int(image.shape[1]), int(image.shape[0])]
                if image is not None else None,
                "overlay": {"top": [t for t, _ in top], "lines": lines}}

    def rendered(self, footer: bool = False) -> Tuple[int, Optional[np.ndarray]]:
        """(frame number, the newest frame with the overlay, and the one-line footer when
        `footer`), drawn once per frame."""
        seq, canvas, _ = self._render(footer)
        return seq, canvas

    def _render(self, footer: bool) -> Tuple[int, Optional[np.ndarray], Any]:
        with self._render_lock:
            with self._cond:
                seq, image, payload, telemetry = (self._seq, self._image, self._payload,
                                                  self._telemetry)
            if image is None:
                return 0, None, None
            done = self._rendered.get(footer)
            if done is not None and done[0] == seq:
                return done
            fps = self.fps()
            top, lines = overlay_text(payload, telemetry, self._model(), fps)
            canvas = draw_overlay(image, top, lines)
            if footer:
                draw_footer(canvas, footer_text(payload, telemetry, fps))
            self._rendered[footer] = (seq, canvas, payload)
            return self._rendered[footer]

    def jpeg(self) -> Tuple[int, Optional[bytes]]:
        """(frame number, JPEG of the rendered frame), encoded once per frame for all clients."""
        seq, data, _ = self.frame_jpeg()
        return seq, data

    def frame_jpeg(self) -> Tuple[int, Optional[bytes], Optional[Dict[str, Any]]]:
        """(frame number, JPEG of the rendered frame, the prediction drawn on it): the three
        belong to the same frame."""
        import cv2
        seq, canvas, payload = self._render(False)
        if canvas is None:
            return 0, None, None
        with self._render_lock:
            if self._jpeg[0] == seq and self._jpeg[1] is not None:
                return self._jpeg
            ok, data = cv2.imencode(".jpg", canvas, [int(cv2.IMWRITE_JPEG_QUALITY),
                                                     self.jpeg_quality])
            if not ok:
                return 0, None, None
            self.encoded += 1
            self._jpeg = (seq, data.tobytes(), payload)
            return self._jpeg
