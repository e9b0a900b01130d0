"""The power reader interface: PowerReading, PowerReader, NonePowerReader, and its errors.

`PowerReading.total_w` is the board input (VDD_IN / POM_5V_IN on a Jetson, the sum of the GPUs
with NVML, the platform or packages with RAPL); split_board_input takes it out of a Jetson's
rails.
"""

import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import AgentError

# Rails that measure the whole board's input on Jetson modules (PLATFORM.md section 4).
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")

# What a reader's total covers (its `coverage`, telemetry's `power_coverage`), in words.
COVERAGE_LABELS = {
    "board": "whole board",
    "gpu": "GPU only",
    "cpu_package": "CPU package only",
    "platform": "platform (RAPL psys: CPU, memory controller, some of the chipset)",
}
# The devices each coverage includes: energy per inference is that device's figure only when
# the inference runs on one of them.
COVERED_DEVICES = {"board": ("cpu", "gpu", "dla"), "gpu": ("gpu",), "cpu_package": ("cpu",),
                   "platform": ("cpu",)}


def coverage_label(coverage: Optional[str]) -> str:
    """`coverage` in words ("GPU only", "whole board"); "no power meter" for None."""
    if coverage is None:
        return "no power meter"
    return COVERAGE_LABELS.get(coverage, coverage)


def covers(coverage: Optional[str], device: Optional[str]) -> bool:
    """True when a meter of `coverage` includes `device` ("cpu", "gpu", "dla")."""
    return device is not None and device in COVERED_DEVICES.get(coverage or "", ())

Clock = Callable[[], float]


class PowerSourceUnavailable(AgentError):
    """The power source asked for is absent on this machine; the message says what and the fix."""


def split_board_input(rails: Dict[str, float]) -> Tuple[Optional[float], Dict[str, float]]:
    """Take the board input rail (VDD_IN / POM_5V_IN) out of `rails` as the total.

    The other rails are parts of the input and are never added to it (adding them double
    counts). Without a board input rail the total is None.
    """
    total = None  # type: Optional[float]
    others = {}  # type: Dict[str, float]
    for name, watts in rails.items():
        if total is None and name in BOARD_INPUT_RAILS:
            total = watts
        else:
            others[name] = watts
    return total, others


class PowerReading(object):
    """One power sample: monotonic time, board total and per-rail watts, hardware energy counter."""

    __slots__ = ("ts", "total_w", "rails", "energy_j")

    def __init__(self, ts: float, total_w: Optional[float] = None,
                 rails: Optional[Dict[str, float]] = None,
                 energy_j: Optional[float] = None) -> None:
        self.ts = ts
        self.total_w = total_w
        self.rails = dict(rails or {})  # type: Dict[str, float]
        # Cumulative joules of a hardware counter at `ts` (NVML, RAPL), else None.
        self.energy_j = energy_j

    def as_dict(self) -> Dict[str, Any]:
        """The telemetry `power` fields (without `source`)."""
        return {"total_w": self.total_w, "rails": dict(self.rails)}

    def __repr__(self) -> str:
        return "PowerReading(ts={!r}, total_w={!r}, rails={!r}, energy_j={!r})".format(
            self.ts, self.total_w, self.rails, self.energy_j)


class PowerReader(object):
    """Base of all power sources: discovered once in __init__, then `read()` many times.

    read() never raises for a sensor that fails now and then: that rail is left out of the
    reading. `source` names the implementation for telemetry and the `check` doctor;
    `coverage` says what its total measures: "board" (the whole board's input), "gpu" (the
    GPUs only), "cpu_package" (the CPU packages only), "platform" (RAPL psys), or None.
    """

    source = "none"
    coverage = None  # type: Optional[str]

    def __init__(self, clock: Optional[Clock] = None) -> None:
        self._clock = clock or time.monotonic  # type: Clock

    @property
    def has_energy_counter(self) -> bool:
        """True where read() fills `energy_j` from a hardware cumulative counter."""
        return False

    def read(self) -> PowerReading:
        return PowerReading(self._clock())

    def energy_j(self) -> Optional[float]:
        """Cumulative joules of the hardware energy counter now, or None without one."""
        return None

    def describe(self) -> Dict[str, Any]:
        """What this reader found, for the `check` doctor and the info topic."""
        return {"source": self.source, "coverage": self.coverage}

    def close(self) -> None:
        pass


class NonePowerReader(PowerReader):
    """No power source: readings without values. `reasons` says why each source was skipped."""

    source = "none"

    def __init__(self, reasons: Optional[Dict[str, str]] = None,
                 clock: Optional[Clock] = None) -> None:
        super(NonePowerReader, self).__init__(clock)
        self.reasons = dict(reasons or {})  # type: Dict[str, str]

    def describe(self) -> Dict[str, Any]:
        return {"source": self.source, "coverage": None, "skipped": dict(self.reasons)}
