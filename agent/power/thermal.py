"""Board temperatures (thermal zones) and GPU load, read next to power for telemetry."""

import glob
import os
from typing import Dict, List, Optional, Set, Tuple

from .nvml import NvmlPowerReader
from .sysfs import claim_name, numbered, read_number, read_line, under

# Device-tree names of Jetson integrated GPUs (Nano/TX2 gpu, gp10b; Xavier gv11b; Orin ga10b).
JETSON_GPU_NODES = ("gpu", "gp10b", "gv11b", "ga10b")
# Below this a thermal zone reports "offline" (e.g. -256 C on some Jetson zones), not a value.
_THERMAL_OFFLINE_C = -100.0


class ThermalReader(object):
    """Temperatures of `/sys/devices/virtual/thermal/thermal_zone*` in degrees C, by zone type."""

    PATTERN = "sys/devices/virtual/thermal/thermal_zone*"

    def __init__(self, root: str = "/") -> None:
        self._zones = []  # type: List[Tuple[str, str]]
        taken = set()  # type: Set[str]
        for n, zone in numbered(under(root, self.PATTERN), r"thermal_zone(\d+)$"):
            temp = os.path.join(zone, "temp")
            try:
                kind = read_line(os.path.join(zone, "type"))
            except OSError:
                continue
            if not kind or not os.path.exists(temp):
                continue
            self._zones.append((claim_name(kind, taken, str(n)), temp))

    @property
    def zones(self) -> List[str]:
        return [name for name, _ in self._zones]

    def read(self) -> Dict[str, float]:
        out = {}  # type: Dict[str, float]
        for name, path in self._zones:
            try:
                celsius = read_number(path) / 1000.0  # milli-degC
            except (OSError, ValueError):
                continue  # some zones refuse reads while their sensor is off
            if celsius > _THERMAL_OFFLINE_C:
                out[name] = celsius
        return out


class GpuLoadReader(object):
    """GPU busy percent: the Jetson integrated GPU's `load` (0..1000), or NVML utilisation.

    The Jetson GPU is found through `/sys/class/devfreq/*/device/of_node/name` in
    gpu/gp10b/gv11b/ga10b. With no integrated GPU and an NVML reader given, NVML is used
    (mean over that reader's GPUs). `source` is "devfreq", "nvml" or "none".
    """

    PATTERN = "sys/class/devfreq/*"

    def __init__(self, root: str = "/", nvml: Optional[NvmlPowerReader] = None) -> None:
        self._load_path = None  # type: Optional[str]
        self._nvml = None  # type: Optional[NvmlPowerReader]
        self.source = "none"
        for devfreq in sorted(glob.glob(under(root, self.PATTERN))):
            try:
                node = read_line(os.path.join(devfreq, "device", "of_node", "name"))
            except OSError:
                continue
            if node in JETSON_GPU_NODES:
                load = os.path.join(os.path.realpath(os.path.join(devfreq, "device")), "load")
                if os.path.exists(load):
                    self._load_path = load
                    self.source = "devfreq"
                    break
        if self._load_path is None and nvml is not None:
            self._nvml = nvml
            self.source = "nvml"

    def read(self) -> Optional[float]:
        """Percent busy now, or None where no GPU load is readable."""
        if self._load_path is not None:
            try:
                return read_number(self._load_path) / 10.0
            except (OSError, ValueError):
                return None
        if self._nvml is not None:
            values = self._nvml.utilization()
            if values:
                return sum(values.values()) / len(values)
        return None
