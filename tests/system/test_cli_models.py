"""`edge-agent models`, `build`, `profile` and `send` through the real CLI."""

import json
import os
import signal

from support.paths import MODEL_DIR, ROOT
from support.agent_process import AgentProcess


def cli(tmp_path, *args):
    proc = AgentProcess(list(args[:1]) + ["-c", os.path.join(ROOT, "config.yaml"), "--set",
                                          "device.state_dir={}".format(tmp_path / "s")] +
                        list(args[1:]))
    code = proc.wait(120)
    return code, proc.stdout.decode(), proc.err


def test_local_store_operations(tmp_path):
    code, out, err = cli(tmp_path, "models", "install", MODEL_DIR, "--activate")
    assert code == 0, err
    assert "installed efficientnet_lite0@1" in out and "active: efficientnet_lite0@1" in out
    # A second version from a copy of the package with another version number.
    import shutil
    v2 = tmp_path / "v2"
    shutil.copytree(MODEL_DIR, str(v2))
    manifest = (v2 / "model.yaml").read_text().replace('version: "1"', 'version: "2"')
    assert 'version: "2"' in manifest
    (v2 / "model.yaml").write_text(manifest)
    assert cli(tmp_path, "models", "install", str(v2))[0] == 0
    assert cli(tmp_path, "models", "activate", "efficientnet_lite0", "2")[0] == 0
    code, out, err = cli(tmp_path, "models", "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert rows["2"]["active"] and rows["1"]["previous"]
    code, out, err = cli(tmp_path, "models", "remove", "efficientnet_lite0", "1")
    assert code == 2 and "previous" in err  # never the active or previous version
    code, out, err = cli(tmp_path, "models", "rollback")
    assert code == 0 and "active: efficientnet_lite0@1" in out
    code, out, err = cli(tmp_path, "models", "activate", "efficientnet_lite0", "9")
    assert code == 2 and "efficientnet_lite0" in err and "Traceback" not in err


def test_build_and_profile_say_what_is_missing_without_tensorrt(tmp_path):
    proc = AgentProcess(["build", os.path.join(MODEL_DIR, "model.onnx")])
    assert proc.wait(60) == 2
    assert "TensorRT is not installed" in proc.stdout.decode() + proc.err
    code, out, err = cli(tmp_path, "profile")
    assert code == 2 and "TensorRT is not installed" in out + err


def test_build_writes_an_engine_with_the_tensorrt_double(tmp_path, capsys):
    """The TensorRT 10.3 double from tests/support/doubles stands in for TensorRT (see its docstring)."""
    import shutil
    from support.trt_helpers import doubles
    from agent.__main__ import main
    shutil.copytree(MODEL_DIR, str(tmp_path / "pkg"))
    with doubles("10.3"):
        code = main(["build", str(tmp_path / "pkg" / "model.onnx"), "--precision", "fp16",
                     "--out", str(tmp_path / "m.engine"), "--state-dir", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert os.path.getsize(str(tmp_path / "m.engine")) > 0
    facts = json.loads((tmp_path / "m.engine.json").read_text())
    assert facts and "fp16" in json.dumps(facts)


def test_send_ping_and_bad_command_to_a_running_agent(broker, recorder, run_agent, tmp_path):
    agent = run_agent("sendme", "--set", "source.uri=synthetic://?fps=10")
    recorder.wait_topic("sendme/status", lambda p: p.get("state") == "serving", 60, "serving")
    base = ["-c", os.path.join(ROOT, "config.yaml"), "--set",
            "mqtt.port={}".format(broker.port), "--device", "sendme", "--wait", "20"]
    proc = AgentProcess(["send", "ping"] + base)
    assert proc.wait(60) == 0, proc.err
    assert "sendme ping done" in proc.stdout.decode()
    proc = AgentProcess(["send", "model/activate"] + base + ["--json", '{"name": 5}'])
    assert proc.wait(60) == 1
    assert "rejected" in proc.stdout.decode()
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
