"""The agent end to end: real broker, real model, real photos, a real agent process."""

import os
import signal

from support.paths import SAMPLES

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _states(recorder, device):
    return [p.get("state") for p in recorder.of("status") if isinstance(p, dict)
            and p.get("device") in (device, None)]


def test_cat_and_coffee_photos_come_back_classified_over_mqtt(broker, recorder, run_agent):
    for photo, expected in (("cat.jpg", CAT_CLASSES), ("coffee.jpg", {"espresso", "cup",
                                                                       "coffee mug"})):
        device = "photo-" + photo.split(".")[0]
        agent = run_agent(device, "--set", "source.uri=file://" + os.path.join(SAMPLES, photo),
                          "--set", "source.loop=false", "--max-frames", "1")
        assert agent.wait(90) == 0, agent.err
        prediction = recorder.wait_topic(
            device + "/predictions", lambda p: p.get("frame") == photo, 10,
            "a prediction for " + photo)
        top = prediction["top"]
        assert top[0]["label"] in expected, top
        assert 0.0 < top[0]["score"] <= 1.0
        assert len(top) == 5 and all(top[i]["score"] >= top[i + 1]["score"] for i in range(4))
        assert prediction["model"] == "efficientnet_lite0@1"
        assert prediction["latency_ms"] > 0
        assert prediction["seq"] == 1
        topic = [t for t, p, _ in recorder.messages if p is prediction][0]
        assert topic == "edge/{}/predictions".format(device)


def test_two_frames_in_flight_publish_every_photo_in_order(broker, recorder, run_agent):
    """backend.workers=2: ONNX Runtime infers two frames at once; every prediction still
    arrives, in frame order, each photo with its own label."""
    expected = {"cat.jpg": CAT_CLASSES, "coffee.jpg": {"espresso", "cup", "coffee mug"},
                "rocket.jpg": {"missile", "projectile", "space shuttle"}}
    agent = run_agent("workers", "--set", "backend.workers=2",
                      "--set", "source.uri=file://" + SAMPLES, "--set", "source.fps=0",
                      "--set", "source.loop=true", "--max-frames", "24")
    assert agent.wait(120) == 0, agent.err
    recorder.wait_topic("workers/status", lambda p: p.get("state") == "offline", 10,
                        "offline status")
    predictions = recorder.of("workers/predictions")
    assert [p["seq"] for p in predictions] == list(range(1, 25))
    frame_seqs = [p["frame_seq"] for p in predictions]
    assert frame_seqs == sorted(frame_seqs) and len(set(frame_seqs)) == 24
    assert {p["frame"] for p in predictions} == set(expected)
    for p in predictions:
        assert p["top"][0]["label"] in expected[p["frame"]], p
    serving = [p for p in recorder.of("workers/status") if p.get("state") == "serving"][0]
    assert serving["model"]["workers"] == 2


def test_status_serving_then_offline_and_info_retained(broker, recorder, run_agent):
    agent = run_agent("lifecycle", "--max-frames", "3")
    assert agent.wait(90) == 0, agent.err
    recorder.wait_topic("lifecycle/status", lambda p: p.get("state") == "offline", 10,
                        "offline status")
    states = [p["state"] for t, p, _ in recorder.messages
              if t == "edge/lifecycle/status"]
    assert "serving" in states and states[-1] == "offline"
    assert states.index("serving") < states.index("offline")
    serving = [p for t, p, _ in recorder.messages
               if t == "edge/lifecycle/status" and p["state"] == "serving"][0]
    assert serving["model"]["name"] == "efficientnet_lite0"
    assert serving["model"]["backend"] == "onnxruntime"
    assert len(serving["model"]["sha256"]) == 64
    info = recorder.wait_topic("lifecycle/info", lambda p: "python" in p, 5, "info message")
    assert info["versions"]["onnxruntime"]
    # Retained: a late subscriber still gets offline status and info.
    from support.mqtt_recorder import Recorder
    late = Recorder(broker.port, "edge/lifecycle/#")
    try:
        late.wait_topic("status", lambda p: p.get("state") == "offline", 5, "retained status")
        late.wait_topic("info", lambda p: "python" in p, 5, "retained info")
    finally:
        late.close()


def test_sigterm_drains_and_publishes_offline(broker, recorder, run_agent):
    agent = run_agent("sigterm", "--set", "source.uri=synthetic://?fps=20")
    recorder.wait_topic("sigterm/predictions", lambda p: True, 60, "first prediction")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.err
    status = recorder.wait_topic("sigterm/status", lambda p: p.get("state") == "offline", 10,
                                 "offline after SIGTERM")
    assert status.get("reason") == "shutdown"
    assert "Traceback" not in agent.err


def test_last_will_fires_when_agent_is_killed(broker, recorder, run_agent):
    agent = run_agent("killed", "--set", "source.uri=synthetic://?fps=20")
    recorder.wait_topic("killed/status", lambda p: p.get("state") == "serving", 60, "serving")
    agent.kill()
    will = recorder.wait_topic("killed/status", lambda p: p.get("state") == "offline", 15,
                               "the Last Will")
    assert will.get("reason") == "connection lost"


def test_ping_is_answered_on_events(broker, recorder, run_agent):
    agent = run_agent("pinged", "--set", "source.uri=synthetic://?fps=10")
    recorder.wait_topic("pinged/status", lambda p: p.get("state") == "serving", 60, "serving")
    recorder.publish("edge/pinged/cmd/ping", {"request_id": "r-1"})
    event = recorder.wait_topic("pinged/events", lambda p: p.get("request_id") == "r-1", 10,
                                "ping answer")
    assert event["command"] == "ping" and event["state"] == "done"
    recorder.publish("edge/pinged/cmd/ping", b"{not json")
    bad = recorder.wait_topic("pinged/events", lambda p: p.get("state") == "rejected", 10,
                              "rejection of bad JSON")
    assert "JSON" in bad["error"]
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


def test_keeps_inferring_while_broker_is_unreachable(tmp_path, run_agent):
    from support.net import free_port
    agent = run_agent("nobroker", "--max-frames", "5", port=free_port())
    assert agent.wait(90) == 0, agent.err
    assert "processed 5 frames" in agent.err
    assert "Traceback" not in agent.err
    assert "spooled" in agent.err  # says where the messages went
