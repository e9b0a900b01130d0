"""Power, thermal and GPU-load readers and the energy sampler (agent/power/).

Jetson sysfs trees are built in tmp_path as docs/PLATFORM.md section 4 lays them out; jtop and
NVML go through the doubles in tests/support/doubles. The sampler is driven by scripted readers whose
timestamps are fixed, so integrals are exact whatever the thread's real timing; the tests wait
on conditions with timeouts, never on sleeps.
"""

import os
import subprocess
import sys
import threading
import types

import pytest

from agent.errors import AgentError, ConfigError
from agent.power import (EnergyTotals, GpuLoadReader, Ina3221HwmonReader, Ina3221IioReader,
                         JtopPowerReader, NonePowerReader, NvmlPowerReader, PowerReader,
                         PowerReading, PowerSampler, PowerSourceUnavailable, RaplReader,
                         ThermalReader, discover_power, integrate_trapezoid, open_power,
                         parse_jtop_power)
from agent.power import sysfs

from support.doubles import jtop_double, nvml_double  # noqa: E402

from support.sysfs import write, iio_chip
from support.paths import ROOT

WAIT_S = 10.0  # generous timeout for conditions that normally hold within milliseconds


def nano_tree(root):
    iio_chip(root, "6-0040", "iio:device0", [("POM_5V_IN", 2545, 5000, 509),
                                             ("POM_5V_GPU", 410, 5000, 82),
                                             ("POM_5V_CPU", 549, 5000, 110)])


def tx2_tree(root):
    iio_chip(root, "0-0041", "iio:device1", [("VDD_IN", 4000, 19000, 210),
                                             ("VDD_SYS_CPU", 500, 19000, 26),
                                             ("VDD_SYS_DDR", 300, 19000, 16)])
    iio_chip(root, "0-0040", "iio:device0", [("VDD_SYS_GPU", 700, 19000, 37),
                                             ("VDD_SYS_SOC", 600, 19000, 32),
                                             ("VDD_4V0_WIFI", 20, 4000, 5)])


def xavier_tree(root):
    iio_chip(root, "1-0040", "iio:device0", [("GPU", 1000, 1000, 1000), ("CPU", 2000, 1000, 2000),
                                             ("SOC", 3000, 1000, 3000)])
    iio_chip(root, "1-0041", "iio:device1", [("CV", 400, 1000, 400), ("VDDRQ", 500, 1000, 500),
                                             ("SYS5V", 600, 1000, 600)])


def hwmon_chip(root, chip, hwmon, channels, sum_channel=True):
    """channels: list of (label, mV, mA) for in1..in3 / curr1..curr3 (JetPack 5/6 hwmon)."""
    base = "sys/bus/i2c/devices/{}/hwmon/{}".format(chip, hwmon)
    write(root, base + "/name", "ina3221\n")
    for n, (label, mv, ma) in enumerate(channels, start=1):
        write(root, "{}/in{}_label".format(base, n), label + "\n")
        write(root, "{}/in{}_input".format(base, n), "{}\n".format(mv))
        write(root, "{}/curr{}_input".format(base, n), "{}\n".format(ma))
        write(root, "{}/in{}_input".format(base, n + 3), "1234\n")  # shunt voltage, uV
    if sum_channel:
        write(root, base + "/in7_label", "sum of shunt voltages\n")
        write(root, base + "/in7_input", "3702\n")
        write(root, base + "/curr4_input", "2500\n")
    return os.path.join(str(root), base)


def orin_tree(root):
    # Labels are invented for the test where Orin's are UNCONFIRMED: the reader must take
    # whatever the *_label files say.
    hwmon_chip(root, "1-0040", "hwmon3", [("VDD_IN", 5000, 1200),
                                          ("VDD_CPU_GPU_CV", 5000, 400),
                                          ("VDD_SOC_TESTLABEL", 5000, 300)])
    hwmon_chip(root, "1-0041", "hwmon4", [("NC", 5000, 999),
                                          ("VDDQ_VDD2_1V8AO", 5000, 100),
                                          ("NC", 5000, 999)])


def failing_nvml():
    return nvml_double.FakeNvml(driver_loaded=False)


def no_jtop():
    return jtop_double.factory_for(jtop_double.FakeJtop(service_running=False))


# --------------------------------------------------------------------------------------------
# INA3221 iio (JetPack 4)


def test_nano_board_input_is_the_total_and_is_not_double_counted(tmp_path):
    nano_tree(tmp_path)
    reader = Ina3221IioReader(str(tmp_path))
    reading = reader.read()
    assert reader.source == "ina3221-iio"
    assert reading.total_w == pytest.approx(2.545)
    assert reading.rails == pytest.approx({"POM_5V_GPU": 0.410, "POM_5V_CPU": 0.549})
    assert "POM_5V_IN" not in reading.rails


def test_tx2_two_chips_total_from_vdd_in(tmp_path):
    tx2_tree(tmp_path)
    reading = Ina3221IioReader(str(tmp_path)).read()
    assert reading.total_w == pytest.approx(4.0)
    assert sorted(reading.rails) == ["VDD_4V0_WIFI", "VDD_SYS_CPU", "VDD_SYS_DDR",
                                     "VDD_SYS_GPU", "VDD_SYS_SOC"]
    assert reading.rails["VDD_SYS_GPU"] == pytest.approx(0.7)


def test_xavier_has_rails_but_no_board_total(tmp_path):
    xavier_tree(tmp_path)
    reading = Ina3221IioReader(str(tmp_path)).read()
    assert reading.total_w is None
    assert reading.rails == pytest.approx({"GPU": 1.0, "CPU": 2.0, "SOC": 3.0, "CV": 0.4,
                                           "VDDRQ": 0.5, "SYS5V": 0.6})


def test_iio_discovers_once_and_reads_new_values(tmp_path):
    base = iio_chip(tmp_path, "6-0040", "iio:device0", [("POM_5V_IN", 2000, 5000, 400)])
    reader = Ina3221IioReader(str(tmp_path))
    assert reader.read().total_w == pytest.approx(2.0)
    write(tmp_path, os.path.join(base, "in_power0_input"), "3500\n")
    assert reader.read().total_w == pytest.approx(3.5)


def test_iio_without_power_file_uses_voltage_times_current(tmp_path):
    base = iio_chip(tmp_path, "6-0040", "iio:device0", [("POM_5V_IN", 0, 5000, 600)])
    os.remove(os.path.join(base, "in_power0_input"))
    assert Ina3221IioReader(str(tmp_path)).read().total_w == pytest.approx(3.0)


def test_iio_rail_failing_at_read_time_is_left_out(tmp_path):
    base = iio_chip(tmp_path, "6-0040", "iio:device0", [("POM_5V_IN", 2000, 5000, 400),
                                                        ("POM_5V_CPU", 500, 5000, 100)])
    reader = Ina3221IioReader(str(tmp_path))
    write(tmp_path, os.path.join(base, "in_power1_input"), "garbage\n")
    reading = reader.read()
    assert reading.total_w == pytest.approx(2.0)
    assert reading.rails == {}


def test_iio_missing_is_an_error_naming_the_path_only_when_asked_for(tmp_path):
    with pytest.raises(PowerSourceUnavailable) as info:
        discover_power("iio", root=str(tmp_path))
    assert "ina3221x" in str(info.value) and "hwmon" in str(info.value)
    assert isinstance(info.value, AgentError)


# --------------------------------------------------------------------------------------------
# INA3221 hwmon (JetPack 5/6)


def test_hwmon_orin_rails_from_labels_skipping_nc_and_sum(tmp_path):
    orin_tree(tmp_path)
    reader = Ina3221HwmonReader(str(tmp_path))
    reading = reader.read()
    assert reader.source == "ina3221-hwmon"
    assert reading.total_w == pytest.approx(6.0)  # VDD_IN 5000 mV x 1200 mA
    assert reading.rails == pytest.approx({"VDD_CPU_GPU_CV": 2.0, "VDD_SOC_TESTLABEL": 1.5,
                                           "VDDQ_VDD2_1V8AO": 0.5})
    assert not any("NC" == name or "sum" in name for name in reading.rails)


def test_hwmon_sum_channel_skipped_even_with_a_current_file(tmp_path):
    base = hwmon_chip(tmp_path, "1-0040", "hwmon1", [("VDD_IN", 5000, 1000)])
    write(tmp_path, os.path.join(base, "curr7_input"), "2500\n")  # must still not be a rail
    reading = Ina3221HwmonReader(str(tmp_path)).read()
    assert reading.rails == {}
    assert reading.total_w == pytest.approx(5.0)


def test_hwmon_missing_is_an_error(tmp_path):
    with pytest.raises(PowerSourceUnavailable) as info:
        discover_power("hwmon", root=str(tmp_path))
    assert "in*_label" in str(info.value)


# --------------------------------------------------------------------------------------------
# jtop


def test_jtop4_dict_total_is_the_named_input_rail():
    fake = jtop_double.FakeJtop(jtop_double.JTOP4_ORIN_NANO)
    reader = discover_power("jtop", jtop_factory=jtop_double.factory_for(fake))
    reading = reader.read()
    assert reader.source == "jtop" and fake.started
    assert reading.total_w == pytest.approx(6.0)
    assert reading.rails == pytest.approx({"VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5})
    reader.close()
    assert fake.closed


def test_jtop4_unnamed_tot_is_a_sum_not_a_board_total():
    total, rails = parse_jtop_power(jtop_double.JTOP4_XAVIER_SUM)
    assert total is None
    assert rails == pytest.approx({"GPU": 1.0, "CPU": 2.0})


def test_jtop3_tuple_nano_total_not_double_counted():
    fake = jtop_double.FakeJtop(jtop_double.JTOP3_NANO)
    reading = JtopPowerReader(jtop_double.factory_for(fake)).read()
    assert reading.total_w == pytest.approx(2.545)
    assert reading.rails == pytest.approx({"5V GPU": 0.0, "5V CPU": 0.549})


def test_jtop3_total_equal_to_rail_sum_is_not_a_board_total():
    total, rails = parse_jtop_power(jtop_double.JTOP3_XAVIER_SUM)
    assert total is None
    assert rails == pytest.approx({"GPU": 1.0, "CPU": 2.0})


def test_jtop_reads_new_values_each_time():
    fake = jtop_double.FakeJtop(jtop_double.JTOP3_NANO)
    reader = JtopPowerReader(jtop_double.factory_for(fake))
    fake.set_power(({"cur": 4000, "avg": 3000}, {"5V CPU": {"cur": 1000, "avg": 800}}))
    assert reader.read().total_w == pytest.approx(4.0)


def test_jtop_exception_falls_through_to_iio_in_auto(tmp_path):
    nano_tree(tmp_path)
    reader = discover_power("auto", root=str(tmp_path), jtop_factory=no_jtop(),
                            nvml_module=failing_nvml())
    assert reader.source == "ina3221-iio"
    assert reader.read().total_w == pytest.approx(2.545)


def test_jtop_asked_for_without_service_names_socket_and_fix():
    with pytest.raises(AgentError) as info:
        discover_power("jtop", jtop_factory=no_jtop())
    message = str(info.value)
    assert "/run/jtop.sock" in message and "JtopException" in message
    assert "systemctl restart jtop.service" in message and "jtop" in message


def test_jtop_without_power_rails_is_unavailable():
    fake = jtop_double.FakeJtop({})
    with pytest.raises(PowerSourceUnavailable):
        JtopPowerReader(jtop_double.factory_for(fake))
    assert fake.closed


# --------------------------------------------------------------------------------------------
# NVML


def test_nvml_power_total_and_energy_counter():
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=150000, energy_mj=5000000),
                                 nvml_double.FakeGpu(power_mw=100000, energy_mj=2500000)])
    reader = discover_power("nvml", nvml_module=fake)
    reading = reader.read()
    assert reader.source == "nvml" and reader.has_energy_counter
    assert reading.rails == pytest.approx({"gpu0": 150.0, "gpu1": 100.0})
    assert reading.total_w == pytest.approx(250.0)
    assert reading.energy_j == pytest.approx(7500.0)
    fake.gpus[0].energy_mj += 1500
    assert reader.energy_j() == pytest.approx(7501.5)
    reader.close()
    assert fake.init_count == 0


def test_nvml_energy_not_supported_means_no_counter():
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(energy_mj=1000),
                                 nvml_double.FakeGpu(energy_mj=None)])
    reader = NvmlPowerReader(fake)
    assert not reader.has_energy_counter
    assert reader.read().energy_j is None
    calls = fake.calls["energy"]
    assert reader.energy_j() is None
    assert fake.calls["energy"] == calls  # not asked again once NotSupported


def test_nvml_gpu_without_power_is_skipped_and_all_without_is_unavailable():
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=None),
                                 nvml_double.FakeGpu(power_mw=70000)])
    assert NvmlPowerReader(fake).read().rails == pytest.approx({"gpu1": 70.0})
    with pytest.raises(PowerSourceUnavailable) as info:
        NvmlPowerReader(nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=None)]))
    assert "Not Supported" in str(info.value)


def test_nvml_power_error_at_read_time_gives_no_total():
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=50000)])
    reader = NvmlPowerReader(fake)
    fake.gpus[0].power_mw = None
    reading = reader.read()
    assert reading.total_w is None and reading.rails == {}


def test_nvml_auto_field_prefers_instant_power_where_the_driver_has_it():
    gpu = nvml_double.FakeGpu(power_mw=100000, instant_mw=300000)
    with_field = NvmlPowerReader(nvml_double.FakeNvml([gpu], has_instant_field=True))
    assert with_field.power_field == "instant"
    assert with_field.read().total_w == pytest.approx(300.0)
    without = NvmlPowerReader(nvml_double.FakeNvml([gpu], has_instant_field=False))
    assert without.power_field == "usage"
    assert without.read().total_w == pytest.approx(100.0)
    usage = NvmlPowerReader(nvml_double.FakeNvml([gpu], has_instant_field=True),
                            power_field="usage")
    assert usage.read().total_w == pytest.approx(100.0)
    no_instant_gpu = nvml_double.FakeGpu(power_mw=100000, instant_mw=None)
    fallback = NvmlPowerReader(nvml_double.FakeNvml([no_instant_gpu], has_instant_field=True))
    assert fallback.power_field == "usage"
    with pytest.raises(ConfigError):
        NvmlPowerReader(nvml_double.FakeNvml([gpu]), power_field="average")


def test_nvml_energy_counter_can_be_skipped():
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu()])
    reader = NvmlPowerReader(fake, energy_counter=False)
    for _ in range(3):
        assert reader.read().energy_j is None
    assert fake.calls.get("energy", 0) == 0 and not reader.has_energy_counter


def test_nvml_driver_missing_is_an_error_naming_the_fix():
    with pytest.raises(AgentError) as info:
        discover_power("nvml", nvml_module=failing_nvml())
    assert "Driver Not Loaded" in str(info.value) and "nvidia-smi" in str(info.value)


def test_nvml_utilisation_through_gpu_load_reader(tmp_path):
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(util=80), nvml_double.FakeGpu(util=40)])
    load = GpuLoadReader(str(tmp_path), nvml=NvmlPowerReader(fake))
    assert load.source == "nvml"
    assert load.read() == pytest.approx(60.0)


# --------------------------------------------------------------------------------------------
# RAPL


class FakeClock(object):
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def rapl_tree(root, package_uj=900000, core_uj=100, max_uj=1000000, psys_uj=None):
    base = "sys/class/powercap/"
    write(root, base + "intel-rapl:0/name", "package-0\n")
    write(root, base + "intel-rapl:0/energy_uj", "{}\n".format(package_uj))
    write(root, base + "intel-rapl:0/max_energy_range_uj", "{}\n".format(max_uj))
    write(root, base + "intel-rapl:0:0/name", "core\n")
    write(root, base + "intel-rapl:0:0/energy_uj", "{}\n".format(core_uj))
    write(root, base + "intel-rapl:0:0/max_energy_range_uj", "{}\n".format(max_uj))
    if psys_uj is not None:
        write(root, base + "intel-rapl:1/name", "psys\n")
        write(root, base + "intel-rapl:1/energy_uj", "{}\n".format(psys_uj))
        write(root, base + "intel-rapl:1/max_energy_range_uj", "{}\n".format(max_uj))
    return os.path.join(str(root), base)


def test_rapl_power_from_counter_deltas_with_wraparound(tmp_path):
    base = rapl_tree(tmp_path, package_uj=900000, core_uj=100, max_uj=1000000)
    clock = FakeClock()
    reader = RaplReader(str(tmp_path), clock=clock)
    clock.now += 0.1
    write(tmp_path, base + "intel-rapl:0/energy_uj", "100000\n")   # wrapped: +200000 uJ
    write(tmp_path, base + "intel-rapl:0:0/energy_uj", "50100\n")  # +50000 uJ
    reading = reader.read()
    assert reading.total_w == pytest.approx(2.0)        # 0.2 J in 0.1 s
    assert reading.rails["package-0"] == pytest.approx(2.0)
    assert reading.rails["package-0/core"] == pytest.approx(0.5)
    assert reading.energy_j == pytest.approx(0.2)
    assert reader.has_energy_counter


def test_rapl_psys_is_the_total_when_present(tmp_path):
    base = rapl_tree(tmp_path, package_uj=0, core_uj=0, psys_uj=0)
    clock = FakeClock()
    reader = RaplReader(str(tmp_path), clock=clock)
    clock.now += 1.0
    write(tmp_path, base + "intel-rapl:0/energy_uj", "3000000\n")
    write(tmp_path, base + "intel-rapl:1/energy_uj", "7000000\n")
    assert reader.read().total_w == pytest.approx(7.0)


def test_rapl_unreadable_counters_are_not_available(tmp_path, monkeypatch):
    rapl_tree(tmp_path)
    real = sysfs.read_line

    def deny_energy(path):
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(sysfs, "read_line", deny_energy)
    with pytest.raises(PowerSourceUnavailable) as info:
        RaplReader(str(tmp_path))
    assert "root" in str(info.value) and "energy_uj" in str(info.value)


# --------------------------------------------------------------------------------------------
# auto discovery


def test_auto_prefers_iio_over_hwmon(tmp_path):
    nano_tree(tmp_path)
    orin_tree(tmp_path)
    reader = discover_power(root=str(tmp_path), jtop_factory=no_jtop(),
                            nvml_module=failing_nvml())
    assert reader.source == "ina3221-iio"


def test_auto_picks_hwmon_then_nvml(tmp_path):
    orin_tree(tmp_path)
    gpus = nvml_double.FakeNvml([nvml_double.FakeGpu()])
    assert discover_power(root=str(tmp_path), jtop_factory=no_jtop(),
                          nvml_module=gpus).source == "ina3221-hwmon"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert discover_power(root=str(empty), jtop_factory=no_jtop(),
                          nvml_module=gpus).source == "nvml"


def test_auto_with_nothing_is_the_none_reader_with_reasons(tmp_path):
    reader = discover_power(root=str(tmp_path), jtop_factory=no_jtop(),
                            nvml_module=failing_nvml())
    assert isinstance(reader, NonePowerReader) and reader.source == "none"
    assert sorted(reader.reasons) == ["hwmon", "iio", "jtop", "nvml", "rapl"]
    reading = reader.read()
    assert reading.total_w is None and reading.rails == {}


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        discover_power("tegrastats")
    assert "telemetry.power" in str(info.value) and "hwmon" in str(info.value)


def telemetry_section(power, sample_hz=50.0):
    return types.SimpleNamespace(power=power, sample_hz=sample_hz)


def test_open_power_starts_the_sampler_and_measures_the_idle_baseline(tmp_path):
    nano_tree(tmp_path)
    stop = threading.Event()
    monitor = open_power(telemetry_section("iio"), stop, root=str(tmp_path))
    try:
        assert monitor.problem is None and monitor.source == "ina3221-iio"
        assert monitor.sampler is not None and monitor.sampler.running
        assert monitor.idle_w == pytest.approx(2.545)
        assert monitor.thermal.zones == [] and monitor.gpu_load.source == "none"
    finally:
        stop.set()
        monitor.close()
    assert not monitor.sampler.running


def test_open_power_with_an_absent_source_goes_on_without_power_and_says_why(tmp_path):
    stop = threading.Event()
    monitor = open_power(telemetry_section("hwmon"), stop, root=str(tmp_path))
    assert isinstance(monitor.reader, NonePowerReader) and monitor.source == "none"
    assert monitor.sampler is None and monitor.idle_w is None
    assert "hwmon" in monitor.problem and "fix" in monitor.problem
    monitor.close()


def test_open_power_none_is_no_problem(tmp_path):
    monitor = open_power(telemetry_section("none"), threading.Event(), root=str(tmp_path))
    assert monitor.source == "none" and monitor.problem is None and monitor.sampler is None
    monitor.close()


# --------------------------------------------------------------------------------------------
# thermal and GPU load


def test_thermal_zones_in_celsius_by_type(tmp_path):
    base = "sys/devices/virtual/thermal/"
    for n, (kind, milli) in enumerate([("CPU-therm", "45500"), ("GPU-therm", "43000"),
                                       ("PMIC-Die", "-256000"), ("GPU-therm", "44000")]):
        write(tmp_path, "{}thermal_zone{}/type".format(base, n), kind + "\n")
        write(tmp_path, "{}thermal_zone{}/temp".format(base, n), milli + "\n")
    reader = ThermalReader(str(tmp_path))
    assert reader.read() == pytest.approx({"CPU-therm": 45.5, "GPU-therm": 43.0,
                                           "GPU-therm@3": 44.0})
    write(tmp_path, base + "thermal_zone0/temp", "50000\n")
    assert reader.read()["CPU-therm"] == pytest.approx(50.0)


def jetson_gpu_devfreq(root, devfreq_name, device_dir, node_name, load):
    device = os.path.join(str(root), "sys/devices", device_dir)
    write(root, "sys/devices/{}/of_node/name".format(device_dir), node_name + "\x00")
    write(root, "sys/devices/{}/load".format(device_dir), "{}\n".format(load))
    link_dir = os.path.join(str(root), "sys/class/devfreq", devfreq_name)
    os.makedirs(link_dir)
    os.symlink(device, os.path.join(link_dir, "device"))


@pytest.mark.parametrize("devfreq_name,device_dir,node", [
    ("57000000.gpu", "gpu.0", "gpu"),           # Nano
    ("17000000.gv11b", "17000000.gv11b", "gv11b"),  # Xavier
    ("17000000.ga10b", "17000000.ga10b", "ga10b"),  # Orin
])
def test_jetson_gpu_load_percent(tmp_path, devfreq_name, device_dir, node):
    jetson_gpu_devfreq(tmp_path, "15340000.vic", "15340000.vic", "vic", 999)
    jetson_gpu_devfreq(tmp_path, devfreq_name, device_dir, node, 523)
    reader = GpuLoadReader(str(tmp_path))
    assert reader.source == "devfreq"
    assert reader.read() == pytest.approx(52.3)


def test_no_gpu_load_source_reads_none(tmp_path):
    jetson_gpu_devfreq(tmp_path, "15340000.vic", "15340000.vic", "vic", 999)
    reader = GpuLoadReader(str(tmp_path))
    assert reader.source == "none" and reader.read() is None


# --------------------------------------------------------------------------------------------
# energy integration (pure)


def trace(fn, seconds, dt):
    steps = int(round(seconds / dt))
    return [(i * dt, fn(i * dt)) for i in range(steps + 1)]


def test_trapezoid_constant_power():
    assert integrate_trapezoid(trace(lambda t: 5.0, 10.0, 0.05)) == pytest.approx(50.0)


def test_trapezoid_ramp_is_exact():
    # 0 -> 10 W over 10 s: 50 J; the trapezoid rule is exact for a linear signal.
    assert integrate_trapezoid(trace(lambda t: t, 10.0, 0.3)) == pytest.approx(
        0.5 * 9.9 * 9.9)
    assert integrate_trapezoid(trace(lambda t: t, 10.0, 0.05)) == pytest.approx(50.0)


def test_trapezoid_step_within_half_a_sample_of_the_jump():
    dt = 0.01
    samples = [(i * dt, 2.0 if i * dt < 5.0 - 1e-9 else 8.0) for i in range(1001)]
    exact = 2.0 * 5.0 + 8.0 * 5.0
    assert integrate_trapezoid(samples) == pytest.approx(exact, abs=0.5 * 6.0 * dt + 1e-9)
    assert integrate_trapezoid(samples) != pytest.approx(2.0 * 10.0)


def test_trapezoid_bridges_missing_values_and_ignores_repeated_times():
    samples = [(0.0, 4.0), (1.0, None), (2.0, 4.0), (2.0, 100.0), (3.0, 4.0)]
    assert integrate_trapezoid(samples) == pytest.approx(12.0)
    assert integrate_trapezoid([]) == 0.0
    assert integrate_trapezoid([(0.0, 5.0)]) == 0.0


# --------------------------------------------------------------------------------------------
# sampler


class ScriptedReader(PowerReader):
    """Replays fixed readings; sets `stop` on the last one, then repeats it (time frozen)."""

    source = "scripted"

    def __init__(self, readings, stop=None, counter=False):
        super(ScriptedReader, self).__init__()
        self.readings = list(readings)
        self.stop = stop
        self.index = 0
        self.counter = counter
        self.lock = threading.Lock()

    @property
    def has_energy_counter(self):
        return self.counter

    def read(self):
        with self.lock:
            reading = self.readings[min(self.index, len(self.readings) - 1)]
            self.index += 1
            if self.index >= len(self.readings) and self.stop is not None:
                self.stop.set()
            return reading


class EndlessReader(PowerReader):
    """Constant watts with time advancing `step` seconds per read, forever."""

    source = "endless"

    def __init__(self, watts, step):
        super(EndlessReader, self).__init__()
        self.watts = watts
        self.step = step
        self.ts = 0.0

    def read(self):
        self.ts += self.step
        return PowerReading(self.ts, self.watts, {"rail": self.watts / 2})


def ramp_readings(seconds=10.0, dt=0.05):
    return [PowerReading(t, w, {"GPU": w / 2.0, "CPU": 1.0})
            for t, w in trace(lambda t: t, seconds, dt)]


def test_sampler_thread_integrates_a_ramp_exactly():
    stop = threading.Event()
    readings = ramp_readings()
    sampler = PowerSampler(ScriptedReader(readings, stop), stop, sample_hz=1000.0).start()
    assert sampler.join(WAIT_S), "sampler did not stop after the scripted trace ended"
    totals = sampler.totals()
    assert totals.samples >= len(readings)
    assert totals.method == "trapezoid" and totals.source == "scripted"
    assert totals.total_j == pytest.approx(50.0)
    assert totals.rails_j == pytest.approx({"GPU": 25.0, "CPU": 10.0})
    assert totals.ts == pytest.approx(10.0)
    assert totals.last is readings[-1]


def test_sampler_stops_on_the_shared_event():
    stop = threading.Event()
    sampler = PowerSampler(EndlessReader(3.0, 0.01), stop, sample_hz=500.0).start()
    assert sampler.wait_for(lambda t: t.samples >= 5, timeout=WAIT_S)
    assert sampler.running
    stop.set()
    assert sampler.join(WAIT_S)
    assert not sampler.running


def test_windows_between_snapshots_and_per_inference():
    stop = threading.Event()
    sampler = PowerSampler(ScriptedReader([]), stop)
    snapshots = {}
    for t, w in trace(lambda t: 10.0 if t < 4.0 - 1e-9 else 20.0, 8.0, 1.0):
        sampler.add(PowerReading(t, w, {"GPU": w - 5.0}))
        if t in (2.0, 6.0):
            snapshots[t] = sampler.totals()
    window = snapshots[6.0].since(snapshots[2.0])
    # 2..3 at 10 W, 3..4 ramps 10->20 W in the trapezoid, 4..6 at 20 W: 10 + 15 + 40 = 65 J
    assert window.joules == pytest.approx(65.0)
    assert window.seconds == pytest.approx(4.0)
    assert window.mean_w == pytest.approx(16.25)
    assert window.rails_j == pytest.approx({"GPU": 45.0})
    assert window.samples == 4
    energy = window.per_inference(130, coverage="board")
    assert energy.pop("coverage") == "board"
    assert energy == pytest.approx({"joules": 65.0, "mj_per_inference": 500.0,
                                    "inferences_per_joule": 2.0})
    with_idle = window.per_inference(130, idle_w=10.0)
    assert with_idle["marginal_joules"] == pytest.approx(25.0)
    assert with_idle["marginal_mj_per_inference"] == pytest.approx(25000.0 / 130)
    none = window.per_inference(0)
    assert none["mj_per_inference"] is None and none["inferences_per_joule"] is None


def test_no_power_gives_null_energy():
    sampler = PowerSampler(NonePowerReader(), threading.Event())
    first = sampler.totals()
    for t in range(5):
        sampler.add(PowerReading(float(t)))
    window = sampler.totals().since(first)
    assert window.joules is None and window.mean_w is None
    assert window.per_inference(10) == {"joules": None, "mj_per_inference": None,
                                        "inferences_per_joule": None, "coverage": None}
    later = sampler.totals()
    assert later.since(sampler.totals()).joules is None and later.total_j is None


def test_hardware_counter_gives_the_total_when_present():
    # total_w says 100 W but the counter says 30 J over 3 s: the counter must win.
    readings = [PowerReading(float(t), 100.0, {}, energy_j=5000.0 + 10.0 * t) for t in range(4)]
    stop = threading.Event()
    sampler = PowerSampler(ScriptedReader(readings, stop, counter=True), stop,
                           sample_hz=1000.0).start()
    assert sampler.join(WAIT_S)
    totals = sampler.totals()
    assert totals.method == "counter"
    assert totals.total_j == pytest.approx(30.0)
    assert totals.trapezoid_j == pytest.approx(300.0)
    first = EnergyTotals(0.0, 0.0, 0.0, {}, 1, readings[0], "scripted")
    assert totals.since(first).joules == pytest.approx(30.0)
    assert totals.trapezoid_since(first) == pytest.approx(300.0)


def test_counter_can_be_turned_off():
    sampler = PowerSampler(ScriptedReader([]), threading.Event(), use_counter=False)
    for t in range(3):
        sampler.add(PowerReading(float(t), 4.0, {}, energy_j=1000.0 * t))
    assert sampler.totals().method == "trapezoid"
    assert sampler.totals().total_j == pytest.approx(8.0)


def test_sampler_survives_a_reader_that_raises():
    class Flaky(EndlessReader):
        def read(self):
            reading = EndlessReader.read(self)
            if int(round(reading.ts / self.step)) % 2:
                raise IOError("i2c timeout")
            return reading

    stop = threading.Event()
    sampler = PowerSampler(Flaky(2.0, 0.5), stop, sample_hz=1000.0).start()
    assert sampler.wait_for(lambda t: t.samples >= 6, timeout=WAIT_S)
    stop.set()
    assert sampler.join(WAIT_S)
    totals = sampler.totals()
    assert sampler.errors >= 5
    # Bridged over the failed reads: 2 W for exactly the time covered.
    assert totals.total_j == pytest.approx(2.0 * (totals.ts - 1.0))


def test_measure_idle_with_the_thread_running():
    stop = threading.Event()
    sampler = PowerSampler(EndlessReader(3.5, 0.1), stop, sample_hz=1000.0).start()
    try:
        idle = sampler.measure_idle(1.0, timeout=WAIT_S)
    finally:
        stop.set()
        sampler.join(WAIT_S)
    assert idle == pytest.approx(3.5)
    assert sampler.idle_w == pytest.approx(3.5)


def test_measure_idle_without_the_thread_and_when_stopped():
    sampler = PowerSampler(EndlessReader(7.0, 0.1), threading.Event(), sample_hz=1000.0)
    assert sampler.measure_idle(0.5) == pytest.approx(7.0)
    stopped = threading.Event()
    stopped.set()
    assert PowerSampler(EndlessReader(7.0, 0.1), stopped,
                        sample_hz=1000.0).measure_idle(0.5) is None
    assert PowerSampler(NonePowerReader(), threading.Event(),
                        sample_hz=1000.0).measure_idle(0.05) is None


def test_sampler_rejects_bad_rate_and_double_start():
    with pytest.raises(ConfigError):
        PowerSampler(NonePowerReader(), threading.Event(), sample_hz=0)
    stop = threading.Event()
    stop.set()
    sampler = PowerSampler(NonePowerReader(), stop).start()
    with pytest.raises(AgentError):
        sampler.start()
    assert sampler.join(WAIT_S)


# --------------------------------------------------------------------------------------------
# Python 3.6 (JetPack 4.6) compatibility


def test_power_package_is_python36_compatible():
    pytest.importorskip("vermin")
    path = os.path.join(ROOT,
                        "agent", "power")
    result = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
                             "-q", "--no-tips", "--violations", "-t=3.6-", path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=120)
    assert result.stdout.strip() == "", result.stdout
