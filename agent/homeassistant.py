"""Home Assistant MQTT discovery: the retained config messages that make a device appear.

With `homeassistant.enabled`, the agent publishes one retained config message per sensor to
`<homeassistant.prefix>/sensor/<node>/<object>/config` (Home Assistant's discovery topic
format). Each config points Home Assistant at the agent's own topics and payloads
(`P/D/status`, `P/D/telemetry`, `P/D/predictions`) through a `value_template`; nothing extra
is published per frame. Availability reads the retained status, which the Last Will turns to
`offline` when the agent dies. The topics published are remembered in
`state_dir/homeassistant.json`, so turning discovery off (or changing the prefix) clears them
with empty retained payloads at the next start: the entities disappear from Home Assistant.
"""

import json
import logging
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional

from . import __version__
from .atomicfile import write_atomic

log = logging.getLogger(__name__)

MARKER = "homeassistant.json"  # in state_dir: the discovery topics this device published
# The agent's availability: the retained status says `offline` after a shutdown or the Last Will.
AVAILABILITY_TEMPLATE = "{{ 'offline' if value_json.state == 'offline' else 'online' }}"
STATES = ["starting", "building", "serving", "degraded", "offline"]


class Sensor(NamedTuple):
    """One Home Assistant sensor read from one of the agent's topics."""

    key: str            # object id, also the end of the unique_id
    name: str
    topic: str          # the agent topic's suffix: status, telemetry, predictions
    template: str       # value_template over the agent's JSON payload
    unit: Optional[str]
    device_class: Optional[str]
    icon: Optional[str]


SENSORS = [
    Sensor("state", "State", "status", "{{ value_json.state }}", None, "enum",
           "mdi:state-machine"),
    Sensor("top_label", "Top label", "predictions",
           "{{ value_json.top[0].label if value_json.top else none }}", None, None,
           "mdi:label-outline"),
    Sensor("top_score", "Top score", "predictions",
           "{{ value_json.top[0].score if value_json.top else none }}", None, None,
           "mdi:percent-outline"),
    Sensor("fps", "Frames per second", "telemetry", "{{ value_json.fps }}", "fps", None,
           "mdi:speedometer"),
    Sensor("infer_p50", "Inference p50", "telemetry", "{{ value_json.latency_ms.infer.p50 }}",
           "ms", "duration", "mdi:timer-outline"),
    Sensor("power", "Power", "telemetry", "{{ value_json.power.total_w }}", "W", "power", None),
    Sensor("inferences_per_joule", "Inferences per joule", "telemetry",
           "{{ value_json.energy.inferences_per_joule }}", "inferences/J", None,
           "mdi:lightning-bolt-outline"),
    Sensor("temperature", "Temperature", "telemetry",
           "{{ value_json.temperature_c.values() | max if value_json.temperature_c else none }}",
           "°C", "temperature", None),
]


def safe_id(text: str) -> str:
    """Home Assistant's node and object ids allow only [a-zA-Z0-9_-]."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text) or "_"


def node_id(mqtt_prefix: str, device_id: str) -> str:
    return safe_id("{}_{}".format(mqtt_prefix, device_id))


def config_topic(ha_prefix: str, mqtt_prefix: str, device_id: str, sensor: Sensor) -> str:
    return "{}/sensor/{}/{}/config".format(ha_prefix, node_id(mqtt_prefix, device_id),
                                           sensor.key)


def device_block(mqtt_prefix: str, device_id: str, model: Optional[str] = None
                 ) -> Dict[str, Any]:
    """The `device` every sensor of this agent belongs to (one device in Home Assistant)."""
    return {"identifiers": ["edge-agent_" + node_id(mqtt_prefix, device_id)],
            "name": device_id, "manufacturer": "edge-agent",
            "model": model or "edge-agent device", "sw_version": __version__}


def sensor_config(mqtt_prefix: str, device_id: str, sensor: Sensor,
                  model: Optional[str] = None) -> Dict[str, Any]:
    """The discovery config of one sensor (Home Assistant's MQTT sensor schema, long keys)."""
    base = "{}/{}/".format(mqtt_prefix, device_id)
    config = {
        "name": sensor.name,
        "unique_id": "edge-agent_{}_{}".format(node_id(mqtt_prefix, device_id), sensor.key),
        "state_topic": base + sensor.topic,
        "value_template": sensor.template,
        "device": device_block(mqtt_prefix, device_id, model),
        "origin": {"name": "edge-agent", "sw_version": __version__},
        "qos": 1,
    }  # type: Dict[str, Any]
    if sensor.key == "state":
        # Always shows the agent's state, `offline` included, and the whole status (model,
        # backend, precision, detail) as attributes.
        config["options"] = STATES
        config["json_attributes_topic"] = base + "status"
    else:
        config["availability"] = [{"topic": base + "status",
                                   "value_template": AVAILABILITY_TEMPLATE,
                                   "payload_available": "online",
                                   "payload_not_available": "offline"}]
    if sensor.unit is not None:
        config["unit_of_measurement"] = sensor.unit
        config["state_class"] = "measurement"
    if sensor.key == "top_score":
        config["state_class"] = "measurement"
    if sensor.device_class is not None:
        config["device_class"] = sensor.device_class
    if sensor.icon is not None:
        config["icon"] = sensor.icon
    return config


def discovery_messages(ha_prefix: str, mqtt_prefix: str, device_id: str,
                       model: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Discovery topic -> config payload, for every sensor of one device."""
    return dict((config_topic(ha_prefix, mqtt_prefix, device_id, s),
                 sensor_config(mqtt_prefix, device_id, s, model)) for s in SENSORS)


def announce(config: Any, link: Any, state_dir: str, device_id: str,
             model: Optional[str] = None) -> List[str]:
    """At start: publish (enabled) or clear (disabled, or no longer published) the retained
    discovery configs on `link`, and remember what is published. Returns the topics cleared."""
    marker = os.path.join(state_dir, MARKER)
    before = _read_marker(marker)
    messages = {}  # type: Dict[str, Dict[str, Any]]
    if config.homeassistant.enabled:
        messages = discovery_messages(config.homeassistant.prefix, config.mqtt.prefix,
                                      device_id, model)
    stale = sorted(set(before) - set(messages))
    for topic in stale:
        link.publish_raw(topic, b"", kind="status", retain=True, qos=1)
    for topic, payload in sorted(messages.items()):
        data = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        link.publish_raw(topic, data, kind="status", retain=True, qos=1)
    try:
        if messages:
            write_atomic(marker, json.dumps(sorted(messages), indent=1).encode("utf-8"))
        elif before:
            os.unlink(marker)
    except OSError as exc:  # disk full, read-only: discovery still goes out, serving goes on
        log.warning("cannot update %s (%s): turning Home Assistant discovery off later may "
                    "leave its configs retained", marker, exc)
    if stale:
        log.info("Home Assistant discovery: cleared %d retained config(s)", len(stale))
    if messages:
        log.info("Home Assistant discovery: %d sensors under %s/sensor/%s/", len(messages),
                 config.homeassistant.prefix, node_id(config.mqtt.prefix, device_id))
    return stale


def _read_marker(path: str) -> List[str]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            topics = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): earlier discovery topics, if any, stay retained; "
                    "clear them with mosquitto_pub -r -n -t TOPIC", path, exc)
        return []
    return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []
