"""config.yaml: load, apply `--set` overrides, validate, and expose typed sections.

Every key is optional; the schema (agent/config_schema.py) holds the documented defaults
(DESIGN.md). Unknown keys, wrong types and impossible values are refused with the key path, the
value and what is allowed, e.g. `config: backend.precision: 'fp8' is not one of fp32, fp16, int8`.
Relative paths in the file are made absolute against the directory holding the config file,
once, while validating.
"""

import copy
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from .config_schema import SCHEMA, join as _join, leaves
from .errors import ConfigError
from .redact import redact_text

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
        for path, field in leaves():
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
        """A path absolute against the config file's directory, by the rule the path keys were
        resolved with at load (so their values come back unchanged)."""
        return _absolute(self.base_dir, path)


def _validate(schema: Dict[str, Any], data: Any, prefix: str, base_dir: str) -> Dict[str, Any]:
    """`data` checked against `schema`, defaults filled in, path keys made absolute."""
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
            out[key] = _validate(node, data.get(key), path, base_dir)
            continue
        value = node.check(path, data[key]) if key in data else copy.deepcopy(node.default)
        if node.path and isinstance(value, list):  # a list of paths (directories)
            value = [_absolute(base_dir, v) for v in value]
        elif node.path and value is not None:
            value = _absolute(base_dir, value)
        out[key] = value
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
    base_dir = os.getcwd()
    if data is not None:
        data = copy.deepcopy(data)
    elif path is not None:
        data, base_dir = _read_file(path)
    else:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config file {}: the top level must be a mapping of sections "
                          "(device, mqtt, source, ...)".format(path))
    for text in overrides:
        key, value = parse_override(text)
        apply_override(data, key, value)
    values = _validate(SCHEMA, data, "", base_dir)
    config = Config(values, os.path.abspath(path) if path else None, base_dir)
    _cross_checks(config)
    _check_paths(config)
    return config


def _read_file(path: str) -> Tuple[Any, str]:
    """The YAML in `path` (None read as {}) and the directory relative paths start from."""
    import yaml
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
    return ({} if data is None else data), os.path.dirname(os.path.abspath(path))


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
    for key, field in leaves():
        value = config.get(key)
        if field.path != "file" or value is None:
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
