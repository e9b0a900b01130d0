"""Home Assistant discovery end to end: a real agent, a real Mosquitto, and the topics a Home
Assistant instance would read: retained configs, values rendered from the agent's real
payloads, availability through the Last Will, and removal when discovery is turned off."""

import json
import os
import uuid

from agent import homeassistant as ha
from support import ha_templates
from support.mqtt_recorder import Recorder

HA_ON = ("--set", "homeassistant.enabled=true", "--set", "homeassistant.prefix=hatest",
         "--set", "source.uri=synthetic://?fps=20", "--set", "telemetry.interval_s=1")


def _retained_under(port, topic_filter):
    """Every retained message under `topic_filter` now: subscribe, then publish a marker on the
    same filter; the broker sends retained messages before the marker."""
    rec = Recorder(port, topic_filter)
    try:
        marker = topic_filter.replace("#", "marker-" + uuid.uuid4().hex[:8])
        rec.publish(marker, {"marker": True})
        rec.wait_for(lambda ms: any(t == marker for t, _, _ in ms), 10, "the marker")
        return dict((t, p) for t, p, retained in rec.messages if retained)
    finally:
        rec.close()


def _expected(sensor, payload):
    """What the sensor's value is, read straight from the payload (not through the template)."""
    if sensor.key == "state":
        return payload["state"]
    if sensor.key in ("top_label", "top_score"):
        return str(payload["top"][0]["label" if sensor.key == "top_label" else "score"])
    if sensor.key == "fps":
        return str(payload["fps"])
    if sensor.key == "infer_p50":
        return str(payload["latency_ms"]["infer"]["p50"])
    if sensor.key == "power":
        return str(payload["power"].get("total_w", ""))
    if sensor.key == "inferences_per_joule":
        return "" if payload["energy"] is None else str(payload["energy"]["inferences_per_joule"])
    zones = payload["temperature_c"]
    return str(max(zones.values())) if zones else "None"


def test_device_appears_renders_real_payloads_goes_offline_and_is_removed(broker, run_agent,
                                                                          tmp_path):
    device = "ha-" + uuid.uuid4().hex[:6]
    node = ha.node_id("edge", device)
    rec = Recorder(broker.port, "#")
    try:
        agent = run_agent(device, *HA_ON)
        rec.wait_topic(device + "/status", lambda p: p.get("state") == "serving", 60, "serving")
        telemetry = rec.wait_topic(device + "/telemetry", lambda p: (p.get("frames") or 0) > 0,
                                   30, "telemetry with frames")
        prediction = rec.wait_topic(device + "/predictions", lambda p: bool(p.get("top")), 10,
                                    "a prediction")
        status = [p for t, p, _ in rec.messages if t == "edge/{}/status".format(device)][-1]

        configs = _retained_under(broker.port, "hatest/#")
        mine = dict((t, c) for t, c in configs.items() if "/{}/".format(node) in t)
        assert sorted(mine) == sorted("hatest/sensor/{}/{}/config".format(node, s.key)
                                      for s in ha.SENSORS)
        payloads = {"status": status, "telemetry": telemetry, "predictions": prediction}
        rendered = {}
        for sensor in ha.SENSORS:
            config = mine["hatest/sensor/{}/{}/config".format(node, sensor.key)]
            assert set(config) <= ha_templates.SENSOR_KEYS
            assert ha_templates.TOPIC_MATCHER.match(
                "hatest/sensor/{}/{}/config".format(node, sensor.key))
            suffix = config["state_topic"].split("/")[-1]
            assert config["state_topic"] == "edge/{}/{}".format(device, suffix)
            value = ha_templates.render(config["value_template"], payloads[suffix])
            assert value == _expected(sensor, payloads[suffix]), sensor.key
            rendered[sensor.key] = value
            for entry in config.get("availability", []):
                assert ha_templates.render(entry["value_template"], status) == "online"
        print("rendered from the agent's payloads:", json.dumps(rendered, sort_keys=True))
        assert rendered["state"] == "serving"
        assert float(rendered["fps"]) > 0 and float(rendered["infer_p50"]) > 0
        assert 0.0 < float(rendered["top_score"]) <= 1.0
        assert os.path.exists(str(tmp_path / "state" / ha.MARKER))

        # The Last Will: killed, the retained status turns offline and so does availability.
        agent.kill()
        will = rec.wait_topic(device + "/status", lambda p: p.get("reason") == "connection lost",
                              30, "the Last Will")
        availability = mine["hatest/sensor/{}/fps/config".format(node)]["availability"][0]
        assert ha_templates.render(availability["value_template"], will) == "offline"
        state_config = mine["hatest/sensor/{}/state/config".format(node)]
        assert ha_templates.render(state_config["value_template"], will) == "offline"

        # Turned off: the next start clears every retained config with an empty payload.
        mark = rec.mark()
        off = run_agent(device, "--set", "homeassistant.prefix=hatest",
                        "--set", "source.uri=synthetic://?fps=20")
        for topic in mine:
            rec.wait_for(lambda ms, topic=topic: any(t == topic and p is None
                                                     for t, p, _ in ms[mark:]),
                         60, "an empty payload on " + topic)
        assert not [t for t in _retained_under(broker.port, "hatest/#") if node in t]
        assert not os.path.exists(str(tmp_path / "state" / ha.MARKER))
        off.kill()
    finally:
        rec.close()


def test_disabled_by_default_publishes_nothing_under_the_discovery_prefix(broker, run_agent):
    device = "ha-off-" + uuid.uuid4().hex[:6]
    rec = Recorder(broker.port, "#")
    try:
        agent = run_agent(device, "--set", "source.uri=synthetic://?fps=20")
        rec.wait_topic(device + "/status", lambda p: p.get("state") == "serving", 60, "serving")
        agent.kill()
        node = ha.node_id("edge", device)
        assert not [t for t, _, _ in rec.messages if node in t and t.startswith("homeassistant/")]
    finally:
        rec.close()
