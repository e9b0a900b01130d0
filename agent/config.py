"""config.yaml: load, apply `--set` overrides, validate, and expose typed sections.

Every key is optional; the defaults below are the documented defaults (DESIGN.md). Unknown
keys, wrong types and impossible values are refused with the key path, the value and what is
allowed, e.g. `config: backend.precision: 'fp8' is not one of fp32, fp16, int8`.
Relative paths in the file are relative to the directory holding the config file.
"""

import copy
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from .backends.base import PRECISIONS
from .errors import ConfigError
from .redact import redact_text


class Field(object):
    """One leaf key: its type, default and limits."""

    def __init__(self, kind: str, default: Any = None, nullable: bool = False,
                 choices: Optional[Sequence[Any]] = None, minimum: Optional[float] = None,
                 maximum: Optional[float] = None, item: Optional[str] = None,
                 secret: Any = False, doc: str = "") -> None:
        self.kind = kind          # str, int, float, bool, list
        self.default = default
        self.nullable = nullable
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum
        self.item = item          # element kind for lists
        self.secret = secret      # True: shown as ***; "url": shown with credentials hidden
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
        "state_dir": F("str", "./var", doc="models, engines, spool live here"),
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
        "password_file": F("str", None, nullable=True, secret=True),
        "tls": {
            "enabled": F("bool", False),
            "ca_file": F("str", None, nullable=True),
            "cert_file": F("str", None, nullable=True),
            "key_file": F("str", None, nullable=True, secret=True),
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
        "kind": F("str", "auto", choices=("auto", "tensorrt", "onnxruntime")),
        "precision": F("str", "fp16", choices=PRECISIONS),
        "workspace_mb": F("int", 256, minimum=16),
        "max_batch": F("int", 1, minimum=1, maximum=64),
        "dla_core": F("int", None, nullable=True, minimum=0, maximum=1),
        "calibration_dir": F("str", None, nullable=True),
        "preprocess": F("str", "auto", choices=("auto", "cpu", "gpu")),
        "threads": F("int", None, nullable=True, minimum=1, maximum=64,
                     doc="ONNX Runtime intra-op threads; null = one per core"),
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
        "public_key_file": F("str", None, nullable=True),
        "ca_file": F("str", None, nullable=True,
                     doc="extra CA bundle for https model downloads (private CAs)"),
        "probation_frames": F("int", 30, minimum=0, maximum=100000,
                              doc="frames a new model is watched before it is trusted"),
        "max_latency_factor": F("float", 3.0, minimum=1.0,
                                doc="roll back when a new model is this much slower"),
        # Commands from MQTT (issue 12): file: URL roots, command age, download pace.
        "file_roots": F("list", [], item="str",
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
    "logging": {
        "level": F("str", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    },
}

# Keys holding paths: made absolute against the config file's directory once, at load.
DIR_KEYS = ("device.state_dir", "backend.calibration_dir", "updates.file_roots")
FILE_KEYS = ("mqtt.password_file", "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file",
             "updates.public_key_file", "updates.ca_file")
PATH_KEYS = DIR_KEYS + FILE_KEYS
# Kernel pseudo-filesystems: no place for models, engines and the spool.
PSEUDO_FS = ("/proc", "/sys", "/dev")


class Section(object):
    """A validated config section: keys as attributes, sub-sections as Sections."""

    def __init__(self, path: str, values: Dict[str, Any]) -> None:
        self._path = path
        for key, value in values.items():
            if isinstance(value, dict):
                value = Section(_join(path, key), value)
            setattr(self, key, value)

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            out[key] = value.to_dict() if isinstance(value, Section) else copy.deepcopy(value)
        return out

    def __repr__(self) -> str:
        return "Section({!r})".format(self._path)


class Config(Section):
    """The whole validated configuration."""

    def __init__(self, values: Dict[str, Any], source_path: Optional[str],
                 base_dir: str) -> None:
        Section.__init__(self, "", values)
        self.source_path = source_path
        self.base_dir = base_dir

    def get(self, dotted: str) -> Any:
        node = self  # type: Any
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def to_dict(self) -> Dict[str, Any]:
        out = Section.to_dict(self)
        out.pop("source_path", None)
        out.pop("base_dir", None)
        return out

    def redacted(self) -> Dict[str, Any]:
        """The config as a dict with secrets hidden, fit for logs."""
        data = self.to_dict()
        for path, field in _walk(SCHEMA):
            if field.secret:
                parent = data
                parts = path.split(".")
                for part in parts[:-1]:
                    parent = parent[part]
                value = parent.get(parts[-1])
                if value is not None:
                    parent[parts[-1]] = redact_text(str(value)) if field.secret == "url" \
                        else "***"
        return data

    def resolve(self, path: str) -> str:
        """A path from the config, absolute against the config file's directory."""
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.base_dir, path))


def _join(prefix: str, key: str) -> str:
    return "{}.{}".format(prefix, key) if prefix else key


def _walk(schema: Dict[str, Any], prefix: str = "") -> List[Any]:
    out = []
    for key, node in schema.items():
        path = _join(prefix, key)
        if isinstance(node, dict):
            out.extend(_walk(node, path))
        else:
            out.append((path, node))
    return out


def _validate(schema: Dict[str, Any], data: Any, prefix: str) -> Dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config: {}: must be a mapping of keys, got {!r}".format(
            prefix or "(top level)", data))
    out = {}
    for key in data:
        if key not in schema:
            close = [k for k in schema if k.startswith(str(key)[:3])]
            hint = "; did you mean {}?".format(" or ".join(_join(prefix, c) for c in close)) \
                if close else ""
            raise ConfigError("config: {}: unknown key (known keys here: {}){}".format(
                _join(prefix, str(key)), ", ".join(sorted(schema)), hint))
    for key, node in schema.items():
        path = _join(prefix, key)
        if isinstance(node, dict):
            out[key] = _validate(node, data.get(key), path)
        else:
            out[key] = node.check(path, data[key]) if key in data else copy.deepcopy(node.default)
    return out


def parse_override(text: str) -> Any:
    """`key.path=value` -> (path, value); the value is read as YAML (numbers, true, null, lists)."""
    import yaml
    if "=" not in text:
        raise ConfigError("--set {!r}: expected key.path=value, e.g. --set mqtt.port=1884".format(
            text))
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError("--set {!r}: the key path before '=' is empty".format(text))
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict,)):
        raise ConfigError("--set {}: give one leaf key at a time, not a mapping".format(key))
    return key, value


def apply_override(data: Dict[str, Any], key: str, value: Any) -> None:
    node = SCHEMA  # type: Any
    target = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError("--set {}: unknown key {} (known keys here: {})".format(
                key, ".".join(parts[:i + 1]),
                ", ".join(sorted(node)) if isinstance(node, dict) else "none"))
        node = node[part]
        if i < len(parts) - 1:
            if not isinstance(node, dict):
                raise ConfigError("--set {}: {} is not a section".format(
                    key, ".".join(parts[:i + 1])))
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError("config: {}: must be a mapping".format(
                    ".".join(parts[:i + 1])))
            target = child
    if isinstance(node, dict):
        raise ConfigError("--set {}: is a section; set one of its keys: {}".format(
            key, ", ".join(_join(key, k) for k in sorted(node))))
    target[parts[-1]] = value


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                data: Optional[Dict[str, Any]] = None) -> Config:
    """Read `path` (or use `data`), apply `key=value` overrides, validate."""
    import yaml
    base_dir = os.getcwd()
    if data is None:
        data = {}
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError("config file {} does not exist; pass -c with the path of your "
                                  "config.yaml (the repository has a documented one)".format(path))
            try:
                with open(path, "rb") as handle:
                    raw = handle.read()
                data = yaml.safe_load(_decode(path, raw))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = " at line {}, column {}".format(mark.line + 1, mark.column + 1) \
                    if mark is not None else ""
                raise ConfigError("config file {}: not valid YAML{}: {}".format(
                    path, where, getattr(exc, "problem", None) or exc))
            except OSError as exc:
                raise ConfigError("config file {}: cannot be read: {}".format(path, exc))
            if data is None:
                data = {}
            base_dir = os.path.dirname(os.path.abspath(path))
    else:
        data = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError("config file {}: the top level must be a mapping of sections "
                          "(device, mqtt, source, ...)".format(path))
    for text in overrides:
        key, value = parse_override(text)
        apply_override(data, key, value)
    values = _validate(SCHEMA, data, "")
    for key in PATH_KEYS:
        parent = values
        parts = key.split(".")
        for part in parts[:-1]:
            parent = parent[part]
        value = parent.get(parts[-1])
        if isinstance(value, list):  # a list of paths (directories)
            parent[parts[-1]] = [_absolute(base_dir, v) for v in value]
        elif value is not None:
            parent[parts[-1]] = _absolute(base_dir, value)
    config = Config(values, os.path.abspath(path) if path else None, base_dir)
    _cross_checks(config)
    _check_paths(config)
    return config


def _absolute(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _decode(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError("config file {}: not UTF-8 text (byte 0x{:02x} on line {}); save it "
                          "as UTF-8".format(path, raw[exc.start], line))


def _check_paths(config: Config) -> None:
    """Path keys name what exists: a set file key a readable file, state_dir a directory (or
    one that can be made) on a real filesystem. Relative paths were resolved against the
    config file's directory, which the message names."""
    where = " (relative paths are relative to {})".format(config.base_dir)
    state = config.device.state_dir
    real = os.path.realpath(state)
    for pseudo in PSEUDO_FS:
        if real == pseudo or real.startswith(pseudo + "/"):
            raise ConfigError("config: device.state_dir: {} is on the kernel's {} pseudo-"
                              "filesystem; set it to a directory on disk, e.g. "
                              "/var/lib/edge-agent".format(state, pseudo))
    if os.path.exists(state) and not os.path.isdir(state):
        raise ConfigError("config: device.state_dir: {} is a file, not a directory; set it to "
                          "a directory for models, engines and the spool{}".format(state, where))
    calib = config.backend.calibration_dir
    if calib is not None and not os.path.isdir(calib):
        raise ConfigError("config: backend.calibration_dir: {} is not a directory of images{}"
                          .format(calib, where))
    for key in FILE_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if not os.path.exists(value):
            raise ConfigError("config: {}: {} does not exist; fix the path or remove the "
                              "key{}".format(key, value, where))
        if not os.path.isfile(value):
            raise ConfigError("config: {}: {} is not a file{}".format(key, value, where))
        if not os.access(value, os.R_OK):
            raise ConfigError("config: {}: {} is not readable by this user (uid {}); fix its "
                              "permissions".format(key, value, os.getuid()))


def _cross_checks(config: Config) -> None:
    tls = config.mqtt.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("config: mqtt.tls: cert_file and key_file go together (client "
                          "certificate authentication needs both)")
    prefix = config.mqtt.prefix
    if any(c in prefix for c in "#+") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("config: mqtt.prefix: {!r} may not contain '#' or '+' or start/end "
                          "with '/'".format(prefix))
    for key in ("device.id", "device.group"):
        value = config.get(key)
        if value is not None and any(c in value for c in "#+/"):
            raise ConfigError("config: {}: {!r} may not contain '/', '#' or '+' (it is a topic "
                              "level)".format(key, value))
