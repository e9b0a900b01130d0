"""Command parsing: the commands, their fields and limits, and the checked Command.

A command arrives on `P/D/cmd/<command>` with a JSON object as payload; `parse_command` checks
it completely (field kinds, limits, names and versions usable in the store, URL schemes) before
anything runs, and refuses it with a CommandError that names the field, the value and the fix.
"""

import collections
import json
import threading
import urllib.parse
from typing import Any, Dict, Optional

from ..errors import AgentError
from ..store.download import SCHEMES, check_sha256
from ..store.layout import StoreError, check_component

MAX_PAYLOAD = 65536
MAX_REQUEST_ID = 128
MAX_URL = 4096
MAX_SIGNATURE = 256

# field name -> (kind, required); kinds are checked by _check_field below.
_NAME_VERSION = (("name", ("name", True)), ("version", ("version", True)))
COMMANDS = collections.OrderedDict([
    ("model/install", collections.OrderedDict(_NAME_VERSION + (
        ("url", ("url", True)), ("sha256", ("sha256", True)), ("size", ("size", False)),
        ("manifest", ("object", False)), ("manifest_url", ("url", False)),
        ("labels_url", ("url", False)), ("labels_sha256", ("sha256", False)),
        ("activate", ("bool", False)), ("allow_downgrade", ("bool", False)),
        ("signature", ("signature", False))))),
    ("model/activate", collections.OrderedDict(_NAME_VERSION + (
        ("allow_downgrade", ("bool", False)),))),
    ("model/rollback", collections.OrderedDict()),
    ("model/list", collections.OrderedDict()),
    ("model/remove", collections.OrderedDict(_NAME_VERSION)),
    ("model/cancel", collections.OrderedDict((("target", ("request_id", True)),))),
    ("ping", collections.OrderedDict()),
])
# Fields every command may carry besides its own.
COMMON_FIELDS = ("request_id", "ts")


class CommandError(AgentError):
    """A command refused before it started; `command` and `request_id` are what could be read."""

    def __init__(self, message: str, command: Optional[str] = None,
                 request_id: Optional[str] = None) -> None:
        AgentError.__init__(self, message)
        self.command = command
        self.request_id = request_id


class Command(object):
    """A checked command: its name, arguments (defaults filled in) and request_id."""

    def __init__(self, name: str, args: Dict[str, Any], request_id: Optional[str]) -> None:
        self.name = name
        self.args = args
        self.request_id = request_id
        self.ts = None  # type: Optional[float]
        self.cancelled = threading.Event()  # set by model/cancel
        self.cancelled_by = None  # type: Optional[str]
        self.urgent = False  # the agent's own command (probation rollback): runs first

    def __repr__(self) -> str:
        return "Command({!r}, request_id={!r})".format(self.name, self.request_id)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_url(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ValueError("{}: {} must be a URL string of at most {} characters".format(
            where, _short(value), MAX_URL))
    scheme = urllib.parse.urlsplit(value).scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("{}: scheme {!r} is not supported; use an https, http or file "
                         "URL".format(where, scheme))
    return value


def _check_field(where: str, kind: str, value: Any) -> Any:
    """The checked value of one field, or ValueError with a message naming field and value."""
    if kind in ("name", "version"):
        try:
            return check_component(kind, value)
        except StoreError as exc:
            raise ValueError("{}: {}".format(where, str(exc).split(": ", 1)[-1]))
    if kind == "url":
        return _check_url(where, value)
    if kind == "sha256":
        try:
            return check_sha256(value, where)
        except AgentError as exc:
            raise ValueError(str(exc))
    if kind == "size":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError("{}: {} must be a positive integer (bytes)".format(
                where, _short(value)))
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError("{}: must be a JSON object, got {}".format(
                where, type(value).__name__))
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("{}: {} must be true or false".format(where, _short(value)))
        return value
    if kind == "request_id":
        if not isinstance(value, str) or not value or len(value) > MAX_REQUEST_ID:
            raise ValueError("{}: {} must be a non-empty string of at most {} characters".format(
                where, _short(value), MAX_REQUEST_ID))
        return value
    if kind == "signature":
        if not isinstance(value, str) or not value or len(value) > MAX_SIGNATURE:
            raise ValueError("{}: must be the base64 ed25519 signature (a string)".format(where))
        return value
    raise AssertionError(kind)


def parse_command(topic_command: str, payload: bytes, max_bytes: int = MAX_PAYLOAD) -> Command:
    """Check one command (the topic's last part(s), e.g. "model/install", and its payload).

    An empty payload runs nothing: a zero-length message is how MQTT clears a retained one,
    and the broker delivers that to live subscribers too. Raises CommandError naming the
    field, the value and the fix; it carries the command and request_id when they could be
    read, for the rejected event.
    """
    command = topic_command if isinstance(topic_command, str) else repr(topic_command)
    if payload is None:
        payload = b""
    if len(payload) > max_bytes:
        raise CommandError("{}: payload is {} bytes, over the limit of {}; send the manifest "
                           "by manifest_url instead of inline".format(
                               command, len(payload), max_bytes), command)
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else str(payload)
    except UnicodeDecodeError as exc:
        raise CommandError("{}: payload is not UTF-8 ({}); send a JSON object".format(
            command, exc), command)
    if not text.strip():
        raise CommandError("{}: empty payload, ignored: an empty message is how MQTT clears a "
                           "retained one; send {{}} (or {{\"request_id\": \"r1\"}}) to run "
                           "the command".format(command), command)
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise CommandError("{}: payload is not valid JSON ({}); send a JSON object like "
                           "{{\"request_id\": \"r1\"}}".format(command, exc), command)
    except RecursionError:
        raise CommandError("{}: payload is nested too deeply to parse; send a flat JSON object "
                           "like {{\"request_id\": \"r1\"}}".format(command), command)
    if not isinstance(body, dict):
        raise CommandError("{}: payload must be a JSON object, got {}".format(
            command, type(body).__name__), command)
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not request_id or
                                   len(request_id) > MAX_REQUEST_ID):
        raise CommandError("{}: request_id: {} must be a non-empty string of at most {} "
                           "characters".format(command, _short(request_id), MAX_REQUEST_ID),
                           command)
    if command not in COMMANDS:
        raise CommandError("unknown command {}; known: {}".format(
            _short(command), ", ".join(COMMANDS)), command, request_id)
    fields = COMMANDS[command]
    unknown = sorted(k for k in body if k not in COMMON_FIELDS and k not in fields)
    if unknown:
        raise CommandError("{}: unknown field{} {}; allowed: {}".format(
            command, "s" if len(unknown) > 1 else "", ", ".join(_short(k) for k in unknown),
            ", ".join(list(fields) + list(COMMON_FIELDS))), command, request_id)
    sent_at = body.get("ts")
    if sent_at is not None and (not isinstance(sent_at, (int, float)) or
                                isinstance(sent_at, bool) or sent_at != sent_at or
                                sent_at in (float("inf"), float("-inf")) or sent_at <= 0):
        raise CommandError("{}: ts: {} must be the time the command was sent, in seconds since "
                           "1970 (a positive number)".format(command, _short(sent_at)),
                           command, request_id)
    args = {}  # type: Dict[str, Any]
    for key, (kind, required) in fields.items():
        value = body.get(key)
        if value is None:
            if required:
                raise CommandError("{}: {}: missing; it is required".format(command, key),
                                   command, request_id)
            continue
        try:
            args[key] = _check_field("{}: {}".format(command, key), kind, value)
        except ValueError as exc:
            raise CommandError(str(exc), command, request_id)
    if command == "model/install":
        if ("manifest" in args) == ("manifest_url" in args):
            raise CommandError("model/install: give exactly one of manifest (an object) or "
                               "manifest_url", command, request_id)
        args.setdefault("activate", True)
    if "labels_sha256" in args and "labels_url" not in args:
        raise CommandError("model/install: labels_sha256 is given without labels_url; add "
                           "labels_url or drop labels_sha256", command, request_id)
    cmd = Command(command, args, request_id)
    cmd.ts = float(sent_at) if sent_at is not None else None
    return cmd


RETAINED_ERROR = ("ignored a retained message: the broker replays retained commands at every "
                  "(re)connect, so they are never run; publish commands without the retain "
                  "flag, and clear this one by publishing an empty retained message to its "
                  "topic (an empty payload runs nothing)")


def request_id_of(payload: Any) -> Optional[str]:
    """The payload's request_id when it can be read (for answers to unparsed commands)."""
    try:
        body = json.loads(payload.decode("utf-8")) if payload else {}
        value = body.get("request_id") if isinstance(body, dict) else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID else None


def _refuse_constant(name: str) -> Any:
    raise ValueError("{} is not a JSON number".format(name))
