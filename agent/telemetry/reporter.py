"""The telemetry thread: one message per interval with fps, latency, CPU, memory and power.

`start_power()` finds the power sensor once (power.open_power) and measures the idle baseline
(before a model loads: the baseline needs an idle board). `power_coverage` says what the
meter covers ("board", "gpu", "cpu_package", "platform"; null without one). `run()` then publishes every `telemetry.interval_s`
and a last, partial window (`final`) when the agent stops. Each window carries only its own
frames and joules.
"""

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import Config
from ..power import PowerSampler, open_power
from .stats import StageStats

log = logging.getLogger("edge-agent")

Publish = Callable[..., Any]  # link.publish(suffix, payload, kind=..)


class TelemetryReporter(object):
    """Builds and publishes telemetry messages; `last` is the newest one (for status lines)."""

    def __init__(self, config: Config, stats: StageStats, publish: Publish, boot: str,
                 stop: threading.Event, sysfs_root: str = "/",
                 dropped: Callable[[], int] = lambda: 0,
                 model_ref: Callable[[], Optional[str]] = lambda: None,
                 problem: Callable[[str, Optional[str]], None] = lambda key, reason: None,
                 listeners: Optional[List[Callable[[Dict[str, Any]], None]]] = None) -> None:
        self.config = config
        self.stats = stats
        self.publish = publish
        self.boot = boot
        self.stop = stop
        self.sysfs_root = sysfs_root  # where power/thermal sensors are discovered
        self.dropped = dropped        # frames the capture slot dropped so far
        self.model_ref = model_ref
        self.problem = problem
        self.seq = 0
        self.last = None  # type: Optional[Dict[str, Any]]
        # Called with every message, in the telemetry thread (live view, systemd status).
        self.listeners = listeners if listeners is not None else []
        # Set by start_power (the tests of the energy windows set them by hand).
        self.power_reader = None  # type: Any
        self.thermal = None  # type: Any
        self.gpu_load = None  # type: Any
        self.sampler = None  # type: Optional[PowerSampler]
        self.idle_w = None  # type: Optional[float]
        self.idle_spread_w = None  # type: Optional[float]
        self.begin_window()

    def start_power(self) -> None:
        """Find the power source once, start the sampler, measure the idle baseline."""
        monitor = open_power(self.config.telemetry, self.stop, root=self.sysfs_root)
        if monitor.problem is not None:
            log.error("%s; telemetry goes on without power", monitor.problem)
            self.problem("power", monitor.problem)
        self.power_reader = monitor.reader
        self.thermal = monitor.thermal
        self.gpu_load = monitor.gpu_load
        self.sampler = monitor.sampler
        self.idle_w = monitor.idle_w
        self.idle_spread_w = monitor.idle_spread_w

    def begin_window(self) -> None:
        """Start the first window now: energy, time, CPU and drop counts."""
        self._energy_start = self.sampler.totals() if self.sampler is not None else None
        self._window_start = time.monotonic()
        self._cpu_last = _cpu_seconds()
        self._dropped_last = 0

    def run(self, publish_done: threading.Event) -> None:
        """The telemetry thread; the final window waits for the publish thread to finish."""
        interval = self.config.telemetry.interval_s
        self.begin_window()
        while not self.stop.wait(interval):
            self.publish_once()
        publish_done.wait(10.0)  # so the last frames land in the final window
        self.publish_once(final=True)

    def publish_once(self, final: bool = False) -> Dict[str, Any]:
        now = time.monotonic()
        window = now - self._window_start
        self._window_start = now
        cpu_now = _cpu_seconds()
        snap = self.stats.take()
        frames = snap["frames"]
        dropped = self.dropped()
        self.seq += 1
        message = {
            "ts": round(time.time(), 3),
            "seq": self.seq,
            "boot": self.boot,
            "window_s": round(window, 3),
            "frames": frames,
            "fps": round(frames / window, 2) if window > 0 else None,
            "dropped": dropped - self._dropped_last,
            "errors": snap["errors"],
            "latency_ms": StageStats.summarize(snap["samples"]),
            "cpu_percent": round(100.0 * (cpu_now - self._cpu_last) / window, 1)
            if window > 0 else None,
            "mem_mb": _rss_mb(),
            "model": self.model_ref(),
        }  # type: Dict[str, Any]
        if final:
            message["final"] = True
        power, self._energy_start = self._power_fields(self._energy_start, frames)
        message.update(power)
        self.last = message
        self._dropped_last = dropped
        self._cpu_last = cpu_now
        self.publish("telemetry", message, kind="telemetry")
        for listener in self.listeners:
            try:
                listener(message)
            except Exception:
                log.exception("telemetry listener failed")
        return message

    def _power_fields(self, start: Any, frames: int) -> Tuple[Dict[str, Any], Any]:
        """The telemetry `power`, `power_coverage`, `energy`, `temperature_c` and `gpu_load`
        fields, and the energy totals that start the next window."""
        coverage = getattr(self.power_reader, "coverage", None)
        fields = {"temperature_c": self.thermal.read() or None,
                  "gpu_load": self.gpu_load.read(),
                  "power_coverage": coverage if self.sampler is not None else None
                  }  # type: Dict[str, Any]
        if self.sampler is None:
            fields["power"] = {"source": "none"}
            fields["energy"] = None
            return fields, None
        now = self.sampler.totals()
        last = now.last
        fields["power"] = {"source": self.power_reader.source,
                           "total_w": _round(last.total_w if last else None, 3),
                           "rails": {k: _round(v, 3) for k, v in (last.rails or {}).items()}
                           if last else {}}
        window = now.since(start) if start is not None else None
        if window is not None:
            energy = window.per_inference(frames, idle_w=self.idle_w,
                                          idle_spread_w=self.idle_spread_w, coverage=coverage)
            energy = {k: _round(v, 4) if isinstance(v, float) else v
                      for k, v in energy.items()}
            energy["mean_w"] = _round(window.mean_w, 3)
            energy["rails_j"] = {k: _round(v, 4) for k, v in (window.rails_j or {}).items()}
            fields["energy"] = energy
        return fields, now


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


def _cpu_seconds() -> float:
    t = os.times()
    return t[0] + t[1]


def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm", "r", encoding="utf-8") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0), 1)
    except (OSError, ValueError, IndexError):
        return None
