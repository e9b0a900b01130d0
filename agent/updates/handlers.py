"""The queued model commands: install, activate, rollback and remove, run in the worker thread.

A new model reaches inference only through two callbacks the app provides:

    prepare(package, progress) -> backend
        Build/load/validate a backend for `package`; raise an AgentError (message for the
        operator) when it cannot. `progress(phase, fraction, detail)` is the same shape as
        agent.backends.Progress; phase "validating" is reported as the event state
        "validating", any other phase as "building".
    activate(backend, package) -> None
        Hand the backend to the inference thread; return once it serves, or raise. When it
        raises, the backend is closed (if it has close()) here.

The store's record changes only after `activate` succeeded, so a failed command leaves the
active model as it was.
"""

import logging
import re
import threading
from typing import Any, Callable, Dict, List, Optional

from ..errors import AgentError
from ..store.layout import StoreError
from ..store.package import ModelPackage
from ..store.store import ModelStore
from .commands import Command
from .events import Progress, Reporter

log = logging.getLogger(__name__)

# prepare(package, progress, cancel): cancel.is_set() when the command is cancelled or the
# agent stops (a TensorRT 10 build stops at its next step).
Prepare = Callable[[ModelPackage, Progress, Any], Any]
Activate = Callable[[Any, ModelPackage], None]


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


class ModelCommands(object):
    """Runs one queued command against the store and the app's prepare/activate callbacks.

    `policy` is passed to ModelStore.install (download options, labels need a sha256);
    `public_key_file` (updates.public_key_file) makes installs need a valid signature."""

    def __init__(self, store: ModelStore, emit: Reporter, prepare: Prepare, activate: Activate,
                 stop_event: threading.Event, public_key_file: Optional[str],
                 policy: Dict[str, Any]) -> None:
        self.store = store
        self._emit = emit
        self._prepare = prepare
        self._activate = activate
        self._stop = stop_event
        self.public_key_file = public_key_file
        self.policy = policy

    def serving(self) -> str:
        """What serves now, for the detail of a failed command."""
        try:
            ref = self.store.active_ref()
        except AgentError:
            ref = None
        return "serving continues on {}".format("@".join(ref)) if ref else \
            "no model was active"

    def emit_cancelled(self, cmd: Command) -> None:
        self._emit(cmd.name, cmd.request_id, "failed", cancelled=True,
                   error="cancelled by model/cancel {}".format(cmd.cancelled_by),
                   detail=self.serving())

    def run(self, cmd: Command) -> None:
        """Run a queued command; every outcome ends in an event."""
        handler = {"model/install": self._install, "model/activate": self._activate_cmd,
                   "model/rollback": self._rollback, "model/remove": self._remove}[cmd.name]
        try:
            handler(cmd)
        except AgentError as exc:
            if cmd.cancelled.is_set() and not self._stop.is_set():
                self.emit_cancelled(cmd)
                return
            self._emit(cmd.name, cmd.request_id, "failed", error=str(exc),
                       detail=self.serving())
        except OSError as exc:
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="file system error: {}; check free space and permissions under "
                             "{}".format(exc, self.store.root), detail=self.serving())
        except Exception as exc:
            log.exception("%s (%s) crashed", cmd.name, cmd.request_id)
            self._emit(cmd.name, cmd.request_id, "failed",
                       error="internal error: {}: {}; see the agent's log".format(
                           type(exc).__name__, exc), detail=self.serving())

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
            public_key_file=self.public_key_file,
            progress=self._emit.progress(cmd.name, cmd.request_id, False),
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
                           package.ref, self.serving()))
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
        backend = self._prepare(package, self._emit.progress(cmd.name, cmd.request_id, True),
                                _CancelFlag(self._stop, cmd))
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
        except (AgentError, OSError) as exc:
            raise AgentError("{} is serving, but recording it as active failed: {}; it will "
                             "not be the model after a restart".format(package.ref, exc))
        self.store.prune()
        self._emit(cmd.name, cmd.request_id, "activated", detail="serving {} (was {})".format(
            package.ref, "@".join(was) if was else "none"))

    def _remove(self, cmd: Command) -> None:
        self.store.remove(cmd.args["name"], cmd.args["version"])
        self._emit(cmd.name, cmd.request_id, "done", detail="removed {}@{}".format(
            cmd.args["name"], cmd.args["version"]))
