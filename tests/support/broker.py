"""A real Mosquitto broker on a free port."""

import os
import shutil
import socket
import subprocess
from typing import Optional

import pytest

from support.net import free_port
from support.waiting import wait_until


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run does this)")
    raise AssertionError


class Broker(object):
    """A mosquitto process on 127.0.0.1:port with an optional extra config."""

    def __init__(self, tmpdir: str, port: Optional[int] = None, extra: str = "") -> None:
        self.tmpdir = tmpdir
        self.port = port or free_port()
        self.extra = extra
        self.proc = None  # type: Optional[subprocess.Popen]
        self.store_dir = None  # type: Optional[str]  # persistent_broker's database folder

    def start(self) -> "Broker":
        conf = os.path.join(self.tmpdir, "mosquitto-{}.conf".format(self.port))
        with open(conf, "w") as handle:
            if "listener" not in self.extra:
                handle.write("listener {} 127.0.0.1\nallow_anonymous true\n".format(self.port))
            if os.geteuid() == 0:
                # Started as root, mosquitto drops to its own user, which cannot reach pytest's
                # private tmp dirs (persistence files, certificates): keep root for tests.
                handle.write("user root\n")
            if "persistence " not in self.extra:
                handle.write("persistence false\n")
            handle.write(self.extra)
        self.log = open(os.path.join(self.tmpdir, "mosquitto-{}.log".format(self.port)), "ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(self._accepts, 10, "mosquitto to listen on port {}".format(self.port))
        return self

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("mosquitto exited with {}; see {}".format(
                self.proc.returncode, self.log.name))
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def persistent_broker(tmpdir: str, *settings: str) -> Broker:
    """A started broker that keeps sessions and queued messages across its restarts (store in
    tmpdir/mosquitto-db, as `store_dir`), with room for 100000 queued messages, plus
    `settings` lines."""
    store = os.path.join(tmpdir, "mosquitto-db")
    os.makedirs(store)
    extra = "persistence true\npersistence_location {}/\nmax_queued_messages 100000\n".format(
        store) + "".join(line + "\n" for line in settings)
    broker = Broker(tmpdir, extra=extra)
    broker.store_dir = store
    return broker.start()
