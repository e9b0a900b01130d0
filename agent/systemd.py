"""Talking to systemd over sd_notify: readiness, status, the watchdog and start-up extensions.

Logging for the journal is agent/logs.py. (Over 400 lines: about half is docstrings recording
systemd's rules on watchdog arming and start timeouts, which the code depends on.)

Pure stdlib so it imports everywhere. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
cheap no-op that returns False, so the app calls it unconditionally. A failed send is logged at
debug and swallowed: the agent must never die because the notify socket went away.

Protocol (sd_notify(3), docs/PLATFORM.md section 7): newline-separated ``KEY=VALUE`` fields sent
as ONE datagram over AF_UNIX/SOCK_DGRAM to ``$NOTIFY_SOCKET``; a leading ``@`` names the Linux
abstract namespace and stands for a NUL byte. The unit must say ``NotifyAccess=main`` and the
messages must come from the main process (threads of it are fine).
"""

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional, Tuple

from .threads import BackgroundThread

log = logging.getLogger(__name__)

# Seconds a send may block when systemd is not draining the socket (it never should be).
_SEND_TIMEOUT_S = 1.0


def _one_line(text):
    # type: (object) -> str
    """A field value cannot hold a newline: it would start a new KEY=VALUE field."""
    return " ".join(str(text).splitlines())


def _socket_address(raw):
    # type: (Optional[str]) -> Optional[str]
    """``$NOTIFY_SOCKET`` as a socket address, or None where it is absent or unusable."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # e.g. systemd >= 254's "vsock:CID:PORT": not for a process on the same host.
    log.debug("NOTIFY_SOCKET=%r is neither a path nor @abstract; notifications disabled", raw)
    return None


class Notifier(object):
    """sd_notify sender. ``Notifier()`` reads the real environment; tests pass ``environ``.

    Every method returns True when the datagram went out and False when notifications are
    disabled (not under systemd) or the send failed; none raises.
    """

    def __init__(self, environ=None):
        # type: (Optional[Mapping[str, str]]) -> None
        env = os.environ if environ is None else environ
        self._env = env
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._sock = None  # type: Optional[socket.socket]
        self._lock = threading.Lock()

    @property
    def enabled(self):
        # type: () -> bool
        """True when ``$NOTIFY_SOCKET`` names a socket, i.e. we run under ``Type=notify``."""
        return self._address is not None

    def watchdog_interval(self):
        # type: () -> Optional[float]
        """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None.

        None when the unit has no ``WatchdogSec=``, when the value is not a positive integer,
        or when ``$WATCHDOG_PID`` names another process (the watchdog is not ours to feed).
        """
        raw = self._env.get("WATCHDOG_USEC")
        if not raw:
            return None
        try:
            usec = int(raw)
        except ValueError:
            log.debug("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw)
            return None
        if usec <= 0:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                log.debug("WATCHDOG_PID=%r is not an integer; watchdog disabled", pid)
                return None
        return usec / 2.0 / 1e6

    def send(self, text):
        # type: (str) -> bool
        """Send ``text`` (already ``KEY=VALUE`` lines) as one datagram."""
        if self._address is None:
            return False
        data = text.encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(data, self._address)
                return True
            except (OSError, ValueError) as exc:
                # ValueError: an address Python refuses (e.g. an embedded NUL in a path).
                log.debug("sd_notify %r to %r failed: %s", text, self._env.get("NOTIFY_SOCKET"), exc)
                self._close_locked()
                return False

    def notify(self, **fields):
        # type: (**object) -> bool
        """Send ``KEY=VALUE`` fields, in the order given, as one datagram; None values are left
        out."""
        lines = ["%s=%s" % (k, _one_line(v)) for k, v in fields.items() if v is not None]
        return self.send("\n".join(lines)) if lines else False

    def ready(self, status=None):
        # type: (Optional[str]) -> bool
        """Start-up finished (also after a reload): ``READY=1`` with an optional status line."""
        return self.notify(READY=1, STATUS=status)

    def status(self, text):
        # type: (str) -> bool
        """Free-form one-line state shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self):
        # type: () -> bool
        """Feed the watchdog (``WATCHDOG=1``). Prefer WatchdogPinger to calling this directly."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status=None):
        # type: (Optional[str]) -> bool
        """Shutdown has begun (``STOPPING=1``); systemd then applies ``TimeoutStopSec=``."""
        return self.notify(STOPPING=1, STATUS=status)

    def reloading(self):
        # type: () -> bool
        """A reload has begun; send ``ready()`` when it is done.

        ``MONOTONIC_USEC`` is what systemd >= 253 needs for ``Type=notify-reload``; older
        versions ignore the field.
        """
        return self.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6))

    def extend_timeout(self, seconds):
        # type: (float) -> bool
        """Ask for ``seconds`` more before the current start/stop timeout fires (systemd >= 236)."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    def close(self):
        # type: () -> None
        with self._lock:
            self._close_locked()

    def _close_locked(self):
        # type: () -> None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __enter__(self):
        # type: () -> Notifier
        return self

    def __exit__(self, *exc_info):
        # type: (*object) -> None
        self.close()


class _Ticker(object):
    """A daemon thread that calls the subclass's ``tick()`` now and then every ``interval``
    seconds until ``_until`` or the shared stop Event is set."""

    THREAD_NAME = "sd-ticker"

    def __init__(self, notifier, stop, interval, clock):
        # type: (Notifier, Optional[threading.Event], Optional[float], Callable[[], float]) -> None
        self._notifier = notifier
        self.stop = stop if stop is not None else threading.Event()
        self.interval = interval
        self._clock = clock
        self._until = self.stop
        self._thread = BackgroundThread(self.run, self.THREAD_NAME)

    def run(self):
        # type: () -> None
        """Thread body: tick now, then every ``interval`` until ``_until`` or stop is set."""
        if self.interval is None:
            return
        while not self._until.is_set() and not self.stop.is_set():
            self.tick()
            if self._until.wait(self.interval):
                break

    def _start_thread(self):
        # type: () -> bool
        return self._thread.start()

    @property
    def running(self):
        # type: () -> bool
        """True while the thread is alive."""
        return self._thread.running

    def join(self, timeout=None):
        # type: (Optional[float]) -> None
        self._thread.join(timeout)


class WatchdogPinger(_Ticker):
    """Feeds the systemd watchdog only while the inference loop shows progress.

    Every ``interval`` seconds (default: half of ``WatchdogSec=``) the pinger reads a progress
    mark: the value of ``progress()`` (e.g. the frame counter) together with the number of
    ``beat()`` calls. If the mark changed within the last ``stall_after_s`` seconds it sends
    ``WATCHDOG=1``; otherwise it sends one ``STATUS=`` line saying the loop is stalled and stops
    pinging, so systemd kills and restarts the agent when ``WatchdogSec=`` runs out. If the mark
    moves again before that, pinging resumes.

    The heartbeat rule: the inference thread calls ``beat()`` (or its alias ``alive()``) once per
    pass of its loop, whether or not that pass produced a frame: after a frame, after a timed-out
    wait for a frame (paused or reconnecting source), after a timed-out wait for a backend (model
    still loading or building). "Idle but healthy" is therefore a loop that keeps going round;
    a stall is the loop itself being stuck (hung infer call, deadlock, dead thread). Call
    ``beat()`` from that one thread only: a beat from a healthy helper thread would hide it.

    The thread loops on the shared stop Event (``stop.wait(interval)``) and sleeps nowhere else;
    ``tick()`` does one step and is what tests drive with a fake ``clock``.
    """

    THREAD_NAME = "sd-watchdog"
    # Default stall limit in ping intervals: 3 x (WatchdogSec / 2) = 1.5 x WatchdogSec.
    STALL_INTERVALS = 3

    def __init__(
        self,
        notifier,  # type: Notifier
        progress=None,  # type: Optional[Callable[[], int]]
        stop=None,  # type: Optional[threading.Event]
        interval=None,  # type: Optional[float]
        stall_after_s=None,  # type: Optional[float]
        clock=time.monotonic,  # type: Callable[[], float]
    ):
        # type: (...) -> None
        if interval is None:
            interval = notifier.watchdog_interval()
        _Ticker.__init__(self, notifier, stop, interval, clock)
        self._progress = progress
        if stall_after_s is None and self.interval is not None:
            stall_after_s = self.STALL_INTERVALS * self.interval
        self.stall_after_s = stall_after_s
        self._beats = 0
        self._beat_lock = threading.Lock()
        self._stalled = False
        self._progress_failed = False
        self._last_mark = self._mark()
        self._last_progress_at = clock()

    @property
    def enabled(self):
        # type: () -> bool
        """True when there is a watchdog to feed (notify socket and ``WatchdogSec=`` set)."""
        return self._notifier.enabled and self.interval is not None

    @property
    def stalled(self):
        # type: () -> bool
        """True from the tick that found no progress until the mark moves again."""
        return self._stalled

    def beat(self):
        # type: () -> None
        """Count one heartbeat of the inference loop (see the class docstring for the rule)."""
        with self._beat_lock:
            self._beats += 1

    alive = beat

    def _mark(self):
        # type: () -> Tuple[Optional[int], int]
        value = None  # type: Optional[int]
        if self._progress is not None:
            try:
                value = self._progress()
            except Exception:  # a broken counter must read as "no progress", not kill the pinger
                if not self._progress_failed:
                    log.exception("watchdog: progress counter failed; treating it as no progress")
                    self._progress_failed = True
                value = None
        with self._beat_lock:
            beats = self._beats
        return value, beats

    def tick(self):
        # type: () -> bool
        """One check: ping if the loop progressed recently. Returns True when it pinged."""
        now = self._clock()
        mark = self._mark()
        if mark != self._last_mark:
            self._last_mark = mark
            self._last_progress_at = now
            if self._stalled:
                self._stalled = False
                log.warning("watchdog: inference loop is moving again; resuming watchdog pings")
                self._notifier.status("inference loop running again")
        idle = now - self._last_progress_at
        if self.stall_after_s is not None and idle > self.stall_after_s:
            if not self._stalled:
                self._stalled = True
                log.error(
                    "watchdog: inference loop made no progress for %.1f s (limit %.1f s); "
                    "stopping watchdog pings so systemd restarts the agent",
                    idle,
                    self.stall_after_s,
                )
                self._notifier.status(
                    "inference loop stalled: no progress for %.1f s; watchdog pings stopped" % idle
                )
            return False
        return self._notifier.watchdog()

    def start(self):
        # type: () -> bool
        """Start the thread if there is a watchdog to feed. Returns whether it started.

        Start it right after ``READY=1``. systemd arms the watchdog at READY=1, and also at any
        ``WATCHDOG=1`` that comes before it (src/core/service.c: service_reset_watchdog has no
        state check), so pings during start-up would arm it while a TensorRT build, which
        nothing beats, runs for minutes: the pings would stop and systemd kill the build.
        StartTimeoutExtender guards the start-up instead.
        """
        return self.enabled and self._start_thread()


class StartTimeoutExtender(_Ticker):
    """Keeps systemd's start timeout ahead of a long start-up, such as a first TensorRT build.

    Until ``READY=1``, ``TimeoutStartSec=`` applies (300 s in our unit) and a Nano takes minutes
    to build even a MobileNet/ResNet-class engine (docs/PLATFORM.md section 2): without this,
    systemd kills the agent mid-build, nothing is cached and every restart starts the same build
    again until the unit ends failed. So from ``start()`` until ``finish()`` this sends
    ``EXTEND_TIMEOUT_USEC`` every ``interval`` seconds, asking for ``EXTEND_FACTOR`` intervals
    each time: systemd (>= 236; Ubuntu 18.04 has 237) then fires the start timeout only when no
    such message came for that long, so one late or lost datagram does not end the start, and a
    dead process still fails within ``EXTEND_FACTOR * interval`` seconds past the unit's own
    limit.

    READY=1 keeps meaning "serving (or degraded, with the reason)", so ``systemctl start`` and
    units ordered after ours wait for a model that serves; that is why this extends the start
    instead of signalling READY before the build.

    A start-up still not finished after ``max_s`` is taken as hung: the extender says so in
    ``STATUS=`` and stops extending, so the unit's start timeout fires and systemd restarts it.
    The shared stop Event ends it too (SIGTERM during start-up: systemd applies
    ``TimeoutStopSec=`` then, which must not be extended). TensorRT's builder releases the GIL
    while it builds (pybind11 ``gil_scoped_release`` on ``build_serialized_network`` and
    ``build_engine`` in NVIDIA/TensorRT python/src/infer/pyCore.cpp), so this thread keeps
    sending during a build.
    """

    THREAD_NAME = "sd-start-extender"
    INTERVAL_S = 10.0
    EXTEND_FACTOR = 3
    # Tens of minutes for a YOLOv4-class engine on a Nano; longer than this is a hang.
    MAX_S = 3600.0

    def __init__(
        self,
        notifier,  # type: Notifier
        stop=None,  # type: Optional[threading.Event]
        interval=None,  # type: Optional[float]
        max_s=None,  # type: Optional[float]
        clock=time.monotonic,  # type: Callable[[], float]
    ):
        # type: (...) -> None
        _Ticker.__init__(self, notifier, stop,
                         float(interval if interval is not None else self.INTERVAL_S), clock)
        self.max_s = float(max_s if max_s is not None else self.MAX_S)
        self._started_at = clock()
        self._done = self._until = threading.Event()
        self._gave_up = False

    @property
    def extend_s(self):
        # type: () -> float
        """Seconds asked for by each message."""
        return self.interval * self.EXTEND_FACTOR

    def tick(self):
        # type: () -> bool
        """Send one extension unless finished, stopping or past ``max_s``; True when sent."""
        if self._done.is_set() or self.stop.is_set():
            return False
        elapsed = self._clock() - self._started_at
        if elapsed > self.max_s:
            if not self._gave_up:
                self._gave_up = True
                log.error("start-up not finished after %.0f s (limit %.0f s); no longer "
                          "extending systemd's start timeout, so systemd restarts the agent",
                          elapsed, self.max_s)
                self._notifier.status("start-up hung: not ready after %.0f s; start timeout "
                                      "no longer extended" % elapsed)
            return False
        return self._notifier.extend_timeout(self.extend_s)

    def start(self):
        # type: () -> bool
        """Start extending (a no-op outside systemd). Returns whether the thread started."""
        if not self._notifier.enabled or self._thread.started:
            return False
        self._started_at = self._clock()
        return self._start_thread()

    def finish(self, timeout=5.0):
        # type: (Optional[float]) -> None
        """Start-up is over (call it before ``READY=1``): no more extensions after this returns."""
        self._done.set()
        self.join(timeout)
