"""`edge-agent tune` (agent/cli/tune.py, agent/tune/): the search space, the Pareto front,
the choice under constraints, the overlay, the SVG, nvpmodel switching and restoring, and
real runs with ONNX Runtime on the bundled model and the sample photos, measured against a
board meter (an INA3221 sysfs tree) and against NVML (the double: a GPU-only meter while the
inferences run on the CPU).
"""

import json
import os
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from agent.cli.bench import EnergyProbe
from agent.cli.tune import candidate_config, run_tune
from agent.config import load_config
from agent.errors import AgentError, ConfigError
from agent.tune import search
from agent.tune.plot import layout, png_plot, svg_plot
from agent.tune.power_modes import PowerModes
from support.doubles import nvml_double
from support.paths import ROOT
from support.sysfs import iio_chip


def test_onnxruntime_candidates_start_with_the_configured_setup():
    cands = search.onnxruntime_candidates(4, None, False)
    assert cands[0] == {"backend.spin": False, "backend.threads": None, "backend.workers": 1}
    one_at_a_time = [c for c in cands[1:] if c["backend.workers"] == 1]
    assert sorted(set(c["backend.threads"] for c in one_at_a_time)) == [1, 2, 4]
    assert len(one_at_a_time) == 3 * 2
    # frames at once: 2 and all 4 cores' worth, the cores shared among them, spin off
    assert [(c["backend.workers"], c["backend.threads"], c["backend.spin"])
            for c in cands if c["backend.workers"] > 1] == [(2, None, False), (4, None, False)]
    assert len(set(tuple(c.items()) for c in cands)) == len(cands)
    two = search.onnxruntime_candidates(2, 2, False)
    assert [(c["backend.threads"], c["backend.workers"]) for c in two] == \
        [(2, 1), (1, 1), (1, 1), (2, 1), (None, 2)]  # configured one not repeated
    configured = search.onnxruntime_candidates(2, None, False, workers=2)
    assert configured[0]["backend.workers"] == 2 and \
        [c["backend.workers"] for c in configured].count(2) == 1
    assert search.onnxruntime_candidates(1, None, False)[-1]["backend.workers"] == 1
    assert search.describe(cands[-1]) == "spin=off threads=default workers=4"


def test_tensorrt_candidates_cover_precision_preprocessing_workspace_and_dla():
    cands = search.tensorrt_candidates(("fp32", "fp16"), "fp16", "auto", True, 256,
                                       workspaces=(256, 1024), dla_cores=1)
    assert cands[0]["backend.preprocess"] == "auto"
    assert {c["backend.preprocess"] for c in cands[1:]} == {"cpu", "gpu"}
    dla = [c for c in cands if c["backend.dla_core"] is not None]
    assert dla and all(c["backend.precision"] == "fp16" for c in dla)
    no_gpu = search.tensorrt_candidates(("fp32",), "fp32", "cpu", False, 256)
    assert {c["backend.preprocess"] for c in no_gpu} == {"cpu"}


def test_candidate_overrides_are_valid_config():
    config = load_config(os.path.join(ROOT, "config.yaml"))
    for cand in search.onnxruntime_candidates(2, None, False) + search.tensorrt_candidates(
            ("fp32", "fp16", "int8"), "fp16", "auto", True, 256, dla_cores=2):
        cfg = candidate_config(config, cand)
        for key, value in cand.items():
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value


def rows():
    return [
        {"n": 1, "fps": 50.0, "watts": 10.0, "p99_ms": 40.0, "inferences_per_joule": 5.0},
        {"n": 2, "fps": 60.0, "watts": 15.0, "p99_ms": 30.0, "inferences_per_joule": 4.0},
        {"n": 3, "fps": 45.0, "watts": 12.0, "p99_ms": 50.0, "inferences_per_joule": 3.75},
        {"n": 4, "fps": 70.0, "watts": 25.0, "p99_ms": 20.0, "inferences_per_joule": 2.8},
        {"n": 5, "error": "engine build failed"},
        {"n": 6, "fps": 99.0, "watts": 5.0, "p99_ms": 5.0, "inferences_per_joule": 19.8,
         "degraded": ["tensorrt fp16 failed: ..."]},
    ]


def test_pareto_front_and_the_choice_under_constraints():
    results = rows()
    assert [r["n"] for r in search.pareto_front(results[:4])] == [1, 2, 4]
    assert search.choose_best(results)["n"] == 1                     # most inferences/J
    assert search.choose_best(results, "fps")["n"] == 4
    assert search.choose_best(results, "latency")["n"] == 4
    assert search.choose_best(results, min_fps=55)["n"] == 2
    assert search.choose_best(results, max_watts=20, objective="fps")["n"] == 2
    assert search.choose_best(results, max_p99_ms=25)["n"] == 4
    assert search.choose_best(results, min_fps=80) is None            # 6 fell back: excluded
    with pytest.raises(ConfigError):
        search.choose_best(results, "speed")


def test_without_watts_the_choice_is_by_fps_and_there_is_no_front():
    results = [{"n": 1, "fps": 50.0, "watts": None, "p99_ms": 40.0},
               {"n": 2, "fps": 60.0, "watts": None, "p99_ms": 45.0}]
    assert search.pareto_front(results) == []
    assert search.choose_best(results)["n"] == 2
    assert search.choose_best(results, max_watts=10.0) is None
    with pytest.raises(ConfigError) as info:
        search.choose_best(results, "efficiency")
    assert "power meter" in str(info.value)


def test_overlay_is_nested_and_leaves_out_power_modes():
    cand = search.with_power_modes([search.make_candidate(
        {"backend.threads": 1, "backend.spin": False})], [2])[0]
    assert search.overlay(cand) == {"backend": {"spin": False, "threads": 1}}
    assert search.config_overrides(cand) == ["backend.spin=false", "backend.threads=1"]
    assert search.describe(cand) == "spin=off threads=1 nvpmodel=2"


def test_svg_plot_is_well_formed_with_the_front_and_the_best():
    results = rows()[:4]
    front = search.pareto_front(results)
    text = svg_plot(results, front, "watts", "mean watts", "fps against power", results[0])
    root = ET.fromstring(text)
    tags = [el.tag.split("}")[1] for el in root.iter()]
    assert tags.count("polyline") == 1
    assert tags.count("circle") == 4 + 1   # the points and the ring around the best
    empty = ET.fromstring(svg_plot([], [], "watts", "W", "nothing"))
    assert "no measured points" in "".join(empty.itertext())


def test_png_plot_draws_the_points_front_and_ring_in_their_colours():
    import cv2
    results = rows()[:4]
    front = search.pareto_front(results)
    data = png_plot(results, front, "watts", "mean watts", "fps against power", results[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 720, 3)
    red = (image[:, :, 2] > 200) & (image[:, :, 1] < 80) & (image[:, :, 0] < 80)
    blue = (image[:, :, 0] > 150) & (image[:, :, 2] < 80)
    green = (image[:, :, 1] > 130) & (image[:, :, 2] < 80) & (image[:, :, 0] < 80)
    on_front = sum(1 for r in results if r in front)
    assert red.sum() > 60 * on_front              # filled front points and their line
    assert blue.sum() > 60 * (4 - on_front) or on_front == 4
    assert green.sum() > 40                        # the ring around the best
    dark = image.min(axis=2) < 100
    assert dark[:30].sum() > 100 and dark[:, :30].sum() > 100   # title; turned y label
    empty = cv2.imdecode(np.frombuffer(png_plot([], [], "watts", "W", "nothing"), np.uint8),
                         cv2.IMREAD_COLOR)
    assert not ((empty[:, :, 2] > 200) & (empty[:, :, 1] < 80)).any()


class FakeNvpmodel(object):
    def __init__(self, mode=0):
        self.mode = mode
        self.calls = []

    def __call__(self, args):
        self.calls.append(args[1:])
        if args[1] == "-q":
            return "NV Power Mode: MODE_{}\n{}\n".format(self.mode, self.mode)
        self.mode = int(args[2])
        return ""


def test_power_modes_switch_and_restore_the_original():
    fake = FakeNvpmodel(mode=3)
    modes = PowerModes(runner=fake, binary="/usr/sbin/nvpmodel", is_root=True)
    assert modes.problem is None and modes.original == 3
    modes.switch(0)
    modes.switch(0)   # already there: no call
    assert fake.mode == 0 and fake.calls.count(["-m", "0"]) == 1
    modes.restore()
    assert fake.mode == 3
    assert "root" in PowerModes(runner=fake, binary="/x/nvpmodel", is_root=False).problem
    absent = PowerModes(runner=fake, binary=None, is_root=True)
    if absent.binary is None:   # no nvpmodel on PATH (any non-Jetson machine)
        assert "not on this machine" in absent.problem
        with pytest.raises(AgentError):
            absent.switch(1)
    with pytest.raises(AgentError):
        PowerModes(runner=lambda args: "garbage", binary="/x/nvpmodel", is_root=True)


# --------------------------------------------------------------------------------------------
# real runs: ONNX Runtime, the bundled model, the sample photos


def config_with(tmp_path, power):
    return load_config(os.path.join(ROOT, "config.yaml"), [
        "device.state_dir=" + str(tmp_path / "state"), "telemetry.power=" + power,
        "telemetry.sample_hz=100", "backend.kind=onnxruntime"])


def board_probe(tmp_path, config):
    root = tmp_path / "sysroot"
    iio_chip(root, "6-0040", "iio:device0", [("POM_5V_IN", 5000, 5000, 1000)])
    return EnergyProbe(config, idle_s=0.2, idle_parts=4, root=str(root))


def test_tune_with_a_board_meter_writes_the_table_plot_and_overlay(tmp_path, capsys):
    config = config_with(tmp_path, "iio")
    out, plot = str(tmp_path / "tuned.yaml"), str(tmp_path / "tune.svg")
    rc = run_tune(config, frames=20, out=out, plot=plot, max_candidates=2, as_json=True,
                  probe=board_probe(tmp_path, config))
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert rc == 0 and summary["power_source"] == "ina3221-iio"
    assert summary["power_coverage"] == "board"
    assert "tune [" in printed.err and "2/2" in printed.err   # progress on stderr
    results = summary["results"]
    assert len(results) == 2 and all(r["fps"] > 0 for r in results)
    for r in results:   # constant 5 W board: W is the meter's, inferences/J = fps / W
        assert r["watts"] == pytest.approx(5.0, rel=0.01)
        assert r["inferences_per_joule"] == pytest.approx(r["fps"] / r["watts"], rel=0.01)
        assert r["device"] == "cpu" and r["p99_ms"] >= r["p50_ms"] > 0
    best = [r for r in results if r["n"] == summary["best"]][0]
    assert best["inferences_per_joule"] == max(r["inferences_per_joule"] for r in results)
    overlay = yaml.safe_load(open(out))
    assert overlay == search.overlay(best["candidate"])
    merged = load_config(os.path.join(ROOT, "config.yaml"),
                         search.config_overrides(best["candidate"]))
    assert merged.backend.threads == best["candidate"]["backend.threads"]
    assert "best setup #{}".format(best["n"]) in open(out).read()
    assert ET.parse(plot).getroot().tag.endswith("svg") and summary["plot_format"] == "SVG"


def test_tune_with_a_gpu_only_meter_and_cpu_inference_ranks_by_fps(tmp_path, capsys,
                                                                   monkeypatch):
    fake = nvml_double.FakeNvml([nvml_double.FakeGpu(power_mw=70000)])
    monkeypatch.setattr("agent.power.nvml._import_nvml", lambda: fake)
    config = config_with(tmp_path, "nvml")
    probe = EnergyProbe(config, idle_s=0.2, idle_parts=4)
    rc = run_tune(config, frames=20, plot="", max_candidates=2, probe=probe,
                  min_fps=0.1)
    out = capsys.readouterr().out
    assert rc == 0
    assert "does not cover the device running the inferences" in out
    assert "GPU only" in out and "best: #" in out
    lines = [line for line in out.splitlines() if line[:3].strip() in ("1", "2")]
    assert len(lines) == 2 and all("70.00" in line for line in lines)  # the meter's W
    with pytest.raises(AgentError) as info:
        run_tune(config, frames=20, plot="", max_candidates=1, max_watts=100.0,
                 probe=EnergyProbe(config, idle_s=0.2, idle_parts=4))
    assert "--max-watts needs a power meter" in str(info.value)


def test_tune_without_a_meter_says_so_and_impossible_constraints_write_nothing(tmp_path,
                                                                             capsys):
    config = config_with(tmp_path, "none")
    out = str(tmp_path / "tuned.yaml")
    rc = run_tune(config, frames=20, out=out, plot="", max_candidates=1, min_fps=1e6,
                  probe=EnergyProbe(config, idle_s=0.2, idle_parts=4))
    printed = capsys.readouterr().out
    assert rc == 1 and not os.path.exists(out)
    assert "no power meter here: ranked by fps and latency only" in printed
    assert "no setup meets the constraints" in printed


def test_tune_switches_power_modes_and_restores_the_original(tmp_path, capsys):
    config = config_with(tmp_path, "none")
    fake = FakeNvpmodel(mode=1)
    modes = PowerModes(runner=fake, binary="/usr/sbin/nvpmodel", is_root=True)
    rc = run_tune(config, frames=20, plot="", max_candidates=2, power_modes=[0, 2],
                  modes=modes, as_json=True, probe=EnergyProbe(config, idle_s=0.2))
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [r["candidate"]["power.nvpmodel"] for r in summary["results"]] == [0, 0]
    assert ["-m", "0"] in fake.calls and fake.mode == 1   # restored


def test_plot_ticks_tell_close_watts_apart():
    results = [{"n": 1, "fps": 150.0, "watts": 122.79}, {"n": 2, "fps": 200.0, "watts": 123.25}]
    texts = [s[3] for s in layout(results, results, "watts", "W", "t") if s[0] == "text"]
    x_ticks = texts[1:11:2]
    assert len(set(x_ticks)) == 5, x_ticks
