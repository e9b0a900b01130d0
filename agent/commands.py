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
import queue
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Deque, Dict, Optional, Set

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
        ("labels_url", ("url", False)), ("activate", ("bool", False)),
        ("signature", ("signature", False))))),
    ("model/activate", collections.OrderedDict(_NAME_VERSION)),
    ("model/rollback", collections.OrderedDict()),
    ("model/list", collections.OrderedDict()),
    ("model/remove", collections.OrderedDict(_NAME_VERSION)),
    ("ping", collections.OrderedDict()),
])
# Answered at once in the caller's thread; the others go through the queue, in order.
IMMEDIATE = ("ping", "model/list")

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
    if kind == "signature":
        if not isinstance(value, str) or not value or len(value) > MAX_SIGNATURE:
            raise ValueError("{}: must be the base64 ed25519 signature (a string)".format(where))
        return value
    raise AssertionError(kind)


def parse_command(topic_command: str, payload: bytes, max_bytes: int = MAX_PAYLOAD) -> Command:
    """Check one command (the topic's last part(s), e.g. "model/install", and its payload).

    An empty payload means {}. Raises CommandError naming the field, the value and the fix;
    it carries the command and request_id when they could be read, for the rejected event.
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
    if text.strip():
        try:
            body = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise CommandError("{}: payload is not valid JSON ({}); send a JSON object like "
                               "{{\"request_id\": \"r1\"}}".format(command, exc), command)
    else:
        body = {}
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
    unknown = sorted(k for k in body if k != "request_id" and k not in fields)
    if unknown:
        raise CommandError("{}: unknown field{} {}; allowed: {}".format(
            command, "s" if len(unknown) > 1 else "", ", ".join(_short(k) for k in unknown),
            ", ".join(list(fields) + ["request_id"])), command, request_id)
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
    return Command(command, args, request_id)


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


class ModelManager(object):
    """Runs model commands one at a time in its own thread and reports each step by `emit`.

    `updates_config` is the `updates` config section (mapping or object): public_key_file is
    read from it. The store carries the download policy (see ModelStore.from_updates).
    `emit` is called from the caller's thread and from the manager's thread: it must be
    thread-safe and should not block for long (queue the publish).
    """

    def __init__(self, store: ModelStore, emit: Emit, prepare: Prepare, activate: Activate,
                 stop_event: threading.Event, updates_config: Any = None, queue_size: int = 4,
                 replay_window: int = 256) -> None:
        self.store = store
        self._emit_cb = emit
        self._prepare = prepare
        self._activate = activate
        self._stop = stop_event
        self.public_key_file = _setting(updates_config, "public_key_file", None)
        self._queue = queue.Queue(maxsize=queue_size)  # type: queue.Queue
        self._lock = threading.Lock()
        self._seen = collections.deque()  # type: Deque[str]
        self._seen_set = set()  # type: Set[str]
        self._replay_window = replay_window
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
            return self._current is not None or not self._queue.empty()

    # -------------------------------------------------------------- intake

    def submit_raw(self, command: str, payload: bytes) -> None:
        """Entry point for the transport: every call produces at least one event."""
        try:
            cmd = parse_command(command, payload)
        except CommandError as exc:
            self.reject(exc.command or command, exc.request_id, str(exc))
            return
        self.submit(cmd)

    def reject(self, command: str, request_id: Optional[str], error: str) -> None:
        """Answer a command that will not run."""
        self._emit(command, request_id, "rejected", error=error)

    def submit(self, cmd: Command) -> None:
        """Run a parsed command: ping and list at once, the others in order in the worker."""
        if cmd.request_id is None:
            # Lets the operator tell this command's events apart; not checked for replays.
            cmd.request_id = "agent-" + uuid.uuid4().hex[:12]
        elif not self._remember(cmd.request_id):
            self.reject(cmd.name, cmd.request_id, "duplicate request_id {!r}: a command with this "
                        "request_id was already received; use a new request_id for a new "
                        "command".format(cmd.request_id))
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
            ahead = self._queue.qsize() + (1 if self._current is not None else 0)
            try:
                self._queue.put_nowait(cmd)
            except queue.Full:
                self._forget(cmd.request_id)
                self._emit(cmd.name, cmd.request_id, "rejected",
                           error="busy: {} commands are already waiting; send it again when the "
                                 "current one has finished".format(self._queue.maxsize))
                return
            # Emitted under the lock: the worker takes it before its first event for cmd.
            detail = "queued: {} command{} ahead".format(ahead, "s" if ahead > 1 else "") \
                if ahead else None
            self._emit(cmd.name, cmd.request_id, "accepted", detail=detail)

    def _remember(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._seen_set:
                return False
            self._seen.append(request_id)
            self._seen_set.add(request_id)
            while len(self._seen) > self._replay_window:
                self._seen_set.discard(self._seen.popleft())
            return True

    def _forget(self, request_id: Optional[str]) -> None:
        # A command refused for a full queue may be sent again with the same request_id.
        if request_id in self._seen_set:
            self._seen_set.discard(request_id)
            self._seen.remove(request_id)

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
            try:
                cmd = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                self._current = cmd
            try:
                self._execute(cmd)
            finally:
                with self._lock:
                    self._current = None
        with self._lock:
            self._closed = True
            while True:
                try:
                    cmd = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._emit(cmd.name, cmd.request_id, "failed",
                           error="the agent stopped before this command ran; send it again "
                                 "after it restarts")

    def _execute(self, cmd: Command) -> None:
        handler = {"model/install": self._install, "model/activate": self._activate_cmd,
                   "model/rollback": self._rollback, "model/remove": self._remove}[cmd.name]
        try:
            handler(cmd)
        except AgentError as exc:
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
                waiting = self._queue.qsize()
            detail = "pong"
            if current is not None:
                detail += "; running {} {}".format(current.name, current.request_id)
            if waiting:
                detail += "; {} queued".format(waiting)
            self._emit(cmd.name, cmd.request_id, "done", detail=detail)
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

    def _install(self, cmd: Command) -> None:
        a = cmd.args
        package = self.store.install(
            a["name"], a["version"], a["url"], a["sha256"], size=a.get("size"),
            manifest=a.get("manifest"), manifest_url=a.get("manifest_url"),
            labels_url=a.get("labels_url"), signature=a.get("signature"),
            public_key_file=self.public_key_file, progress=self._progress(cmd, False),
            cancel=self._stop)
        if not a["activate"]:
            self.store.prune()
            self._emit(cmd.name, cmd.request_id, "installed",
                       detail="{} installed, not activated; {}".format(
                           package.ref, self._serving()))
            return
        self._swap(cmd, package, lambda: self.store.activate(package.name, package.version))

    def _activate_cmd(self, cmd: Command) -> None:
        package = self.store.get(cmd.args["name"], cmd.args["version"], verify=True)
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
