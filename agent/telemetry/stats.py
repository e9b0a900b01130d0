"""Per-stage timings of the pipeline, and their latency percentiles per telemetry window.

The publish thread records one sample per stage per frame; the telemetry thread takes a
snapshot of the window and starts a new one. Percentiles are exact over the window (windows
are small: seconds of frames).
"""

import threading
from typing import Dict, List, Optional, Sequence

import numpy as np

STAGES = ("capture", "preprocess", "infer", "postprocess", "end_to_end")


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)
                ) -> Optional[Dict[str, float]]:
    """{'p50': .., 'p95': .., 'p99': ..} in the values' unit, or None when empty."""
    if not len(values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    res = np.percentile(arr, points)
    return {"p{}".format(int(p)): round(float(v), 3) for p, v in zip(points, res)}


class StageStats(object):
    """Per-stage durations (ms) for the current window, plus frame and drop counters."""

    def __init__(self, stages: Sequence[str] = STAGES) -> None:
        self._lock = threading.Lock()
        self.stages = tuple(stages)
        self._samples = {s: [] for s in self.stages}  # type: Dict[str, List[float]]
        self.frames = 0
        self.total_frames = 0
        self.errors = 0

    def record(self, durations_ms: Dict[str, float]) -> None:
        with self._lock:
            for stage, value in durations_ms.items():
                bucket = self._samples.get(stage)
                if bucket is not None:
                    bucket.append(value)
            self.frames += 1
            self.total_frames += 1

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1

    def take(self) -> Dict[str, object]:
        """The window's samples and counts; starts a new window."""
        with self._lock:
            samples, frames, errors = self._samples, self.frames, self.errors
            self._samples = {s: [] for s in self.stages}
            self.frames = 0
            self.errors = 0
        return {"samples": samples, "frames": frames, "errors": errors}

    @staticmethod
    def summarize(samples: Dict[str, List[float]]) -> Dict[str, Optional[Dict[str, float]]]:
        return {stage: percentiles(values) for stage, values in samples.items()}
