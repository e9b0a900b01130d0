"""The fleet benchmark leaves no orphans (tools/fleet/children.py): a process that starts a real
Mosquitto and a child of its own the way tools/fleet/bench_rollout.py does is killed with
SIGKILL, SIGTERM or SIGINT, and both children are gone afterwards."""

import os
import signal
import subprocess
import sys
from typing import List

import pytest

from support.paths import ROOT
from support.waiting import wait_until

PARENT = r"""
import os, subprocess, sys, time
sys.path[:0] = [os.path.join(sys.argv[1], "tests"), os.path.join(sys.argv[1], "tools", "fleet")]
from children import ChildGuard, exit_on_signals, stop_process
from support.broker import Broker
exit_on_signals()
guard = ChildGuard(grace_s=5)
broker = Broker(sys.argv[2]).start()
guard.watch(broker.proc)
child = guard.watch(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
try:
    print(broker.proc.pid, child.pid, flush=True)
    time.sleep(600)
finally:
    stop_process(child, guard, 5)
    broker.stop()
    guard.close()
"""


def alive(pid: int) -> bool:
    """Running (a zombie left to a parent that does not reap is not running)."""
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_the_benchmarks_children_end_with_it(tmp_path, signum):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, ROOT, str(tmp_path)],
                              stdout=subprocess.PIPE)
    pids = []  # type: List[int]
    try:
        pids = [int(word) for word in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        os.kill(parent.pid, signum)
        parent.wait(30)
        wait_until(lambda: not any(alive(pid) for pid in pids), 30,
                   "the broker and the child to end after {}".format(signal.Signals(signum).name))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
