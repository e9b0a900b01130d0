"""The write protocol behind every file that must survive a power cut (agent/atomicfile.py) and
the model store's `active.json`.

Killing the process cannot show a missing fsync: the page cache survives. So these tests record
the file operations the code performs (os.open/write/fsync/rename/replace, open()) and check the
protocol itself: the new content goes to a temp file in the same directory, that file is
fsynced, renamed over the target, and the directory is fsynced after the rename. A simulated
power cut then replays the recorded operations keeping only what was made durable.
"""

import builtins
import errno
import io
import os
import stat

import pytest

from agent import atomicfile
from support.fileops import FileOps


def test_write_atomic_follows_the_protocol(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_bytes(b"old")
    ops = FileOps(monkeypatch)
    atomicfile.write_atomic(str(target), b"new content")
    tmp = ops.assert_atomic_replace(str(target))
    assert os.path.basename(tmp).startswith(".tmp-")
    assert target.read_bytes() == b"new content"
    assert not os.path.exists(tmp)
    assert ops.power_cut(str(target), b"old") == b"new content"


def test_copy_atomic_follows_the_protocol(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one 1 MiB block
    src.write_bytes(data)
    dst = tmp_path / "dst.bin"
    ops = FileOps(monkeypatch)
    atomicfile.copy_atomic(str(src), str(dst), prefix=".copy-")
    tmp = ops.assert_atomic_replace(str(dst))
    assert os.path.basename(tmp).startswith(".copy-")
    assert dst.read_bytes() == data
    assert ops.power_cut(str(dst), None) == data


def test_power_cut_model_sees_a_missing_directory_fsync(tmp_path, monkeypatch):
    """The checker itself: a rename whose directory is not fsynced is lost in a power cut."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    monkeypatch.setattr(atomicfile, "fsync_dir", lambda path: None)
    ops = FileOps(monkeypatch)
    atomicfile.write_atomic(str(target), b"new")
    assert ops.power_cut(str(target), b"old") == b"old"
    with pytest.raises(AssertionError, match="not fsynced after the rename"):
        ops.assert_atomic_replace(str(target))


def test_an_exception_inside_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomicfile.atomic_file(str(target)) as fd:
            atomicfile.write_all(fd, b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(str(tmp_path))) == ["keep.txt"]


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_a_failed_write_closes_the_temp_file(tmp_path):
    target = tmp_path / "keep.txt"
    before = _open_fds()
    for _ in range(5):
        with pytest.raises(RuntimeError):
            with atomicfile.atomic_file(str(target)):
                raise RuntimeError("writer failed")
    assert _open_fds() == before
    assert os.listdir(str(tmp_path)) == []


def test_a_failed_fsync_leaves_the_target_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomicfile.write_atomic(str(target), b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(str(tmp_path))) == ["keep.txt"]


def test_permissions_are_the_mode_asked_for_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomicfile.write_atomic(str(tmp_path / "a"), b"x")
        with atomicfile.atomic_file(str(tmp_path / "b"), mode=0o640) as fd:
            atomicfile.write_all(fd, b"y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(str(tmp_path / "a")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(str(tmp_path / "b")).st_mode) == 0o640


def test_write_all_finishes_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))
    monkeypatch.setattr(os, "write", short_write)
    atomicfile.write_atomic(str(tmp_path / "f"), b"0123456789")
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


def test_relative_target_gets_its_temp_file_in_the_same_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    (tmp_path / "sub").mkdir()
    ops = FileOps(monkeypatch)
    atomicfile.write_atomic(os.path.join("sub", "f"), b"x")
    ops.assert_atomic_replace(str(tmp_path / "sub" / "f"))


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EBADF])
def test_fsync_dir_tolerates_filesystems_that_refuse_it(tmp_path, monkeypatch, code):
    closed = []
    real_close = os.close

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    def close(fd):
        closed.append(fd)
        real_close(fd)
    monkeypatch.setattr(os, "fsync", refuse)
    monkeypatch.setattr(os, "close", close)
    atomicfile.fsync_dir(str(tmp_path))
    assert len(closed) == 1


def test_fsync_dir_raises_real_errors_and_closes_the_directory(tmp_path, monkeypatch):
    closed = []
    real_close = os.close

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    def close(fd):
        closed.append(fd)
        real_close(fd)
    monkeypatch.setattr(os, "fsync", broken)
    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError) as info:
        atomicfile.fsync_dir(str(tmp_path))
    assert info.value.errno == errno.EIO
    assert len(closed) == 1


def test_fsync_dir_of_a_missing_directory_does_nothing(tmp_path):
    atomicfile.fsync_dir(str(tmp_path / "gone"))


# --------------------------------------------------------------------- the model store's record

def _store_with_two_versions(tmp_path):
    from agent.store.store import ModelStore
    from support.model_store import make_package_dir
    store = ModelStore(str(tmp_path / "state"))
    for version in ("1", "2"):
        store.import_package(make_package_dir(str(tmp_path / ("pkg" + version)),
                                              version=version, seed=int(version)))
    return store


def test_active_json_is_replaced_atomically_on_activate(tmp_path, monkeypatch):
    store = _store_with_two_versions(tmp_path)
    store.activate("tiny", "1")
    record = os.path.join(store.root, "active.json")
    with open(record, "rb") as handle:
        before = handle.read()
    ops = FileOps(monkeypatch)
    store.activate("tiny", "2")
    ops.assert_atomic_replace(record)
    monkeypatch.undo()
    with open(record, "rb") as handle:
        after = handle.read()
    assert ops.power_cut(record, before) == after
    assert store.active_ref() == ("tiny", "2") and store.previous_ref() == ("tiny", "1")


def test_active_json_is_replaced_atomically_on_rollback(tmp_path, monkeypatch):
    store = _store_with_two_versions(tmp_path)
    store.activate("tiny", "1")
    store.activate("tiny", "2")
    record = os.path.join(store.root, "active.json")
    ops = FileOps(monkeypatch)
    store.rollback()
    ops.assert_atomic_replace(record)
    monkeypatch.undo()
    assert store.active_ref() == ("tiny", "1") and store.previous_ref() == ("tiny", "2")


def test_first_active_json_is_created_atomically(tmp_path, monkeypatch):
    store = _store_with_two_versions(tmp_path)
    record = os.path.join(store.root, "active.json")
    assert not os.path.exists(record)
    ops = FileOps(monkeypatch)
    store.activate("tiny", "1")
    ops.assert_atomic_replace(record)
    monkeypatch.undo()
    with open(record, "rb") as handle:
        content = handle.read()
    assert ops.power_cut(record, None) == content

