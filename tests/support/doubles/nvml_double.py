"""Test double of the `pynvml` module (nvidia-ml-py) for machines without an NVIDIA driver.

It is a test double following docs/PLATFORM.md section 4 and nvidia-ml-py's documented API:
nvmlInit/nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
nvmlDeviceGetPowerUsage (milliwatts), nvmlDeviceGetFieldValues with NVML_FI_DEV_POWER_INSTANT
(186; milliwatts in value.uiVal, a per-field nvmlReturn; only where the driver has the field),
nvmlDeviceGetTotalEnergyConsumption (millijoules since the driver loaded, Volta and later),
nvmlDeviceGetUtilizationRates (.gpu percent), and errors as subclasses of NVMLError
(NVMLError_NotSupported, NVMLError_DriverNotLoaded). The real module is checked on
the GPU machine by tools/gpu/nvml_energy_check.py.
"""

from typing import Dict, List, Optional


class NVMLError(Exception):
    """Base of all NVML errors, as in pynvml."""


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


class NVMLError_DriverNotLoaded(NVMLError):
    def __str__(self) -> str:
        return "Driver Not Loaded"


class _Utilization(object):
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu = gpu
        self.memory = memory


class _Value(object):
    def __init__(self, ui_val: int) -> None:
        self.uiVal = ui_val


class _FieldValue(object):
    """c_nvmlFieldValue_t: fieldId, nvmlReturn (0 = success), value union."""

    def __init__(self, field_id: int, ret: int, ui_val: int) -> None:
        self.fieldId = field_id
        self.nvmlReturn = ret
        self.value = _Value(ui_val)


NVML_FI_DEV_POWER_INSTANT = 186
NVML_ERROR_NOT_SUPPORTED = 3


class FakeGpu(object):
    """One GPU's state; None for a quantity means NVML says NotSupported."""

    def __init__(self, name: str = "NVIDIA H100 80GB HBM3", power_mw: Optional[int] = 100000,
                 energy_mj: Optional[int] = 1000000, util: int = 0,
                 instant_mw: Optional[int] = None) -> None:
        self.name = name
        self.power_mw = power_mw          # nvmlDeviceGetPowerUsage (averaged on new drivers)
        self.instant_mw = instant_mw      # NVML_FI_DEV_POWER_INSTANT
        self.energy_mj = energy_mj
        self.util = util


class FakeNvml(object):
    """A pynvml-shaped object holding a list of FakeGpu; functions are its methods."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded

    def __init__(self, gpus: Optional[List[FakeGpu]] = None, driver_loaded: bool = True,
                 has_instant_field: bool = False) -> None:
        if has_instant_field:
            # Only bindings/drivers that know the field have the constant (instance attribute).
            self.NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT
        self.gpus = list(gpus or [])
        self.driver_loaded = driver_loaded
        self.init_count = 0
        self.calls = {}  # type: Dict[str, int]

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: int) -> FakeGpu:
        if self.init_count <= 0:
            raise NVMLError("Uninitialized")
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError_DriverNotLoaded()
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self.init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._count("power")
        gpu = self._gpu(handle)
        if gpu.power_mw is None:
            raise NVMLError_NotSupported()
        return gpu.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._count("energy")
        gpu = self._gpu(handle)
        if gpu.energy_mj is None:
            raise NVMLError_NotSupported()
        return gpu.energy_mj

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: List[int]) -> List[_FieldValue]:
        self._count("fields")
        gpu = self._gpu(handle)
        out = []
        for field in field_ids:
            if field == NVML_FI_DEV_POWER_INSTANT and gpu.instant_mw is not None:
                out.append(_FieldValue(field, 0, gpu.instant_mw))
            else:
                out.append(_FieldValue(field, NVML_ERROR_NOT_SUPPORTED, 0))
        return out

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Utilization:
        return _Utilization(self._gpu(handle).util, 0)
