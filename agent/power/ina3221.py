"""Jetson INA3221 power rails through sysfs: JetPack 4 iio and JetPack 5/6 hwmon drivers."""

import os
from typing import Any, Dict, List, Optional, Set, Tuple

from .readers import Clock, PowerReader, PowerReading, PowerSourceUnavailable, split_board_input
from .sysfs import claim_name, numbered, read_number, read_line, under, unique_dirs


class _Rail(object):
    """One INA3221 channel: name and the files it is read from."""

    __slots__ = ("name", "power_path", "volt_path", "curr_path")

    def __init__(self, name: str, power_path: Optional[str], volt_path: str,
                 curr_path: str) -> None:
        self.name = name
        self.power_path = power_path
        self.volt_path = volt_path
        self.curr_path = curr_path

    def watts(self) -> float:
        if self.power_path is not None:
            return read_number(self.power_path) / 1000.0          # mW
        return read_number(self.volt_path) * read_number(self.curr_path) / 1e6  # mV x mA


class _RailsReader(PowerReader):
    """What the INA3221 readers share: the rails found once under `root` (one chip per
    PATTERN match), read by name with the board input taken out as the total."""

    PATTERN = ""
    MISSING = ""  # the PowerSourceUnavailable message; {pattern} is PATTERN under root

    def __init__(self, root: str = "/", clock: Optional[Clock] = None) -> None:
        super(_RailsReader, self).__init__(clock)
        rails = []  # type: List[_Rail]
        taken = set()  # type: Set[str]
        for device in unique_dirs(root, self.PATTERN):
            rails.extend(self._device_rails(device, taken))
        if not rails:
            raise PowerSourceUnavailable(self.MISSING.format(pattern=under(root, self.PATTERN)))
        self._rails = rails

    def _device_rails(self, device: str, taken: Set[str]) -> List[_Rail]:
        """The rails of one chip's directory, named uniquely among `taken`."""
        raise NotImplementedError

    @staticmethod
    def _labels(device: str, pattern: str, regex: str) -> List[Tuple[int, str]]:
        """(N, text) of a chip's channel label files, by N; unreadable or empty ones left out."""
        out = []  # type: List[Tuple[int, str]]
        for n, path in numbered(os.path.join(device, pattern), regex):
            try:
                text = read_line(path)
            except OSError:
                continue
            if text:
                out.append((n, text))
        return out

    def read(self) -> PowerReading:
        ts = self._clock()
        values = {}  # type: Dict[str, float]
        for rail in self._rails:
            try:
                values[rail.name] = rail.watts()
            except (OSError, ValueError):
                continue  # a channel that fails now is left out of this reading
        total, rails = split_board_input(values)
        return PowerReading(ts, total, rails)

    def describe(self) -> Dict[str, Any]:
        return {"source": self.source, "rails": [r.name for r in self._rails]}


class Ina3221IioReader(_RailsReader):
    """INA3221 through the JetPack 4 iio driver (Nano, TX2, AGX Xavier): mW, mV, mA files.

    Rail names come from `rail_name_N`; channel N reads `in_powerN_input` (or voltage x current).
    """

    source = "ina3221-iio"
    coverage = "board"  # the total is the board input rail VDD_IN / POM_5V_IN
    PATTERN = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
    MISSING = ("power: iio: no INA3221 rails at {pattern} (rail_name_N files; JetPack 4 boards: "
               "Nano, TX2, AGX Xavier); fix: use telemetry.power: hwmon on JetPack 5/6, or auto")

    def _device_rails(self, device: str, taken: Set[str]) -> List[_Rail]:
        chip = os.path.basename(os.path.dirname(device))
        rails = []  # type: List[_Rail]
        for n, name in self._labels(device, "rail_name_*", r"rail_name_(\d+)$"):
            power = os.path.join(device, "in_power{}_input".format(n))
            volt = os.path.join(device, "in_voltage{}_input".format(n))
            curr = os.path.join(device, "in_current{}_input".format(n))
            has_power = os.path.exists(power)
            if not (has_power or (os.path.exists(volt) and os.path.exists(curr))):
                continue
            rails.append(_Rail(claim_name(name, taken, chip), power if has_power else None,
                               volt, curr))
        return rails


class Ina3221HwmonReader(_RailsReader):
    """INA3221 through the JetPack 5/6 hwmon driver: `inN_label`, `inN_input` mV, `currN_input` mA.

    Labels are read from the files (Orin labels are not fixed); "NC" channels (not connected)
    and the shunt-voltage sum channel (in7, in microvolts, no current) are skipped.
    """

    source = "ina3221-hwmon"
    coverage = "board"  # the total is the board input rail VDD_IN / POM_5V_IN
    PATTERN = "sys/bus/i2c/devices/*/hwmon/hwmon*"
    MISSING = ("power: hwmon: no INA3221 rails at {pattern}/in*_label (JetPack 5/6 boards); fix: "
               "use telemetry.power: iio on JetPack 4, or auto")
    SUM_CHANNEL = 7

    def _device_rails(self, device: str, taken: Set[str]) -> List[_Rail]:
        chip = os.path.basename(os.path.dirname(os.path.dirname(device)))
        rails = []  # type: List[_Rail]
        for n, label in self._labels(device, "in*_label", r"in(\d+)_label$"):
            if "NC" in label:
                continue  # not connected (Orin boards label unused channels NC)
            if n == self.SUM_CHANNEL or "sum of shunt" in label.lower():
                continue  # the shunt-voltage sum is not a rail
            volt = os.path.join(device, "in{}_input".format(n))
            curr = os.path.join(device, "curr{}_input".format(n))
            if not (os.path.exists(volt) and os.path.exists(curr)):
                continue
            rails.append(_Rail(claim_name(label, taken, chip), None, volt, curr))
        return rails
