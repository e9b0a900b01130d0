"""Choosing the power reader: telemetry.power's kind, or `auto`'s first source present."""

import logging
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from .ina3221 import Ina3221HwmonReader, Ina3221IioReader
from .jtop import JtopPowerReader
from .nvml import NvmlPowerReader
from .rapl import RaplReader
from .readers import NonePowerReader, PowerReader, PowerSourceUnavailable

logger = logging.getLogger(__name__)

POWER_KINDS = ("auto", "jtop", "iio", "hwmon", "nvml", "rapl", "none")
# Order in which `auto` tries the sources: the first one present wins.
AUTO_ORDER = ("jtop", "iio", "hwmon", "nvml", "rapl")


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
