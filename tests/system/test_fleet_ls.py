"""`edge-agent fleet ls` against real agents on a real Mosquitto: online devices with their
telemetry, a killed one shown offline by its Last Will, other groups left out."""

import json
import os
import uuid

from support.agent_process import AgentProcess, agent_args


def _agent(broker, tmp_path, device, group, *extra):
    return AgentProcess(agent_args(broker.port, device, str(tmp_path / device),
                                   "--set", "device.group=" + group,
                                   "--set", "source.uri=synthetic://?fps=20",
                                   "--set", "telemetry.interval_s=1", *extra))


def _fleet(broker, *args):
    proc = AgentProcess(["fleet"] + list(args) + ["--set", "mqtt.port={}".format(broker.port),
                                                  "--set", "mqtt.host=127.0.0.1"])
    code = proc.wait(60)
    return code, proc.stdout.decode(), proc.err


def test_fleet_ls_shows_online_offline_and_filters_by_group(broker, recorder, tmp_path):
    group = "lab-" + uuid.uuid4().hex[:6]
    names = [group + "-a", group + "-b"]
    agents = [_agent(broker, tmp_path, names[0], group), _agent(broker, tmp_path, names[1], group),
              _agent(broker, tmp_path, group + "-x", "elsewhere-" + group)]
    try:
        for name in names:
            recorder.wait_topic(name + "/telemetry", lambda p: (p.get("frames") or 0) > 0, 60,
                                "telemetry from " + name)
        agents[1].kill()
        recorder.wait_topic(names[1] + "/status", lambda p: p.get("state") == "offline", 30,
                            "the Last Will of " + names[1])

        code, out, err = _fleet(broker, "ls", "--group", group, "--json")
        assert code == 0, err
        rows = dict((r["device"], r) for r in map(json.loads, out.splitlines()))
        assert sorted(rows) == names  # the device of the other group is not listed
        up, down = rows[names[0]], rows[names[1]]
        assert up["state"] == "serving" and up["group"] == group
        assert up["model"] == "efficientnet_lite0@1"
        assert up["backend"].startswith("onnxruntime/")
        assert up["fps"] > 0 and up["infer_p50_ms"] > 0 and up["e2e_p99_ms"] > 0
        assert up["last_seen"] is not None and len(up["boot"]) == 12
        assert down["state"] == "offline" and down["reason"] == "connection lost"
        assert down["group"] == group and down["fps"] is None

        code, table, err = _fleet(broker, "ls", "--group", group)
        assert code == 0, err
        print(table)
        lines = table.splitlines()
        assert lines[0].split()[:3] == ["DEVICE", "STATE", "MODEL"]
        assert "offline (connection lost)" in [l for l in lines if l.startswith(names[1])][0]
        assert lines[-1] == "2 device(s), 1 online"
    finally:
        for agent in agents:
            agent.kill()


def test_fleet_ls_says_when_no_device_matches(broker):
    code, out, err = _fleet(broker, "ls", "--group", "nobody-" + uuid.uuid4().hex[:6])
    assert code == 0, err
    assert out.startswith("no device has a retained status under edge/+/status in group ")


def test_fleet_ls_names_the_broker_it_cannot_reach(tmp_path):
    from support.net import free_port
    proc = AgentProcess(["fleet", "ls", "--set", "mqtt.port={}".format(free_port()),
                         "--set", "mqtt.host=127.0.0.1"])
    assert proc.wait(30) == 2
    assert "cannot reach the broker 127.0.0.1:" in proc.err and "mqtt.host" in proc.err
    assert "Traceback" not in proc.err
    assert not os.listdir(str(tmp_path))
