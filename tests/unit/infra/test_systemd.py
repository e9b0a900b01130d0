"""systemd integration: sd_notify over real unix datagram sockets, the watchdog pinger, journald
logging, the unit file (systemd-analyze verify where installed) and install.sh in staged mode.

No sleeps for synchronisation: tests block on the receiving socket with a timeout, or drive the
pinger's tick() with a fake clock.
"""

import contextlib
import io
import itertools
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest

from agent.errors import ConfigError
from agent.logs import JournalFormatter, configure_logging, under_journald
from agent.systemd import Notifier, StartTimeoutExtender, WatchdogPinger
from support.paths import ROOT

REPO = ROOT
UNIT = os.path.join(REPO, "systemd", "edge-agent.service")
INSTALL = os.path.join(REPO, "systemd", "install.sh")

# Generous upper bound for a datagram that must arrive; an absent one is checked with NO_MORE_S.
ARRIVE_S = 5.0
NO_MORE_S = 0.3


# --- helpers --------------------------------------------------------------------------------


class Receiver(object):
    """The systemd side of the notify socket: a bound AF_UNIX datagram socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def recv(self, timeout=ARRIVE_S):
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode("utf-8")

    def fields(self, timeout=ARRIVE_S):
        return dict(line.split("=", 1) for line in self.recv(timeout).split("\n"))

    def drain(self):
        """Read what is still arriving until nothing comes for NO_MORE_S."""
        while True:
            try:
                self.recv(NO_MORE_S)
            except socket.timeout:
                return

    def assert_silent(self, timeout=NO_MORE_S):
        self.sock.settimeout(timeout)
        with pytest.raises(socket.timeout):
            data = self.sock.recv(65536)
            pytest.fail("unexpected datagram %r" % data)

    def close(self):
        self.sock.close()


def assert_pings(pinger, receiver, clock, times=1):
    """`times` ticks, 10 s apart on the fake clock, each sending WATCHDOG=1."""
    for _ in range(times):
        clock.now += 10
        assert pinger.tick() is True
        assert receiver.recv() == "WATCHDOG=1"


@contextlib.contextmanager
def started(ticker):
    """The pinger's or extender's thread running for the body; stopped through its stop Event
    and joined after."""
    assert ticker.start() is True
    try:
        yield
    finally:
        ticker.stop.set()
        ticker.join(ARRIVE_S)
    assert not ticker.running


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="edge-sd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_socket(short_dir):
    path = os.path.join(short_dir, "notify")
    receiver = Receiver(path)
    yield receiver, {"NOTIFY_SOCKET": path}
    receiver.close()


@pytest.fixture
def abstract_socket():
    name = "edge-agent-test-%s" % uuid.uuid4().hex
    receiver = Receiver("\0" + name)
    yield receiver, {"NOTIFY_SOCKET": "@" + name}
    receiver.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request):
    return request.getfixturevalue(request.param + "_socket")


class FakeClock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# --- Notifier ---------------------------------------------------------------------------------


def test_ready_status_stopping_watchdog_arrive_as_single_datagrams(notify_socket):
    receiver, env = notify_socket
    notifier = Notifier(environ=env)
    assert notifier.enabled

    assert notifier.ready("serving efficientnet_lite0@1") is True
    assert receiver.recv() == "READY=1\nSTATUS=serving efficientnet_lite0@1"
    assert notifier.ready() is True
    assert receiver.recv() == "READY=1"
    assert notifier.status("building engine") is True
    assert receiver.recv() == "STATUS=building engine"
    assert notifier.watchdog() is True
    assert receiver.recv() == "WATCHDOG=1"
    assert notifier.stopping("draining") is True
    assert receiver.recv() == "STOPPING=1\nSTATUS=draining"
    receiver.assert_silent()
    notifier.close()


def test_reloading_extend_timeout_and_custom_fields(path_socket):
    receiver, env = path_socket
    with Notifier(environ=env) as notifier:
        assert notifier.reloading()
        fields = receiver.fields()
        assert fields["RELOADING"] == "1"
        assert int(fields["MONOTONIC_USEC"]) > 0
        assert notifier.extend_timeout(90)
        assert receiver.recv() == "EXTEND_TIMEOUT_USEC=90000000"
        assert notifier.notify(STATUS="x", ERRNO=5)
        assert receiver.recv() == "STATUS=x\nERRNO=5"
        assert notifier.send("FDSTORE=0")
        assert receiver.recv() == "FDSTORE=0"


def test_status_with_newlines_stays_one_field(path_socket):
    receiver, env = path_socket
    Notifier(environ=env).status("line one\nline two\nREADY=1")
    assert receiver.recv() == "STATUS=line one line two READY=1"


def test_outside_systemd_everything_is_a_noop():
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    pinger = WatchdogPinger(notifier)
    assert not pinger.enabled
    assert pinger.start() is False


def test_default_environ_is_the_process_environment(monkeypatch, path_socket):
    receiver, env = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_interval() == 15.0
    assert notifier.ready()
    assert receiver.recv() == "READY=1"


def test_unusable_address_disables_notifications():
    assert not Notifier(environ={"NOTIFY_SOCKET": "relative/path"}).enabled
    assert not Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier(environ={"NOTIFY_SOCKET": ""}).enabled


def test_send_failure_returns_false_and_never_raises(short_dir, caplog):
    path = os.path.join(short_dir, "gone")
    receiver = Receiver(path)
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    assert notifier.status("up")
    assert receiver.recv() == "STATUS=up"
    # systemd went away: the socket file is gone, then nothing listens at all.
    receiver.close()
    os.unlink(path)
    with caplog.at_level(logging.DEBUG, logger="agent.systemd"):
        assert notifier.watchdog() is False
        assert notifier.ready("x") is False
    assert any("sd_notify" in r.getMessage() for r in caplog.records)
    # ...and it recovers when the socket comes back.
    receiver = Receiver(path)
    try:
        assert notifier.watchdog() is True
        assert receiver.recv() == "WATCHDOG=1"
    finally:
        receiver.close()
    # A path Python itself refuses (embedded NUL) is also swallowed.
    assert Notifier(environ={"NOTIFY_SOCKET": "/bad\0path"}).watchdog() is False


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, expected):
    env = dict(env, NOTIFY_SOCKET="@x")
    assert Notifier(environ=env).watchdog_interval() == expected


# --- WatchdogPinger ---------------------------------------------------------------------------


def test_pinger_pings_while_counter_moves_and_stops_when_it_stalls(path_socket):
    receiver, env = path_socket
    frames = [0]
    clock = FakeClock()
    pinger = WatchdogPinger(
        Notifier(environ=env), progress=lambda: frames[0], interval=10, stall_after_s=25, clock=clock
    )
    # Moving counter: one ping per tick.
    for _ in range(3):
        frames[0] += 7
        assert_pings(pinger, receiver, clock)
    # Counter stops. Within stall_after_s the pinger still pings.
    assert_pings(pinger, receiver, clock, 2)
    # 30 s without progress > 25 s: one STATUS line, no ping.
    clock.now += 10
    assert pinger.tick() is False
    status = receiver.fields()
    assert set(status) == {"STATUS"}
    assert "stalled" in status["STATUS"]
    assert pinger.stalled
    # Still stalled: silence, so systemd's WatchdogSec= runs out.
    for _ in range(3):
        clock.now += 10
        assert pinger.tick() is False
    receiver.assert_silent()
    # Progress again before systemd acted: pinging resumes, with a status saying so.
    frames[0] += 1
    clock.now += 10
    assert pinger.tick() is True
    assert "running again" in receiver.fields()["STATUS"]
    assert receiver.recv() == "WATCHDOG=1"
    assert not pinger.stalled


def test_beats_keep_an_idle_loop_healthy(path_socket):
    receiver, env = path_socket
    clock = FakeClock()
    frames = [42]  # paused source: no frames at all
    pinger = WatchdogPinger(
        Notifier(environ=env), progress=lambda: frames[0], interval=10, stall_after_s=15, clock=clock
    )
    for _ in range(5):
        pinger.beat()
        assert_pings(pinger, receiver, clock)
    pinger.alive()  # alias of beat()
    assert_pings(pinger, receiver, clock)
    # The inference thread stops beating: stall after 15 s.
    assert_pings(pinger, receiver, clock)
    clock.now += 10
    assert pinger.tick() is False
    assert "stalled" in receiver.fields()["STATUS"]


def test_failing_progress_counter_reads_as_no_progress(path_socket):
    receiver, env = path_socket
    clock = FakeClock()

    def broken():
        raise RuntimeError("counter gone")

    pinger = WatchdogPinger(
        Notifier(environ=env), progress=broken, interval=1, stall_after_s=2, clock=clock
    )
    clock.now += 1
    assert pinger.tick() is True
    clock.now += 2
    assert pinger.tick() is False
    assert receiver.recv() == "WATCHDOG=1"
    assert "stalled" in receiver.fields()["STATUS"]


def test_default_interval_and_stall_limit_come_from_watchdog_usec(path_socket):
    _, env = path_socket
    env = dict(env, WATCHDOG_USEC="30000000")
    pinger = WatchdogPinger(Notifier(environ=env), progress=lambda: 0)
    assert pinger.interval == 15.0
    assert pinger.stall_after_s == 45.0
    assert pinger.enabled


def test_pinger_thread_keeps_pinging_a_moving_counter(path_socket):
    receiver, env = path_socket
    counter = itertools.count()
    pinger = WatchdogPinger(
        Notifier(environ=env), progress=lambda: next(counter), interval=0.01, stall_after_s=0.05
    )
    with started(pinger):
        for _ in range(20):
            assert receiver.recv() == "WATCHDOG=1"


def test_pinger_thread_goes_silent_when_the_counter_stalls(path_socket):
    receiver, env = path_socket
    pinger = WatchdogPinger(Notifier(environ=env), progress=lambda: 7, interval=0.01,
                            stall_after_s=0.1)
    with started(pinger):
        pings = 0
        while True:
            message = receiver.recv()
            if message == "WATCHDOG=1":
                pings += 1
                continue
            assert message.startswith("STATUS=inference loop stalled")
            break
        assert pings >= 1  # it did ping during the grace period
        # 30 intervals with no WATCHDOG=1: systemd would now kill the agent.
        receiver.assert_silent(0.3)
        assert pinger.stalled


def test_setting_the_stop_event_ends_the_thread_promptly(path_socket):
    receiver, env = path_socket
    stop = threading.Event()
    pinger = WatchdogPinger(
        Notifier(environ=env), progress=lambda: 0, stop=stop, interval=3600, stall_after_s=7200
    )
    pinger.start()
    assert receiver.recv() == "WATCHDOG=1"  # first ping at start, then it waits an hour
    stop.set()
    pinger.join(ARRIVE_S)
    assert not pinger.running


# --- StartTimeoutExtender ---------------------------------------------------------------------


def test_extender_asks_for_three_intervals_each_tick_until_finished(path_socket):
    receiver, env = path_socket
    clock = FakeClock()
    extender = StartTimeoutExtender(Notifier(env), interval=10, clock=clock)
    assert extender.tick()
    assert receiver.fields() == {"EXTEND_TIMEOUT_USEC": "30000000"}
    clock.now += 10
    assert extender.tick()
    assert receiver.fields() == {"EXTEND_TIMEOUT_USEC": "30000000"}
    extender.finish()
    assert not extender.tick()
    receiver.assert_silent()


def test_extender_gives_up_on_a_hung_start_after_max_s(path_socket):
    receiver, env = path_socket
    clock = FakeClock()
    extender = StartTimeoutExtender(Notifier(env), interval=10, max_s=60, clock=clock)
    clock.now += 60
    assert extender.tick()
    assert receiver.fields() == {"EXTEND_TIMEOUT_USEC": "30000000"}
    clock.now += 1
    assert not extender.tick()
    status = receiver.fields()["STATUS"]
    assert "start-up hung" in status and "no longer extended" in status
    assert not extender.tick()
    receiver.assert_silent()  # said once


def test_extender_stops_with_the_stop_event_so_a_stop_timeout_is_never_extended(path_socket):
    receiver, env = path_socket
    stop = threading.Event()
    extender = StartTimeoutExtender(Notifier(env), stop=stop, interval=0.05)
    assert extender.start()
    assert receiver.fields() == {"EXTEND_TIMEOUT_USEC": "150000"}
    stop.set()
    extender.join(ARRIVE_S)
    assert not extender.running
    receiver.drain()  # what was sent before the thread saw the Event
    assert not extender.tick()
    receiver.assert_silent()


def test_extender_thread_sends_until_finish_returns(path_socket):
    receiver, env = path_socket
    extender = StartTimeoutExtender(Notifier(env), interval=0.02)
    assert extender.start()
    for _ in range(3):
        assert receiver.fields() == {"EXTEND_TIMEOUT_USEC": "60000"}
    extender.finish()
    assert not extender.running
    receiver.drain()
    receiver.assert_silent()


def test_extender_is_a_noop_outside_systemd():
    extender = StartTimeoutExtender(Notifier({}), interval=0.01)
    assert not extender.start()
    assert not extender.tick()
    extender.finish()


# --- journald logging (agent/logs.py) ---------------------------------------------------------


def test_under_journald_matches_journal_stream_against_the_stream(tmp_path):
    with open(str(tmp_path / "stderr"), "w") as stream:
        st = os.fstat(stream.fileno())
        match = "%d:%d" % (st.st_dev, st.st_ino)
        other = "%d:%d" % (st.st_dev, st.st_ino + 1)
        assert under_journald({"JOURNAL_STREAM": match}, stream) is True
        # JOURNAL_STREAM decides when present: stderr was redirected elsewhere.
        assert under_journald({"JOURNAL_STREAM": other, "INVOCATION_ID": "x"}, stream) is False
        assert under_journald({"JOURNAL_STREAM": "garbage"}, stream) is False
        assert under_journald({"INVOCATION_ID": "0123abcd"}, stream) is True
        assert under_journald({}, stream) is False


@pytest.mark.parametrize(
    "level, prefix",
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_journal_formatter_prefixes_syslog_priority(level, prefix):
    record = logging.LogRecord("agent.app", level, __file__, 1, "frame %d", (3,), None)
    assert JournalFormatter().format(record) == prefix + "agent.app: frame 3"


def test_journal_formatter_prefixes_every_traceback_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("a", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = JournalFormatter().format(record).split("\n")
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_journald_style(restore_root_logger):
    stream = io.StringIO()
    handler = configure_logging("warning", environ={"INVOCATION_ID": "x"}, stream=stream)
    assert isinstance(handler.formatter, JournalFormatter)
    logging.getLogger("agent.test").info("hidden")
    logging.getLogger("agent.test").warning("camera lost")
    assert stream.getvalue() == "<4>agent.test: camera lost\n"


def test_configure_logging_plain_style_has_timestamps_and_replaces_itself(restore_root_logger):
    first = io.StringIO()
    configure_logging("INFO", environ={}, stream=first)
    second = io.StringIO()
    configure_logging("DEBUG", environ={}, stream=second)
    logging.getLogger("agent.test").debug("hello")
    assert first.getvalue() == ""
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG agent.test: hello\n$", second.getvalue())


def test_configure_logging_rejects_unknown_level(restore_root_logger):
    with pytest.raises(ConfigError) as err:
        configure_logging("LOUD", environ={})
    assert "logging.level" in str(err.value) and "'LOUD'" in str(err.value)


# --- the unit file ----------------------------------------------------------------------------

# Every directive the unit may use, with the systemd version that introduced it (NEWS and
# systemd.directives(7)). The floor is 237 (Ubuntu 18.04, JetPack 4.6): a newer directive is
# only warned about and ignored there. Add a directive here only after checking its version.
DIRECTIVE_SINCE = {
    "Unit": {
        "Description": 1,
        "Wants": 1,
        "After": 1,
        "StartLimitIntervalSec": 230,
        "StartLimitBurst": 230,
    },
    "Service": {
        "Type": 1,
        "NotifyAccess": 1,
        "WatchdogSec": 183,
        "Restart": 1,
        "RestartSec": 1,
        "TimeoutStartSec": 188,
        "TimeoutStopSec": 188,
        "User": 1,
        "SupplementaryGroups": 1,
        "StateDirectory": 235,
        "StateDirectoryMode": 235,
        "ConfigurationDirectory": 235,
        "WorkingDirectory": 1,
        "ExecStart": 1,
        "ExecReload": 1,
        "Environment": 1,
        "SyslogIdentifier": 1,
        "UMask": 1,
        "NoNewPrivileges": 187,
        "CapabilityBoundingSet": 1,
        "ProtectSystem": 214,
        "ProtectHome": 214,
        "ProtectKernelTunables": 232,
        "ProtectKernelModules": 232,
        "ProtectControlGroups": 232,
        "RestrictAddressFamilies": 211,
        "RestrictNamespaces": 233,
        "RestrictRealtime": 231,
        "LimitNICE": 1,
        "LockPersonality": 235,
        "SystemCallArchitectures": 209,
        "RemoveIPC": 232,
    },
    "Install": {"WantedBy": 1},
}
FLOOR = 237


def read_unit(path=UNIT):
    """[(section, key, value)] in file order (configparser would merge repeated keys)."""
    entries, section = [], None
    with open(path) as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def unit_dict(path=UNIT):
    return {(s, k): v for s, k, v in read_unit(path)}


def test_unit_uses_only_directives_systemd_237_knows():
    for section, key, _ in read_unit():
        known = DIRECTIVE_SINCE.get(section, {})
        assert key in known, "[%s] %s= is not in DIRECTIVE_SINCE: check the systemd version" % (
            section,
            key,
        )
        assert known[key] <= FLOOR, "[%s] %s= needs systemd %d > %d" % (section, key, known[key], FLOOR)


def test_unit_contract():
    unit = unit_dict()
    expected = {
        ("Service", "Type"): "notify",
        ("Service", "NotifyAccess"): "main",
        ("Service", "WatchdogSec"): "30",
        ("Service", "Restart"): "on-failure",
        ("Service", "RestartSec"): "5",
        ("Service", "User"): "edge-agent",
        ("Service", "SupplementaryGroups"): "video render jtop jetson_stats",
        ("Service", "StateDirectory"): "edge-agent",
        ("Service", "ConfigurationDirectory"): "edge-agent",
        ("Service", "WorkingDirectory"): "/var/lib/edge-agent",
        ("Service", "ExecStart"): "/usr/local/bin/edge-agent run -c /etc/edge-agent/config.yaml"
        " --set device.state_dir=/var/lib/edge-agent",
        ("Service", "ExecReload"): "/bin/kill -HUP $MAINPID",
        ("Service", "Environment"): "PYTHONUNBUFFERED=1 PYTHONIOENCODING=utf-8",
    }
    for key, value in expected.items():
        assert unit.get(key) == value, key
    # Restart budget: in [Unit] (where systemd >= 230 reads it), and present.
    assert int(unit[("Unit", "StartLimitIntervalSec")]) > 0
    assert int(unit[("Unit", "StartLimitBurst")]) > 0
    assert ("Service", "StartLimitIntervalSec") not in unit
    assert ("Service", "TimeoutStopSec") in unit


def test_unit_hardening_leaves_cuda_cameras_and_jtop_working():
    unit = unit_dict()
    keys = {k for _, k in unit}
    # These break CUDA (/dev/nvhost-*, /dev/nvmap) or CSI cameras (/tmp/argus_socket).
    for forbidden in ("PrivateDevices", "PrivateTmp", "DevicePolicy", "MemoryDenyWriteExecute",
                      "PrivateUsers", "DynamicUser", "DeviceAllow"):
        assert forbidden not in keys, forbidden
    assert unit[("Service", "ProtectSystem")] in ("full", "true", "yes")  # /tmp stays writable
    families = unit[("Service", "RestrictAddressFamilies")].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert unit[("Service", "NoNewPrivileges")] == "yes"


def _verify_env():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu package: systemd)")
    return tool


def _verify(tool, unit_path):
    """systemd-analyze verify; returns (returncode, lines of stderr about this unit)."""
    proc = subprocess.run(
        [tool, "verify", "--man=no", unit_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    name = os.path.basename(unit_path)
    noise = [line for line in proc.stderr.splitlines() if name in line]
    return proc.returncode, noise, proc.stderr


def _runnable_copy(src, dest_dir):
    """The unit with binaries that exist here, since verify checks ExecStart/ExecReload paths.

    User= and SupplementaryGroups= need not exist: verify resolves them only at run time.
    """
    with open(src) as fh:
        text = fh.read()
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=" + sys.executable, text)
    if not os.access("/bin/kill", os.X_OK):
        text = text.replace("ExecReload=/bin/kill", "ExecReload=" + shutil.which("kill"))
    path = os.path.join(dest_dir, "edge-agent.service")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    tool = _verify_env()
    path = _runnable_copy(UNIT, str(tmp_path))
    code, noise, stderr = _verify(tool, path)
    assert code == 0, stderr
    assert noise == [], stderr
    # The check has teeth: verify reports an unknown directive on this systemd (it still exits
    # 0 for those, hence the stderr check above).
    with open(path, "a") as fh:
        fh.write("[Service]\nProtectEverything=yes\n")
    _, noise, stderr = _verify(tool, path)
    assert any("ProtectEverything" in line for line in noise), stderr


# --- install.sh (staged with --root) ----------------------------------------------------------


def run_install(*args, **kwargs):
    env = dict(os.environ)
    env["PATH"] = kwargs.pop("path", env.get("PATH", ""))
    return subprocess.run(
        ["bash", INSTALL] + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env=env,
        timeout=60,
    )


def snapshot(root):
    """{relative path: (mode, content or None)} for every file and directory under root."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    content = fh.read()
            tree[os.path.relpath(full, root)] = (stat.S_IMODE(st.st_mode), content)
    return tree


@pytest.fixture
def stage(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\nvideo:x:44:\njtop:x:998:\n")
    config = tmp_path / "config.yaml"
    config.write_text("mqtt: {host: broker.local}\n")
    return root, config


def test_install_lays_out_files_and_is_idempotent(stage):
    root, config = stage
    args = ("--root", str(root), "--exec", "/opt/edge/bin/edge-agent", "--config", str(config))
    first = run_install(*args)
    assert first.returncode == 0, first.stderr
    tree = snapshot(str(root))

    unit_path = root / "etc/systemd/system/edge-agent.service"
    unit = unit_dict(str(unit_path))
    assert unit[("Service", "ExecStart")] == (
        "/opt/edge/bin/edge-agent run -c /etc/edge-agent/config.yaml"
        " --set device.state_dir=/var/lib/edge-agent"
    )
    # render does not exist in this root's /etc/group: dropped, or every start would fail 216/GROUP.
    assert unit[("Service", "SupplementaryGroups")] == "video jtop"
    assert (root / "etc/edge-agent/config.yaml").read_text() == config.read_text()
    assert stat.S_IMODE((root / "var/lib/edge-agent").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "etc/edge-agent/config.yaml").stat().st_mode) == 0o640
    # Everything else in the unit is the repo's unit unchanged.
    original = [e for e in read_unit() if e[1] not in ("ExecStart", "SupplementaryGroups")]
    rendered = [e for e in read_unit(str(unit_path)) if e[1] not in ("ExecStart", "SupplementaryGroups")]
    assert rendered == original
    # Nothing touched the real system; the commands are printed instead.
    assert "would run: useradd --system" in first.stdout
    assert "would run: usermod --append --groups video,jtop edge-agent" in first.stdout
    assert "would run: systemctl daemon-reload" in first.stdout
    assert "would run: systemctl enable --now edge-agent.service" in first.stdout

    second = run_install(*args)
    assert second.returncode == 0, second.stderr
    assert snapshot(str(root)) == tree
    assert "unchanged" in second.stdout


@pytest.mark.parametrize("jetson_stats, group_line, groups", [
    # jetson-stats 3.x to 4.0.0 name the jtop socket's group jetson_stats, 4.1.0+ name it jtop.
    ("3.1.4 / 4.0.0", "jetson_stats:x:997:", "video jetson_stats"),
    ("4.1.0 and later", "jtop:x:998:", "video jtop"),
    ("not installed", None, "video"),
])
def test_install_adds_the_user_to_the_jtop_group_of_either_jetson_stats(
        stage, jetson_stats, group_line, groups):
    root, config = stage
    lines = ["root:x:0:", "video:x:44:"] + ([group_line] if group_line else [])
    (root / "etc" / "group").write_text("\n".join(lines) + "\n")
    result = run_install("--root", str(root), "--exec", "/bin/true", "--config", str(config))
    assert result.returncode == 0, result.stderr
    unit = unit_dict(str(root / "etc/systemd/system/edge-agent.service"))
    assert unit[("Service", "SupplementaryGroups")] == groups, jetson_stats
    assert "would run: usermod --append --groups {} edge-agent".format(
        groups.replace(" ", ",")) in result.stdout


def test_installer_wants_exactly_the_groups_the_unit_lists():
    with open(INSTALL) as fh:
        wanted = re.search(r'(?m)^WANTED_GROUPS="([^"]*)"', fh.read()).group(1).split()
    assert unit_dict()[("Service", "SupplementaryGroups")].split() == wanted
    assert "jetson_stats" in wanted and "jtop" in wanted


def test_install_keeps_an_existing_config(stage):
    root, config = stage
    args = ("--root", str(root), "--exec", "/bin/true", "--config", str(config))
    assert run_install(*args).returncode == 0
    edited = root / "etc/edge-agent/config.yaml"
    edited.write_text("mqtt: {host: edited.local}\n")
    config.write_text("mqtt: {host: new-default}\n")
    result = run_install(*args)
    assert result.returncode == 0, result.stderr
    assert edited.read_text() == "mqtt: {host: edited.local}\n"


def test_install_without_any_device_group_omits_the_line(stage):
    root, config = stage
    (root / "etc" / "group").write_text("root:x:0:\n")
    result = run_install("--root", str(root), "--exec", "/bin/true", "--config", str(config), "--no-start")
    assert result.returncode == 0, result.stderr
    unit = unit_dict(str(root / "etc/systemd/system/edge-agent.service"))
    assert ("Service", "SupplementaryGroups") not in unit
    assert "would run: usermod" not in result.stdout
    assert "would run: systemctl enable edge-agent.service" in result.stdout
    assert "--now" not in result.stdout


def test_install_finds_the_executable_on_path(stage, tmp_path):
    root, config = stage
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "edge-agent"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    result = run_install("--root", str(root), "--config", str(config),
                         path=str(bindir) + os.pathsep + os.environ["PATH"])
    assert result.returncode == 0, result.stderr
    unit = unit_dict(str(root / "etc/systemd/system/edge-agent.service"))
    assert unit[("Service", "ExecStart")].startswith(str(exe) + " run -c ")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--exec", "bin/edge-agent"), "must be an absolute path"),
        (("--exec", "/opt/my dir/edge-agent"), "whitespace"),
        (("--purge",), "--purge only goes with --uninstall"),
        (("--bogus",), "unknown option '--bogus'"),
        (("--config", "/nonexistent/config.yaml", "--exec", "/bin/true"), "is not a file"),
    ],
)
def test_install_refuses_bad_arguments(stage, args, message):
    root, _ = stage
    result = run_install("--root", str(root), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (root / "etc/systemd/system/edge-agent.service").exists()


def test_uninstall_keeps_state_and_config_unless_purged(stage):
    root, config = stage
    assert run_install("--root", str(root), "--exec", "/bin/true", "--config", str(config)).returncode == 0
    (root / "var/lib/edge-agent/engines").mkdir()

    result = run_install("--root", str(root), "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert (root / "etc/edge-agent/config.yaml").exists()
    assert (root / "var/lib/edge-agent/engines").is_dir()
    assert "would run: systemctl disable --now edge-agent.service" in result.stdout

    again = run_install("--root", str(root), "--uninstall")
    assert again.returncode == 0, again.stderr

    purged = run_install("--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/edge-agent").exists()
    assert not (root / "var/lib/edge-agent").exists()


def test_installed_unit_passes_systemd_analyze_verify(stage, tmp_path):
    tool = _verify_env()
    root, config = stage
    result = run_install("--root", str(root), "--exec", sys.executable, "--config", str(config))
    assert result.returncode == 0, result.stderr
    path = _runnable_copy(str(root / "etc/systemd/system/edge-agent.service"), str(tmp_path))
    code, noise, stderr = _verify(tool, path)
    assert code == 0, stderr
    assert noise == [], stderr
