"""The live view's memory for its charts (agent/view/history.py: chart points, timeline
events, the span kept, the power meter's coverage) and the window's footer line. No browser,
no cv2: runs on every JetPack stack."""

from agent.view.history import History, chart_point, power_coverage, timeline_event
from agent.view.overlay import footer_text

TELEMETRY = {"ts": 1000.0, "fps": 9.5, "dropped": 0,
             "latency_ms": {"infer": {"p50": 20.0, "p95": 25.0, "p99": 30.0},
                            "end_to_end": {"p50": 40.0, "p95": 50.0, "p99": 55.0}},
             "power": {"source": "iio", "total_w": 7.0, "rails": {}},
             "energy": {"inferences_per_joule": 1.3, "mean_w": 7.25},
             "temperature_c": {"CPU-therm": 41.0, "GPU-therm": 43.5},
             "power_coverage": "board"}
PAYLOAD = {"seq": 3, "latency_ms": 23.0, "top": [{"index": 1, "label": "x", "score": 0.5}]}


def test_chart_point_and_power_coverage():
    assert chart_point(TELEMETRY) == {
        "t": 1000.0, "fps": 9.5, "infer_p50": 20.0, "infer_p99": 30.0, "e2e_p50": 40.0,
        "e2e_p99": 55.0, "power_w": 7.25, "inf_per_j": 1.3, "temp_c": 43.5,
        "coverage": "board"}
    bare = chart_point({"ts": 5, "fps": None, "latency_ms": {}, "power": {"source": "none"},
                        "energy": None, "temperature_c": None})
    assert bare["t"] == 5.0 and bare["power_w"] is None and bare["temp_c"] is None
    assert bare["coverage"] == "unknown" and bare["infer_p50"] is None
    assert power_coverage({"power_coverage": "gpu"}) == "gpu"
    assert power_coverage({"power": {"coverage": "cpu_package"}}) == "cpu_package"
    assert power_coverage({"power_coverage": None}) == "unknown"
    assert power_coverage({"power_coverage": "whatever"}) == "unknown"
    assert power_coverage(None) == "unknown"


def test_timeline_events_and_what_is_left_out():
    kinds = [timeline_event(e) for e in (
        {"ts": 1, "command": "model/install", "state": "activated",
         "detail": "serving m@2 (was m@1)"},
        {"ts": 2, "command": "model/rollback", "state": "activated", "detail": "serving m@1"},
        {"ts": 3, "command": "health", "detail": "source", "state": "degraded",
         "error": "no frames"},
        {"ts": 4, "command": "health", "detail": "source", "state": "recovered"},
        {"ts": 5, "command": "reload", "state": "done", "detail": "changed: source.fps"},
        {"ts": 6, "command": "model/install", "state": "building"},
        {"ts": 7, "command": "model/list", "state": "done"})]
    assert kinds[:5] == [
        {"t": 1.0, "kind": "activated", "text": "model activated: serving m@2 (was m@1)"},
        {"t": 2.0, "kind": "rolled_back", "text": "rolled back: serving m@1"},
        {"t": 3.0, "kind": "degraded", "text": "camera degraded: no frames"},
        {"t": 4.0, "kind": "recovered", "text": "camera recovered"},
        {"t": 5.0, "kind": "reload", "text": "reload: changed: source.fps"}]
    assert kinds[5:] == [None, None]
    auto = timeline_event({"ts": 8, "command": "model/activate", "state": "activated",
                           "request_id": "auto-rollback-1a2b"})
    assert auto["kind"] == "rolled_back"


def test_history_keeps_the_last_span():
    history = History(span_s=60.0)
    for t in (0.0, 30.0, 100.0):
        history.add_telemetry(dict(TELEMETRY, ts=t))
    history.add_event({"ts": 10.0, "command": "reload", "state": "done"})
    history.add_event({"ts": 101.0, "command": "reload", "state": "failed", "error": "bad"})
    history.add_telemetry({"fps": 3.0})  # no ts: not a point in time
    snap = history.snapshot()
    assert [p["t"] for p in snap["points"]] == [100.0]
    assert snap["events"] == [{"t": 101.0, "kind": "reload", "text": "reload failed: bad"}]
    assert snap["span_s"] == 60.0 and snap["version"] == history.version == 5


def test_footer_line():
    assert footer_text(PAYLOAD, TELEMETRY, 9.46) == \
        "9.5 fps | infer 20.0 ms | e2e 40 ms | 7.25 W | 1.3 inf/J"
    assert footer_text(PAYLOAD, None, None) == "n/a fps | infer n/a | e2e 23 ms | n/a | n/a"
