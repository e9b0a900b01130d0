"""Test helpers shared by several test modules (from tests/unit/store/test_atomicfile.py)."""

import builtins
import io
import os


class FileOps(object):
    """Records file operations by wrapping the os functions (and open()) for one test.

    Each entry: (op, detail...). Paths are absolute; fds are mapped to the path they opened.
    """

    def __init__(self, monkeypatch):
        self.ops = []
        self.fd_path = {}
        real = {name: getattr(os, name) for name in
                ("open", "write", "fsync", "close", "rename", "replace", "unlink")}
        real_open = builtins.open

        def op_open(path, flags, mode=0o777, *args, **kw):
            fd = real["open"](path, flags, mode, *args, **kw)
            self.fd_path[fd] = os.path.abspath(path)
            self.ops.append(("open", os.path.abspath(path), flags))
            return fd

        def op_write(fd, data):
            n = real["write"](fd, data)
            self.ops.append(("write", self.fd_path.get(fd, fd), bytes(data[:n])))
            return n

        def op_fsync(fd):
            self.ops.append(("fsync", self.fd_path.get(fd, fd)))
            return real["fsync"](fd)

        def op_close(fd):
            self.ops.append(("close", self.fd_path.pop(fd, fd)))
            return real["close"](fd)

        def op_rename(src, dst, *args, **kw):
            self.ops.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            return real["rename"](src, dst, *args, **kw)

        def op_replace(src, dst, *args, **kw):
            self.ops.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            return real["replace"](src, dst, *args, **kw)

        def op_unlink(path, *args, **kw):
            self.ops.append(("unlink", os.path.abspath(path)))
            return real["unlink"](path, *args, **kw)

        def open_builtin(file, mode="r", *args, **kw):
            if isinstance(file, (str, bytes)) and any(c in mode for c in "wax+"):
                self.ops.append(("open_write", os.path.abspath(file)))
            return real_open(file, mode, *args, **kw)

        monkeypatch.setattr(os, "open", op_open)
        monkeypatch.setattr(os, "write", op_write)
        monkeypatch.setattr(os, "fsync", op_fsync)
        monkeypatch.setattr(os, "close", op_close)
        monkeypatch.setattr(os, "rename", op_rename)
        monkeypatch.setattr(os, "replace", op_replace)
        monkeypatch.setattr(os, "unlink", op_unlink)
        monkeypatch.setattr(builtins, "open", open_builtin)
        monkeypatch.setattr(io, "open", open_builtin)

    def assert_atomic_replace(self, target):
        """The last change of `target` followed the protocol; returns the temp path used."""
        target = os.path.abspath(target)
        directory = os.path.dirname(target)
        writable = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
        for op in self.ops:
            assert not (op[0] == "open" and op[1] == target and op[2] & writable), \
                "{} was opened for writing in place: {}".format(target, op)
            assert not (op[0] == "open_write" and op[1] == target), \
                "{} was opened for writing in place".format(target)
            assert not (op[0] == "write" and op[1] == target), \
                "{} was written in place".format(target)
        renames = [i for i, op in enumerate(self.ops) if op[0] == "rename" and op[2] == target]
        assert renames, "{} was never renamed into place; ops: {}".format(target, self.ops)
        at = renames[-1]
        tmp = self.ops[at][1]
        assert os.path.dirname(tmp) == directory, \
            "temp file {} is not in the target's directory {}".format(tmp, directory)
        before = self.ops[:at]
        writes = [i for i, op in enumerate(before) if op[0] == "write" and op[1] == tmp]
        fsyncs = [i for i, op in enumerate(before) if op[0] == "fsync" and op[1] == tmp]
        assert fsyncs, "temp file {} was renamed over {} without an fsync".format(tmp, target)
        if writes:
            assert fsyncs[-1] > writes[-1], "the temp file was written after its last fsync"
        closes = [i for i, op in enumerate(before) if op[0] == "close" and op[1] == tmp]
        assert closes and closes[-1] > fsyncs[-1], "the temp file was renamed while open"
        after = self.ops[at + 1:]
        assert ("fsync", directory) in after, \
            "the directory {} was not fsynced after the rename; ops after it: {}".format(
                directory, after)
        return tmp

    def power_cut(self, target, before):
        """What `target` holds after a power cut at the end of the recorded operations, if
        only fsynced data and fsynced directory entries survive. `before` is its durable
        content at the start (None: absent)."""
        target = os.path.abspath(target)
        directory = os.path.dirname(target)
        pending = {}  # path -> bytes written since the file's last fsync (not durable)
        durable = {}  # path -> bytes made durable by an fsync
        names = {target: before}  # durable directory entries of `directory`
        staged = dict(names)  # entries changed in memory, durable at the next dir fsync
        for op in self.ops:
            if op[0] == "write":
                pending[op[1]] = pending.get(op[1], b"") + op[2]
            elif op[0] == "fsync" and op[1] == directory:
                names = dict(staged)
            elif op[0] == "fsync":
                durable[op[1]] = durable.get(op[1], b"") + pending.pop(op[1], b"")
            elif op[0] == "rename" and os.path.dirname(op[2]) == directory:
                staged[op[2]] = durable.get(op[1], b"")
                staged.pop(op[1], None)
            elif op[0] in ("open_write",) and op[1] == target:
                staged[target] = None  # truncated in place: old content gone at once
        return names.get(target)
