"""Consecutive telemetry windows each carry their own energy (TelemetryReporter.publish_once
in agent/telemetry/reporter.py with the energy sampler of agent/power/), never the energy
since the start.

Power is read from a Jetson Nano INA3221 sysfs tree in tmp_path (tests/unit/power/test_power.py's
builder, laid out as PLATFORM.md section 4 documents) by the real Ina3221IioReader, whose
clock is a fake one so every window's joules are exact. The sampler is stepped by the test
(no thread), and the reporter publishes to a recording link instead of MQTT.
"""

import os
import threading

import pytest

from agent.power import GpuLoadReader, Ina3221IioReader, PowerSampler, ThermalReader
from agent.telemetry import StageStats
from agent.telemetry.reporter import TelemetryReporter
from support.paths import ROOT
from support.sysfs import iio_chip

CHIP = ("6-0040", "iio:device0")


class Clock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Link(object):
    def __init__(self):
        self.telemetry = []

    def publish(self, suffix, payload, kind, retain=False, qos=None):
        if suffix == "telemetry":
            self.telemetry.append(payload)


def set_power(root, board_mw, gpu_mw):
    iio_chip(root, CHIP[0], CHIP[1], [("POM_5V_IN", board_mw, 5000, board_mw // 5),
                                      ("POM_5V_GPU", gpu_mw, 5000, gpu_mw // 5),
                                      ("POM_5V_CPU", 500, 5000, 100)])


@pytest.fixture
def setup(tmp_path):
    from agent.config import load_config
    root = tmp_path / "sysroot"
    set_power(root, 2000, 400)
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "device.id=windows", "device.state_dir=" + str(tmp_path / "state")])
    link = Link()
    reporter = TelemetryReporter(config, StageStats(), link.publish, "boot", threading.Event(),
                                 sysfs_root=str(root))
    clock = Clock()
    reader = Ina3221IioReader(str(root), clock=clock)
    # What TelemetryReporter.start_power sets up, without the sampler's thread.
    reporter.power_reader = reader
    reporter.thermal = ThermalReader(str(root))
    reporter.gpu_load = GpuLoadReader(str(root))
    reporter.sampler = PowerSampler(reader, reporter.stop, sample_hz=1.0)
    reporter.sampler.sample_once()  # t = 0
    reporter.begin_window()
    return reporter, clock, root, link


def run_window(reporter, clock, seconds, frames):
    """`seconds` one-second samples at the power now in the tree, `frames` inferences."""
    for _ in range(seconds):
        clock.now += 1.0
        reporter.sampler.sample_once()
    for _ in range(frames):
        reporter.stats.record({"capture": 1.0, "preprocess": 1.0, "infer": 5.0,
                            "postprocess": 1.0, "end_to_end": 8.0})
    return reporter.publish_once()


def test_each_window_carries_only_its_own_joules(setup):
    reporter, clock, root, link = setup
    first = run_window(reporter, clock, 10, 20)            # 0..10 s at 2 W
    set_power(root, 5000, 3000)
    second = run_window(reporter, clock, 4, 8)             # 10..14 s: 2 W -> 5 W, then 5 W
    set_power(root, 1000, 100)
    third = run_window(reporter, clock, 2, 0)              # 14..16 s: 5 W -> 1 W, then 1 W
    fourth = run_window(reporter, clock, 0, 0)             # no new sample at all

    assert [t["seq"] for t in link.telemetry] == [1, 2, 3, 4]
    e1, e2, e3, e4 = (t["energy"] for t in (first, second, third, fourth))
    assert e1["joules"] == pytest.approx(20.0)
    assert e1["mean_w"] == pytest.approx(2.0)
    assert e1["mj_per_inference"] == pytest.approx(1000.0)
    assert e1["inferences_per_joule"] == pytest.approx(1.0)
    # Trapezoid: 10..11 s ramps 2 -> 5 W (3.5 J), 11..14 s at 5 W (15 J).
    assert e2["joules"] == pytest.approx(18.5)
    assert e2["mean_w"] == pytest.approx(18.5 / 4)
    assert e2["mj_per_inference"] == pytest.approx(1000.0 * 18.5 / 8)
    # 14..15 s ramps 5 -> 1 W (3 J), 15..16 s at 1 W (1 J); no frames: no per-inference figure.
    assert e3["joules"] == pytest.approx(4.0)
    assert e3["mj_per_inference"] is None and e3["inferences_per_joule"] is None
    assert e4["joules"] == pytest.approx(0.0)
    assert e4["mean_w"] is None
    # Per-rail joules are per window too.
    assert e1["rails_j"]["POM_5V_GPU"] == pytest.approx(4.0)
    assert e2["rails_j"]["POM_5V_GPU"] == pytest.approx(0.5 * 3.4 + 9.0)
    assert e3["rails_j"]["POM_5V_GPU"] == pytest.approx(0.5 * 3.1 + 0.1)
    assert e1["rails_j"]["POM_5V_CPU"] == pytest.approx(5.0)
    assert e2["rails_j"]["POM_5V_CPU"] == pytest.approx(2.0)
    # The instant power is the last reading of each window.
    assert first["power"]["total_w"] == pytest.approx(2.0)
    assert second["power"]["total_w"] == pytest.approx(5.0)
    assert third["power"]["total_w"] == pytest.approx(1.0)
    assert [t["frames"] for t in (first, second, third, fourth)] == [20, 8, 0, 0]


def test_marginal_energy_is_per_window_against_the_idle_baseline(setup):
    reporter, clock, root, link = setup
    reporter.idle_w = 2.0
    first = run_window(reporter, clock, 10, 10)            # at idle: nothing marginal
    set_power(root, 4000, 2000)
    run_window(reporter, clock, 1, 0)                      # the 2 -> 4 W step, its own window
    third = run_window(reporter, clock, 5, 10)             # 5 s at 4 W: 10 J above idle
    # At idle the marginal is zero: "within noise", never a number (nor a negative one).
    assert first["energy"]["marginal_joules"] is None
    assert first["energy"]["marginal_mj_per_inference"] is None
    assert first["energy"]["marginal_within_noise"] is True
    assert third["energy"]["marginal_within_noise"] is False
    assert third["energy"]["joules"] == pytest.approx(20.0)
    assert third["energy"]["idle_w"] == pytest.approx(2.0)
    assert third["energy"]["marginal_joules"] == pytest.approx(10.0)
    assert third["energy"]["marginal_mj_per_inference"] == pytest.approx(1000.0)


def test_window_sums_add_up_to_the_whole_run(setup):
    """The windows partition the run: their joules add up to the sampler's total."""
    reporter, clock, root, link = setup
    start = reporter.sampler.totals()
    messages = []
    for board_mw, seconds in ((3000, 3), (6000, 2), (2500, 5), (2500, 1)):
        set_power(root, board_mw, 100)
        messages.append(run_window(reporter, clock, seconds, 1))
    total = reporter.sampler.totals().since(start).joules
    assert sum(m["energy"]["joules"] for m in messages) == pytest.approx(total)
    assert len(set(round(m["energy"]["joules"], 6) for m in messages)) == 4


def test_power_coverage_is_a_top_level_field_and_labels_the_energy(setup):
    reporter, clock, root, link = setup
    message = run_window(reporter, clock, 2, 4)
    assert message["power_coverage"] == "board"     # the Nano's POM_5V_IN
    assert message["energy"]["coverage"] == "board"
    assert link.telemetry[-1]["power_coverage"] == "board"


def test_without_power_the_coverage_is_null(setup):
    reporter, clock, root, link = setup
    reporter.sampler = None
    message = reporter.publish_once()
    assert message["power_coverage"] is None and message["energy"] is None
    assert message["power"] == {"source": "none"}


def test_marginal_below_the_baseline_noise_is_within_noise(setup):
    """A draw under the baseline (negative marginal) or above it by less than the baseline's
    spread is reported as within noise; above the noise it is a number."""
    reporter, clock, root, link = setup
    reporter.idle_w = 2.1
    reporter.idle_spread_w = 0.05
    below = run_window(reporter, clock, 4, 10)      # 2.0 W < 2.1 W idle: negative marginal
    assert below["energy"]["marginal_within_noise"] is True
    assert below["energy"]["marginal_joules"] is None
    assert below["energy"]["idle_spread_w"] == pytest.approx(0.05)
    set_power(root, 2180, 400)
    run_window(reporter, clock, 1, 0)
    inside = run_window(reporter, clock, 4, 10)     # +0.08 W < 2 x 0.05 W: noise
    assert inside["energy"]["marginal_within_noise"] is True
    set_power(root, 2500, 400)
    run_window(reporter, clock, 1, 0)
    above = run_window(reporter, clock, 4, 10)      # +0.4 W over 4 s: 1.6 J, 160 mJ each
    assert above["energy"]["marginal_within_noise"] is False
    assert above["energy"]["marginal_joules"] == pytest.approx(1.6)
    assert above["energy"]["marginal_mj_per_inference"] == pytest.approx(160.0)
