"""Every accepted command gets a final event, also when the agent died in the middle of it
(agent.updates.journal): the next start answers it with `failed`, interrupted.

A crash is simulated by leaving a manager blocked in prepare() (its thread never reaches the
final event) and starting a second manager on the same state_dir, as a restarted agent would."""

import json
import logging
import os
import threading
from typing import Any, List

import pytest

from support.commands_env import Env

from agent.updates.journal import OPEN_FILE, CommandJournal


def settle(env: Env) -> None:
    """Stop env's manager and wait for its thread: the journal is closed after the final
    event is handed on, so it is only certain once the worker has ended."""
    env.stop.set()
    assert env.manager.join(20)


def journal_ids(env: Env) -> List[str]:
    with open(os.path.join(env.store.state_dir, OPEN_FILE), encoding="utf-8") as handle:
        return [c["request_id"] for c in json.load(handle)["commands"]]


@pytest.fixture
def env(tmp_path: Any) -> Any:
    environment = Env(tmp_path)
    yield environment
    environment.close()


def test_commands_left_open_by_a_crash_are_answered_at_the_next_start(env: Env) -> None:
    env.seam.gate = threading.Event()
    env.install("1", 1, "first")
    assert env.seam.entered.wait(20)  # running: in prepare(), as during a TensorRT build
    env.install("2", 2, "second")  # queued behind it
    assert journal_ids(env) == ["first", "second"]

    after = env.restart()  # the first agent "died" here: no final event was sent for either
    first, second = after.finished("first"), after.finished("second")
    assert first["state"] == second["state"] == "failed"
    assert first["interrupted"] is True and second["interrupted"] is True
    assert first["command"] == second["command"] == "model/install"
    assert "interrupted" in first["error"] and "was running" in first["error"]
    assert "was queued" in second["error"] and "new request_id" in second["error"]
    assert first["detail"] == "no model was active"
    assert [e["state"] for e in after.items] == ["failed", "failed"]  # nothing else

    assert env.restart().items == []  # answered once: the journal is empty now


def test_a_finished_command_leaves_nothing_to_answer(env: Env) -> None:
    env.install("1", 1, "done-1")
    assert env.events.finished("done-1")["state"] == "activated"
    env.manager.submit_raw("model/rollback", b'{"request_id": "rb"}')
    assert env.events.finished("rb")["state"] == "failed"  # no previous version
    settle(env)
    assert journal_ids(env) == []
    assert env.restart().items == []


def test_a_duplicate_request_id_does_not_close_the_running_command(env: Env) -> None:
    """The refusal of a replay carries the running command's request_id: it must not take
    that command out of the journal."""
    env.seam.gate = threading.Event()
    env.install("1", 1, "same")
    assert env.seam.entered.wait(20)
    env.install("2", 2, "same")
    assert "duplicate request_id" in env.events.finished("same")["error"]
    assert journal_ids(env) == ["same"]
    after = env.restart()
    assert after.finished("same")["interrupted"] is True


def test_cancelled_and_refused_commands_leave_nothing_open(tmp_path: Any) -> None:
    env = Env(tmp_path, queue_size=1)
    try:
        env.seam.gate = threading.Event()
        env.install("1", 1, "running")
        assert env.seam.entered.wait(20)
        env.install("2", 2, "queued")
        env.install("3", 3, "refused")  # the queue is full
        assert env.events.finished("refused")["state"] == "rejected"
        env.manager.submit_raw("model/cancel", b'{"request_id": "c", "target": "queued"}')
        assert env.events.finished("queued")["cancelled"] is True
        assert journal_ids(env) == ["running"]
        env.seam.gate.set()
        assert env.events.finished("running")["state"] == "activated"
        settle(env)
        assert journal_ids(env) == []
    finally:
        env.close()
    assert env.restart().items == []


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"commands": 3}',
                                     b'{"commands": [{"request_id": 5}, "x"]}'])
def test_an_unreadable_journal_is_named_and_the_manager_starts(tmp_path: Any, caplog: Any,
                                                                content: bytes) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / OPEN_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    journal = CommandJournal(str(state))
    assert journal.left_over() == []
    if content.startswith(b"{not") or content.startswith(b"\xff"):
        assert any(OPEN_FILE in r.getMessage() and "unreadable" in r.getMessage()
                   for r in caplog.records)
    journal.opened("model/install", "next")  # and it works on
    assert CommandJournal(str(state)).left_over()[0]["request_id"] == "next"


def test_a_journal_that_cannot_be_written_is_logged_and_commands_still_run(
        env: Env, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    env.manager.journal.path = os.path.join(env.store.state_dir, "no-such-dir", OPEN_FILE)
    env.install("1", 1, "r")
    assert env.events.finished("r")["state"] == "activated"
    assert any("cannot save the open-command journal" in r.getMessage() for r in caplog.records)
