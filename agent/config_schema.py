"""The config schema as data: every key of config.yaml with its type, default and limits.

A leaf is a `Field`; a section is a dict of them. The schema also says which keys are secret
(hidden in logs) and which hold paths (made absolute at load; a file key must exist). The
loader in agent/config.py walks it; config.yaml documents the same keys for users.
"""

import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from .backends import KINDS, PRECISIONS
from .errors import ConfigError


class Field(object):
    """One leaf key: its type, default and limits, and its role: a secret (hidden in logs) or a
    path (`path="dir"` or `"file"`: made absolute against the config file's directory at load;
    a file that is set must exist and be readable)."""

    def __init__(self, kind: str, default: Any = None, nullable: bool = False,
                 choices: Optional[Sequence[Any]] = None, minimum: Optional[float] = None,
                 maximum: Optional[float] = None, item: Optional[str] = None,
                 secret: Any = False, path: Optional[str] = None, doc: str = "") -> None:
        self.kind = kind          # str, int, float, bool, list
        self.default = default
        self.nullable = nullable
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum
        self.item = item          # element kind for lists
        self.secret = secret      # True: shown as ***; "url": shown with credentials hidden
        self.path = path          # "dir" or "file"
        self.doc = doc

    def check(self, path: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ConfigError("config: {}: must not be empty (null); default is {!r}".format(
                path, self.default))
        value = _coerce(self.kind, path, value)
        if self.kind == "list":
            value = [_coerce(self.item or "str", "{}[{}]".format(path, i), v)
                     for i, v in enumerate(value)]
            if self.choices is not None:
                for i, v in enumerate(value):
                    if v not in self.choices:
                        raise ConfigError("config: {}[{}]: {!r} is not one of {}".format(
                            path, i, v, ", ".join(str(c) for c in self.choices)))
            return value
        if self.kind == "float" and (math.isnan(value) or math.isinf(value)):
            raise ConfigError("config: {}: {!r} is not a finite number; give a number such "
                              "as {!r}".format(path, value, self.default))
        if self.choices is not None and value not in self.choices:
            raise ConfigError("config: {}: {!r} is not one of {}".format(
                path, value, ", ".join(str(c) for c in self.choices)))
        if self.minimum is not None and value < self.minimum:
            raise ConfigError("config: {}: {!r} is below the minimum {}".format(
                path, value, self.minimum))
        if self.maximum is not None and value > self.maximum:
            raise ConfigError("config: {}: {!r} is above the maximum {}".format(
                path, value, self.maximum))
        return value


def _coerce(kind: str, path: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError("config: {}: {!r} must be true or false".format(path, value))
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError("config: {}: {!r} must be a whole number".format(path, value))
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError("config: {}: {!r} must be a number".format(path, value))
    if kind == "str":
        if isinstance(value, str) and value != "":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError("config: {}: {!r} must be a non-empty string".format(path, value))
    if kind == "list":
        if isinstance(value, list):
            return value
        raise ConfigError("config: {}: {!r} must be a list".format(path, value))
    raise AssertionError(kind)


F = Field

SCHEMA = {
    "device": {
        "id": F("str", None, nullable=True, doc="device id in topics; null = hostname"),
        "state_dir": F("str", "./var", path="dir", doc="models, engines, spool live here"),
        "group": F("str", None, nullable=True, doc="fleet group for P/groups/G/cmd/..."),
    },
    "mqtt": {
        "host": F("str", "localhost"),
        "port": F("int", 1883, minimum=1, maximum=65535),
        "prefix": F("str", "edge"),
        "client_id": F("str", None, nullable=True),
        "qos": F("int", 1, choices=(0, 1)),
        "keepalive_s": F("int", 30, minimum=5, maximum=3600),
        "username": F("str", None, nullable=True),
        "password_file": F("str", None, nullable=True, secret=True, path="file"),
        "tls": {
            "enabled": F("bool", False),
            "ca_file": F("str", None, nullable=True, path="file"),
            "cert_file": F("str", None, nullable=True, path="file"),
            "key_file": F("str", None, nullable=True, secret=True, path="file"),
        },
        "spool_max_messages": F("int", 10000, minimum=100),
    },
    "source": {
        "uri": F("str", "file://models/samples", secret="url",
                 doc="camera URIs may hold credentials: shown with them hidden"),
        "width": F("int", 1280, minimum=16, maximum=8192),
        "height": F("int", 720, minimum=16, maximum=8192),
        "fps": F("float", 30.0, minimum=0.0, maximum=1000.0,
                 doc="frame rate; 0 = file/synthetic sources run as fast as inference"),
        "loop": F("bool", True),
        "flip": F("str", "none", choices=("none", "rotate-180", "horizontal", "vertical")),
    },
    "model": {
        "name": F("str", "efficientnet_lite0"),
    },
    "backend": {
        "kind": F("str", "auto", choices=KINDS),
        "precision": F("str", "fp16", choices=PRECISIONS),
        "workspace_mb": F("int", 256, minimum=16),
        "max_batch": F("int", 1, minimum=1, maximum=64),
        "dla_core": F("int", None, nullable=True, minimum=0, maximum=1),
        "calibration_dir": F("str", None, nullable=True, path="dir"),
        "preprocess": F("str", "auto", choices=("auto", "cpu", "gpu")),
        "threads": F("int", None, nullable=True, minimum=1, maximum=64,
                     doc="ONNX Runtime intra-op threads; null = one per core (with workers "
                         "> 1: cores / workers each)"),
        "workers": F("int", 1, minimum=1, maximum=16,
                     doc="ONNX Runtime: frames inferred at once, each on its own thread. "
                         "On small models more frames per second and less CPU per frame "
                         "than intra-op threads; each frame takes a little longer"),
        "helper_priority": F("str", "idle", choices=("idle", "normal"),
                             doc="capture, publish, MQTT and telemetry threads at Linux "
                                 "SCHED_IDLE, so inference never waits for them; one starved "
                                 "by another program gets normal priority back"),
        "spin": F("bool", False, doc="ONNX Runtime threads busy-wait between inferences: "
                                     "up to ~3 ms less latency, ~2.2x the CPU"),
        "validate": {
            "frames": F("int", 16, minimum=0, maximum=1000),
            "min_top1_agreement": F("float", 0.98, minimum=0.0, maximum=1.0),
        },
    },
    "predictions": {
        "top_k": F("int", 5, minimum=1, maximum=100),
        "min_score": F("float", 0.0, minimum=0.0, maximum=1.0),
        "max_rate_hz": F("float", None, nullable=True, minimum=0.01),
    },
    "telemetry": {
        "interval_s": F("float", 5.0, minimum=0.2, maximum=3600.0),
        "power": F("str", "auto", choices=("auto", "jtop", "iio", "hwmon", "nvml", "rapl",
                                            "none")),
        "sample_hz": F("float", 20.0, minimum=1.0, maximum=1000.0),
    },
    "updates": {
        "allowed_schemes": F("list", ["https", "http", "file"], item="str",
                             choices=("https", "http", "file")),
        "max_download_mb": F("int", 512, minimum=1),
        "keep_versions": F("int", 3, minimum=2),
        "public_key_file": F("str", None, nullable=True, path="file"),
        "ca_file": F("str", None, nullable=True, path="file",
                     doc="extra CA bundle for https model downloads (private CAs)"),
        "probation_frames": F("int", 30, minimum=0, maximum=100000,
                              doc="frames a new model is watched before it is trusted"),
        "max_latency_factor": F("float", 3.0, minimum=1.0,
                                doc="roll back when a new model is this much slower"),
        # Commands from MQTT (issue 12): file: URL roots, command age, download pace.
        "file_roots": F("list", [], item="str", path="dir",
                        doc="directories file: URLs in commands may read; [] = none"),
        "command_max_age_s": F("float", 300.0, nullable=True, minimum=1.0,
                               doc="refuse commands whose ts is older; null = no ts check"),
        "download_timeout_s": F("float", 3600.0, nullable=True, minimum=1.0,
                                doc="a model download must finish within this; null = none"),
        "download_min_rate_bps": F("float", 1024.0, nullable=True, minimum=0.0,
                                   doc="refuse downloads slower than this (bytes/s)"),
        "download_rate_window_s": F("float", 30.0, minimum=1.0,
                                    doc="the window the minimum rate is averaged over"),
    },
    "view": {
        "enabled": F("bool", False),
        "host": F("str", "127.0.0.1"),
        "port": F("int", 8080, minimum=1, maximum=65535),
    },
    "homeassistant": {
        "enabled": F("bool", False, doc="publish Home Assistant MQTT discovery configs"),
        "prefix": F("str", "homeassistant", doc="Home Assistant's discovery prefix"),
    },
    "logging": {
        "level": F("str", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    },
}

def join(prefix: str, key: str) -> str:
    """`prefix.key`, or `key` at the top level."""
    return "{}.{}".format(prefix, key) if prefix else key


def leaves(schema: Dict[str, Any] = SCHEMA, prefix: str = "") -> Iterator[Tuple[str, Field]]:
    """(dotted path, Field) for every leaf key, in schema order."""
    for key, node in schema.items():
        path = join(prefix, key)
        if isinstance(node, dict):
            for leaf in leaves(node, path):
                yield leaf
        else:
            yield path, node
