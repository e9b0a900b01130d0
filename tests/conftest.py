"""Shared fixtures: a real Mosquitto broker per test session, an MQTT recorder, agent processes.

Nothing here stands in for a real part: the broker is Debian's mosquitto started on a free
port, the agent runs as a real subprocess (`python -m agent`), messages travel over TCP.
"""

import signal
from typing import Any, Dict, List, Optional

import pytest

from support.agent_process import AgentProcess, agent_args
from support.broker import Broker
from support.mqtt_recorder import Recorder
from support.strict import REQUIRE_ALL


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else \
            str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = ("skipped where everything must run (EDGE_AGENT_TESTS_REQUIRE_ALL=1, "
                           "the main CI venv; .ci/setup --tests installs it all): " + reason)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: Any):
    b = Broker(str(tmp_path_factory.mktemp("broker"))).start()
    yield b
    b.stop()


@pytest.fixture
def recorder(broker: Broker):
    rec = Recorder(broker.port)
    yield rec
    rec.close()


@pytest.fixture
def run_agent(broker: Broker, tmp_path: Any):
    procs = []  # type: List[AgentProcess]

    def start(device: str, *extra: str, port: Optional[int] = None,
              env: Optional[Dict[str, str]] = None) -> AgentProcess:
        proc = AgentProcess(agent_args(port or broker.port, device, str(tmp_path / "state"),
                                       *extra), env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGKILL)
            proc.proc.wait(10)
