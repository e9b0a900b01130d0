"""Model commands: check them, run them one at a time, and report every step as an event.

Transport-free on purpose: the MQTT layer calls `ModelManager.submit_raw(command, payload)` for
each message on `P/D/cmd/<command>` and publishes whatever `emit` receives on `P/D/events`.
Inference is reached only through two callbacks the app provides:

    prepare(package, progress) -> backend
        Runs in the manager's thread: build/load/validate a backend for `package`; raise an
        AgentError (message for the operator) when it cannot. `progress(phase, fraction, detail)`
        is the same shape as agent.backends.Progress; phase "validating" is reported as the
        event state "validating", any other phase as "building".
    activate(backend, package) -> None
        Hand the backend to the inference thread; return once it serves, or raise. When it
        raises, the manager closes the backend (if it has close()) in its own thread.

Events are dicts: {ts, request_id, command, state} plus, where they apply, `progress` (0..1),
`detail`, `error` and, for model/list, `models`. States: accepted -> downloading -> verifying ->
building -> validating -> activated | installed, `done` for ping, list and remove, or
`rejected` (never started: bad payload, duplicate request_id, queue full) / `failed` (started,
did not finish; the active model is unchanged) with `error`.
"""

import collections
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Set

from .atomicfile import write_atomic
from .download import SCHEMES, check_sha256
from .errors import AgentError
from .models import ModelStore, StoreError, _setting, check_component
from .package import ModelPackage

log = logging.getLogger(__name__)

MAX_PAYLOAD = 65536
MAX_REQUEST_ID = 128
MAX_URL = 4096
MAX_SIGNATURE = 256

# field name -> (kind, required); kinds are checked by _FIELD_CHECKS below.
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
# Answered at once in the caller's thread, also while a download or build runs; the others go
# through the queue, in order.
IMMEDIATE = ("ping", "model/list", "model/cancel")
# A command's `ts` may be this far in the future (clock skew between sender and device).
MAX_FUTURE_S = 60.0
SEEN_FILE = "commands-seen.json"
DEFAULT_COMMAND_MAX_AGE_S = 300.0

Emit = Callable[[Dict[str, Any]], None]
Prepare = Callable[[ModelPackage, Callable[[str, Optional[float], str], None]], Any]
Activate = Callable[[Any, ModelPackage], None]


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


class _Throttle(object):
    """Lets a progress event through on a state change, every 5 %, or every 2 s."""

    def __init__(self) -> None:
        self.state = None  # type: Optional[str]
        self.fraction = None  # type: Optional[float]
        self.when = 0.0

    def admit(self, state: str, fraction: Optional[float]) -> bool:
        now = time.monotonic()
        if (state != self.state or fraction == 1.0 or now - self.when >= 2.0 or
                (fraction is not None and (self.fraction is None or
                                           fraction - self.fraction >= 0.05))):
            if state == self.state and fraction == self.fraction:
                return False
            self.state, self.fraction, self.when = state, fraction, now
            return True
        return False


def _version_parts(version: str) -> List[Any]:
    """'1.10-rc2' -> [1, '.', 10, '-rc', 2]: digit runs compare as numbers, the rest as text."""
    return [int(p) if p.isdigit() else p for p in re.findall(r"\d+|\D+", version)]


def is_downgrade(new: str, active: str) -> bool:
    """True when version `new` is lower than `active`, compared part by part: numbers as
    numbers ("10" > "9"), text as text, a version that is a prefix of another is lower
    ("1.0" < "1.0.1"). Versions that cannot be ordered (a number where the other has text,
    like "v2" against "2") count as a downgrade: the safe side, allow_downgrade lets them."""
    if new == active:
        return False
    a, b = _version_parts(new), _version_parts(active)
    for x, y in zip(a, b):
        if x == y:
            continue
        if isinstance(x, int) != isinstance(y, int):
            return True
        return x < y
    return len(a) < len(b)


class _CancelFlag(object):
    """What a download polls: the agent stops, or model/cancel names the command."""

    def __init__(self, stop: threading.Event, cmd: Command) -> None:
        self.stop = stop
        self.cmd = cmd

    def is_set(self) -> bool:
        return self.stop.is_set() or self.cmd.cancelled.is_set()


class ModelManager(object):
    """Runs model commands one at a time in its own thread and reports each step by `emit`.

    `updates_config` is the `updates` config section (mapping or object): public_key_file,
    file_roots, command_max_age_s and the download limits are read from it. The store carries
    the rest of the download policy (see ModelStore.from_updates).
    `emit` is called from the caller's thread and from the manager's thread: it must be
    thread-safe and should not block for long (queue the publish).

    Replays: request_ids seen lately are kept (the last `replay_window`) in
    `state_dir/commands-seen.json`, written atomically, so a restart does not forget them;
    retained messages are never run; a command with `ts` older than command_max_age_s (or more
    than MAX_FUTURE_S in the future) is refused.
    """

    def __init__(self, store: ModelStore, emit: Emit, prepare: Prepare, activate: Activate,
                 stop_event: threading.Event, updates_config: Any = None, queue_size: int = 4,
                 replay_window: int = 512) -> None:
        self.store = store
        self._emit_cb = emit
        self._prepare = prepare
        self._activate = activate
        self._stop = stop_event
        self.public_key_file = _setting(updates_config, "public_key_file", None)
        self.max_age_s = _setting(updates_config, "command_max_age_s",
                                  DEFAULT_COMMAND_MAX_AGE_S, keep_null=True)
        roots = _setting(updates_config, "file_roots", [])
        fetch_extra = {"file_roots": list(roots)}  # type: Dict[str, Any]
        for key, name in (("download_timeout_s", "deadline_s"),
                          ("download_min_rate_bps", "min_rate_bps"),
                          ("download_rate_window_s", "rate_window_s")):
            value = _setting(updates_config, key, None)
            if value is not None:
                fetch_extra[name] = value
        self.policy = {"fetch": fetch_extra, "require_labels_sha256": True}
        self._maxsize = queue_size
        self._pending = collections.deque()  # type: Deque[Command]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._seen = collections.deque()  # type: Deque[str]
        self._seen_set = set()  # type: Set[str]
        self._replay_window = replay_window
        state_dir = getattr(store, "state_dir", None)
        self._seen_path = os.path.join(state_dir, SEEN_FILE) if state_dir else None
        self._load_seen()
        self._current = None  # type: Optional[Command]
        self._closed = False  # set under _lock when the worker has ended: nothing is queued then
        self._thread = None  # type: Optional[threading.Thread]

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "ModelManager":
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the worker to end (after stop_event is set); True if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """True while a command runs or waits."""
        with self._lock:
            return self._current is not None or bool(self._pending)

    # -------------------------------------------------------------- intake

    def submit_raw(self, command: str, payload: bytes, retained: bool = False) -> None:
        """Entry point for the transport: every call produces at least one event.

        `retained` is the MQTT retain flag: a retained command is the broker replaying an old
        message (at every reconnect), so it is answered with `rejected` and never run."""
        try:
            if retained:
                self._reject_retained(command, payload)
                return
            try:
                cmd = parse_command(command, payload)
            except CommandError as exc:
                self.reject(exc.command or command, exc.request_id, str(exc))
                return
            self.submit(cmd)
        except Exception as exc:  # every command is answered, whatever went wrong
            log.exception("command %r could not be handled", command)
            self.reject(command if isinstance(command, str) else repr(command), None,
                        "internal error: {}; see the agent's log".format(type(exc).__name__))

    def _reject_retained(self, command: str, payload: bytes) -> None:
        self.reject(command if isinstance(command, str) else repr(command),
                    request_id_of(payload), RETAINED_ERROR)

    def reject(self, command: str, request_id: Optional[str], error: str) -> None:
        """Answer a command that will not run."""
        self._emit(command, request_id, "rejected", error=error)

    def submit(self, cmd: Command, urgent: bool = False) -> None:
        """Run a parsed command: ping, list and cancel at once, the others in order in the
        worker. `urgent` (the agent's own probation rollback) goes ahead of the queue and is
        never refused for a full queue."""
        if cmd.request_id is None:
            # Lets the operator tell this command's events apart; not checked for replays.
            cmd.request_id = "agent-" + uuid.uuid4().hex[:12]
        elif not urgent:
            stale = self._stale(cmd)
            if stale:
                self.reject(cmd.name, cmd.request_id, stale)
                return
            if not self._remember(cmd.request_id):
                self.reject(cmd.name, cmd.request_id, "duplicate request_id {!r}: a command "
                            "with this request_id was already received; use a new request_id "
                            "for a new command".format(cmd.request_id))
                return
        if cmd.name in IMMEDIATE and not self._stop.is_set():
            self._run_immediate(cmd)
            return
        with self._lock:
            if self._stop.is_set() or self._closed:
                self._emit(cmd.name, cmd.request_id, "rejected",
                           error="the agent is stopping; send the command again after it "
                                 "restarts")
                return
            if urgent:
                cmd.urgent = True
                self._pending.appendleft(cmd)
                self._wake.notify_all()
                self._emit(cmd.name, cmd.request_id, "accepted",
                           detail="runs next, ahead of {} queued command{}".format(
                               len(self._pending) - 1,
                               "" if len(self._pending) == 2 else "s"))
                return
            ahead = len(self._pending) + (1 if self._current is not None else 0)
            if len(self._pending) >= self._maxsize:
                self._forget(cmd.request_id)
                self._emit(cmd.name, cmd.request_id, "rejected",
                           error="busy: {} commands are already waiting; send it again when the "
                                 "current one has finished".format(self._maxsize))
                return
            self._pending.append(cmd)
            self._wake.notify_all()
            # Emitted under the lock: the worker takes it before its first event for cmd.
            detail = "queued: {} command{} ahead".format(ahead, "s" if ahead > 1 else "") \
                if ahead else None
            self._emit(cmd.name, cmd.request_id, "accepted", detail=detail)

    def _stale(self, cmd: Command) -> Optional[str]:
        """Why a command's `ts` makes it too old (or from the future) to run, or None."""
        if cmd.ts is None or self.max_age_s is None:
            return None
        age = time.time() - cmd.ts
        if age > self.max_age_s:
            return ("expired: the command's ts is {:.0f} s old, over updates.command_max_age_s "
                    "({:g} s); send it again with the current time as ts (and check the "
                    "sender's and the device's clocks)".format(age, self.max_age_s))
        if -age > MAX_FUTURE_S:
            return ("the command's ts is {:.0f} s in the future (more than {:g} s ahead of the "
                    "device's clock); fix the sender's or the device's clock".format(
                        -age, MAX_FUTURE_S))
        return None

    def _remember(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._seen_set:
                return False
            self._seen.append(request_id)
            self._seen_set.add(request_id)
            while len(self._seen) > self._replay_window:
                self._seen_set.discard(self._seen.popleft())
            self._save_seen()
            return True

    def _forget(self, request_id: Optional[str]) -> None:
        # A command refused for a full queue may be sent again with the same request_id.
        if request_id in self._seen_set:
            self._seen_set.discard(request_id)
            self._seen.remove(request_id)
            self._save_seen()

    def _load_seen(self) -> None:
        if self._seen_path is None:
            return
        try:
            with open(self._seen_path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
            ids = data.get("request_ids") if isinstance(data, dict) else None
        except FileNotFoundError:
            return
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("replay window %s unreadable (%s); starting with an empty one",
                        self._seen_path, exc)
            return
        for rid in (ids or [])[-self._replay_window:]:
            if isinstance(rid, str) and rid not in self._seen_set:
                self._seen.append(rid)
                self._seen_set.add(rid)

    def _save_seen(self) -> None:
        """Called under _lock. A failed write is logged: commands keep working."""
        if self._seen_path is None:
            return
        data = json.dumps({"request_ids": list(self._seen)}, separators=(",", ":"))
        try:
            write_atomic(self._seen_path, data.encode("utf-8"))
        except OSError as exc:
            log.warning("cannot save the replay window %s: %s", self._seen_path, exc)

    # -------------------------------------------------------------- events

    def _emit(self, command: str, request_id: Optional[str], state: str,
              progress: Optional[float] = None, detail: Optional[str] = None,
              error: Optional[str] = None, **extra: Any) -> None:
        event = {"ts": round(time.time(), 3), "request_id": request_id, "command": command,
                 "state": state}  # type: Dict[str, Any]
        if progress is not None:
            event["progress"] = round(max(0.0, min(1.0, progress)), 4)
        if detail is not None:
            event["detail"] = detail
        if error is not None:
            event["error"] = error
        event.update(extra)
        try:
            self._emit_cb(event)
        except Exception:  # a broken publisher must not stop model management
            log.exception("could not emit event %s", event)

    def _serving(self) -> str:
        try:
            ref = self.store.active_ref()
        except AgentError:
            ref = None
        return "serving continues on {}".format("@".join(ref)) if ref else \
            "no model was active"

    # -------------------------------------------------------------- the worker

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._pending:
                    self._wake.wait(0.2)
                    continue
                cmd = self._pending.popleft()
                self._current = cmd
            try:
                if cmd.cancelled.is_set():
                    self._emit_cancelled(cmd)
                else:
                    self._execute(cmd)
            finally:
                with self._lock:
                    self._current = None
        with self._lock:
            self._closed = True
            while self._pending:
                cmd = self._pending.popleft()
                self._emit(cmd.name, cmd.request_id, "failed",
                           error="the agent stopped before this command ran; send it again "
                                 "after it restarts")

    def _emit_cancelled(self, cmd: Command) -> None:
        self._emit(cmd.name, cmd.request_id, "failed", cancelled=True,
                   error="cancelled by model/cancel {}".format(cmd.cancelled_by),
                   detail=self._serving())

    def _execute(self, cmd: Command) -> None:
        handler = {"model/install": self._install, "model/activate": self._activate_cmd,
                   "model/rollback": self._rollback, "model/remove": self._remove}[cmd.name]
        try:
            handler(cmd)
        except AgentError as exc:
            if cmd.cancelled.is_set() and not self._stop.is_set():
                self._emit_cancelled(cmd)
                return
            self._emit(cmd.name, cmd.request_id, "failed", error=str(exc),
                       detail=self._serving())
        except OSError as exc:
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="file system error: {}; check free space and permissions under "
                             "{}".format(exc, self.store.root), detail=self._serving())
        except Exception as exc:
            log.exception("%s (%s) crashed", cmd.name, cmd.request_id)
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="internal error: {}: {}; see the agent's log".format(
                           type(exc).__name__, exc), detail=self._serving())

    def _run_immediate(self, cmd: Command) -> None:
        if cmd.name == "ping":
            with self._lock:
                current = self._current
                waiting = len(self._pending)
            detail = "pong"
            if current is not None:
                detail += "; running {} {}".format(current.name, current.request_id)
            if waiting:
                detail += "; {} queued".format(waiting)
            self._emit(cmd.name, cmd.request_id, "done", detail=detail)
            return
        if cmd.name == "model/cancel":
            self._cancel(cmd)
            return
        try:
            models = self.store.list()
        except AgentError as exc:
            self._emit(cmd.name, cmd.request_id, "failed", error=str(exc))
            return
        except OSError as exc:
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="cannot read the model store {}: {}".format(self.store.root, exc))
            return
        self._emit(cmd.name, cmd.request_id, "done",
                   detail="{} version{} installed".format(len(models),
                                                          "" if len(models) == 1 else "s"),
                   models=models)

    def _cancel(self, cmd: Command) -> None:
        target = cmd.args["target"]
        with self._lock:
            found = None  # type: Optional[Command]
            running = False
            if self._current is not None and self._current.request_id == target:
                found, running = self._current, True
            else:
                for waiting in self._pending:
                    if waiting.request_id == target:
                        found = waiting
                        break
            if found is not None and found.urgent:
                self._emit(cmd.name, cmd.request_id, "rejected",
                           error="{} is the agent's own rollback after a failed probation; it "
                                 "cannot be cancelled".format(target))
                return
            if found is not None and not found.cancelled.is_set():
                found.cancelled_by = cmd.request_id
                found.cancelled.set()
                if not running:
                    self._pending.remove(found)
        if found is None:
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="no running or queued command has request_id {!r} (it may have "
                             "finished already); send model/list or ping to see what "
                             "runs".format(target))
            return
        if not running:
            self._emit_cancelled(found)
        self._emit(cmd.name, cmd.request_id, "done",
                   detail="cancelling {} {}{}".format(
                       found.name, target, "" if not running else
                       "; a download stops at once, a build at its end"))

    def _progress(self, cmd: Command, building: bool) -> Callable[[str, Optional[float], str],
                                                                   None]:
        throttle = _Throttle()

        def report(phase: str, fraction: Optional[float], detail: str) -> None:
            if building:
                state = "validating" if phase == "validating" else "building"
                if phase not in ("building", "validating") and detail:
                    detail = "{}: {}".format(phase, detail)
            else:
                state = phase
            if throttle.admit(state, fraction):
                self._emit(cmd.name, cmd.request_id, state, progress=fraction,
                           detail=detail or None)
        return report

    # -------------------------------------------------------------- downgrades

    def _downgrade_refusal(self, cmd: Command, name: str, version: str,
                           manifest: Optional[Dict[str, Any]]) -> Optional[str]:
        """Why installing/activating name@version would be a refused downgrade, or None.

        `manifest` is the (signed, when a public key is set) manifest when known; None when it
        is not known yet (manifest_url before the download): the signed part is then checked
        after the install by the caller."""
        active = self.store.active_ref()
        if active is None or active[0] != name or not is_downgrade(version, active[1]):
            return None
        if not cmd.args.get("allow_downgrade"):
            return ("{}@{} is lower than the active version {}@{}: downgrade refused; send "
                    "allow_downgrade: true to install an older version on purpose (model/"
                    "rollback returns to the previous one)".format(name, version, *active))
        if self.public_key_file and manifest is not None and \
                manifest.get("allow_downgrade") is not True:
            return ("{}@{} is lower than the active version {}@{}: downgrade refused; with "
                    "updates.public_key_file set, allow_downgrade: true must also be in the "
                    "signed manifest".format(name, version, *active))
        return None

    # -------------------------------------------------------------- handlers

    def _install(self, cmd: Command) -> None:
        a = cmd.args
        refusal = self._downgrade_refusal(cmd, a["name"], a["version"], a.get("manifest"))
        if refusal:
            raise StoreError(refusal)
        had = [(m["name"], m["version"]) for m in self.store.list()]
        package = self.store.install(
            a["name"], a["version"], a["url"], a["sha256"], size=a.get("size"),
            manifest=a.get("manifest"), manifest_url=a.get("manifest_url"),
            labels_url=a.get("labels_url"), signature=a.get("signature"),
            public_key_file=self.public_key_file, progress=self._progress(cmd, False),
            cancel=_CancelFlag(self._stop, cmd), labels_sha256=a.get("labels_sha256"),
            policy=self.policy)
        refusal = self._downgrade_refusal(cmd, package.name, package.version, package.raw)
        if refusal:
            if (package.name, package.version) not in had:
                self.store.remove(package.name, package.version)
            raise StoreError(refusal)
        if not a["activate"]:
            self.store.prune()
            self._emit(cmd.name, cmd.request_id, "installed",
                       detail="{} installed, not activated; {}".format(
                           package.ref, self._serving()))
            return
        self._swap(cmd, package, lambda: self.store.activate(package.name, package.version))

    def _activate_cmd(self, cmd: Command) -> None:
        package = self.store.get(cmd.args["name"], cmd.args["version"], verify=True)
        refusal = self._downgrade_refusal(cmd, package.name, package.version, package.raw)
        if refusal:
            raise StoreError(refusal)
        self._swap(cmd, package, lambda: self.store.activate(package.name, package.version))

    def _rollback(self, cmd: Command) -> None:
        target = self.store.previous_ref()
        if target is None:
            raise StoreError("no previous version to roll back to; activate a version by name "
                             "instead")
        package = self.store.get(target[0], target[1], verify=True)

        def record() -> None:
            if self.store.previous_ref() != target:
                raise StoreError("the previous version changed while rolling back; list the "
                                 "models and activate one by name")
            self.store.rollback()
        self._swap(cmd, package, record)

    def _swap(self, cmd: Command, package: ModelPackage, record: Callable[[], Any]) -> None:
        """prepare -> activate -> record in the store; the record changes only on success."""
        was = self.store.active_ref()
        self._emit(cmd.name, cmd.request_id, "building", detail="preparing {}".format(
            package.ref))
        backend = self._prepare(package, self._progress(cmd, True))
        try:
            if self._stop.is_set():
                raise AgentError("the agent is stopping; {} was not activated".format(
                    package.ref))
            if cmd.cancelled.is_set():
                raise AgentError("cancelled; {} was not activated".format(package.ref))
            self._activate(backend, package)
        except BaseException:
            close = getattr(backend, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing the unused backend for %s failed", package.ref)
            raise
        try:
            record()
        except AgentError as exc:
            raise AgentError("{} is serving, but recording it as active failed: {}; it will "
                             "not be the model after a restart".format(package.ref, exc))
        except OSError as exc:
            raise AgentError("{} is serving, but recording it as active failed: {}; it will "
                             "not be the model after a restart".format(package.ref, exc))
        self.store.prune()
        self._emit(cmd.name, cmd.request_id, "activated", detail="serving {} (was {})".format(
            package.ref, "@".join(was) if was else "none"))

    def _remove(self, cmd: Command) -> None:
        self.store.remove(cmd.args["name"], cmd.args["version"])
        self._emit(cmd.name, cmd.request_id, "done", detail="removed {}@{}".format(
            cmd.args["name"], cmd.args["version"]))
