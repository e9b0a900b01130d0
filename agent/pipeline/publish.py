"""The publish stage: top-k of each inference, its stage times, the prediction message.

One thread. For every Inferred from the inference thread it runs the model's classifier,
tells probation how the frame went, records the stage times, publishes the prediction
(at most `predictions.max_rate_hz`) and calls the prediction listeners (live view, bench).
"""

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..config import Config
from .frames import Frame
from ..telemetry import StageStats

log = logging.getLogger("edge-agent")

# (ref, ok, infer_ms, error): how a frame of model `ref` went
Result = Callable[[str, bool, Optional[float], str], None]


class PublishStage(object):
    """The publish thread (`run`): Inferred items from `results` (None ends it) -> MQTT."""

    def __init__(self, config: Config, results: queue.Queue, publish: Callable[..., Any],
                 stats: StageStats, stop: threading.Event, inference_done: threading.Event,
                 result: Result = lambda ref, ok, infer_ms, error: None,
                 listeners: Optional[List[Callable[[Frame, Dict[str, Any]], None]]] = None
                 ) -> None:
        self.config = config  # predictions.max_rate_hz is read per frame (SIGHUP changes it)
        self.publish = publish
        self.stats = stats
        self.stop = stop
        self.inference_done = inference_done
        self.result = result
        self.results = results
        # Called with every (frame, prediction payload); the live view and bench use it.
        self.listeners = listeners if listeners is not None else []
        self.seq = 0
        self.done = threading.Event()
        self._last_pub = 0.0
        self._errors_logged = 0

    def run(self) -> None:
        try:
            while True:
                try:
                    item = self.results.get(timeout=0.5)
                except queue.Empty:
                    if self.stop.is_set() and self.inference_done.is_set():
                        return
                    continue
                if item is None:
                    return
                self._one(item)
        finally:
            self.done.set()

    def _one(self, item: Any) -> None:
        """Postprocess (top-k), feed probation, record the times, serialize and spool."""
        frame, model, infer_ms = item.frame, item.model, item.infer_ms
        t1 = time.monotonic()
        try:
            top = model.classifier(item.outputs)
        except Exception as exc:  # NaN/Inf outputs, a missing output
            self.stats.record_error()
            if self._errors_logged < 5:
                log.error("frame %s with %s: %s", frame.seq, model.ref, exc)
                self._errors_logged += 1
            self.result(model.ref, False, None, str(exc))
            return
        self.result(model.ref, True, infer_ms, "")
        self.seq += 1
        now = time.monotonic()
        latency = (now - frame.t_capture) * 1000.0
        self.stats.record({"capture": frame.capture_ms, "preprocess": item.preprocess_ms,
                           "infer": infer_ms, "postprocess": (now - t1) * 1000.0,
                           "end_to_end": latency})
        payload = {"ts": round(time.time(), 3), "seq": self.seq,
                   "frame_seq": frame.seq, "frame_ts": round(frame.ts, 3),
                   "model": model.ref, "top": top, "latency_ms": round(latency, 2)}
        if frame.name:
            payload["frame"] = frame.name
        rate = self.config.predictions.max_rate_hz
        if not rate or now - self._last_pub >= 1.0 / rate:
            self._last_pub = now
            self.publish("predictions", payload, kind="prediction")
        for listener in self.listeners:
            try:
                listener(frame, payload)
            except Exception:
                log.exception("prediction listener failed")
