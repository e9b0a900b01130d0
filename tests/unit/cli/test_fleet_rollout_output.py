"""What `edge-agent fleet rollout` prints, as a real subprocess against scripted devices on a
real Mosquitto: on a terminal (a pseudo-terminal) a live bar per stage rewritten in place and a
summary line; into a pipe one plain line per step; with --json, JSON lines."""

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import types
import uuid

import pytest

from support.paths import ROOT
from support.scripted_device import ScriptedDevice

INSTALL = {"name": "m", "version": "2", "url": "http://127.0.0.1:9/m.onnx",
           "sha256": "0" * 64, "manifest": {}}


@pytest.fixture
def two_devices(broker, tmp_path):
    group = "t" + uuid.uuid4().hex[:6]
    devices = [ScriptedDevice(broker.port, "{}-{}".format(group, i), group).boot()
               for i in range(2)]
    install = tmp_path / "install.json"
    install.write_text(json.dumps(INSTALL))
    args = [sys.executable, "-m", "agent", "fleet", "rollout", str(install), "--group", group,
            "--canary", "1", "--batch", "1", "--window", "1", "--state",
            str(tmp_path / "rollout.json"), "--set", "mqtt.host=127.0.0.1",
            "--set", "mqtt.port={}".format(broker.port)]
    yield devices, args
    for device in devices:
        device.close()


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="160")
    env.pop("TERM", None)
    return env


def _run_on_a_terminal(args, timeout=90.0):
    """Run with stdout on a pseudo-terminal; returns (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        else:
            proc.kill()
            raise AssertionError("fleet rollout did not finish; it wrote:\n" + out.decode())
        code = proc.wait(30)
        assert code == 0, proc.stderr.read().decode() + out.decode()
    finally:
        os.close(master)
        proc.stderr.close()
    return code, out.decode("utf-8", "replace")


def test_on_a_terminal_each_stage_is_a_live_bar_then_a_summary(two_devices):
    devices, args = two_devices
    code, out = _run_on_a_terminal(args)
    print(out.replace("\r", "<CR>\n"))
    assert "\r\x1b[K" in out  # the line is rewritten in place
    # What stays on screen: each line as last drawn.
    screen = [line.split("\r\x1b[K")[-1] for line in out.replace("\r\n", "\n").split("\n")]
    screen = [line for line in screen if line]
    canary = [line for line in screen if line.startswith("canary")]
    batch = [line for line in screen if line.startswith("batch 1")]
    assert canary == ["canary        [####################] 1/1 activated, 0 failed, 0 offline"]
    assert batch == ["batch 1       [####################] 1/1 activated, 0 failed, 0 offline"]
    assert screen[-1].startswith("rollout done: 2 ok of 2 device(s) in ")
    # While the window ran, the bar counted it down.
    assert re.search(r"1/1 activated, 0 failed, 0 offline \| watching telemetry \d+ s left", out)
    assert not [line for line in screen if line.startswith(("sent", "{"))]
    assert [len(d.installs) for d in devices] == [1, 1]


def test_into_a_pipe_one_line_per_step_and_json_lines_with_json(two_devices, tmp_path):
    devices, args = two_devices
    proc = subprocess.run(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=90)
    out = proc.stdout.decode()
    print(out)
    assert proc.returncode == 0, proc.stderr.decode() + out
    assert "\r" not in out and "\x1b" not in out
    events = [line.split()[0] for line in out.splitlines()]
    assert events == ["stage", "sent", "activated", "ok", "stage", "sent", "activated", "ok",
                      "done"]
    assert out.splitlines()[1].split()[1] == devices[0].name

    # --json: the same steps as JSON objects (what tools/fleet/bench_rollout.py reads), for
    # the next version.
    install = tmp_path / "install-3.json"
    install.write_text(json.dumps(dict(INSTALL, version="3")))
    args[args.index(str(tmp_path / "install.json"))] = str(install)
    proc = subprocess.run(args + ["--json"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=90)
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["event"] for r in records] == events
    assert all(isinstance(r["ts"], float) for r in records)
    assert [r["request_id"] for r in records if r["event"] == "sent"] == \
        [d.installs[-1] for d in devices]


def test_rollout_help_teaches_with_examples(capsys):
    from agent.__main__ import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fleet", "rollout", "--help"])
    text = capsys.readouterr().out
    examples = text[text.index("examples:"):text.index("positional arguments")]
    for option in ("--canary 5%", "--batch 50", "--window 120", "--max-failures 2",
                   "--max-regression 0.1", "fleet pause", "--resume", "--json"):
        assert option in examples, option
    assert max(len(line) for line in examples.splitlines()) <= 100  # kept as written


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_reports_offline_devices_and_ends_with_what_to_do(tmp_path):
    from agent.cli.fleet_progress import RolloutBar
    from agent.fleet import state as st
    state = st.RolloutState.create(str(tmp_path / "r.json"), "lab", dict(INSTALL),
                                   [["a"], ["b", "c"]], {})
    out = _Terminal()
    live = RolloutBar(state.path, out=out, interval=3600)
    live.follow(types.SimpleNamespace(state=state, phase={"what": "installing", "ends": None}))
    live.record({"event": "stage", "name": "canary", "devices": ["a"]})
    state.set_step("a", st.OK)
    live.record({"event": "ok", "device": "a"})
    live.record({"event": "stage", "name": "batch 1", "devices": ["b", "c"]})
    state.set_step("b", st.ACTIVATED)
    live.record({"event": "activated", "device": "b"})
    drawn = out.getvalue().split("\r\x1b[K")[-1]
    assert drawn == "batch 1       [##########..........] 1/2 activated, 0 failed, 0 offline" \
                    " | installing"
    state.set_step("c", st.OFFLINE)
    live.record({"event": "offline", "device": "c", "detail": "offline: retried at the end"})
    state.set_step("b", st.OK)
    live.record({"event": "incomplete", "counts": state.counts(), "offline": ["c"]})
    live.close()
    screen = [line.split("\r\x1b[K")[-1] for line in out.getvalue().split("\n")]
    assert screen[0].startswith("canary        [####################] 1/1 activated")
    assert screen[1].split() == ["offline", "c", 'detail="offline:', "retried", "at", "the",
                                 'end"']
    assert screen[2] == "batch 1       [####################] 1/2 activated, 0 failed, 1 offline"
    assert screen[3].startswith("rollout incomplete: 1 offline, 2 ok of 3 device(s) in ")
    assert screen[3].endswith("; offline: c; continue with `fleet rollout --resume --state "
                              "{}`".format(state.path))
