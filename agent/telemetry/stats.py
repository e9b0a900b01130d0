"""Per-stage timings of the pipeline, and their latency percentiles per telemetry window.

The publish thread records one sample per stage per frame; the telemetry thread takes a
snapshot of the window and starts a new one. Percentiles are exact over the window (windows
are small: seconds of frames).
"""

import threading
from typing import Dict, List, Optional, Sequence


STAGES = ("capture", "preprocess", "infer", "postprocess", "end_to_end")


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)
                ) -> Optional[Dict[str, float]]:
    """{'p50': .., 'p95': .., 'p99': ..} in the values' unit, or None when empty."""
    if not len(values):
        return None
    # numpy's default (linear) method, done on a sorted list: np.percentile costs ~100 us a
    # call whatever the size, 5 calls per telemetry message (profiled: a tenth of an idle
    # agent's CPU at 1 fps).
    ordered = sorted(float(v) for v in values)
    last = len(ordered) - 1
    out = {}  # type: Dict[str, float]
    for p in points:
        pos = p / 100.0 * last
        low = int(pos)
        frac = pos - low
        a, b = ordered[low], ordered[min(low + 1, last)]
        # numpy's lerp: from the nearer end, so the result stays within [a, b]
        value = a + (b - a) * frac if frac < 0.5 else b - (b - a) * (1.0 - frac)
        out["p{}".format(int(p))] = round(value, 3)
    return out


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
