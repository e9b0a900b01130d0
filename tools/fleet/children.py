"""No orphans: the benchmark's children (broker, simulators, operator) end with it, even when it
is killed with SIGKILL.

`ChildGuard` starts a small guard process that holds the read end of a pipe. The benchmark
writes each child's pid into the pipe as it starts it (and takes it back once it has stopped
that child itself). When the benchmark ends in any way, SIGKILL included, the kernel closes
the pipe; the guard sees end-of-file and stops every pid still listed: SIGTERM, then SIGKILL
after `grace_s`. It works for children started by code we do not own (the test broker) and,
unlike a preexec_fn with prctl(PR_SET_PDEATHSIG), is safe in a process that runs threads.
`exit_on_signals()` turns SIGTERM and SIGHUP into SystemExit so `finally` clean-ups run.
"""

import signal
import subprocess
import sys
from typing import Any, Optional

GUARD = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: outlive it
grace = float(sys.argv[1])
pids = set()
for line in sys.stdin:
    word = line.strip()
    if word.startswith("-"):
        pids.discard(int(word[1:]))
    elif word:
        pids.add(int(word))
def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = set(p for p in pids if alive(p))
"""


class ChildGuard(object):
    """Stops the pids given to `watch` when this process ends, however it ends."""

    def __init__(self, grace_s: float = 20.0) -> None:
        # A session of its own: a signal to the benchmark's process group does not reach it.
        self.proc = subprocess.Popen([sys.executable, "-c", GUARD, str(grace_s)],
                                     stdin=subprocess.PIPE, start_new_session=True)

    def _say(self, line: str) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            stdin.write((line + "\n").encode("ascii"))
            stdin.flush()

    def watch(self, proc: Any) -> Any:
        """Stop `proc` (a Popen or a pid) if this process dies first; returns `proc`."""
        self._say(str(getattr(proc, "pid", proc)))
        return proc

    def forget(self, proc: Any) -> None:
        """`proc` was stopped here: the guard must not signal its pid (it may be reused)."""
        self._say("-{}".format(getattr(proc, "pid", proc)))

    def close(self, timeout: Optional[float] = 30.0) -> None:
        """End the guard (it stops whatever is still watched, like at a crash)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP raise SystemExit in the main thread (SIGINT already raises
    KeyboardInterrupt), so the benchmark's `finally` blocks stop what it started."""
    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)


def stop_process(proc: Optional["subprocess.Popen[bytes]"], guard: Optional[ChildGuard],
                 timeout: float = 120.0) -> None:
    """SIGTERM `proc`, SIGKILL it after `timeout`, reap it, then tell the guard."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if guard is not None:
        guard.forget(proc)

