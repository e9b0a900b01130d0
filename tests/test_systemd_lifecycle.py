"""The real agent under a notify socket the test owns: READY, STATUS, WATCHDOG, RELOADING on
SIGHUP, STOPPING on SIGTERM, the retained status and the exit code."""

import os
import signal
import socket
import time

from conftest import ROOT


class NotifySocket(object):
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if predicate(msg):
                return msg
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no notify message for {} within {} s; got {}".format(
                    what, timeout, self.messages[-8:]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append(data)
            if predicate(data):
                return data


def test_notify_watchdog_reload_and_stop(broker, recorder, run_agent, tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    config = tmp_path / "config.yaml"
    config.write_text(open(os.path.join(ROOT, "config.yaml")).read())
    agent = run_agent("svc", "--set", "source.uri=synthetic://?fps=20", "-c", str(config),
                      env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                           "WATCHDOG_USEC": "1000000"})
    ready = notify.wait_for(lambda m: "READY=1" in m, 60, "READY=1")
    assert "STATUS=" in ready and "efficientnet_lite0@1" in ready
    notify.wait_for(lambda m: m == "WATCHDOG=1", 5, "a watchdog ping")
    recorder.wait_topic("svc/status", lambda p: p.get("state") == "serving", 30, "serving")

    # SIGHUP: a live key and a restart-only key changed.
    text = config.read_text().replace("top_k: 5", "top_k: 2").replace("keepalive_s: 30",
                                                                         "keepalive_s: 40")
    config.write_text(text)
    agent.signal(signal.SIGHUP)
    notify.wait_for(lambda m: "RELOADING=1" in m, 10, "RELOADING=1")
    event = recorder.wait_topic("svc/events", lambda p: p.get("command") == "reload", 10,
                                "reload event")
    assert "predictions.top_k" in event["detail"]
    assert "need a restart: mqtt.keepalive_s" in event["detail"]
    recorder.wait_topic("svc/predictions", lambda p: len(p["top"]) == 2, 10,
                        "predictions with the new top_k")

    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.err
    notify.wait_for(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")
    recorder.wait_topic("svc/status", lambda p: p.get("state") == "offline", 10, "offline")
    assert "Traceback" not in agent.err


def test_journald_style_logging_under_systemd(broker, run_agent, tmp_path):
    """Under journald (JOURNAL_STREAM names stderr) lines carry <N> priorities, no timestamps."""
    import subprocess
    import sys
    log_path = tmp_path / "stderr.log"
    with open(str(log_path), "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM="{}:{}".format(st.st_dev, st.st_ino),
                   PYTHONPATH=ROOT)
        code = subprocess.call([sys.executable, "-m", "agent", "run", "-c",
                                os.path.join(ROOT, "config.yaml"),
                                "--set", "mqtt.port={}".format(broker.port),
                                "--set", "device.state_dir={}".format(tmp_path / "s"),
                                "--max-frames", "2"], stderr=err, cwd=ROOT, env=env)
    assert code == 0
    lines = [l for l in log_path.read_text().splitlines() if l.strip()]
    assert lines and all(l.startswith("<") for l in lines), lines[:5]
    assert any(l.startswith("<6>") and "serving" in l for l in lines)
    assert not any(l[3:7].isdigit() and l[7] == "-" for l in lines)  # no "2026-..." stamps
