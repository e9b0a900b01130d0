"""The pure parts of fleet operations: canary sizes, stage plans, the regression gates, the
rollout state file and its control file, and the inventory's rows."""

import json

import pytest

from agent.errors import AgentError
from agent.fleet import state as st
from agent.fleet.inventory import Inventory, format_table, split_topic
from agent.fleet.rollout import median_figures, regressions


@pytest.mark.parametrize("text,total,expected", [
    ("1", 10, 1), ("3", 2, 2), ("10%", 10, 1), ("10%", 11, 2), ("100%", 7, 7), ("1%", 3, 1)])
def test_canary_is_a_count_or_a_rounded_up_share(text, total, expected):
    assert st.parse_canary(text, total) == expected


@pytest.mark.parametrize("text", ["0", "-1", "x", "0%", "101%", "%"])
def test_a_bad_canary_is_refused_with_the_option_name(text):
    with pytest.raises(AgentError, match="--canary"):
        st.parse_canary(text, 10)


def test_plan_is_canary_then_batches_in_device_order():
    devices = ["d{}".format(i) for i in (5, 1, 4, 2, 3, 6)]
    assert st.plan(devices, 1, 2) == [["d1"], ["d2", "d3"], ["d4", "d5"], ["d6"]]
    assert st.plan(["a"], 1, 10) == [["a"]]


def _tele(p50, p99, per_j):
    return {"latency_ms": {"infer": {"p50": p50}, "end_to_end": {"p99": p99}},
            "energy": {"inferences_per_joule": per_j}}


def test_regressions_compare_against_the_device_own_figures():
    before = {"infer_p50_ms": 10.0, "e2e_p99_ms": 20.0, "inferences_per_joule": 30.0}
    assert regressions(before, {"infer_p50_ms": 11.9, "e2e_p99_ms": 23.9,
                                "inferences_per_joule": 25.1}, 0.2) == []
    found = regressions(before, {"infer_p50_ms": 31.0, "e2e_p99_ms": 19.0,
                                 "inferences_per_joule": 24.0}, 0.2)
    assert found == ["infer_p50_ms 10 -> 31", "inferences_per_joule 30 -> 24"]
    # A figure missing on either side (no power meter, no baseline) is not gated.
    assert regressions({"infer_p50_ms": None}, {"infer_p50_ms": 99.0}, 0.2) == []


def test_median_figures_skip_missing_values():
    msgs = [_tele(10, 30, None), _tele(12, 20, None), _tele(50, 25, None)]
    assert median_figures(msgs) == {"infer_p50_ms": 12, "e2e_p99_ms": 25,
                                    "inferences_per_joule": None}
    assert median_figures([]) == {"infer_p50_ms": None, "e2e_p99_ms": None,
                                  "inferences_per_joule": None}


def test_state_file_round_trips_and_knows_what_was_touched(tmp_path):
    path = str(tmp_path / "r.json")
    state = st.RolloutState.create(path, "lab", {"name": "m", "version": "2"},
                                   [["a"], ["b", "c"]], {"window_s": 1})
    state.set_step("a", st.ACTIVATED, activated_ts=1.0)
    state.set_step("b", st.FAILED, error="sha256 mismatch")
    loaded = st.RolloutState.load(path)
    assert loaded.doc["target"] == "m@2"
    assert loaded.touched() == ["a"]
    assert loaded.counts() == {"activated": 1, "failed": 1, "pending": 1}
    assert [r["event"] for r in loaded.doc["log"]] == ["activated", "failed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_missing_or_foreign_state_files_are_named(tmp_path):
    with pytest.raises(AgentError, match="no rollout state at .*--state"):
        st.RolloutState.load(str(tmp_path / "none.json"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(AgentError, match="not a rollout state file"):
        st.RolloutState.load(str(other))


def test_control_file_carries_pause_and_abort(tmp_path):
    path = str(tmp_path / "r.json")
    assert st.read_control(path) is None
    st.write_control(path, "pause")
    assert st.read_control(path) == "pause"
    st.write_control(path, None)
    assert st.read_control(path) is None


def test_inventory_rows_offline_and_stale_telemetry():
    assert split_topic("site/edge", "site/edge/n1/status") == ("n1", "status")
    assert split_topic("edge", "edge/groups/g/cmd/ping") is None
    assert split_topic("edge", "edge/n1/predictions") is None
    inv = Inventory("edge")
    inv.feed("n1", "status", {"state": "serving", "boot": "b2", "group": "lab", "ts": 100.0,
                              "model": {"name": "m", "version": "2", "backend": "onnxruntime",
                                        "precision": "fp32"}})
    inv.feed("n1", "telemetry", dict(_tele(9.5, 20.0, 41.0), boot="b2", fps=30.0, ts=105.0,
                                     power={"total_w": 5.2}, temperature_c={"a": 40, "b": 47}))
    inv.feed("n2", "status", {"state": "offline", "reason": "connection lost", "group": "lab"})
    inv.feed("n2", "telemetry", dict(_tele(9.5, 20.0, 41.0), boot="old", fps=30.0))
    inv.feed("n3", "status", {"state": "serving", "group": "other"})
    assert inv.devices("lab") == ["n1", "n2"]
    row = inv.row("n1")
    assert (row["model"], row["backend"], row["fps"], row["watts"], row["temperature_c"],
            row["last_seen"]) == ("m@2", "onnxruntime/fp32", 30.0, 5.2, 47, 105.0)
    assert inv.row("n2")["fps"] is None  # telemetry of another boot is not this run's
    table = format_table([inv.row("n1"), inv.row("n2")], now=110.0)
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["n1", "serving", "m@2"] and "5s ago" in lines[1]
    assert "offline (connection lost)" in lines[2]
