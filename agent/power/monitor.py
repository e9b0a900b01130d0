"""Opening the configured power source for a run: reader, running sampler, idle baseline."""

import logging
import threading
from typing import Any, Optional

from ..errors import AgentError
from .discovery import discover_power
from .nvml import NvmlPowerReader
from .readers import NonePowerReader, PowerReader, coverage_label
from .sampler import PowerSampler
from .thermal import GpuLoadReader, ThermalReader

logger = logging.getLogger(__name__)

# Idle measured before inference starts, for the marginal energy: IDLE_S seconds in
# IDLE_PARTS sub-windows, whose spread is the baseline's noise (energy.within_noise).
IDLE_S = 2.0
IDLE_PARTS = 4


class PowerMonitor(object):
    """The board's sensors as a run uses them, found once by open_power().

    `reader` is the power source (a NonePowerReader without one), `sampler` its running
    PowerSampler (None without power), `idle_w` the idle baseline in watts (None when not
    measured) and `idle_spread_w` its noise (the standard deviation of the sub-window means),
    `thermal` and `gpu_load` the temperature and GPU load readers. `problem` is why
    the configured source is missing (an explicit telemetry.power that is absent or broken),
    else None: `auto` finding no sensor is no problem (the NonePowerReader's `reasons` say what
    it tried).
    """

    def __init__(self, reader: PowerReader, problem: Optional[str], thermal: ThermalReader,
                 gpu_load: GpuLoadReader) -> None:
        self.reader = reader
        self.problem = problem
        self.thermal = thermal
        self.gpu_load = gpu_load
        self.sampler = None  # type: Optional[PowerSampler]
        self.idle_w = None  # type: Optional[float]
        self.idle_spread_w = None  # type: Optional[float]

    @property
    def source(self) -> str:
        return self.reader.source

    @property
    def coverage(self) -> Optional[str]:
        """What the power source's total covers ("board", "gpu", ...), None without one."""
        return self.reader.coverage

    def close(self, timeout: float = 2.0) -> None:
        """After the sampler's stop event is set: wait for its thread, then close the reader."""
        if self.sampler is not None:
            self.sampler.join(timeout)
        self.reader.close()


def open_power(telemetry: Any, stop: threading.Event, root: str = "/", idle_s: float = IDLE_S,
               idle_parts: int = IDLE_PARTS) -> PowerMonitor:
    """Find the power source of `telemetry.power` once under `root`, start its sampler at
    `telemetry.sample_hz` on `stop` and measure the idle baseline (`idle_s` seconds in
    `idle_parts` sub-windows, or until `stop` is set). Call it before the model loads: the
    baseline needs an idle board.

    A configured source that is absent raises nothing: the monitor then has no power and its
    `problem` says what and the fix, for the caller to log and report.
    """
    try:
        # NVML's energy counter costs ~3 ms a read; the trapezoid over its instant power
        # field agreed within 0.1 % on an H100 (tools/gpu), so it is not read here.
        reader = discover_power(telemetry.power, root=root, energy_counter=False)
        problem = None  # type: Optional[str]
    except AgentError as exc:
        reader, problem = NonePowerReader(), str(exc)
    nvml = reader if isinstance(reader, NvmlPowerReader) else None
    monitor = PowerMonitor(reader, problem, ThermalReader(root), GpuLoadReader(root, nvml=nvml))
    if reader.source == "none":
        logger.info("power: no readable sensor; energy per inference is not reported")
        return monitor
    monitor.sampler = PowerSampler(reader, stop, sample_hz=telemetry.sample_hz).start()
    monitor.idle_w = monitor.sampler.measure_idle(idle_s, stop, parts=idle_parts)
    monitor.idle_spread_w = monitor.sampler.idle_spread_w if monitor.idle_w is not None else None
    logger.info("power: %s (%s), idle baseline %s W", reader.source,
                coverage_label(reader.coverage), "unknown" if monitor.idle_w is None else
                "{:.2f} +- {:.3f}".format(monitor.idle_w, monitor.idle_spread_w or 0.0))
    return monitor
