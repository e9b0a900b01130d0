"""The update worker: model commands are answered or queued, and run one at a time in a thread.

Transport-free on purpose: the MQTT layer calls `ModelManager.submit_raw(command, payload)` for
each message on `P/D/cmd/<command>` and publishes whatever `emit` receives on `P/D/events`
(the events: agent.updates.events). ping, model/list and model/cancel are answered at once in
the caller's thread, also while a download or build runs; the others go through the queue, in
order, and run in agent.updates.handlers. The agent's own rollback after a failed probation
goes ahead of the queue: `rollback(reason, detail)`.
"""

import collections
import logging
import threading
import uuid
from typing import Any, Callable, Deque, Dict, Optional

from ..errors import AgentError
from ..store.store import ModelStore
from ..threads import BackgroundThread
from .commands import Command, CommandError, parse_command, request_id_of, RETAINED_ERROR
from .events import FINAL_STATES, Emit, Reporter
from .handlers import Activate, ModelCommands, Prepare
from .journal import CommandJournal, interrupted_error
from .replay import DEFAULT_COMMAND_MAX_AGE_S, ReplayWindow, stale_reason

log = logging.getLogger(__name__)

# Answered at once in the caller's thread, also while a download or build runs; the others go
# through the queue, in order.
IMMEDIATE = ("ping", "model/list", "model/cancel")


def command_policy(updates: Any) -> Dict[str, Any]:
    """What the validated `updates` config section asks of commands from MQTT (None: no config,
    the defaults): public_key_file, max_age_s and the store's install `policy`."""
    if updates is None:
        return {"public_key_file": None, "max_age_s": DEFAULT_COMMAND_MAX_AGE_S,
                "install": {"fetch": {"file_roots": []}, "require_labels_sha256": True}}
    fetch_extra = {"file_roots": list(updates.file_roots)}  # type: Dict[str, Any]
    for key, name in (("download_timeout_s", "deadline_s"),
                      ("download_min_rate_bps", "min_rate_bps"),
                      ("download_rate_window_s", "rate_window_s")):
        value = getattr(updates, key)
        if value is not None:
            fetch_extra[name] = value
    return {"public_key_file": updates.public_key_file, "max_age_s": updates.command_max_age_s,
            "install": {"fetch": fetch_extra, "require_labels_sha256": True}}


class ModelManager(object):
    """Runs model commands one at a time in its own thread and reports each step by `emit`.

    `updates_config` is the validated `updates` config section: public_key_file, file_roots,
    command_max_age_s and the download limits are read from it (see command_policy). The store
    carries the rest of the download policy (see ModelStore.from_updates). `prepare` and
    `activate` are the app's callbacks (see agent.updates.handlers).
    `emit` is called from the caller's thread and from the manager's thread: it must be
    thread-safe and should not block for long (queue the publish).

    Replays: the last `replay_window` request_ids are refused again, also after a restart
    (agent.updates.replay); retained messages are never run.

    Crashes: accepted commands are journaled until their final event (agent.updates.journal);
    `start()` first answers, with `failed`, each one an earlier run left unfinished.
    """

    def __init__(self, store: ModelStore, emit: Emit, prepare: Prepare, activate: Activate,
                 stop_event: threading.Event, updates_config: Any = None, queue_size: int = 4,
                 replay_window: int = 512) -> None:
        policy = command_policy(updates_config)
        self.store = store
        self._worker_ident = None  # type: Optional[int]
        self._emit = Reporter(self._handing_on(emit))
        self._stop = stop_event
        self.max_age_s = policy["max_age_s"]
        self.handlers = ModelCommands(store, self._emit, prepare, activate, stop_event,
                                      policy["public_key_file"], policy["install"])
        self.replay = ReplayWindow(getattr(store, "state_dir", None), replay_window)
        self.journal = CommandJournal(getattr(store, "state_dir", None))
        self._maxsize = queue_size
        self._pending = collections.deque()  # type: Deque[Command]
        self._lock = threading.RLock()  # hand_on may run under it (the stop path)
        self._wake = threading.Condition(self._lock)
        self._current = None  # type: Optional[Command]
        self._closed = False  # set under _lock when the worker has ended: nothing is queued then
        self._thread = BackgroundThread(self._run, "model-manager")

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "ModelManager":
        self._answer_interrupted()
        self._thread.start()
        return self

    def _handing_on(self, emit: Emit) -> Callable[[Dict[str, Any]], None]:
        """`emit`, and the bookkeeping of the running command's final event (the worker thread
        emits it; a refusal of a replayed request_id, from the caller's thread, is not it): it
        stops being current before the event leaves, so a ping or model/cancel sent on seeing
        it finds it finished, and leaves the journal once the event is handed on."""
        def hand_on(event: Dict[str, Any]) -> None:
            ending = None  # type: Optional[Command]
            if event.get("state") in FINAL_STATES and threading.get_ident() == self._worker_ident:
                with self._lock:
                    ending, self._current = self._current, None
            emit(event)
            if ending is not None:
                self.journal.closed(ending.request_id)
        return hand_on

    def _answer_interrupted(self) -> None:
        """The final event of each command an earlier run accepted and never finished."""
        for entry in self.journal.left_over():
            error = interrupted_error(entry)
            log.warning("%s %s: %s", entry["command"], entry["request_id"], error)
            self._emit(entry["command"], entry["request_id"], "failed", error=error,
                       detail=self.handlers.serving(), interrupted=True)
            self.journal.closed(entry["request_id"])

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the worker to end (after stop_event is set); True if it has."""
        with self._lock:
            self._wake.notify_all()  # an idle worker sees the stop now, not at its next poll
        return self._thread.join(timeout)

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
                self.reject(command if isinstance(command, str) else repr(command),
                            request_id_of(payload), RETAINED_ERROR)
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

    def reject(self, command: str, request_id: Optional[str], error: str) -> None:
        """Answer a command that will not run."""
        self._emit(command, request_id, "rejected", error=error)

    def rollback(self, reason: str, detail: str) -> str:
        """The agent's own rollback (a failed probation): announced as `accepted` with `detail`
        and `reason` as error, then run ahead of the queue; never refused as busy and never
        cancellable. Returns its request_id ("auto-rollback-...")."""
        rid = "auto-rollback-" + uuid.uuid4().hex[:8]
        self._emit("model/rollback", rid, "accepted", detail=detail, error=reason)
        self.submit(Command("model/rollback", {}, rid), urgent=True)
        return rid

    def submit(self, cmd: Command, urgent: bool = False) -> None:
        """Run a parsed command: ping, list and cancel at once, the others in order in the
        worker. `urgent` (the agent's own probation rollback) goes ahead of the queue and is
        never refused for a full queue."""
        if cmd.request_id is None:
            # Lets the operator tell this command's events apart; not checked for replays.
            cmd.request_id = "agent-" + uuid.uuid4().hex[:12]
        elif not urgent:
            stale = stale_reason(cmd.ts, self.max_age_s)
            if stale:
                self.reject(cmd.name, cmd.request_id, stale)
                return
            if not self.replay.remember(cmd.request_id):
                self.reject(cmd.name, cmd.request_id, "duplicate request_id {!r}: a command "
                            "with this request_id was already received; use a new request_id "
                            "for a new command".format(cmd.request_id))
                return
        if cmd.name in IMMEDIATE and not self._stop.is_set():
            self._run_immediate(cmd)
            return
        with self._lock:
            self._enqueue(cmd, urgent)

    def _enqueue(self, cmd: Command, urgent: bool) -> None:
        """Called under _lock; answers `accepted` (under the lock: the worker takes it before
        its first event for cmd) or `rejected`."""
        if self._stop.is_set() or self._closed:
            self._emit(cmd.name, cmd.request_id, "rejected",
                       error="the agent is stopping; send the command again after it restarts")
            return
        if urgent:
            cmd.urgent = True
            self.journal.opened(cmd.name, cmd.request_id)
            self._pending.appendleft(cmd)
            self._wake.notify_all()
            self._emit(cmd.name, cmd.request_id, "accepted",
                       detail="runs next, ahead of {} queued command{}".format(
                           len(self._pending) - 1, "" if len(self._pending) == 2 else "s"))
            return
        ahead = len(self._pending) + (1 if self._current is not None else 0)
        if len(self._pending) >= self._maxsize:
            self.replay.forget(cmd.request_id)
            self._emit(cmd.name, cmd.request_id, "rejected",
                       error="busy: {} commands are already waiting; send it again when the "
                             "current one has finished".format(self._maxsize))
            return
        self.journal.opened(cmd.name, cmd.request_id)
        self._pending.append(cmd)
        self._wake.notify_all()
        detail = "queued: {} command{} ahead".format(ahead, "s" if ahead > 1 else "") \
            if ahead else None
        self._emit(cmd.name, cmd.request_id, "accepted", detail=detail)

    # -------------------------------------------------------------- the worker

    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        while not self._stop.is_set():
            with self._lock:
                if not self._pending:
                    # Commands and join() notify; the timeout only bounds how late a stop set
                    # without join() is seen (5 wakeups a second per idle agent were measurable
                    # with hundreds of simulated agents in one process).
                    self._wake.wait(1.0)
                    continue
                cmd = self._pending.popleft()
                self._current = cmd
            try:
                if cmd.cancelled.is_set():
                    self.handlers.emit_cancelled(cmd)
                else:
                    self.journal.running(cmd.request_id)
                    self.handlers.run(cmd)  # every outcome ends in a final event
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
                self.journal.closed(cmd.request_id)

    # -------------------------------------------------------------- answered at once

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
        elif cmd.name == "model/cancel":
            self._cancel(cmd)
        else:
            self._list(cmd)

    def _list(self, cmd: Command) -> None:
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
            self.handlers.emit_cancelled(found)
            self.journal.closed(found.request_id)
        self._emit(cmd.name, cmd.request_id, "done",
                   detail="cancelling {} {}{}".format(
                       found.name, target, "" if not running else
                       "; a download stops at once, a TensorRT 10 build at its next "
                       "step, an older TensorRT build at its end"))
