"""The agent with paho-mqtt 1.6 (what Python 3.6 on a Jetson Nano gets) against a real broker.

.ci/setup installs paho-mqtt 1.6.1 into .venv/paho16; the agent subprocess is started with
that directory first on its path, so it imports the 1.x API (no CallbackAPIVersion).
"""

import os
import signal

import pytest

from support.paths import ROOT

PAHO16 = os.path.join(ROOT, ".venv", "paho16")


@pytest.fixture
def paho16_env():
    if not os.path.isdir(os.path.join(PAHO16, "paho")):
        pytest.fail("paho-mqtt 1.6 is not installed in .venv/paho16 (run .ci/setup --tests)")
    return {"PYTHONPATH": PAHO16 + os.pathsep + ROOT}


def test_paho16_is_really_used(paho16_env):
    import subprocess
    import sys
    out = subprocess.check_output(
        [sys.executable, "-c", "import paho.mqtt, paho.mqtt.client as c; "
         "print(paho.mqtt.__version__, hasattr(c, 'CallbackAPIVersion'))"],
        env=dict(os.environ, **paho16_env))
    assert out.decode().split() == ["1.6.1", "False"]


def test_agent_on_paho16_publishes_answers_and_goes_offline(broker, recorder, run_agent,
                                                            paho16_env):
    agent = run_agent("paho16", "--set", "source.uri=synthetic://?fps=20", env=paho16_env)
    recorder.wait_topic("paho16/predictions", lambda p: p["top"], 60, "a prediction")
    recorder.publish("edge/paho16/cmd/ping", {"request_id": "p16"})
    recorder.wait_topic("paho16/events", lambda p: p.get("request_id") == "p16", 10, "pong")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.err
    recorder.wait_topic("paho16/status", lambda p: p.get("state") == "offline", 10, "offline")


def test_last_will_on_paho16(broker, recorder, run_agent, paho16_env):
    agent = run_agent("paho16-kill", "--set", "source.uri=synthetic://?fps=20", env=paho16_env)
    recorder.wait_topic("paho16-kill/status", lambda p: p.get("state") == "serving", 60,
                        "serving")
    agent.kill()
    will = recorder.wait_topic("paho16-kill/status", lambda p: p.get("state") == "offline", 15,
                               "the Last Will")
    assert will["reason"] == "connection lost"
