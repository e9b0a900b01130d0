"""Per-layer profiling of a loaded TensorRT backend (like `trtexec --dumpProfile`)."""

from typing import Any, Dict, List, Optional

import numpy as np

from ...errors import BackendError


class LayerTime(object):
    """One layer's average time per inference and its share of the total."""

    def __init__(self, name: str, avg_ms: float, percent: float) -> None:
        self.name = name
        self.avg_ms = avg_ms
        self.percent = percent


def _profiler_class(trt: Any) -> Any:
    class LayerProfiler(trt.IProfiler):
        """Sums TensorRT's per-layer times over runs."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.total_ms = {}  # type: Dict[str, float]
            self.order = []  # type: List[str]

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if layer_name not in self.total_ms:
                self.total_ms[layer_name] = 0.0
                self.order.append(layer_name)
            self.total_ms[layer_name] += float(ms)

    return LayerProfiler


def profile(backend: Any, runs: int = 50,
            tensor: Optional[np.ndarray] = None) -> List[LayerTime]:
    """Average per-layer times over `runs` inferences of a loaded TensorRTBackend, slowest
    first. Sets a profiler on the backend's execution context for the runs."""
    if not backend.loaded or backend.closed or backend._context is None:
        raise BackendError("profile(): the TensorRT backend is not loaded")
    runs = max(1, int(runs))
    if tensor is None:
        tensor = np.zeros(backend.package.input.shape, dtype=np.float32)
    backend.infer(tensor)  # warm-up outside the profile
    profiler = _profiler_class(backend._trt)()
    context = backend._context
    context.profiler = profiler
    try:
        for _ in range(runs):
            backend.infer(tensor)
    finally:
        try:
            context.profiler = None
        except (TypeError, AttributeError):
            pass
    total = sum(profiler.total_ms.values()) or 1.0
    rows = [LayerTime(name, profiler.total_ms[name] / runs, 100.0 * profiler.total_ms[name] / total)
            for name in profiler.order]
    rows.sort(key=lambda r: r.avg_ms, reverse=True)
    return rows
