"""Board power of discrete NVIDIA GPUs through NVML (pynvml, package nvidia-ml-py)."""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .readers import Clock, PowerReader, PowerReading, PowerSourceUnavailable

logger = logging.getLogger(__name__)


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
    coverage = "gpu"  # the GPUs' own draw: not the CPU, memory or the rest of the host
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
        return {"source": self.source, "coverage": self.coverage, "gpus": dict(self.names),
                "energy_counter": self._counter, "power_field": self.power_field}

    def close(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self.nvml.nvmlShutdown()
            except self._error as exc:
                logger.debug("nvmlShutdown: %s", exc)
