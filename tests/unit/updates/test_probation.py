"""The probation of a newly activated model (Probation and ProbationWatch in
agent/updates/probation.py, armed by Agent.activate_backend in agent/daemon.py): failed frames,
NaN/Inf outputs, the latency factor, the end of the frame budget, and the automatic rollback
the agent asks the model manager for."""

import os
import re
import threading

import pytest

from agent.daemon import Agent
from agent.store.store import ModelStore
from agent.updates.probation import Probation
from agent.updates.worker import ModelManager
from support.paths import ROOT
from support.recording_link import RecordingLink


def probation(frames=10, baseline_ms=10.0, factor=3.0):
    return Probation("tiny@2", "tiny@1", frames, baseline_ms, factor)


def feed(p, results):
    """Feed (ok, infer_ms) pairs; return the verdicts, one per frame."""
    return [p.add(ok, ms, "" if ok else "boom {}".format(i)) for i, (ok, ms) in
            enumerate(results)]


# ----------------------------------------------------------------------------- Probation


def test_undecided_until_the_frame_budget_then_passed():
    p = probation(frames=5)
    verdicts = feed(p, [(True, 10.0)] * 5)
    assert verdicts == [None, None, None, None, "passed"]
    assert p.seen == 5 and p.errors == 0


def test_three_failed_frames_fail_it_at_the_third():
    p = probation(frames=30)
    verdicts = feed(p, [(True, 10.0), (False, None), (True, 10.0), (False, None),
                        (False, None), (True, 10.0)][:5])
    assert verdicts[:4] == [None, None, None, None]
    assert verdicts[4] == "3 of its first 5 frames failed (last: boom 4)"
    assert p.errors == 3 and p.last_error == "boom 4"


def test_two_failed_frames_are_tolerated():
    p = probation(frames=6)
    verdicts = feed(p, [(False, None), (True, 10.0), (False, None), (True, 10.0),
                        (True, 10.0), (True, 10.0)])
    assert verdicts == [None] * 5 + ["passed"]
    assert p.errors == 2


def test_failures_on_the_last_frames_still_fail_it():
    """The third failure on the very frame that ends the budget is a failure, not 'passed'."""
    p = probation(frames=3)
    verdicts = feed(p, [(False, None)] * 3)
    assert verdicts[:2] == [None, None]
    assert verdicts[2].startswith("3 of its first 3 frames failed")


def test_nan_outputs_count_as_failed_frames_without_latency():
    """The publish thread reports NaN/Inf outputs as failed frames (ok=False, no time)."""
    p = probation(frames=10, baseline_ms=1.0, factor=3.0)
    p.add(True, 1.0)
    p.add(False, None, "model output has NaN")
    p.add(False, None, "model output has Inf")
    assert p.latencies == [1.0]
    assert p.add(False, None, "model output has NaN") == \
        "3 of its first 4 frames failed (last: model output has NaN)"


def test_latency_regression_beyond_the_factor_fails_it():
    p = probation(frames=5, baseline_ms=10.0, factor=3.0)
    verdicts = feed(p, [(True, 31.0)] * 5)
    assert verdicts[:4] == [None] * 4
    assert verdicts[4] == ("latency regression: median inference 31.0 ms vs 10.0 ms before "
                           "(limit: 3x, updates.max_latency_factor)")


def test_latency_exactly_at_the_factor_passes():
    p = probation(frames=3, baseline_ms=10.0, factor=3.0)
    assert feed(p, [(True, 30.0)] * 3)[-1] == "passed"


def test_latency_uses_the_median_not_the_mean_or_the_worst():
    # Median of [1, 2, 100] is 2 (passes); the mean (34) and the max (100) would fail it.
    p = probation(frames=3, baseline_ms=10.0, factor=3.0)
    assert feed(p, [(True, 100.0), (True, 1.0), (True, 2.0)])[-1] == "passed"
    # Median of [1, 50, 60] is 50 (fails); the minimum (1) would pass it.
    p = probation(frames=3, baseline_ms=10.0, factor=3.0)
    assert feed(p, [(True, 1.0), (True, 60.0), (True, 50.0)])[-1].startswith(
        "latency regression: median inference 50.0 ms")


def test_median_of_an_even_count_is_the_upper_middle():
    p = probation(frames=4, baseline_ms=10.0, factor=3.0)
    # sorted [1, 2, 40, 50]: the upper middle (40) is above 30 ms, the lower (2) is not.
    assert feed(p, [(True, 50.0), (True, 1.0), (True, 40.0), (True, 2.0)])[-1].startswith(
        "latency regression: median inference 40.0 ms")


def test_failed_frames_do_not_count_toward_latency():
    p = probation(frames=3, baseline_ms=10.0, factor=3.0)
    assert feed(p, [(True, 5.0), (False, 500.0), (True, 5.0)])[-1] == "passed"
    assert p.latencies == [5.0, 5.0]


def test_no_baseline_means_no_latency_check():
    p = probation(frames=3, baseline_ms=None)
    assert feed(p, [(True, 1000.0)] * 3)[-1] == "passed"
    p = probation(frames=3, baseline_ms=0.0)
    assert feed(p, [(True, 1000.0)] * 3)[-1] == "passed"


def test_frames_without_a_time_pass_on_the_budget():
    p = probation(frames=2, baseline_ms=10.0)
    assert feed(p, [(True, None), (True, None)]) == [None, "passed"]


def test_a_factor_other_than_three_is_used():
    p = probation(frames=2, baseline_ms=10.0, factor=1.5)
    assert feed(p, [(True, 16.0)] * 2)[-1].startswith("latency regression")
    p = probation(frames=2, baseline_ms=10.0, factor=1.5)
    assert feed(p, [(True, 15.0)] * 2)[-1] == "passed"


# ----------------------------------------------------------------------------- the agent side


class Manager(ModelManager):
    """The real model manager, not started: its `rollback` runs as in the agent, and what it
    hands to the queue is recorded instead of run."""

    def __init__(self, emit, state_dir):
        ModelManager.__init__(self, ModelStore(state_dir), emit, prepare=None, activate=None,
                              stop_event=threading.Event())
        self.calls = []

    def submit(self, cmd, urgent=False):
        self.calls.append(("submit", (cmd,), {"urgent": urgent}))

    def commands(self):
        return [a for _, args, _ in self.calls for a in args if hasattr(a, "name")]


class Model(object):
    def __init__(self, ref):
        self.ref = ref

    def describe(self):
        return {"name": self.ref.split("@")[0], "version": self.ref.split("@")[1]}


@pytest.fixture
def agent(tmp_path):
    """The agent's own wiring (its ProbationWatch rolls back through its model manager),
    without threads: the link records, the manager records."""
    from agent.config import load_config
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "device.id=probation-unit", "device.state_dir=" + str(tmp_path / "state"),
        "updates.probation_frames=5", "updates.max_latency_factor=2"])
    a = Agent(config, link=RecordingLink())
    a.health.attach(a.link)
    a.manager = Manager(a.health.emit_event, str(tmp_path / "state"))
    return a


def arm(agent, ref="tiny@2", previous="tiny@1", frames=5, baseline=None):
    agent.probation.current = Probation(ref, previous, frames, baseline,
                                        agent.config.updates.max_latency_factor)


def test_failed_frames_roll_back_through_the_manager(agent):
    arm(agent)
    result = agent.probation.result
    result("tiny@2", False, None, "CUDA error")
    result("tiny@2", False, None, "CUDA error")
    assert agent.manager.commands() == []
    result("tiny@2", False, None, "model output has NaN")
    commands = agent.manager.commands()
    assert [c.name for c in commands] == ["model/rollback"]
    assert [(name, kw) for name, _, kw in agent.manager.calls] == [("submit", {"urgent": True})]
    assert re.match(r"^auto-rollback-[0-9a-f]{8}$", commands[0].request_id)
    events = agent.link.events()
    assert len(events) == 1
    event = events[0]
    assert event["command"] == "model/rollback" and event["state"] == "accepted"
    assert event["request_id"] == commands[0].request_id
    assert event["error"] == "3 of its first 3 frames failed (last: model output has NaN)"
    assert "tiny@2 failed probation; returning to tiny@1" in event["detail"]
    assert agent.probation.current is None
    # Later failures of the same model do not ask for a second rollback.
    result("tiny@2", False, None, "again")
    assert len(agent.manager.commands()) == 1


def test_latency_regression_rolls_back(agent):
    arm(agent, frames=3, baseline=10.0)
    for _ in range(3):
        agent.probation.result("tiny@2", True, 25.0)
    assert [c.name for c in agent.manager.commands()] == ["model/rollback"]
    assert agent.link.events()[0]["error"].startswith("latency regression")


def test_passing_probation_asks_for_nothing(agent):
    arm(agent, frames=3, baseline=10.0)
    for _ in range(3):
        agent.probation.result("tiny@2", True, 12.0)
    assert agent.manager.calls == [] and agent.link.events() == []
    assert agent.probation.current is None
    # After probation the model's times feed the next baseline.
    agent.probation.result("tiny@2", True, 7.0)
    assert list(agent.probation.recent_infer) == [7.0]


def test_frames_of_the_old_model_do_not_count(agent):
    """Frames still in flight from the previous model neither fail nor pass the new one."""
    arm(agent, frames=2)
    for _ in range(5):
        agent.probation.result("tiny@1", False, None, "old model error")
    assert agent.manager.calls == [] and agent.probation.current is not None
    assert agent.probation.current.seen == 0


def test_activation_arms_probation_with_the_baseline_of_the_model_before(agent):
    class Backend(object):
        pass

    class Package(object):
        ref = "tiny@2"
    agent.backends.model = Model("tiny@1")
    for ms in (40.0, 1.0, 30.0, 2.0):
        agent.probation.result("tiny@1", True, ms)
    # Failed frames of the trusted model (no time) do not enter the baseline.
    agent.probation.result("tiny@1", False, None, "a failed frame")
    agent.probation.result("tiny@1", True, None)  # a frame without a time
    assert sorted(agent.probation.recent_infer) == [1.0, 2.0, 30.0, 40.0]
    swapped = []
    agent.backends.swap = lambda backend: swapped.append(backend)
    agent.activate_backend(Backend(), Package())
    assert len(swapped) == 1
    p = agent.probation.current
    assert (p.ref, p.previous, p.frames, p.baseline_ms, p.factor) == \
        ("tiny@2", "tiny@1", 5, 30.0, 2.0)  # the upper middle of 1, 2, 30, 40


def test_no_probation_without_a_previous_model_or_with_zero_frames(agent):
    class Package(object):
        ref = "tiny@2"
    agent.backends.swap = lambda backend: None
    agent.backends.model = None
    agent.activate_backend(object(), Package())
    assert agent.probation.current is None
    agent.backends.model = Model("tiny@1")
    agent.config.updates.probation_frames = 0
    agent.activate_backend(object(), Package())
    assert agent.probation.current is None
    agent.config.updates.probation_frames = 1
    agent.activate_backend(object(), Package())
    assert agent.probation.current is not None and agent.probation.current.frames == 1


def test_a_failed_swap_disarms_probation(agent):
    class Package(object):
        ref = "tiny@2"

    def fail(backend):
        raise RuntimeError("swap failed")
    agent.backends.model = Model("tiny@1")
    agent.backends.swap = fail
    with pytest.raises(RuntimeError):
        agent.activate_backend(object(), Package())
    assert agent.probation.current is None
