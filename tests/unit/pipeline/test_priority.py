"""HelperPriority: helper threads at SCHED_IDLE, and back at normal priority when starved.

The kernel parts are real where this machine allows (Linux, root in CI): a thread really goes
to SCHED_IDLE, a real busy process on the same core really starves it, /proc/self/task's
schedstat says so. The decisions (probe refused, no statistics, back-off, a dead thread's tid)
run against a scheduler double and a /proc tree written by the test.
"""

import errno
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from agent import priority as prio
from agent.priority import HelperPriority, current_tid

LINUX_IDLE = hasattr(os, "SCHED_IDLE") and os.path.exists("/proc/self/task")


class Helper(object):
    """A thread that enrols itself, then spins (`busy`) or waits until told to end."""

    def __init__(self, priority, busy=False):
        self.priority = priority
        self.busy = busy
        self.tid = None
        self.enrolled = threading.Event()
        self.end = threading.Event()
        self.affinity = None
        self.thread = threading.Thread(target=self._run, name="test-helper", daemon=True)

    def _run(self):
        self.tid = current_tid()
        if self.affinity is not None:
            os.sched_setaffinity(0, self.affinity)
        self.priority.enrol()
        self.enrolled.set()
        while not self.end.is_set():
            if not self.busy:
                self.end.wait(0.05)

    def start(self):
        self.thread.start()
        assert self.enrolled.wait(10)
        return self

    def stop(self):
        self.end.set()
        self.thread.join(10)


def test_current_tid_is_the_kernel_thread_id():
    seen = []
    t = threading.Thread(target=lambda: seen.append(current_tid()))
    t.start()
    t.join()
    assert seen[0] != os.getpid()
    assert current_tid() == os.getpid()  # the main thread's tid is the process id


@pytest.mark.skipif(not LINUX_IDLE, reason="needs Linux SCHED_IDLE")
def test_enrolled_thread_runs_at_sched_idle_and_the_enroller_is_untouched():
    priority = HelperPriority("idle")
    if not priority.active:
        pytest.skip("this machine cannot undo SCHED_IDLE: " + str(priority.reason))
    helper = Helper(priority).start()
    try:
        assert os.sched_getscheduler(helper.tid) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert priority.describe()["helper_priority"] == "idle"
        for _ in range(3):
            priority.check()  # a helper that mostly sleeps is not starved
        assert priority.starved == 0
        assert os.sched_getscheduler(helper.tid) == os.SCHED_IDLE
    finally:
        helper.stop()


def test_normal_mode_touches_nothing():
    priority = HelperPriority("normal")
    helper = Helper(priority).start()
    try:
        assert not priority.active and priority.enrol() is False
        assert os.sched_getscheduler(helper.tid) == os.SCHED_OTHER
        assert priority.describe() == {"helper_priority": "normal", "starved": 0,
                                       "helper_priority_note":
                                       "backend.helper_priority is normal"}
    finally:
        helper.stop()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="helper_priority"):
        HelperPriority("low")


@pytest.mark.skipif(not LINUX_IDLE or len(os.sched_getaffinity(0)) < 1,
                    reason="needs Linux SCHED_IDLE")
def test_a_real_busy_program_starves_an_idle_helper_and_it_gets_normal_priority_back(caplog):
    """A busy process of normal priority on the helper's core: the helper (spinning, so it
    always wants the CPU) gets almost nothing at SCHED_IDLE; check() notices it from the
    run-queue wait and puts it back at normal priority; after the pause it is idle again."""
    offset = [0.0]
    priority = HelperPriority("idle", clock=lambda: time.monotonic() + offset[0])
    if not priority.active:
        pytest.skip("this machine cannot undo SCHED_IDLE: " + str(priority.reason))
    core = sorted(os.sched_getaffinity(0))[-1]
    hog = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {%d})\n"
                            "while True: pass" % core])
    helper = Helper(priority, busy=True)
    helper.affinity = {core}
    caplog.set_level(logging.INFO, logger="edge-agent")
    try:
        helper.start()
        done = threading.Event()
        deadline = time.monotonic() + 30
        while priority.starved == 0 and time.monotonic() < deadline:
            priority.check()
            done.wait(0.2)
        assert priority.starved == 1
        assert os.sched_getscheduler(helper.tid) == os.SCHED_OTHER
        assert "test-helper" in priority.reason and "another program" in priority.reason
        assert priority.describe()["helper_priority"] == "normal"
        assert any("back at normal priority" in r.getMessage() for r in caplog.records)
        priority.check()  # within the pause: stays normal
        assert os.sched_getscheduler(helper.tid) == os.SCHED_OTHER
        offset[0] = prio.RETRY_FIRST_S + 1
        priority.check()
        assert os.sched_getscheduler(helper.tid) == os.SCHED_IDLE
        assert priority.describe()["helper_priority"] == "idle"
    finally:
        hog.kill()
        hog.wait(10)
        helper.stop()


# ---------------------------------------------------------------- decisions, with doubles
class FakeSched(prio.Sched):
    available = True

    def __init__(self, refuse_normal=False, refuse_idle=False):
        self.policy = {}
        self.refuse_normal = refuse_normal
        self.refuse_idle = refuse_idle
        self.calls = []

    def set_idle(self, tid):
        self.calls.append(("idle", tid))
        if self.refuse_idle:
            raise OSError(errno.EPERM, "Operation not permitted")
        self.policy[tid] = "idle"

    def set_normal(self, tid):
        self.calls.append(("normal", tid))
        if self.refuse_normal and self.policy.get(tid) == "idle":
            raise OSError(errno.EPERM, "Operation not permitted")
        self.policy[tid] = "normal"

    def is_idle(self, tid):
        return self.policy.get(tid) == "idle"

    def raise_nice_limit(self):
        self.calls.append(("rlimit", None))


class FakeProc(object):
    """/proc/self/task/<tid>/schedstat files the test writes."""

    def __init__(self, root):
        self.root = str(root)

    def task(self, tid, wait_ns=0, run_ns=0):
        path = os.path.join(self.root, "self", "task", str(tid))
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "schedstat"), "w") as handle:
            handle.write("{} {} 5\n".format(run_ns, wait_ns))


def make(tmp_path, sched, clock=None, tids=()):
    proc = FakeProc(tmp_path)
    proc.task(current_tid())
    for tid in tids:
        proc.task(tid)
    return proc, HelperPriority("idle", proc=proc.root, sched=sched,
                                clock=clock or time.monotonic)


def test_no_right_to_go_back_keeps_helpers_normal_and_says_how_to_allow_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge-agent")
    sched = FakeSched(refuse_normal=True)
    _, priority = make(tmp_path, sched)
    assert not priority.active
    assert "LimitNICE=20" in priority.reason
    assert ("rlimit", None) in sched.calls  # the soft limit was lifted first
    assert any("stay at normal priority" in r.getMessage() for r in caplog.records)
    helper = Helper(priority).start()
    helper.stop()
    assert ("idle", helper.tid) not in sched.calls


def test_idle_refused_keeps_helpers_normal(tmp_path):
    _, priority = make(tmp_path, FakeSched(refuse_idle=True))
    assert not priority.active and "SCHED_IDLE refused" in priority.reason


def test_without_run_queue_statistics_idle_is_not_used(tmp_path):
    sched = FakeSched()
    priority = HelperPriority("idle", proc=str(tmp_path), sched=sched)  # no schedstat files
    assert not priority.active and "run-queue statistics" in priority.reason
    assert sched.calls == []


def test_starvation_threshold_back_off_doubles_and_dead_threads_are_not_idled_again(tmp_path):
    now = [100.0]
    sched = FakeSched()
    proc, priority = make(tmp_path, sched, clock=lambda: now[0])
    assert priority.active
    helper = Helper(priority).start()
    other = Helper(priority).start()
    proc.task(helper.tid, 0)
    proc.task(other.tid, 0)
    assert sched.policy[helper.tid] == "idle" and sched.policy[other.tid] == "idle"
    priority.check()  # first look: nothing to compare with
    now[0] += 1.0
    proc.task(helper.tid, int(0.5e9))  # exactly half the span waiting, none running: not yet
    priority.check()
    assert priority.starved == 0 and sched.policy[helper.tid] == "idle"
    now[0] += 1.0
    # 90 % of the span waiting but 10 % of what it wanted ran: an unpaced capture thread
    # beside ONNX Runtime looks like this, and is not starved
    proc.task(helper.tid, int(0.5e9 + 0.9e9), int(0.1e9))
    priority.check()
    assert priority.starved == 0 and sched.policy[helper.tid] == "idle"
    now[0] += 1.0
    # 60 % waiting and 1 % of it ran: starved
    proc.task(helper.tid, int(1.4e9 + 0.6e9), int(0.1e9 + 0.006e9))
    priority.check()
    assert priority.starved == 1
    assert sched.policy[helper.tid] == "normal" and sched.policy[other.tid] == "normal"
    assert "60%" in priority.reason and "1.0%" in priority.reason
    now[0] += prio.RETRY_FIRST_S - 1
    priority.check()
    assert sched.policy[helper.tid] == "normal"
    other.stop()  # ended while at normal priority: its tid may belong to anyone by now
    now[0] += 2
    priority.check()
    assert sched.policy[helper.tid] == "idle"
    assert sched.policy[other.tid] == "normal"
    # starved again: the pause doubles
    priority.check()
    now[0] += 1.0
    proc.task(helper.tid, int(2.0e9 + 0.9e9), int(0.106e9))
    priority.check()
    assert priority.starved == 2
    now[0] += 2 * prio.RETRY_FIRST_S - 1
    priority.check()
    assert sched.policy[helper.tid] == "normal"
    now[0] += 2
    priority.check()
    assert sched.policy[helper.tid] == "idle"
    helper.stop()


def test_a_thread_enrolled_during_the_pause_stays_normal_until_it_ends(tmp_path):
    now = [0.0]
    sched = FakeSched()
    proc, priority = make(tmp_path, sched, clock=lambda: now[0])
    first = Helper(priority).start()
    proc.task(first.tid, 0)
    priority.check()
    now[0] += 1.0
    proc.task(first.tid, int(0.9e9))
    priority.check()
    assert priority.starved == 1
    late = Helper(priority).start()
    assert ("idle", late.tid) not in sched.calls
    now[0] += prio.RETRY_FIRST_S + 1
    priority.check()
    assert sched.policy[late.tid] == "idle" and sched.policy[first.tid] == "idle"
    first.stop()
    late.stop()


@pytest.mark.skipif(not LINUX_IDLE or os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv")
                    or not os.path.exists("/usr/bin/python3"),
                    reason="needs root, setpriv and the system's python3 (agent.priority needs "
                           "only the standard library; a venv under /root is not readable by "
                           "the unprivileged user)")
def test_an_unprivileged_user_without_limitnice_keeps_normal_priority_and_is_told_why():
    """The systemd unit's user without LimitNICE=20: SCHED_IDLE could not be undone, so the
    agent must not use it, and says how to allow it. (Raising RLIMIT_NICE needs
    CAP_SYS_RESOURCE, which this machine's root lacks, so LimitNICE=20 itself is not run.)"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    code = ("from agent.priority import HelperPriority\n"
            "p = HelperPriority('idle')\n"
            "print(p.active)\nprint(p.reason)\n")
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                          "--clear-groups", "/usr/bin/python3", "-c", code],
                         cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 0, out.stderr
    active, reason = out.stdout.splitlines()[:2]
    assert active == "False"
    assert "could not go back to normal priority" in reason and "LimitNICE=20" in reason
