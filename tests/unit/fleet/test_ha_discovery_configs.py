"""Home Assistant discovery configs against HA's MQTT discovery topic format and sensor schema,
and their value templates over the agent's payload shapes (edge cases: nulls, empty lists)."""

import pytest

from agent import homeassistant as ha
from support import ha_templates

DEVICES = ("nano1", "orin.lab 2", "x/y#+")


@pytest.mark.parametrize("device", DEVICES)
def test_every_config_is_on_a_topic_home_assistant_accepts(device):
    messages = ha.discovery_messages("homeassistant", "edge", device, "NVIDIA Jetson Nano")
    assert len(messages) == len(ha.SENSORS) == 8
    for topic in messages:
        match = ha_templates.TOPIC_MATCHER.match(topic)
        assert match, topic
        assert match.group("prefix") == "homeassistant"
        assert match.group("component") == "sensor"
        assert match.group("node_id") == ha.node_id("edge", device)


def test_configs_follow_the_mqtt_sensor_schema():
    messages = ha.discovery_messages("ha", "edge", "nano1", "NVIDIA Jetson Nano")
    unique_ids = set()
    for topic, config in messages.items():
        assert set(config) <= ha_templates.SENSOR_KEYS, set(config) - ha_templates.SENSOR_KEYS
        assert set(config["device"]) <= ha_templates.DEVICE_KEYS
        assert set(config["origin"]) <= ha_templates.ORIGIN_KEYS
        assert config["device"]["identifiers"] == ["edge-agent_edge_nano1"]
        assert config["device"]["model"] == "NVIDIA Jetson Nano"
        assert config["state_topic"] in ("edge/nano1/status", "edge/nano1/telemetry",
                                         "edge/nano1/predictions")
        unique_ids.add(config["unique_id"])
        cls = config.get("device_class")
        if cls is not None:
            assert config.get("unit_of_measurement") in ha_templates.DEVICE_CLASS_UNITS[cls]
        if "state_class" in config:
            assert config["state_class"] in ha_templates.STATE_CLASSES
        if cls == "enum":
            assert "state_class" not in config and config["options"] == ha.STATES
        for entry in config.get("availability", []):
            assert set(entry) <= ha_templates.AVAILABILITY_KEYS
            assert entry["topic"] == "edge/nano1/status"
    assert len(unique_ids) == len(messages)
    # Only the state sensor goes without availability: it shows `offline` itself.
    without = [c["name"] for c in messages.values() if "availability" not in c]
    assert without == ["State"]


def test_two_agents_on_other_mqtt_prefixes_do_not_share_ids():
    a = ha.discovery_messages("homeassistant", "edge", "nano1")
    b = ha.discovery_messages("homeassistant", "lab", "nano1")
    assert not set(a) & set(b)
    assert not {c["unique_id"] for c in a.values()} & {c["unique_id"] for c in b.values()}


def _template(key):
    return [s.template for s in ha.SENSORS if s.key == key][0]


@pytest.mark.parametrize("key,payload,expected", [
    ("temperature", {"temperature_c": {"cpu": 41.5, "gpu": 43.0}}, "43.0"),
    ("temperature", {"temperature_c": None}, "None"),
    ("temperature", {"temperature_c": {}}, "None"),
    ("power", {"power": {"source": "none"}}, ""),
    ("power", {"power": {"source": "rapl", "total_w": None}}, "None"),
    ("inferences_per_joule", {"energy": None}, ""),
    ("inferences_per_joule", {"energy": {"inferences_per_joule": 12.5}}, "12.5"),
    ("top_label", {"top": []}, "None"),
    ("top_label", {"top": [{"index": 3, "label": "cup", "score": 0.25}]}, "cup"),
    ("top_score", {"top": [{"index": 3, "label": "cup", "score": 0.25}]}, "0.25"),
    ("infer_p50", {"latency_ms": {"infer": {"p50": 7.1, "p95": 9.0}}}, "7.1"),
    ("infer_p50", {"latency_ms": {"infer": None}}, ""),
])
def test_templates_render_missing_and_null_fields_without_errors(key, payload, expected):
    assert ha_templates.render(_template(key), payload) == expected


@pytest.mark.parametrize("state,expected", [("serving", "online"), ("degraded", "online"),
                                            ("offline", "offline")])
def test_availability_follows_the_status_state(state, expected):
    assert ha_templates.render(ha.AVAILABILITY_TEMPLATE, {"state": state}) == expected


def test_ids_are_made_safe_for_the_topic():
    assert ha.safe_id("orin.lab 2") == "orin_lab_2"
    assert ha.safe_id("") == "_"
