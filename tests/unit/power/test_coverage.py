"""What each power meter covers, the idle baseline's spread and "within noise", and how bench
labels energy per inference by coverage (agent/power/, agent/cli/bench.py's EnergyProbe).

Meters are the real readers on the doubles (NVML, jtop) and on sysfs trees in tmp_path
(INA3221, RAPL), as in test_power.py.
"""

import threading
import types

import pytest

from agent.cli.bench import EnergyProbe, inference_device, print_energy
from agent.power import (EnergyWindow, JtopPowerReader, NonePowerReader, PowerReader,
                         PowerReading, PowerSampler, RaplReader, coverage_label, covers,
                         discover_power, open_power, within_noise)
from support.doubles import jtop_double, nvml_double
from support.sysfs import iio_chip

from test_power import hwmon_chip, nano_tree, rapl_tree  # noqa: E402 (same folder)

WAIT_S = 10.0


def test_each_reader_declares_what_it_covers(tmp_path):
    nano_tree(tmp_path / "iio")
    hwmon_chip(tmp_path / "hwmon", "1-0040", "hwmon3", [("VDD_IN", 5000, 1200)])
    rapl_tree(tmp_path / "rapl")
    rapl_tree(tmp_path / "psys", psys_uj=0)
    nvml = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=150000)])
    jtop = jtop_double.factory_for(jtop_double.FakeJtop(jtop_double.JTOP4_ORIN_NANO))
    assert discover_power("iio", root=str(tmp_path / "iio")).coverage == "board"
    assert discover_power("hwmon", root=str(tmp_path / "hwmon")).coverage == "board"
    assert JtopPowerReader(jtop).coverage == "board"
    reader = discover_power("nvml", nvml_module=nvml)
    assert reader.coverage == "gpu" and reader.describe()["coverage"] == "gpu"
    assert RaplReader(str(tmp_path / "rapl")).coverage == "cpu_package"
    assert RaplReader(str(tmp_path / "psys")).coverage == "platform"
    assert NonePowerReader().coverage is None


def test_coverage_in_words_and_which_devices_it_covers():
    assert coverage_label("gpu") == "GPU only"
    assert coverage_label("cpu_package") == "CPU package only"
    assert coverage_label("board") == "whole board"
    assert coverage_label(None) == "no power meter"
    assert covers("board", "cpu") and covers("board", "gpu") and covers("board", "dla")
    assert covers("gpu", "gpu") and not covers("gpu", "cpu")
    assert covers("cpu_package", "cpu") and not covers("cpu_package", "gpu")
    assert not covers(None, "cpu") and not covers("gpu", None)


def test_within_noise_is_zero_negative_or_inside_two_spreads():
    assert within_noise(-0.5, 10.0, None)          # negative: never reported as a number
    assert within_noise(0.0, 10.0, None)
    assert not within_noise(0.01, 10.0, None)      # no spread known: anything above 0 counts
    assert within_noise(0.9, 10.0, 0.05)           # 2 x 0.05 W x 10 s = 1 J of noise
    assert not within_noise(1.1, 10.0, 0.05)
    # Idle power exactly: joules - idle_w x seconds is float rounding, not a marginal.
    window = EnergyWindow(2.545 * 0.7, 0.7, {}, 10, "trapezoid")
    assert within_noise(window.marginal_joules(2.545), 0.7, 0.0, window.joules)
    assert within_noise(3e-16, 0.7, 0.0, 1.78)


def test_per_inference_never_reports_a_negative_marginal():
    window = EnergyWindow(20.0, 10.0, {}, 100, "trapezoid")   # 2.0 W mean
    out = window.per_inference(100, idle_w=2.2, idle_spread_w=0.01, coverage="gpu")
    assert out["coverage"] == "gpu" and out["mj_per_inference"] == pytest.approx(200.0)
    assert out["marginal_within_noise"] is True
    assert out["marginal_joules"] is None and out["marginal_mj_per_inference"] is None
    above = window.per_inference(100, idle_w=1.5, idle_spread_w=0.01)
    assert above["marginal_within_noise"] is False
    assert above["marginal_mj_per_inference"] == pytest.approx(50.0)


class AlternatingReader(PowerReader):
    """Time advances 0.1 s a read; power is `low` for the first half second, then `high`."""

    source = "alternating"

    def __init__(self, low, high):
        super(AlternatingReader, self).__init__()
        self.low, self.high, self.ts = low, high, 0.0

    def read(self):
        self.ts += 0.1
        return PowerReading(self.ts, self.low if self.ts <= 0.5 + 1e-9 else self.high)


def test_measure_idle_in_parts_keeps_the_spread():
    sampler = PowerSampler(AlternatingReader(2.0, 4.0), threading.Event(), sample_hz=1000.0)
    idle = sampler.measure_idle(1.0, parts=2)
    # Part 1 (0.1..0.6 s): 0.4 s at 2 W and a 0.1 s ramp to 4 W, 1.1 J: 2.2 W; part 2
    # (0.6..1.1 s) 4 W. Mean 3.1 W; sample standard deviation of (2.2, 4.0): 0.9 x sqrt(2).
    assert idle == pytest.approx(3.1)
    assert sampler.idle_spread_w == pytest.approx(0.9 * 2 ** 0.5)
    flat = PowerSampler(AlternatingReader(3.0, 3.0), threading.Event(), sample_hz=1000.0)
    assert flat.measure_idle(1.0, parts=4) == pytest.approx(3.0)
    assert flat.idle_spread_w == pytest.approx(0.0)
    one = PowerSampler(AlternatingReader(3.0, 3.0), threading.Event(), sample_hz=1000.0)
    one.measure_idle(1.0)
    assert one.idle_spread_w is None


def test_measure_idle_in_parts_with_the_thread_running():
    stop = threading.Event()
    sampler = PowerSampler(AlternatingReader(5.0, 5.0), stop, sample_hz=1000.0).start()
    try:
        assert sampler.measure_idle(1.0, parts=4, timeout=WAIT_S) == pytest.approx(5.0)
        assert sampler.idle_spread_w == pytest.approx(0.0)
    finally:
        stop.set()
        sampler.join(WAIT_S)


def test_open_power_measures_the_baseline_in_parts(tmp_path):
    iio_chip(tmp_path, "6-0040", "iio:device0", [("POM_5V_IN", 2545, 5000, 509)])
    stop = threading.Event()
    monitor = open_power(types.SimpleNamespace(power="iio", sample_hz=100.0), stop,
                         root=str(tmp_path), idle_s=0.4, idle_parts=4)
    try:
        assert monitor.coverage == "board"
        assert monitor.idle_w == pytest.approx(2.545)
        assert monitor.idle_spread_w == pytest.approx(0.0, abs=1e-9)
    finally:
        stop.set()
        monitor.close()


# --------------------------------------------------------------------------------------------
# bench: energy per inference only where the meter covers the inferring device


def nvml_config(fake):
    """A config whose telemetry.power is nvml; open_power finds pynvml through the double."""
    return types.SimpleNamespace(telemetry=types.SimpleNamespace(power="nvml", sample_hz=200.0))


@pytest.fixture
def nvml_probe(monkeypatch):
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=60000)])
    monkeypatch.setattr("agent.power.nvml._import_nvml", lambda: fake)
    probe = EnergyProbe(nvml_config(fake), idle_s=0.2, idle_parts=4)
    yield probe, fake
    probe.close()


def test_inference_device_of_the_backends():
    assert inference_device(types.SimpleNamespace(name="onnxruntime",
                                                  providers=["CPUExecutionProvider"])) == "cpu"
    assert inference_device(types.SimpleNamespace(
        name="onnxruntime", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])) == "gpu"
    trt = types.SimpleNamespace(name="tensorrt", options=types.SimpleNamespace(dla_core=None))
    assert inference_device(trt) == "gpu"
    trt.options.dla_core = 0
    assert inference_device(trt) == "dla"


def wait_samples(probe, mark, count):
    sampler = probe.power.sampler
    assert sampler.wait_for(lambda t: t.samples >= mark.samples + count, timeout=WAIT_S)


def test_gpu_meter_and_cpu_inference_gives_no_per_inference_energy(nvml_probe, capsys):
    probe, fake = nvml_probe
    mark = probe.mark()
    wait_samples(probe, mark, 5)
    energy = probe.energy(mark, 50, "cpu")
    assert energy["coverage"] == "gpu" and energy["mean_w"] == pytest.approx(60.0)
    assert energy["mj_per_inference"] is None and energy["inferences_per_joule"] is None
    assert energy["marginal_mj_per_inference"] is None
    assert "GPU only" in energy["note"] and "CPU" in energy["note"]
    result = {"raw": {"energy": energy}, "pipeline": {"energy": None}}
    result.update(probe.describe("cpu"))
    assert result["power_coverage"] == "gpu" and result["energy_covers_inference"] is False
    print_energy(result)
    out = capsys.readouterr().out
    assert "nvml, GPU only" in out
    assert "does not cover the CPU" in out and "no per-inference figure" in out
    assert "mJ/inference" not in out


def test_gpu_meter_and_gpu_inference_is_labelled_gpu_only(nvml_probe, capsys):
    probe, fake = nvml_probe
    mark = probe.mark()
    wait_samples(probe, mark, 5)
    energy = probe.energy(mark, 50, "gpu")
    assert energy["mj_per_inference"] > 0 and energy["coverage"] == "gpu"
    # The GPU draws its idle 60 W throughout: the marginal is within noise, not a number.
    assert energy["marginal_within_noise"] is True
    assert energy["marginal_mj_per_inference"] is None
    result = {"raw": {"energy": energy}, "pipeline": {"energy": None}}
    result.update(probe.describe("gpu"))
    print_energy(result)
    out = capsys.readouterr().out
    assert "energy, raw (GPU only):" in out and "marginal over idle: within noise" in out
    assert "-" not in out.split("marginal over idle:")[1].split("\n")[0]


def test_check_doctor_says_what_the_meter_measures(monkeypatch):
    from agent.cli.check import Report, check_power
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=60000)])
    monkeypatch.setattr("agent.power.nvml._import_nvml", lambda: fake)
    report = Report()
    check_power(report, types.SimpleNamespace(telemetry=types.SimpleNamespace(power="nvml")))
    row = [r for r in report.rows if r["check"] == "power"][0]
    assert row["detail"] == "source: nvml (measures: GPU only)"
