"""Power, thermal and GPU-load readers, and the energy sampler behind energy per inference.

One module per concern: readers (the PowerReader interface), jtop, ina3221 (Jetson sysfs rails),
nvml, rapl, thermal (temperatures, GPU load), energy (integrals, windows), sampler
(PowerSampler), discovery (telemetry.power -> a reader) and monitor (open_power: reader, running
sampler and idle baseline for a run). sysfs holds the small file helpers they share.

Every reader finds its sensors ONCE from a `root` path (tests pass a tmp_path tree laid out like
sysfs) and then reads them many times; a missing sensor is a normal state, never an exception
from read(). Sources, paths and units follow docs/PLATFORM.md section 4.

Rails vs total: `PowerReading.total_w` is the board input (VDD_IN / POM_5V_IN on a Jetson, the
sum of the GPUs with NVML, the platform or packages with RAPL). On a Jetson the other rails are
parts of the input, so they are never added to it; where no board input rail exists (AGX Xavier,
AGX Orin) the total is None and only the rails are reported.

Coverage: each reader declares what its total measures (`coverage`: "board", "gpu",
"cpu_package", "platform"); energy per inference is a device's figure only where the meter
covers the device doing the inference (readers.covers).
"""

from .discovery import AUTO_ORDER, POWER_KINDS, discover_power
from .energy import (EnergyTotals, EnergyWindow, TrapezoidIntegrator, integrate_trapezoid,
                     within_noise)
from .ina3221 import Ina3221HwmonReader, Ina3221IioReader
from .jtop import JtopPowerReader, parse_jtop_power
from .monitor import PowerMonitor, open_power
from .nvml import NvmlPowerReader
from .rapl import RaplReader
from .readers import (BOARD_INPUT_RAILS, COVERAGE_LABELS, NonePowerReader, PowerReader,
                      PowerReading, PowerSourceUnavailable, coverage_label, covers,
                      split_board_input)
from .sampler import PowerSampler
from .thermal import GpuLoadReader, ThermalReader

__all__ = [
    "AUTO_ORDER", "BOARD_INPUT_RAILS", "COVERAGE_LABELS", "EnergyTotals", "EnergyWindow", "GpuLoadReader",
    "Ina3221HwmonReader", "Ina3221IioReader", "JtopPowerReader", "NonePowerReader",
    "NvmlPowerReader", "POWER_KINDS", "PowerMonitor", "PowerReader", "PowerReading",
    "PowerSampler", "PowerSourceUnavailable", "RaplReader", "ThermalReader",
    "TrapezoidIntegrator", "discover_power", "integrate_trapezoid", "open_power",
    "parse_jtop_power", "split_board_input", "coverage_label", "covers", "within_noise",
]
