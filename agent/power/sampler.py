"""PowerSampler: reads a PowerReader on its own thread and integrates energy."""

import logging
import threading
import time
from typing import Callable, Dict, Optional

from ..errors import AgentError, ConfigError
from ..threads import BackgroundThread
from .energy import EnergyTotals, TrapezoidIntegrator
from .readers import PowerReader, PowerReading

logger = logging.getLogger(__name__)


class PowerSampler(object):
    """Reads a PowerReader at `sample_hz` on its own thread and integrates energy.

    The total and each rail are integrated by the trapezoid rule; where the reader has a
    hardware energy counter that counter gives the total (`use_counter`). The thread loops on
    the shared `stop.wait(period)` and ends when `stop` is set. Take totals() at the start and
    end of a telemetry interval and call `end.since(start)` for the window.
    """

    def __init__(self, reader: PowerReader, stop: threading.Event, sample_hz: float = 20.0,
                 use_counter: bool = True) -> None:
        if not sample_hz > 0:
            raise ConfigError("config: telemetry.sample_hz: {!r} must be above 0".format(
                sample_hz))
        self.reader = reader
        self.stop = stop
        self.sample_hz = float(sample_hz)
        self.period = 1.0 / self.sample_hz
        self.use_counter = use_counter
        self._cond = threading.Condition(threading.Lock())
        self._total = TrapezoidIntegrator()
        self._rails = {}  # type: Dict[str, TrapezoidIntegrator]
        self._counter_base = None  # type: Optional[float]
        self._counter_j = None  # type: Optional[float]
        self._samples = 0
        self._errors = 0
        self._last = None  # type: Optional[PowerReading]
        self._thread = BackgroundThread(self._run, "power-sampler")
        self.idle_w = None  # type: Optional[float]
        self.idle_spread_w = None  # type: Optional[float]

    # -- the thread

    def start(self) -> "PowerSampler":
        if not self._thread.start():
            raise AgentError("power sampler: start() called twice; create a new PowerSampler")
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the thread to end (after `stop` is set); True when it has ended."""
        return self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.running

    def _run(self) -> None:
        # Waits until the next slot rather than a full period, so slow reads (NVML's energy
        # counter takes milliseconds) do not lower the rate; missed slots are skipped.
        try:
            next_at = time.monotonic()
            self.sample_once()
            while True:
                next_at += self.period
                now = time.monotonic()
                if next_at < now:
                    next_at = now
                if self.stop.wait(next_at - now):
                    break
                self.sample_once()
        finally:
            with self._cond:
                self._cond.notify_all()

    def sample_once(self) -> Optional[PowerReading]:
        """Take and integrate one reading (the thread's step; also usable without the thread)."""
        try:
            reading = self.reader.read()
        except Exception as exc:  # a reader bug must not end telemetry: count and go on
            self._errors += 1
            if self._errors in (1, 10, 100) or self._errors % 1000 == 0:
                logger.warning("power sampler: %s read failed (%d so far): %s",
                               self.reader.source, self._errors, exc)
            return None
        self.add(reading)
        return reading

    def add(self, reading: PowerReading) -> None:
        """Integrate one reading into the running totals."""
        with self._cond:
            self._total.add(reading.ts, reading.total_w)
            for name, watts in reading.rails.items():
                integrator = self._rails.get(name)
                if integrator is None:
                    integrator = self._rails[name] = TrapezoidIntegrator()
                integrator.add(reading.ts, watts)
            if self.use_counter and reading.energy_j is not None:
                if self._counter_base is None:
                    self._counter_base = reading.energy_j
                self._counter_j = reading.energy_j - self._counter_base
            self._samples += 1
            self._last = reading
            self._cond.notify_all()

    # -- snapshots

    def totals(self) -> EnergyTotals:
        """Cumulative joules (total and per rail) up to the last sample, with its time."""
        with self._cond:
            return self._totals_locked()

    def _totals_locked(self) -> EnergyTotals:
        last = self._last
        return EnergyTotals(
            ts=last.ts if last is not None else None,
            trapezoid_j=self._total.joules if self._total.started else None,
            counter_j=self._counter_j,
            rails_j={name: i.joules for name, i in self._rails.items()},
            samples=self._samples, last=last, source=self.reader.source)

    @property
    def errors(self) -> int:
        """Reads that raised (logged, then skipped)."""
        return self._errors

    def wait_for(self, predicate: Callable[[EnergyTotals], bool],
                 timeout: Optional[float] = None) -> bool:
        """Block until predicate(totals()) holds, the thread ends or `timeout` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self._totals_locked()):
                    return True
                if self._thread.ended:
                    return False
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))

    def measure_idle(self, seconds: float, stop: Optional[threading.Event] = None,
                     timeout: Optional[float] = None, parts: int = 1) -> Optional[float]:
        """Mean watts over `seconds` of idle, measured before inference starts, so telemetry
        can report marginal energy (joules - idle_w * seconds). None without power or when
        `stop` is set first. With the thread running its samples are used; otherwise this
        samples in the caller's thread. The result is also kept as `idle_w`.

        With `parts` >= 2 the span is cut into that many equal sub-windows and the standard
        deviation of their means is kept as `idle_spread_w` (the baseline's noise: a marginal
        figure inside it is not a measurement), else `idle_spread_w` is None.
        """
        stop = stop or self.stop
        parts = max(1, int(parts))
        if self.running:
            if timeout is None:
                timeout = 2.0 * seconds + 10.0 * self.period + 1.0
            self.wait_for(lambda t: t.ts is not None or stop.is_set(), timeout=timeout)
        else:
            self.sample_once()
        first = self.totals()
        if first.ts is None:
            return None
        marks = [first]
        for part in range(1, parts + 1):
            mark = self._advance_to(first.ts + seconds * part / parts, stop, timeout)
            if mark is None:
                return None
            marks.append(mark)
        window = marks[-1].since(first)
        if window.seconds < seconds - 1e-6 or window.mean_w is None:
            return None
        means = [b.since(a).mean_w for a, b in zip(marks, marks[1:])]
        self.idle_spread_w = None
        if parts >= 2 and all(m is not None for m in means):
            average = sum(means) / len(means)
            self.idle_spread_w = (sum((m - average) ** 2 for m in means)
                                  / (len(means) - 1)) ** 0.5
        self.idle_w = window.mean_w
        return self.idle_w

    def _advance_to(self, ts: float, stop: threading.Event,
                    timeout: Optional[float]) -> Optional[EnergyTotals]:
        """The totals at the first sample at or after monotonic `ts` (None when stopped)."""
        def reached(t: EnergyTotals) -> bool:
            return t.ts is not None and t.ts >= ts - 1e-9
        if self.running:
            self.wait_for(lambda t: stop.is_set() or reached(t), timeout=timeout)
        else:
            while not reached(self.totals()) and not stop.wait(self.period):
                self.sample_once()
        latest = self.totals()
        return latest if reached(latest) else None
