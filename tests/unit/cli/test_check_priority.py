"""`edge-agent check`'s priority line: whether helper threads can run at idle priority here."""

import errno
import os

import pytest

from agent import priority
from agent.cli import check
from agent.config import load_config


def _row(mode):
    report = check.Report()
    check.check_priority(report, load_config(None, ["backend.helper_priority=" + mode]))
    assert [r["check"] for r in report.rows] == ["priority"]
    return report.rows[0]


def test_normal_mode_is_ok_and_says_so():
    row = _row("normal")
    assert row["status"] == check.OK and "backend.helper_priority: normal" in row["detail"]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or os.geteuid() != 0,
                    reason="needs Linux and root (who may undo SCHED_IDLE)")
def test_idle_usable_here_is_ok():
    row = _row("idle")
    assert row["status"] == check.OK and "SCHED_IDLE" in row["detail"]


def test_idle_that_cannot_be_undone_warns_with_the_fix(monkeypatch):
    def refuse(self, tid):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(priority.Sched, "set_normal", refuse)
    monkeypatch.setattr(priority.Sched, "available", True)
    row = _row("idle")
    assert row["status"] == check.WARN
    assert "normal priority" in row["detail"] and "LimitNICE=20" in row["detail"]
