"""Health: the one owner of the status (state, problems, building)."""


def test_health_owns_the_status_degraded_wins_and_building_shows():
    """agent/health.py: problems make `serving` read `degraded` (with the reasons, redacted),
    a background build reads `building`, and each change is published once."""
    from agent.health import Health
    from support.recording_link import RecordingLink

    class Model(object):
        ref = "m@1"

        def describe(self):
            return {"name": "m", "version": "1", "backend": "onnxruntime", "precision": "fp32"}

    link = RecordingLink()
    health = Health("dev", "boot1", "file://x", model=lambda: Model())
    health.problem("source", "not yet published")  # nothing attached: recorded only
    assert link.sent == [] and health.problems == {"source": "not yet published"}
    health.attach(link)
    health.problem("source", None)
    health.set_state("serving")
    assert health.state == "serving"
    health.problem("source", "rtsp://user:secret@cam/1 unreachable")
    assert health.state == "degraded"
    status = [p for s, p in link.sent if s == "status"][-1]
    assert status["state"] == "degraded" and "secret" not in status["detail"]
    event = [p for s, p in link.sent if s == "events"][-1]
    assert (event["command"], event["detail"], event["state"]) == ("health", "source",
                                                                    "degraded")
    sent = len(link.sent)
    health.problem("source", "rtsp://user:secret@cam/1 unreachable")  # the same: no news
    assert len(link.sent) == sent
    health.problem("source", None)
    health.set_building("m@2")
    assert health.state == "building" and health.status_payload()["building"] == "m@2"
    health.set_building(None)
    assert health.state == "serving"
    health.problem("model", "no model loads", announce=False)
    assert health.problems == {"model": "no model loads"} and health.state == "serving"
    offline = health.offline_payload()
    assert offline["state"] == "offline" and offline["reason"] == "shutdown"
    assert health.status_line().startswith("offline m@1 on onnxruntime fp32")


def test_event_listeners_see_every_event_even_when_one_fails():
    """Health.event_listeners (the live view's timeline): called with each event as
    published, with its ts; a listener that raises does not stop the others."""
    from agent.health import Health
    from support.recording_link import RecordingLink

    seen = []

    def broken(event):
        raise RuntimeError("listener bug")

    health = Health("dev", "boot1", "file://x", model=lambda: None)
    health.event_listeners.extend([broken, seen.append])
    health.emit_event({"command": "reload", "state": "done"})  # no link attached yet
    health.problem("source", "camera gone")
    assert [(e["command"], e["state"]) for e in seen] == [("reload", "done"),
                                                          ("health", "degraded")]
    assert all(isinstance(e["ts"], float) for e in seen)
    assert seen[1]["detail"] == "source" and seen[1]["error"] == "camera gone"
