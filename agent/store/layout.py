"""The store directory's layout: its file names, name checks, lock and crash-safe file writes.

Layout under `state_dir/models`:

    <name>/<version>/   a complete package: model.yaml, the ONNX file, labels, .install.json
    active.json         {"active": {"name", "version"}, "previous": {...} or null}
    .lock               serialises changes between threads and processes (daemon and CLI)
    .tmp-*              work in progress: a version being assembled, a record being written,
                        a version being deleted

Crash safety: a version directory is assembled in a `.tmp-*` directory (every file written to a
temp name, fsynced and renamed) and renamed to `<name>/<version>` only when complete and
verified; `active.json` is replaced by writing a temp file, fsyncing it, renaming it over the
old one and fsyncing the directory; a removal first renames the version out of sight. So after
a crash at any instant the record is absent or names a complete, verified version, and the only
debris is `.tmp-*` entries, which the next `ModelStore` removes (`remove_leftovers`, except
those a live process still holds: an install holds an flock on `.tmp-*/.lock` while it works).
"""

import contextlib
import logging
import os
import shutil
import threading
from typing import Any, Iterator, List

from .. import atomicfile
from ..atomicfile import fsync_dir
from ..errors import ModelError
from .package import MANIFEST_NAME, safe_component

try:
    import fcntl
except ImportError:  # not Linux: locks become no-ops (the agent targets Linux)
    fcntl = None  # type: ignore

log = logging.getLogger(__name__)

RECORD_NAME = "active.json"
META_NAME = ".install.json"
LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
RESERVED_FILES = (MANIFEST_NAME, META_NAME, LOCK_NAME)
MAX_COMPONENT = 100


class StoreError(ModelError):
    """The store cannot do what was asked (unknown version, protected version, bad record)."""


def check_component(kind: str, value: Any) -> str:
    """A model name or version usable as one directory name; refuses traversal like '../x'."""
    if isinstance(value, int) and not isinstance(value, bool) and kind == "version":
        value = str(value)
    if (not isinstance(value, str) or not safe_component(value) or value.startswith(".") or
            len(value) > MAX_COMPONENT or value == RECORD_NAME):
        raise StoreError("model {}: {!r} is not allowed; use 1 to {} letters, digits, '_', '-' "
                         "and '.', not starting with '.' (no '/', no '..')".format(
                             kind, value, MAX_COMPONENT))
    return value


def name_dirs(root: str) -> List[str]:
    """The model names in the store: its visible directories."""
    return sorted(e for e in os.listdir(root) if not e.startswith(".") and
                  e != RECORD_NAME and os.path.isdir(os.path.join(root, e)))


# ------------------------------------------------------------------------------ file helpers

def write_atomic(path: str, data: bytes) -> None:
    """Write a file so a crash leaves either the old or the new content, never a mix."""
    atomicfile.write_atomic(path, data, TMP_PREFIX)


def copy_atomic(src: str, dst: str) -> None:
    """Copy a file so a crash leaves either no file or the whole copy at `dst`."""
    atomicfile.copy_atomic(src, dst, TMP_PREFIX)


@contextlib.contextmanager
def fs_errors(what: str, root: str) -> Iterator[None]:
    """Turn a file-system failure (disk full, permissions) into a StoreError for the user."""
    try:
        yield
    except OSError as exc:
        raise StoreError("model store: {} failed: {}; check free space and permissions under "
                         "{}".format(what, exc, root))


# ------------------------------------------------------------------------------ locking

class StoreLock(object):
    """The store's lock: re-entrant within this process, an flock on `root/.lock` across
    processes (the daemon and the CLI)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            self._depth += 1
            try:
                if self._depth == 1 and fcntl is not None:
                    self._lock_fd = os.open(os.path.join(self.root, LOCK_NAME),
                                            os.O_CREAT | os.O_RDWR, 0o644)
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd >= 0:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = -1


def hold_workdir_lock(work: str) -> int:
    """Create and flock `work/.lock`: marks a `.tmp-*` work directory as in use; close the
    returned fd to release it."""
    lock_fd = os.open(os.path.join(work, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
    if fcntl is not None:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    return lock_fd


def _try_lock(path: str) -> Any:
    """An fd holding the lock at `path`; None when there is no such file; False when held."""
    if fcntl is None:
        return True if os.path.exists(path) else None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    return fd


def remove_leftovers(root: str) -> None:
    """Remove `.tmp-*` debris of crashed writers and empty name directories; keep what a live
    process still holds. Call with the store lock held."""
    changed = False
    for entry in os.listdir(root):
        if not entry.startswith(TMP_PREFIX):
            continue
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            holder = _try_lock(os.path.join(path, LOCK_NAME))
            if holder is False:
                continue  # an install in another process is still working here
            try:
                shutil.rmtree(path)
            finally:
                if holder is not None and holder is not True:
                    os.close(holder)
        else:
            os.unlink(path)
        changed = True
        log.info("model store: removed %s left by an interrupted operation", path)
    for name in name_dirs(root):
        name_dir = os.path.join(root, name)
        if not os.listdir(name_dir):
            os.rmdir(name_dir)
            changed = True
    if changed:
        fsync_dir(root)
