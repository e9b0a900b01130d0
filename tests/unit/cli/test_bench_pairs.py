"""`edge-agent bench` (agent/cli/bench.py): raw and pipeline measured in back-to-back pairs
whose order alternates, and the per-pair ratios summarised as a median with their spread;
one real run with ONNX Runtime on the bundled model and the sample photos."""

import json
import os

from agent.cli import bench
from agent.config import load_config
from support.paths import ROOT


def test_pairs_alternate_which_side_runs_first():
    assert bench.pair_orders(4) == [("raw", "pipeline"), ("pipeline", "raw"),
                                    ("raw", "pipeline"), ("pipeline", "raw")]
    assert bench.pair_orders(1) == [("raw", "pipeline")]


def test_ratio_spread_gives_quartiles_and_the_pairs_at_the_goal():
    spread = bench.ratio_spread([1.0, 0.9, 0.96, 0.8, 0.95])
    assert spread == {"min": 0.8, "p25": 0.9, "median": 0.95, "p75": 0.96, "max": 1.0,
                      "pairs": 5, "pairs_at_or_above_0.95": 3}
    two = bench.ratio_spread([0.9, 1.0])
    assert (two["p25"], two["median"], two["p75"]) == (0.925, 0.95, 0.975)
    assert bench.ratio_spread([]) is None


def test_bench_runs_each_pair_back_to_back_in_alternating_order(monkeypatch, capsys):
    calls = []
    real_raw, real_pipeline = bench.measure_raw, bench.measure_pipeline

    def raw(*args, **kw):
        calls.append("raw")
        return real_raw(*args, **kw)

    def pipeline(*args, **kw):
        calls.append("telemetry" if kw.get("telemetry") else
                     "live" if args[3] else "pipeline")
        return real_pipeline(*args, **kw)

    monkeypatch.setattr(bench, "measure_raw", raw)
    monkeypatch.setattr(bench, "measure_pipeline", pipeline)
    config = load_config(os.path.join(ROOT, "config.yaml"), ["telemetry.power=none"])
    assert bench.run_bench(config, frames=10, as_json=True, rounds=2) == 0
    assert calls == ["raw", "pipeline", "telemetry", "pipeline", "raw", "telemetry", "live"]
    result = json.loads(capsys.readouterr().out)
    assert result["pair_order"] == ["rp", "pr"]
    assert len(result["ratios"]) == 2
    assert result["ratio_spread"]["pairs"] == 2
    assert result["ratio_spread"]["median"] == result["ratio"]
    assert result["ratio_spread"]["min"] <= result["ratio"] <= result["ratio_spread"]["max"]
    assert result["workers"] == 1 and result["raw"]["workers"] == 1
    # the process's CPU per frame, over the measured predictions only: more than nothing
    for run in ("pipeline", "live"):
        assert result[run]["cpu_ms_per_frame"] > 0, result[run]


def test_bench_with_workers_measures_raw_as_many_at_once_and_says_so(monkeypatch, capsys):
    widths = []
    real_raw = bench.measure_raw

    def raw(backend, *args, **kw):
        widths.append(backend.parallel())
        return real_raw(backend, *args, **kw)

    monkeypatch.setattr(bench, "measure_raw", raw)
    config = load_config(os.path.join(ROOT, "config.yaml"),
                         ["telemetry.power=none", "backend.workers=2"])
    assert bench.run_bench(config, frames=10, rounds=1) == 0
    out = capsys.readouterr().out
    assert widths == [2]
    assert "2 frame(s) in flight" in out and "raw backend, 2 threads" in out
    assert "process CPU per frame:" in out
