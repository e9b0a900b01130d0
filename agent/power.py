"""Power, thermal and GPU-load readers, and the energy sampler behind energy per inference.

Every reader finds its sensors ONCE from a `root` path (tests pass a tmp_path tree laid out like
sysfs) and then reads them many times; a missing sensor is a normal state, never an exception
from read(). Sources, paths and units follow docs/PLATFORM.md section 4.

Rails vs total: `PowerReading.total_w` is the board input (VDD_IN / POM_5V_IN on a Jetson, the
sum of the GPUs with NVML, the platform or packages with RAPL). On a Jetson the other rails are
parts of the input, so they are never added to it; where no board input rail exists (AGX Xavier,
AGX Orin) the total is None and only the rails are reported.
"""

import glob
import logging
import os
import re
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import AgentError, ConfigError

logger = logging.getLogger(__name__)

POWER_KINDS = ("auto", "jtop", "iio", "hwmon", "nvml", "rapl", "none")
# Order in which `auto` tries the sources: the first one present wins.
AUTO_ORDER = ("jtop", "iio", "hwmon", "nvml", "rapl")
# Rails that measure the whole board's input on Jetson modules (PLATFORM.md section 4).
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
# Device-tree names of Jetson integrated GPUs (Nano/TX2 gpu, gp10b; Xavier gv11b; Orin ga10b).
JETSON_GPU_NODES = ("gpu", "gp10b", "gv11b", "ga10b")
# Below this a thermal zone reports "offline" (e.g. -256 C on some Jetson zones), not a value.
_THERMAL_OFFLINE_C = -100.0

Clock = Callable[[], float]


class PowerSourceUnavailable(AgentError):
    """The power source asked for is absent on this machine; the message says what and the fix."""


# --------------------------------------------------------------------------------------------
# small sysfs helpers


def _under(root: str, relative: str) -> str:
    """`relative` (a sysfs path without the leading slash) inside `root`."""
    return os.path.join(root, relative)


def _read_text(path: str) -> str:
    """A sysfs attribute's text; device-tree files end with NUL, which is dropped."""
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read().replace("\x00", "").strip()


def _read_number(path: str) -> float:
    """The first number in a sysfs attribute (some append units, e.g. '32760 ma')."""
    text = _read_text(path)
    if not text:
        raise ValueError("{}: empty".format(path))
    return float(text.split()[0])


def _unique_name(name: str, taken: Dict[str, Any], qualifier: str) -> str:
    if name not in taken:
        return name
    return "{}@{}".format(name, qualifier)


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


# --------------------------------------------------------------------------------------------
# readings and the reader interface


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
    reading. `source` names the implementation for telemetry and the `check` doctor.
    """

    source = "none"

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
        return {"source": self.source}

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
        return {"source": self.source, "skipped": dict(self.reasons)}


# --------------------------------------------------------------------------------------------
# jtop (jetson-stats)


def parse_jtop_power(power: Any) -> Tuple[Optional[float], Dict[str, float]]:
    """jtop's `power` property -> (board total W or None, {rail: W}).

    jtop 4.x: {'rail': {name: {'volt','curr','power','avg',...}}, 'tot': {...}} in mV/mA/mW;
    its `tot` is the board input rail when it carries that rail's `name`, else the sum of the
    rails (jetson-stats jtop/core/power.py total_power), which is not a board reading.
    jtop 3.x: (total, rails) with {'cur','avg'} mW; jtop 3.x moved the input rail (renamed
    'IN' / '5V IN') into `total` or else summed the rails, so a total equal to the rails' sum
    is that sum. `avg` is jtop's (prev+cur)/2, never used: energy comes from our own sampler.
    """
    if isinstance(power, tuple) and len(power) == 2:
        total_d, rails_d = power
        rails = {}  # type: Dict[str, float]
        for name, values in (rails_d or {}).items():
            if isinstance(values, dict) and values.get("cur") is not None:
                rails[str(name)] = float(values["cur"]) / 1000.0
        board, rails = split_board_input(rails)
        if board is not None:
            return board, rails
        total = None  # type: Optional[float]
        if isinstance(total_d, dict) and total_d.get("cur") is not None:
            total = float(total_d["cur"]) / 1000.0
            rails_sum = sum(rails.values())
            if len(rails) > 1 and abs(total - rails_sum) < 1e-6:
                total = None
        return total, rails
    if isinstance(power, dict):
        rails = {}
        for name, values in (power.get("rail") or {}).items():
            watts = _jtop4_watts(values)
            if watts is not None:
                rails[str(name)] = watts
        board, rails = split_board_input(rails)
        tot = power.get("tot")
        if board is None and isinstance(tot, dict) and tot.get("name") in BOARD_INPUT_RAILS:
            board = _jtop4_watts(tot)
        return board, rails
    return None, {}


def _jtop4_watts(values: Any) -> Optional[float]:
    if not isinstance(values, dict) or values.get("online") is False:
        return None
    if values.get("power") is not None:
        return float(values["power"]) / 1000.0
    if values.get("volt") is not None and values.get("curr") is not None:
        return float(values["volt"]) * float(values["curr"]) / 1e6
    return None


class JtopPowerReader(PowerReader):
    """Power through the jtop service (jetson-stats 3.x or 4.x).

    `jtop_factory()` returns an unstarted jtop object (default: `jtop.jtop(interval=...)`); it
    is started here. When the service socket is absent jtop raises JtopException: this reader
    is then unavailable and `auto` goes on to the raw sensors. jtop refreshes only every
    `interval` seconds, so faster sampling sees repeated values.
    """

    source = "jtop"

    def __init__(self, jtop_factory: Optional[Callable[[], Any]] = None, interval: float = 0.5,
                 clock: Optional[Clock] = None) -> None:
        super(JtopPowerReader, self).__init__(clock)
        if jtop_factory is None:
            try:
                import jtop as jtop_module  # lazily: only Jetson boards have it
            except Exception as exc:  # ImportError, or a broken install
                raise PowerSourceUnavailable(
                    "power: jtop: the jtop module (jetson-stats) cannot be imported ({}); fix: "
                    "`sudo pip3 install -U jetson-stats` and log in again, or set "
                    "telemetry.power to iio/hwmon".format(exc))

            def jtop_factory() -> Any:
                return jtop_module.jtop(interval=interval)
        self._jtop = None  # type: Any
        try:
            handle = jtop_factory()
            handle.start()
        except Exception as exc:  # JtopException, or the OSError jtop re-raises: no service
            raise PowerSourceUnavailable(
                "power: jtop: the jtop service is not reachable at /run/jtop.sock ({}: {}); fix: "
                "`sudo systemctl restart jtop.service` and add this user to group `jtop`"
                .format(type(exc).__name__, exc))
        self._jtop = handle
        total, rails = self._parse()
        if total is None and not rails:
            self.close()
            raise PowerSourceUnavailable(
                "power: jtop: the jtop service reports no power rails on this board; fix: "
                "set telemetry.power to none")

    def _parse(self) -> Tuple[Optional[float], Dict[str, float]]:
        try:
            return parse_jtop_power(self._jtop.power)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            logger.debug("jtop power not readable: %s", exc)
            return None, {}

    def read(self) -> PowerReading:
        ts = self._clock()
        total, rails = self._parse()
        return PowerReading(ts, total, rails)

    def close(self) -> None:
        handle, self._jtop = self._jtop, None
        if handle is not None:
            try:
                handle.close()
            except Exception as exc:  # closing a dead service connection must not fail shutdown
                logger.debug("jtop close: %s", exc)


# --------------------------------------------------------------------------------------------
# INA3221 through sysfs


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
            return _read_number(self.power_path) / 1000.0          # mW
        return _read_number(self.volt_path) * _read_number(self.curr_path) / 1e6  # mV x mA


class _RailsReader(PowerReader):
    """Shared read() of the INA3221 readers: rails by name, board input taken out as the total."""

    def __init__(self, rails: List[_Rail], clock: Optional[Clock]) -> None:
        super(_RailsReader, self).__init__(clock)
        self._rails = rails

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
    PATTERN = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"

    def __init__(self, root: str = "/", clock: Optional[Clock] = None) -> None:
        rails = []  # type: List[_Rail]
        taken = {}  # type: Dict[str, Any]
        seen = set()
        for device in sorted(glob.glob(_under(root, self.PATTERN))):
            real = os.path.realpath(device)
            if real in seen:
                continue
            seen.add(real)
            chip = os.path.basename(os.path.dirname(device))
            for name_file in sorted(glob.glob(os.path.join(device, "rail_name_*"))):
                match = re.match(r"rail_name_(\d+)$", os.path.basename(name_file))
                if not match:
                    continue
                n = match.group(1)
                try:
                    name = _read_text(name_file)
                except OSError:
                    continue
                power = os.path.join(device, "in_power{}_input".format(n))
                volt = os.path.join(device, "in_voltage{}_input".format(n))
                curr = os.path.join(device, "in_current{}_input".format(n))
                has_power = os.path.exists(power)
                if not name or not (has_power or (os.path.exists(volt) and os.path.exists(curr))):
                    continue
                name = _unique_name(name, taken, chip)
                taken[name] = True
                rails.append(_Rail(name, power if has_power else None, volt, curr))
        if not rails:
            raise PowerSourceUnavailable(
                "power: iio: no INA3221 rails at {} (rail_name_N files; JetPack 4 boards: Nano, "
                "TX2, AGX Xavier); fix: use telemetry.power: hwmon on JetPack 5/6, or auto"
                .format(_under(root, self.PATTERN)))
        super(Ina3221IioReader, self).__init__(rails, clock)


class Ina3221HwmonReader(_RailsReader):
    """INA3221 through the JetPack 5/6 hwmon driver: `inN_label`, `inN_input` mV, `currN_input` mA.

    Labels are read from the files (Orin labels are not fixed); "NC" channels (not connected)
    and the shunt-voltage sum channel (in7, in microvolts, no current) are skipped.
    """

    source = "ina3221-hwmon"
    PATTERN = "sys/bus/i2c/devices/*/hwmon/hwmon*"
    SUM_CHANNEL = 7

    def __init__(self, root: str = "/", clock: Optional[Clock] = None) -> None:
        rails = []  # type: List[_Rail]
        taken = {}  # type: Dict[str, Any]
        seen = set()
        for hwmon in sorted(glob.glob(_under(root, self.PATTERN))):
            real = os.path.realpath(hwmon)
            if real in seen:
                continue
            seen.add(real)
            chip = os.path.basename(os.path.dirname(os.path.dirname(hwmon)))
            labels = []
            for label_file in glob.glob(os.path.join(hwmon, "in*_label")):
                match = re.match(r"in(\d+)_label$", os.path.basename(label_file))
                if match:
                    labels.append((int(match.group(1)), label_file))
            for n, label_file in sorted(labels):
                try:
                    label = _read_text(label_file)
                except OSError:
                    continue
                if not label or "NC" in label:
                    continue  # not connected (Orin boards label unused channels NC)
                if n == self.SUM_CHANNEL or "sum of shunt" in label.lower():
                    continue  # the shunt-voltage sum is not a rail
                volt = os.path.join(hwmon, "in{}_input".format(n))
                curr = os.path.join(hwmon, "curr{}_input".format(n))
                if not (os.path.exists(volt) and os.path.exists(curr)):
                    continue
                name = _unique_name(label, taken, chip)
                taken[name] = True
                rails.append(_Rail(name, None, volt, curr))
        if not rails:
            raise PowerSourceUnavailable(
                "power: hwmon: no INA3221 rails at {}/in*_label (JetPack 5/6 boards); fix: use "
                "telemetry.power: iio on JetPack 4, or auto".format(_under(root, self.PATTERN)))
        super(Ina3221HwmonReader, self).__init__(rails, clock)


# --------------------------------------------------------------------------------------------
# NVML (discrete NVIDIA GPUs)


def _import_nvml() -> Any:
    try:
        import pynvml  # lazily: only machines with an NVIDIA driver need it
    except Exception as exc:  # ImportError, or a broken install
        raise PowerSourceUnavailable(
            "power: nvml: the pynvml module cannot be imported ({}); fix: "
            "`pip install nvidia-ml-py`".format(exc))
    return pynvml


class NvmlPowerReader(PowerReader):
    """Board power of discrete NVIDIA GPUs through NVML (`pynvml`, package nvidia-ml-py).

    Rails are `gpu<index>`, the total is their sum. `nvmlDeviceGetPowerUsage` (mW) is what
    nvidia-smi calls power.draw, a ~1 s average on recent drivers: on an H100 its trapezoid
    missed 2 % of a 20 s burst that the instant field (NVML_FI_DEV_POWER_INSTANT) caught
    within 0.1 %, so `power_field="auto"` uses the instant field where the driver has it.
    Where every GPU has the total-energy counter (mJ, Volta and later) readings carry it as
    `energy_j`. Reading that counter is slow: ~3 ms a call on an H100 (driver 580.159), about
    7 % of a core at 20 Hz, against ~9 us for a read() without it; `energy_counter=False`
    skips it (the trapezoid of the instant field was within 0.1 % of it there).
    """

    source = "nvml"
    POWER_FIELDS = ("auto", "usage", "instant")

    def __init__(self, nvml_module: Any = None, indices: Optional[Sequence[int]] = None,
                 power_field: str = "auto", energy_counter: bool = True,
                 clock: Optional[Clock] = None) -> None:
        super(NvmlPowerReader, self).__init__(clock)
        if power_field not in self.POWER_FIELDS:
            raise ConfigError("power: nvml: power_field {!r} is not one of {}".format(
                power_field, ", ".join(self.POWER_FIELDS)))
        self.nvml = nvml_module if nvml_module is not None else _import_nvml()
        self._error = getattr(self.nvml, "NVMLError", Exception)
        try:
            self.nvml.nvmlInit()
        except self._error as exc:
            raise PowerSourceUnavailable(
                "power: nvml: NVML did not initialise ({}); fix: install or load the NVIDIA "
                "driver (nvidia-smi must work), or set telemetry.power to another source"
                .format(exc))
        self._initialised = True
        try:
            self._discover(indices, power_field, energy_counter)
        except Exception:
            self.close()
            raise

    def _discover(self, indices: Optional[Sequence[int]], power_field: str,
                  energy_counter: bool) -> None:
        nvml = self.nvml
        count = nvml.nvmlDeviceGetCount()
        wanted = list(range(count)) if indices is None else [int(i) for i in indices]
        self.handles = []  # type: List[Tuple[str, Any]]
        self.names = {}  # type: Dict[str, str]
        skipped = []
        for index in wanted:
            if index < 0 or index >= count:
                raise PowerSourceUnavailable(
                    "power: nvml: GPU index {} does not exist ({} GPUs here); fix: use indices "
                    "0..{}".format(index, count, count - 1))
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
            except self._error as exc:  # e.g. NVMLError_NotSupported on some boards
                skipped.append("GPU {}: {}".format(index, exc))
                continue
            rail = "gpu{}".format(index)
            self.handles.append((rail, handle))
            try:
                name = nvml.nvmlDeviceGetName(handle)
                self.names[rail] = name.decode() if isinstance(name, bytes) else str(name)
            except self._error:
                self.names[rail] = rail
        if not self.handles:
            raise PowerSourceUnavailable(
                "power: nvml: no GPU reports its power draw ({} GPUs; {}); fix: set "
                "telemetry.power to another source".format(count, "; ".join(skipped) or "none"))
        self._instant_field = None  # type: Optional[int]
        if power_field in ("auto", "instant"):
            field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
            if field is not None and all(self._field_mw(h, field) is not None
                                         for _, h in self.handles):
                self._instant_field = field
            elif power_field == "instant":
                logger.info("NVML instant power not available; using nvmlDeviceGetPowerUsage")
        self._counter = bool(energy_counter)
        for _, handle in self.handles if self._counter else []:
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except (self._error, AttributeError):
                self._counter = False  # pre-Volta or not exposed: integrate instead
                break

    def _field_mw(self, handle: Any, field: int) -> Optional[float]:
        try:
            value = self.nvml.nvmlDeviceGetFieldValues(handle, [field])[0]
        except (self._error, AttributeError):
            return None
        if getattr(value, "nvmlReturn", 0) != 0:
            return None
        return float(value.value.uiVal)

    @property
    def has_energy_counter(self) -> bool:
        return self._counter

    @property
    def power_field(self) -> str:
        return "instant" if self._instant_field is not None else "usage"

    def read(self) -> PowerReading:
        ts = self._clock()
        rails = {}  # type: Dict[str, float]
        for rail, handle in self.handles:
            try:
                if self._instant_field is not None:
                    mw = self._field_mw(handle, self._instant_field)
                    if mw is None:
                        continue
                else:
                    mw = self.nvml.nvmlDeviceGetPowerUsage(handle)
            except self._error:
                continue
            rails[rail] = float(mw) / 1000.0
        total = sum(rails.values()) if len(rails) == len(self.handles) else None
        return PowerReading(ts, total, rails, self.energy_j() if self._counter else None)

    def energy_j(self) -> Optional[float]:
        if not self._counter:
            return None
        millijoules = 0
        for _, handle in self.handles:
            try:
                millijoules += self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except self._error:
                return None
        return millijoules / 1000.0

    def utilization(self) -> Dict[str, float]:
        """GPU busy percent per rail (nvmlDeviceGetUtilizationRates().gpu)."""
        out = {}  # type: Dict[str, float]
        for rail, handle in self.handles:
            try:
                out[rail] = float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except self._error:
                continue
        return out

    def describe(self) -> Dict[str, Any]:
        return {"source": self.source, "gpus": dict(self.names),
                "energy_counter": self._counter, "power_field": self.power_field}

    def close(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self.nvml.nvmlShutdown()
            except self._error as exc:
                logger.debug("nvmlShutdown: %s", exc)


# --------------------------------------------------------------------------------------------
# RAPL (x86 CPUs)


class _RaplDomain(object):
    """One powercap domain: a wrapping microjoule counter made monotonic."""

    __slots__ = ("name", "path", "top", "max_uj", "last_raw", "acc_uj")

    def __init__(self, name: str, path: str, top: bool, max_uj: float, raw: float) -> None:
        self.name = name
        self.path = path
        self.top = top
        self.max_uj = max_uj
        self.last_raw = raw
        self.acc_uj = 0.0

    def poll(self) -> None:
        raw = _read_number(self.path)
        delta = raw - self.last_raw
        if delta < 0:  # the counter wrapped at max_energy_range_uj
            delta += self.max_uj
        self.acc_uj += delta
        self.last_raw = raw


class RaplReader(PowerReader):
    """CPU energy through `/sys/class/powercap/intel-rapl:*/energy_uj` (Intel; recent AMD too).

    RAPL has counters, not power: read() gives the mean watts since the previous read(), and
    the counter as `energy_j`. Wraparound is undone with `max_energy_range_uj`. Since Linux
    5.10 energy_uj is root-only on most distributions: unreadable domains are not available.
    Total: the `psys` (platform) domain where present, else the sum of the `package-*` domains.
    """

    source = "rapl"
    PATTERN = "sys/class/powercap/intel-rapl:*"

    def __init__(self, root: str = "/", clock: Optional[Clock] = None) -> None:
        super(RaplReader, self).__init__(clock)
        self._domains = []  # type: List[_RaplDomain]
        unreadable = []
        names = {}  # type: Dict[str, str]
        paths = sorted(glob.glob(_under(root, self.PATTERN)))
        for path in paths:
            base = os.path.basename(path)
            try:
                names[base] = _read_text(os.path.join(path, "name"))
            except OSError:
                names[base] = base
        for path in paths:
            base = os.path.basename(path)
            energy = os.path.join(path, "energy_uj")
            if not os.path.exists(energy):
                continue
            try:
                raw = _read_number(energy)
            except (OSError, ValueError) as exc:
                unreadable.append("{} ({})".format(energy, type(exc).__name__))
                continue
            try:
                max_uj = _read_number(os.path.join(path, "max_energy_range_uj"))
            except (OSError, ValueError):
                max_uj = 2.0 ** 32  # the counter register width when the range is not exposed
            parts = base.split(":")
            top = len(parts) == 2
            name = names[base]
            if not top:
                name = "{}/{}".format(names.get(":".join(parts[:2]), parts[1]), name)
            self._domains.append(_RaplDomain(name, energy, top, max_uj, raw))
        if not self._domains:
            if unreadable:
                raise PowerSourceUnavailable(
                    "power: rapl: {} is not readable by this user (root-only since Linux 5.10); "
                    "fix: run the agent as root or grant read access with a udev rule, or set "
                    "telemetry.power to another source".format(", ".join(unreadable)))
            raise PowerSourceUnavailable(
                "power: rapl: no {}/energy_uj (not an x86 machine with powercap RAPL); fix: "
                "`sudo modprobe intel_rapl_common`, or set telemetry.power to another source"
                .format(_under(root, self.PATTERN)))
        psys = [d for d in self._domains if d.top and d.name.startswith("psys")]
        packages = [d for d in self._domains if d.top and d.name.startswith("package")]
        self._total_domains = psys[:1] or packages or [d for d in self._domains if d.top]
        self._lock = threading.Lock()
        self._last_read = (self._clock(), self._snapshot())

    def _poll(self) -> None:
        for domain in self._domains:
            try:
                domain.poll()
            except (OSError, ValueError):
                continue  # the next successful poll catches up: the counter is cumulative

    def _snapshot(self) -> Dict[str, float]:
        return {d.name: d.acc_uj for d in self._domains}

    @property
    def has_energy_counter(self) -> bool:
        return bool(self._total_domains)

    def read(self) -> PowerReading:
        with self._lock:
            ts = self._clock()
            self._poll()
            now = self._snapshot()
            last_ts, last = self._last_read
            self._last_read = (ts, now)
            energy = self._total_uj() / 1e6
        dt = ts - last_ts
        rails = {}  # type: Dict[str, float]
        if dt > 0:
            for name, acc in now.items():
                rails[name] = (acc - last[name]) / 1e6 / dt
        total = None  # type: Optional[float]
        if dt > 0 and self._total_domains:
            total = sum(rails[d.name] for d in self._total_domains)
        return PowerReading(ts, total, rails, energy)

    def _total_uj(self) -> float:
        return sum(d.acc_uj for d in self._total_domains)

    def energy_j(self) -> Optional[float]:
        """Joules of the total domains since this reader was created (wraparound undone)."""
        with self._lock:
            self._poll()
            return self._total_uj() / 1e6

    def describe(self) -> Dict[str, Any]:
        return {"source": self.source, "domains": [d.name for d in self._domains],
                "total": [d.name for d in self._total_domains]}


# --------------------------------------------------------------------------------------------
# discovery


def _make_reader(kind: str, root: str, jtop_factory: Optional[Callable[[], Any]],
                 nvml_module: Any, energy_counter: bool = True) -> PowerReader:
    if kind == "jtop":
        return JtopPowerReader(jtop_factory)
    if kind == "iio":
        return Ina3221IioReader(root)
    if kind == "hwmon":
        return Ina3221HwmonReader(root)
    if kind == "nvml":
        return NvmlPowerReader(nvml_module, energy_counter=energy_counter)
    if kind == "rapl":
        return RaplReader(root)
    return NonePowerReader()


def discover_power(kind: str = "auto", root: str = "/",
                   jtop_factory: Optional[Callable[[], Any]] = None,
                   nvml_module: Any = None, energy_counter: bool = True) -> PowerReader:
    """The power reader for `kind` (telemetry.power). `auto` picks the first source present in
    the order jtop, iio, hwmon, nvml, rapl, else a NonePowerReader whose `reasons` say why;
    an explicit kind that is absent raises PowerSourceUnavailable naming what and the fix.
    """
    if kind not in POWER_KINDS:
        raise ConfigError("config: telemetry.power: {!r} is not one of {}".format(
            kind, ", ".join(POWER_KINDS)))
    if kind != "auto":
        return _make_reader(kind, root, jtop_factory, nvml_module, energy_counter)
    reasons = {}  # type: Dict[str, str]
    for candidate in AUTO_ORDER:
        try:
            reader = _make_reader(candidate, root, jtop_factory, nvml_module, energy_counter)
        except PowerSourceUnavailable as exc:
            reasons[candidate] = str(exc)
            continue
        logger.info("power source: %s", reader.source)
        return reader
    logger.info("no power source found; energy per inference will be null")
    return NonePowerReader(reasons)


# --------------------------------------------------------------------------------------------
# thermal zones and GPU load


class ThermalReader(object):
    """Temperatures of `/sys/devices/virtual/thermal/thermal_zone*` in degrees C, by zone type."""

    PATTERN = "sys/devices/virtual/thermal/thermal_zone*"

    def __init__(self, root: str = "/") -> None:
        self._zones = []  # type: List[Tuple[str, str]]
        taken = {}  # type: Dict[str, Any]
        zones = []
        for zone in glob.glob(_under(root, self.PATTERN)):
            match = re.search(r"thermal_zone(\d+)$", zone)
            if match:
                zones.append((int(match.group(1)), zone))
        for n, zone in sorted(zones):
            temp = os.path.join(zone, "temp")
            try:
                kind = _read_text(os.path.join(zone, "type"))
            except OSError:
                continue
            if not kind or not os.path.exists(temp):
                continue
            name = _unique_name(kind, taken, str(n))
            taken[name] = True
            self._zones.append((name, temp))

    @property
    def zones(self) -> List[str]:
        return [name for name, _ in self._zones]

    def read(self) -> Dict[str, float]:
        out = {}  # type: Dict[str, float]
        for name, path in self._zones:
            try:
                celsius = _read_number(path) / 1000.0  # milli-degC
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
        for devfreq in sorted(glob.glob(_under(root, self.PATTERN))):
            try:
                node = _read_text(os.path.join(devfreq, "device", "of_node", "name"))
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
                return _read_number(self._load_path) / 10.0
            except (OSError, ValueError):
                return None
        if self._nvml is not None:
            values = self._nvml.utilization()
            if values:
                return sum(values.values()) / len(values)
        return None


# --------------------------------------------------------------------------------------------
# energy integration


class TrapezoidIntegrator(object):
    """Running trapezoid-rule integral of one (time, watts) signal, in joules.

    Samples with no value are bridged (the next value joins the last one); samples whose time
    does not advance add nothing.
    """

    __slots__ = ("joules", "seconds", "last_ts", "last_w")

    def __init__(self) -> None:
        self.joules = 0.0
        self.seconds = 0.0
        self.last_ts = None  # type: Optional[float]
        self.last_w = None  # type: Optional[float]

    def add(self, ts: float, watts: Optional[float]) -> None:
        if watts is None:
            return
        if self.last_ts is not None and self.last_w is not None:
            dt = ts - self.last_ts
            if dt <= 0:
                return
            self.joules += 0.5 * (watts + self.last_w) * dt
            self.seconds += dt
        self.last_ts = ts
        self.last_w = watts

    @property
    def started(self) -> bool:
        return self.last_ts is not None


def integrate_trapezoid(samples: Iterable[Tuple[float, Optional[float]]]) -> float:
    """Joules of a (monotonic seconds, watts) trace by the trapezoid rule; None values bridged."""
    integrator = TrapezoidIntegrator()
    for ts, watts in samples:
        integrator.add(ts, watts)
    return integrator.joules


class EnergyWindow(object):
    """Energy between two EnergyTotals snapshots: joules, seconds, mean watts, per-rail joules."""

    __slots__ = ("joules", "seconds", "mean_w", "rails_j", "samples", "method")

    def __init__(self, joules: Optional[float], seconds: float, rails_j: Dict[str, float],
                 samples: int, method: Optional[str]) -> None:
        self.joules = joules
        self.seconds = seconds
        self.mean_w = joules / seconds if joules is not None and seconds > 0 else None
        self.rails_j = rails_j
        self.samples = samples
        self.method = method  # "counter", "trapezoid" or None (no power)

    def marginal_joules(self, idle_w: Optional[float]) -> Optional[float]:
        """Joules above the idle baseline: joules - idle_w * seconds."""
        if self.joules is None or idle_w is None:
            return None
        return self.joules - idle_w * self.seconds

    def per_inference(self, n: int, idle_w: Optional[float] = None) -> Dict[str, Optional[float]]:
        """The telemetry `energy` fields for `n` inferences in this window (None when n == 0 or
        there is no power); with `idle_w`, also the marginal (above idle) figures."""
        out = {"joules": self.joules, "mj_per_inference": None,
               "inferences_per_joule": None}  # type: Dict[str, Optional[float]]
        if self.joules is not None and n > 0:
            out["mj_per_inference"] = 1000.0 * self.joules / n
            if self.joules > 0:
                out["inferences_per_joule"] = n / self.joules
        if idle_w is not None:
            marginal = self.marginal_joules(idle_w)
            out["idle_w"] = idle_w
            out["marginal_joules"] = marginal
            out["marginal_mj_per_inference"] = (
                1000.0 * marginal / n if marginal is not None and n > 0 else None)
        return out

    def __repr__(self) -> str:
        return "EnergyWindow(joules={!r}, seconds={!r}, mean_w={!r}, samples={!r})".format(
            self.joules, self.seconds, self.mean_w, self.samples)


class EnergyTotals(object):
    """Cumulative energy at one instant, as the sampler saw it; subtract two with since().

    `ts` is the time of the last sample integrated; `total_j` is from the hardware counter
    where the reader has one (`method` "counter"), else the trapezoid integral of total_w.
    Both integrals stay available as `counter_j` and `trapezoid_j`.
    """

    __slots__ = ("ts", "total_j", "trapezoid_j", "counter_j", "rails_j", "samples", "last",
                 "method", "source")

    def __init__(self, ts: Optional[float], trapezoid_j: Optional[float],
                 counter_j: Optional[float], rails_j: Dict[str, float], samples: int,
                 last: Optional[PowerReading], source: str) -> None:
        self.ts = ts
        self.trapezoid_j = trapezoid_j
        self.counter_j = counter_j
        self.total_j = None  # type: Optional[float]
        self.method = None  # type: Optional[str]
        if counter_j is not None:
            self.total_j, self.method = counter_j, "counter"
        elif trapezoid_j is not None:
            self.total_j, self.method = trapezoid_j, "trapezoid"
        self.rails_j = rails_j
        self.samples = samples
        self.last = last
        self.source = source

    def since(self, earlier: "EnergyTotals") -> EnergyWindow:
        """The window from `earlier` to this snapshot (same sampler)."""
        if self.ts is None or earlier.ts is None:
            return EnergyWindow(None, 0.0, {}, self.samples - earlier.samples, None)
        seconds = max(0.0, self.ts - earlier.ts)
        joules = None  # type: Optional[float]
        method = None  # type: Optional[str]
        if self.counter_j is not None and earlier.counter_j is not None:
            joules, method = self.counter_j - earlier.counter_j, "counter"
        elif self.trapezoid_j is not None and earlier.trapezoid_j is not None:
            joules, method = self.trapezoid_j - earlier.trapezoid_j, "trapezoid"
        rails = {name: j - earlier.rails_j.get(name, 0.0) for name, j in self.rails_j.items()}
        return EnergyWindow(joules, seconds, rails, self.samples - earlier.samples, method)

    def trapezoid_since(self, earlier: "EnergyTotals") -> Optional[float]:
        """Trapezoid joules over the window even where a counter exists (for cross-checks)."""
        if self.trapezoid_j is None or earlier.trapezoid_j is None:
            return None
        return self.trapezoid_j - earlier.trapezoid_j


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
        self._thread = None  # type: Optional[threading.Thread]
        self.idle_w = None  # type: Optional[float]

    # -- the thread

    def start(self) -> "PowerSampler":
        if self._thread is not None:
            raise AgentError("power sampler: start() called twice; create a new PowerSampler")
        self._thread = threading.Thread(target=self._run, name="power-sampler")
        self._thread.daemon = True
        self._thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the thread to end (after `stop` is set); True when it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
                if self._thread is not None and not self._thread.is_alive():
                    return False
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))

    def measure_idle(self, seconds: float, stop: Optional[threading.Event] = None,
                     timeout: Optional[float] = None) -> Optional[float]:
        """Mean watts over `seconds` of idle, measured before inference starts, so telemetry
        can report marginal energy (joules - idle_w * seconds). None without power or when
        `stop` is set first. With the thread running its samples are used; otherwise this
        samples in the caller's thread. The result is also kept as `idle_w`.
        """
        stop = stop or self.stop
        if self.running:
            if timeout is None:
                timeout = 2.0 * seconds + 10.0 * self.period + 1.0
            self.wait_for(lambda t: t.ts is not None or stop.is_set(), timeout=timeout)
            first = self.totals()
            if first.ts is None:
                return None
            start_ts = first.ts
            self.wait_for(lambda t: stop.is_set() or (t.ts is not None
                                                      and t.ts - start_ts >= seconds),
                          timeout=timeout)
        else:
            self.sample_once()
            first = self.totals()
            while first.ts is not None and not stop.wait(self.period):
                self.sample_once()
                latest = self.totals()
                if latest.ts is not None and latest.ts - first.ts >= seconds:
                    break
        window = self.totals().since(first)
        if window.seconds < seconds or window.mean_w is None:
            return None
        self.idle_w = window.mean_w
        return self.idle_w
