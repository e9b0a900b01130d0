"""The live view's page, charts and timeline: the history kept for the charts, `/frame.jpg`
(a frame with its own number and prediction), and the page in real headless Chromium driven
over the DevTools protocol: the panel describes the frame on screen, the charts gain points,
a model swap lands on the timeline. Screenshots are kept in test-artifacts/."""

import hashlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from typing import Any, Dict, List

import numpy as np
import pytest

from agent.pipeline.frames import Frame
from agent.view import LiveView, ViewServer
from support.agent_process import AgentProcess, agent_args
from support.browser import CHROMIUM, Browser
from support.model_server import MANIFEST, FileServer
from support.net import free_port
from support.paths import MODEL_DIR, ROOT
from support.waiting import wait_until

ARTIFACTS = os.path.join(ROOT, "test-artifacts")
MODEL = {"name": "efficientnet_lite0", "version": "1", "backend": "onnxruntime",
         "precision": "fp32"}
TELEMETRY = {"ts": 1000.0, "fps": 9.5, "power_coverage": "board",
             "latency_ms": {"infer": {"p50": 21.0, "p99": 33.0}},
             "power": {"source": "iio", "total_w": 6.5}}

# What the page shows, read in one go (one JavaScript turn: consistent with itself).
PAGE_STATE = """(function () {
  var q = function (s) { return document.querySelector(s); };
  var label = q("#top li .label");
  var points = {}, events = {};
  document.querySelectorAll("#charts canvas").forEach(function (c) {
    points[c.id] = Number(c.dataset.points); events[c.id] = Number(c.dataset.events); });
  return {image: q("#live").dataset.seq, panel: q("#panel").dataset.seq,
          caption: q("#frame-seq").textContent, heading: q("#panel-seq").textContent,
          label: label ? label.textContent : null, points: points, events: events,
          timeline: Array.prototype.map.call(document.querySelectorAll("#events li[data-kind]"),
                                             function (li) { return li.dataset.kind; }),
          status: {model: q("#s-model").textContent, backend: q("#s-backend").textContent,
                   state: q("#s-state").textContent, uptime: q("#s-uptime").textContent,
                   dropped: q("#s-dropped").textContent, spool: q("#s-spool").textContent,
                   coverage: q("#s-coverage").textContent},
          raw: q("#raw").textContent, rawOpen: q("#raw-box").open};
})()"""


def _need_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("{} is missing: apt-get install chromium (.ci/setup --tests does)".format(
            CHROMIUM))


def _payload(seq: int, label: str = "") -> Dict[str, Any]:
    return {"seq": seq, "model": "efficientnet_lite0@1", "latency_ms": 20.0 + seq % 7,
            "frame": "f{}.jpg".format(seq),
            "top": [{"index": seq % 1000, "label": label or "label-{}".format(seq),
                     "score": 0.5}, {"index": 1, "label": "other", "score": 0.1}]}


def _frame(seq: int) -> Frame:
    image = np.full((240, 320, 3), (seq * 37) % 256, np.uint8)
    return Frame(image, seq, time.time(), time.monotonic(), "f{}.jpg".format(seq))


def _get(url: str, timeout: float = 20):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers, resp.read()


@pytest.fixture
def served():
    stop = threading.Event()
    view = LiveView(model_info=lambda: MODEL, status=lambda: {
        "state": "degraded", "device": "unit", "detail": "source: camera gone",
        "model": MODEL, "uptime_s": 3725.0, "dropped_frames": 4, "spool_pending": 12})
    server = ViewServer(view, "127.0.0.1", free_port(), stop, stream_fps=30).start()
    yield view, "http://127.0.0.1:{}".format(server.port)
    stop.set()
    server.join(5)


# ---------------------------------------------------------------- the rendering, in process

def test_the_window_rendering_has_a_footer_and_the_web_one_not():
    view = LiveView(model_info=lambda: MODEL)
    frame = _frame(1)
    frame.image[:] = 255
    view.on_prediction(frame, _payload(1))
    view.on_telemetry(TELEMETRY)
    _, window = view.rendered(footer=True)
    _, web = view.rendered()
    assert window.shape == web.shape == (480, 640, 3)
    strip = window[-20:].astype(int)
    assert (strip.max(axis=2) <= 90).mean() > 0.7  # dark, over a white frame
    assert (strip.min(axis=2) > 180).sum() > 40    # with text on it
    assert (web[-20:] == 255).all()                # the page has its own panel instead


# ---------------------------------------------------------------- /frame.jpg, in process

def test_frame_jpeg_brings_its_own_prediction_and_waits_for_a_newer_one(served):
    view, base = served
    view.on_prediction(_frame(1), _payload(1, label="caf\u00e9"))
    code, headers, body = _get(base + "/frame.jpg")
    assert code == 200 and headers["X-Frame-Seq"] == "1" and body[:2] == b"\xff\xd8"
    assert headers["X-Prediction"].isascii()  # HTTP headers: the label is \\u-escaped
    prediction = json.loads(headers["X-Prediction"])
    assert prediction["seq"] == 1 and prediction["top"][0]["label"] == "caf\u00e9"
    assert headers["X-Frame-Name"] == "f1.jpg"
    code, _, body = _get(base + "/frame.jpg?after=1&wait=0.3")
    assert code == 204 and body == b""  # nothing newer came
    got = []  # type: List[Any]
    waiter = threading.Thread(target=lambda: got.append(_get(base + "/frame.jpg?after=1")))
    waiter.start()
    view.on_prediction(_frame(2), _payload(2))
    waiter.join(20)
    code, headers, _ = got[0]
    assert headers["X-Frame-Seq"] == "2"
    assert json.loads(headers["X-Prediction"])["top"][0]["label"] == "label-2"
    # The MJPEG parts carry the frame number too.
    with urllib.request.urlopen(base + "/stream.mjpg", timeout=20) as resp:
        part = b""
        while b"\r\n\r\n" not in part:
            part += resp.readline()
    assert b"X-Frame-Seq: 2\r\n" in part


def test_history_json_answers_204_while_unchanged(served):
    view, base = served
    view.on_telemetry(dict(TELEMETRY, ts=time.time()))
    code, _, body = _get(base + "/history.json")
    history = json.loads(body.decode())
    assert code == 200 and len(history["points"]) == 1 and history["events"] == []
    assert history["points"][0]["coverage"] == "board" and history["now"] >= TELEMETRY["ts"]
    version = history["version"]
    assert _get(base + "/history.json?version={}".format(version))[0] == 204
    view.on_event({"ts": time.time(), "command": "reload", "state": "done"})
    code, _, body = _get(base + "/history.json?version={}".format(version))
    assert code == 200 and json.loads(body.decode())["events"][0]["kind"] == "reload"


# ---------------------------------------------------------------- the page, in Chromium

def test_page_shows_each_frame_with_its_own_prediction(served):
    """Frames arrive faster than the page shows them: whatever frame is on screen, the panel
    names that frame's prediction (label-N for frame N). Charts, events and status too."""
    _need_chromium()
    view, base = served
    stop = threading.Event()

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            view.on_prediction(_frame(seq), _payload(seq))
            if seq % 10 == 1:
                view.on_telemetry(dict(TELEMETRY, ts=time.time(), fps=10.0 + seq % 5))
            if seq == 25:
                view.on_event({"command": "model/activate", "state": "activated",
                               "detail": "serving m@2 (was m@1)", "ts": time.time()})
            stop.wait(0.03)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with Browser() as browser:
            browser.open(base + "/")
            seen = []  # type: List[str]
            for _ in range(15):
                state = browser.wait_for(
                    "(function(s){return s.image && s.image !== %s ? s : null})(%s)" % (
                        json.dumps(seen[-1] if seen else ""), PAGE_STATE), 30,
                    "the page to show a new frame")
                assert state["image"] == state["panel"], state
                assert state["caption"] == state["heading"] == "#" + state["image"]
                assert state["label"] == "label-" + state["image"], state
                seen.append(state["image"])
            state = browser.wait_for("(function(s){return s.points['cv-fps'] >= 3 && "
                                     "s.timeline.length ? s : null})(%s)" % PAGE_STATE, 30,
                                     "three fps points and the activation on the timeline")
            assert state["timeline"] == ["activated"]
            assert state["events"]["cv-fps"] == 1 and state["points"]["cv-power"] >= 3
            assert state["status"] == {
                "model": "efficientnet_lite0@1", "backend": "onnxruntime fp32",
                "state": "degraded: source: camera gone", "uptime": "1 h 2 min 5 s",
                "dropped": "4", "spool": "12 messages waiting", "coverage": "whole board (iio)"}
            assert not state["rawOpen"] and '"spool_pending": 12' in state["raw"]
            # Everything the page loaded came from the agent (devices have no network).
            loaded = browser.evaluate('performance.getEntriesByType("resource")'
                                      '.map(function (e) { return e.name; })')
            assert loaded and all(u.startswith(base + "/") or u.startswith("blob:" + base)
                                  for u in loaded), loaded
    finally:
        stop.set()
        feeder.join(5)
    assert len(set(seen)) == 15


# ---------------------------------------------------------------- edge-agent demo, end to end

@pytest.fixture
def model_files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    for name in ("model.onnx", "labels.txt"):
        shutil.copy(os.path.join(MODEL_DIR, name), str(root / name))
    server = FileServer(root)
    yield root, server
    server.close()


def _digest(path: Any) -> str:
    with open(str(path), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_demo_page_agrees_with_mqtt_and_shows_a_model_swap(broker, recorder, tmp_path,
                                                           model_files):
    _need_chromium()
    root, files = model_files
    device = "view-page"
    port = free_port()
    proc = AgentProcess(["demo", "--view", "web"] + agent_args(
        broker.port, device, str(tmp_path / "state"), "--set", "view.port={}".format(port),
        "--set", "source.uri=file://models/samples", "--set", "source.fps=5",
        "--set", "telemetry.interval_s=1")[1:])
    base = "http://127.0.0.1:{}".format(port)
    os.makedirs(ARTIFACTS, exist_ok=True)
    try:
        recorder.wait_topic(device + "/predictions", lambda p: p.get("seq", 0) >= 2, 90,
                            "the demo's predictions")
        with Browser() as browser:
            browser.open(base + "/")
            first = browser.wait_for("(function(s){return s.image && s.points['cv-fps'] >= 2 "
                                     "? s : null})(%s)" % PAGE_STATE, 60,
                                     "a frame and two chart points on the page")
            browser.screenshot(os.path.join(ARTIFACTS, "live-view-1.png"))
            # The panel describes the frame on screen: what MQTT said of that frame.
            seq = int(first["image"])
            assert first["panel"] == first["image"], first
            published = recorder.wait_topic(device + "/predictions",
                                            lambda p: p.get("seq") == seq, 30,
                                            "prediction {} over MQTT".format(seq))
            assert first["label"] == published["top"][0]["label"], (first, published)
            assert first["status"]["model"] == "efficientnet_lite0@1"
            assert first["status"]["state"].startswith("serving")

            # A model swap while the page watches lands on its timeline.
            recorder.publish("edge/{}/cmd/model/install".format(device), {
                "name": "efficientnet_lite0", "version": "2", "url": files.url("model.onnx"),
                "sha256": _digest(root / "model.onnx"), "manifest": dict(MANIFEST),
                "labels_url": files.url("labels.txt"),
                "labels_sha256": _digest(root / "labels.txt"), "request_id": "view-swap"})
            done = recorder.wait_topic(device + "/events", lambda p: p.get(
                "request_id") == "view-swap" and p.get("state") in ("activated", "failed"),
                120, "the swap's final event")
            assert done["state"] == "activated", done
            second = browser.wait_for(
                "(function(s){return s.timeline.indexOf('activated') >= 0 && "
                "s.status.model === 'efficientnet_lite0@2' && s.points['cv-fps'] > %d && "
                "s.image !== %s ? s : null})(%s)" % (first["points"]["cv-fps"],
                                                     json.dumps(first["image"]), PAGE_STATE),
                60, "the swap on the timeline, version 2 in the status, more points")
            browser.screenshot(os.path.join(ARTIFACTS, "live-view-2.png"))
            assert second["events"]["cv-fps"] >= 1 and second["panel"] == second["image"]
            seq = int(second["image"])
            published = recorder.wait_topic(device + "/predictions",
                                            lambda p: p.get("seq") == seq, 30,
                                            "prediction {} over MQTT".format(seq))
            assert second["label"] == published["top"][0]["label"], (second, published)
            box = browser.evaluate("(function (r) { return [r.top, r.bottom]; })("
                                   "document.querySelector('#charts').getBoundingClientRect())")
        import cv2
        one, two = (cv2.imread(os.path.join(ARTIFACTS, n)) for n in ("live-view-1.png",
                                                                      "live-view-2.png"))
        assert one.shape == two.shape == (900, 1280, 3)
        top, bottom = int(box[0]), int(box[1])
        assert bottom - top > 100 and (one[top:bottom] != two[top:bottom]).any()  # new points
    finally:
        proc.signal(signal.SIGINT)
    assert proc.wait(60) == 0, proc.err
