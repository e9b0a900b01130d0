"""Home Assistant's side of MQTT discovery, for tests: the discovery topic matcher, the keys its
MQTT sensor schema accepts, and the rendering of a `value_template` over a JSON payload.

Rendering uses jinja2's ImmutableSandboxedEnvironment (what Home Assistant's templates build on)
when jinja2 is importable; otherwise a small evaluator of the subset the agent's templates use:
`value_json.a.b[0].c`, `X.values() | max`, `A if COND else B`, `==`, string literals and
`none`. Missing keys render as jinja's Undefined does (empty text; reading into one is an error),
None as `None`.
"""

import re
from typing import Any

# homeassistant/components/mqtt/discovery.py, TOPIC_MATCHER (after the discovery prefix).
TOPIC_MATCHER = re.compile(
    r"^(?P<prefix>[^/]+(?:/[^/]+)*?)/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object_id>[a-zA-Z0-9_-]+)/config$")

# The MQTT sensor's configuration variables (home-assistant.io/integrations/sensor.mqtt),
# long names; discovery also accepts `device`, `origin` and `platform`.
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "last_reset_value_template", "name",
    "object_id", "options", "origin", "payload_available", "payload_not_available", "platform",
    "qos", "state_class", "state_topic", "suggested_display_precision", "unique_id",
    "unit_of_measurement", "value_template",
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
               "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
               "via_device"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
# device_class -> units Home Assistant accepts for it (the ones the agent may use).
DEVICE_CLASS_UNITS = {"temperature": {"°C", "°F", "K"}, "power": {"W", "kW", "mW"},
                      "duration": {"d", "h", "min", "s", "ms", "µs"}, "enum": {None}}


def render(template: str, payload: Any) -> str:
    """`template` rendered with `value_json` = payload, as Home Assistant would."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return _render_small(template, payload)
    return ImmutableSandboxedEnvironment().from_string(template).render(value_json=payload)


class _Undefined(object):
    """jinja's Undefined: renders empty, is false, and reading into it is an error."""

    def __getattr__(self, name: str) -> "_Undefined":
        raise ValueError("undefined value has no attribute {!r}".format(name))

    def __getitem__(self, key: Any) -> "_Undefined":
        raise ValueError("undefined value has no element {!r}".format(key))

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return ""


UNDEFINED = _Undefined()


class _Node(object):
    """A JSON value seen the way jinja sees it: attribute access reads keys."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        if name == "values" and isinstance(self._value, dict):
            return lambda: [_wrap(v) for v in self._value.values()]
        if isinstance(self._value, dict) and name in self._value:
            return _wrap(self._value[name])
        return UNDEFINED

    def __getitem__(self, key: Any) -> Any:
        try:
            return _wrap(self._value[key])
        except (IndexError, KeyError, TypeError):
            return UNDEFINED

    def __bool__(self) -> bool:
        return bool(self._value)


class _Null(_Undefined):
    """JSON null: renders as `None`; its attributes are undefined."""

    def __getattr__(self, name: str) -> _Undefined:
        return UNDEFINED

    def __getitem__(self, key: Any) -> _Undefined:
        return UNDEFINED

    def __str__(self) -> str:
        return "None"


NULL = _Null()


def _wrap(value: Any) -> Any:
    if value is None:
        return NULL
    return _Node(value) if isinstance(value, (dict, list)) else value


def _render_small(template: str, payload: Any) -> str:
    match = re.match(r"^\{\{(.*)\}\}$", template.strip(), re.S)
    if not match:
        raise ValueError("not a single {{ expression }}: " + template)
    expr = match.group(1).strip()
    # jinja's filter binds tighter than if/else: `X | max if C else D` is `max(X) if C else D`.
    expr = re.sub(r"(value_json[\w.\[\]]*\.values\(\))\s*\|\s*max", r"max(\1)", expr)
    if "|" in expr:
        raise ValueError("filter not supported by the small evaluator: " + template)
    expr = re.sub(r"\bnone\b", "None", expr)
    value = eval(expr, {"__builtins__": {}, "max": max}, {"value_json": _wrap(payload)})
    return str(value)
