"""Helper threads at idle priority, so that on a small CPU inference never waits for them.

With ONNX Runtime on the CPU and one intra-op thread per core, inference keeps every core busy
in bursts. Each time the capture, publish, MQTT or telemetry thread holds a core, an ONNX
Runtime worker that wakes for the next operator waits for it, and the other worker waits for
that one. Under Linux's SCHED_IDLE policy those helper threads run only on a core that nothing
else of normal priority wants, so they fill the gaps between operators instead of stretching
the inference (`backend.helper_priority: idle`, the default).

The risk of SCHED_IDLE is starvation: while another program keeps every core busy, an idle
thread gets almost no CPU, and a capture or MQTT thread that never runs would stop the agent.
So a check from a normal-priority thread (`HelperPriority.check`, the main thread every half
second) reads each idle thread's time on a CPU and time waiting for one from
/proc/self/task/<tid>/schedstat. Waiting is normal here: an unpaced capture thread waits for a
free core most of the time (measured on 2 cores: 77-90 % of the span) yet gets 8 % or more of
the time it wants, enough for every frame. Starved is when a thread waited more than half of
the span since the last check and got under 2 % of what it wanted (two busy programs on the
same 2 cores: 0-0.13 %, and the pipeline fell from 120 to 12 frames/s). Then every helper goes
back to normal priority, the log says why, and idle priority is tried again after a pause that
doubles each time (1 minute, then 2, ... at most 32).

Going back needs a right that an ordinary user lacks by default: root, CAP_SYS_NICE, or an
RLIMIT_NICE of at least 20 (the systemd unit sets LimitNICE=20). Without it, or without the
run-queue statistics, the helpers stay at normal priority and the log says why, once.
"""

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Set, Tuple

log = logging.getLogger("edge-agent")

MODES = ("idle", "normal")

# A helper that waited for a CPU more than STARVED_WAIT of the time between two checks and
# ran for less than STARVED_GOT of the time it wanted (ran + waited) is starved.
STARVED_WAIT = 0.5
STARVED_GOT = 0.02
RETRY_FIRST_S = 60.0
RETRY_MAX_S = 32 * 60.0
# RLIMIT_NICE that allows going back to nice 0 (the limit is 20 - the lowest nice allowed).
NICE_LIMIT_FOR_NORMAL = 20


def current_tid() -> int:
    """The calling thread's kernel thread id (Python 3.6 has no threading.get_native_id)."""
    getter = getattr(threading, "get_native_id", None)
    if getter is not None:
        return int(getter())
    # /proc/thread-self -> "<pid>/task/<tid>" (Linux 3.17 and later)
    return int(os.readlink("/proc/thread-self").rsplit("/", 1)[-1])


class Sched(object):
    """The scheduler calls HelperPriority makes; tests pass a double."""

    available = hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")

    def set_idle(self, tid: int) -> None:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))

    def set_normal(self, tid: int) -> None:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))

    def is_idle(self, tid: int) -> bool:
        return os.sched_getscheduler(tid) == os.SCHED_IDLE

    def raise_nice_limit(self) -> None:
        """Lift the soft RLIMIT_NICE to what the hard limit allows (needs no right)."""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
        want = NICE_LIMIT_FOR_NORMAL if hard == resource.RLIM_INFINITY else \
            min(hard, NICE_LIMIT_FOR_NORMAL)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NICE, (want, hard))


class HelperPriority(object):
    """Puts enrolled helper threads at SCHED_IDLE and gives them normal priority back when
    another program starves them. `enrol()` runs in the helper; `check()` in a thread of
    normal priority, regularly."""

    def __init__(self, mode: str = "idle", proc: str = "/proc", sched: Optional[Sched] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError("backend.helper_priority must be one of {}, not {!r}".format(
                ", ".join(MODES), mode))
        self.sched = sched if sched is not None else Sched()
        self.clock = clock
        self.task_dir = os.path.join(proc, "self", "task")
        self._lock = threading.Lock()
        # tid -> its thread: a tid is idled again only while that thread lives (an ended
        # thread's tid may be reused by any new thread, an ONNX Runtime worker included)
        self._enrolled = {}  # type: Dict[int, threading.Thread]
        # tid -> (ns on a CPU, ns waiting for one) at the last check
        self._seen = {}  # type: Dict[int, Tuple[int, int]]
        self._last_check = None  # type: Optional[float]
        self._retry_at = None  # type: Optional[float]  # idle again from then on (after a starve)
        self._retry_s = RETRY_FIRST_S
        self.starved = 0  # times helpers went back to normal priority
        self.reason = None  # type: Optional[str]     # why helpers run at normal priority
        self.active = False
        if mode == "normal":
            self.reason = "backend.helper_priority is normal"
        else:
            self.reason = self._unusable()
            self.active = self.reason is None
            if self.reason is not None:
                log.info("helper threads stay at normal priority: %s", self.reason)

    def describe(self) -> Dict[str, Any]:
        return {"helper_priority": "idle" if self.active and self._retry_at is None
                else "normal", "helper_priority_note": self.reason, "starved": self.starved}

    # ---------------------------------------------------------------- set-up
    def _unusable(self) -> Optional[str]:
        """None when idle priority can be used and undone here, else why not."""
        if not self.sched.available:
            return "this system has no SCHED_IDLE (Linux only)"
        try:
            with open(self._schedstat(current_tid()), encoding="utf-8") as handle:
                handle.read()
        except (OSError, ValueError) as exc:
            return ("the kernel keeps no run-queue statistics ({}), so a starved thread could "
                    "not be noticed".format(exc))
        try:
            self.sched.raise_nice_limit()
        except (OSError, ValueError):
            pass  # the probe below says whether going back works anyway
        result = []  # type: list

        def probe() -> None:
            tid = current_tid()
            try:
                self.sched.set_idle(tid)
            except OSError as exc:
                result.append("SCHED_IDLE refused: {}".format(exc.strerror or exc))
                return
            try:
                self.sched.set_normal(tid)
            except OSError as exc:
                result.append("a thread at SCHED_IDLE could not go back to normal priority "
                              "({}): run as root, or allow it with LimitNICE=20 in the "
                              "systemd unit (ulimit -e 20)".format(exc.strerror or exc))
                return
            result.append(None)

        thread = threading.Thread(target=probe, name="priority-probe", daemon=True)
        thread.start()
        thread.join()
        return result[0] if result else "the priority probe did not finish"

    def enrol(self) -> bool:
        """From inside a helper thread: watch it, and put it at idle priority unless helpers
        run at normal priority now. True when it was enrolled (again)."""
        if not self.active:
            return False
        tid = current_tid()
        with self._lock:
            self._enrolled[tid] = threading.current_thread()
            if self._retry_at is not None:
                return True
            self._seen.pop(tid, None)
            try:
                self.sched.set_idle(tid)
            except OSError as exc:
                log.warning("thread %s stays at normal priority: %s",
                            threading.current_thread().name, exc.strerror or exc)
        return True

    # ---------------------------------------------------------------- the check
    def _schedstat(self, tid: int) -> str:
        return os.path.join(self.task_dir, str(tid), "schedstat")

    def _times(self, tid: int) -> Optional[Tuple[int, int]]:
        """The thread's total ns on a CPU and waiting for one, None when it has ended."""
        try:
            with open(self._schedstat(tid), encoding="utf-8") as handle:
                fields = handle.read().split()
            return int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            return None

    def _idle_tids(self) -> Set[int]:
        """Every thread of this process at SCHED_IDLE: the enrolled ones and what they started
        (a GStreamer thread opened by the capture thread inherits its policy)."""
        tids = set()
        try:
            names = os.listdir(self.task_dir)
        except OSError:
            return tids
        for name in names:
            try:
                tid = int(name)
                if self.sched.is_idle(tid):
                    tids.add(tid)
            except (ValueError, OSError):
                continue  # not a thread id, or it ended meanwhile
        return tids

    def check(self) -> None:
        """From a thread of normal priority, every half second or so."""
        if not self.active:
            return
        now = self.clock()
        with self._lock:
            last, self._last_check = self._last_check, now
            if self._retry_at is not None:
                if now >= self._retry_at:
                    self._back_to_idle()
                return
            starved = []
            # only the threads idle now are kept: an ended thread's figures must not meet a
            # new thread that reuses its tid
            seen, self._seen = self._seen, {}
            idle = self._idle_tids()
            for tid in idle:
                times = self._times(tid)
                if times is None:
                    continue
                before = seen.get(tid)
                self._seen[tid] = times
                if before is None or last is None or now <= last:
                    continue
                ran, waited = times[0] - before[0], times[1] - before[1]
                share = waited / 1e9 / (now - last)
                got = ran / float(ran + waited) if ran + waited > 0 else 1.0
                if share > STARVED_WAIT and got < STARVED_GOT:
                    starved.append((tid, share, got))
            if starved:
                self._to_normal(starved, idle, now)

    def _name(self, tid: int) -> str:
        thread = self._enrolled.get(tid)
        if thread is not None:
            return thread.name
        try:
            with open(os.path.join(self.task_dir, str(tid), "comm"), encoding="utf-8",
                      errors="replace") as handle:
                return handle.read().strip() or str(tid)
        except OSError:
            return str(tid)

    def _to_normal(self, starved: list, idle: Set[int], now: float) -> None:
        for tid in idle | set(self._enrolled):
            try:
                self.sched.set_normal(tid)
            except OSError:
                self._enrolled.pop(tid, None)  # ended meanwhile
        self.starved += 1
        self._retry_at = now + self._retry_s
        worst = max(starved, key=lambda item: item[1])
        self.reason = ("thread {} waited {:.0%} of the last check's span for a CPU at idle "
                       "priority and ran {:.1%} of the time it wanted: another program keeps "
                       "the cores busy".format(self._name(worst[0]), worst[1], worst[2]))
        log.warning("helper threads back at normal priority: %s; idle priority again in "
                    "%.0f s", self.reason, self._retry_s)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self._seen.clear()

    def _back_to_idle(self) -> None:
        self._retry_at = None
        self.reason = None
        for tid, thread in list(self._enrolled.items()):
            if not thread.is_alive():
                del self._enrolled[tid]
                continue
            try:
                self.sched.set_idle(tid)
            except OSError:
                del self._enrolled[tid]  # ended meanwhile
        log.info("helper threads at idle priority again")
