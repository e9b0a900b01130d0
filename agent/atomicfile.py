"""Files written so that a crash at any instant leaves the old content or the new, never a mix:
a temp file in the same directory, fsync, rename, fsync of the directory."""

import contextlib
import errno
import os
import tempfile
from typing import Iterator


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in `path` durable (POSIX needs the directory fsynced too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems refuse fsync on a directory; anything else is real.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def atomic_file(path: str, prefix: str = ".tmp-", mode: int = 0o644) -> Iterator[int]:
    """Yield a file descriptor; on a clean exit the file becomes `path` atomically, on an
    exception the temp file is removed and `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
        fsync_dir(directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomic(path: str, data: bytes, prefix: str = ".tmp-") -> None:
    with atomic_file(path, prefix) as fd:
        write_all(fd, data)


def copy_atomic(src: str, dst: str, prefix: str = ".tmp-") -> None:
    with atomic_file(dst, prefix) as fd, open(src, "rb") as source:
        while True:
            block = source.read(1 << 20)
            if not block:
                break
            write_all(fd, block)
