"""Bad input at start: each gives a clear message naming the thing and the fix, never a
traceback. Runs the real CLI as a subprocess."""

import os

import pytest

from support.paths import ROOT
from support.agent_process import AgentProcess, agent_args


def run_cli(*args, **kw):
    proc = AgentProcess(list(args), **kw)
    code = proc.wait(60)
    return code, proc.err


@pytest.mark.parametrize("content, expected", [
    ("mqtt:\n  hots: x\n", "config: mqtt.hots: unknown key"),
    ("mqtt:\n  port: seventeen\n", "config: mqtt.port: 'seventeen' must be a whole number"),
    ("mqtt:\n  port: 70000\n", "config: mqtt.port: 70000 is above the maximum 65535"),
    ("backend:\n  precision: fp8\n", "config: backend.precision: 'fp8' is not one of fp32, "
                                      "fp16, int8"),
    ("source: [1, 2]\n", "config: source: must be a mapping"),
    ("mqtt:\n  port: [1883\n", "not valid YAML at line"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("mqtt:\n  tls:\n    cert_file: /x.pem\n", "cert_file and key_file go together"),
    ("device:\n  id: a/b\n", "config: device.id: 'a/b' may not contain"),
    ("telemetry:\n  interval_s: .nan\n", "config: telemetry.interval_s: nan is not a finite"),
    ("predictions:\n  max_rate_hz: .nan\n", "config: predictions.max_rate_hz: nan is not a "
                                             "finite number"),
    ("predictions:\n  max_rate_hz: .inf\n", "config: predictions.max_rate_hz: inf is not a "
                                             "finite number"),
    ("device:\n  state_dir: config.yaml\n", "config: device.state_dir: {tmp}/config.yaml is a "
                                             "file, not a directory"),
    ("device:\n  state_dir: /proc/edge\n", "config: device.state_dir: /proc/edge is on the "
                                            "kernel's /proc pseudo-filesystem"),
    ("mqtt:\n  tls: {enabled: true, ca_file: ca.pem}\n", "config: mqtt.tls.ca_file: "
                                                        "{tmp}/ca.pem does not exist"),
    ("updates:\n  public_key_file: keys/edge.pub\n", "config: updates.public_key_file: "
                                                     "{tmp}/keys/edge.pub does not exist"),
    (b"source:\n  uri: 'file://caf\xe9'\n", "config file {tmp}/config.yaml: not UTF-8 text "
                                             "(byte 0xe9 on line 2); save it as UTF-8"),
])
def test_bad_config_files_are_refused_with_the_key_path(tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, err = run_cli("run", "-c", str(path))
    assert code == 2
    assert expected.format(tmp=tmp_path) in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_bad_config_on_sighup_keeps_the_running_one(broker, recorder, tmp_path):
    """SIGHUP with a config that is not UTF-8, then one with NaN: each reload fails with an
    event saying why, the agent keeps serving with the old config, and a good file after
    them applies."""
    import signal
    config = tmp_path / "config.yaml"
    good = "source: {uri: 'synthetic://?fps=20'}\npredictions: {top_k: 5}\n"
    config.write_text(good)
    proc = AgentProcess(["run", "-c", str(config), "--set", "mqtt.port={}".format(broker.port),
                         "--set", "mqtt.host=127.0.0.1", "--set", "device.id=hup",
                         "--set", "device.state_dir={}".format(tmp_path / "s")])
    try:
        recorder.wait_topic("hup/status", lambda p: p.get("state") == "serving", 60, "serving")
        for content, error in ((b"predictions: {top_k: 3}\n# caf\xe9\n", "not UTF-8 text"),
                               (b"telemetry: {interval_s: .nan}\n", "nan is not a finite")):
            config.write_bytes(content)
            mark = recorder.mark()
            proc.signal(signal.SIGHUP)
            event = recorder.wait_topic("hup/events", lambda p: p.get("command") == "reload",
                                        30, "a reload event", since=mark)
            assert event["state"] == "failed" and error in event["error"], event
            recorder.wait_topic("hup/predictions", lambda p: len(p["top"]) == 5, 30,
                                "predictions with the old top_k", since=recorder.mark())
            assert proc.proc.poll() is None, proc.err
        config.write_text(good.replace("top_k: 5", "top_k: 2"))
        mark = recorder.mark()
        proc.signal(signal.SIGHUP)
        event = recorder.wait_topic("hup/events", lambda p: p.get("command") == "reload", 30,
                                    "a reload event", since=mark)
        assert event["state"] == "done" and "predictions.top_k" in event["detail"], event
        recorder.wait_topic("hup/predictions", lambda p: len(p["top"]) == 2, 30,
                            "predictions with the new top_k", since=mark)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.err
    finally:
        proc.kill() if proc.proc.poll() is None else None
    assert "Traceback" not in proc.err, proc.err


@pytest.mark.parametrize("override, expected", [
    ("mqtt.nope=1", "--set mqtt.nope: unknown key mqtt.nope"),
    ("mqtt=1", "--set mqtt: is a section"),
    ("noequals", "expected key.path=value"),
    ("telemetry.interval_s=0", "config: telemetry.interval_s: 0.0 is below the minimum 0.2"),
])
def test_bad_overrides_are_refused(override, expected):
    code, err = run_cli("run", "-c", os.path.join(ROOT, "config.yaml"), "--set", override)
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in err


def test_missing_config_file():
    code, err = run_cli("run", "-c", "/nonexistent/config.yaml")
    assert code == 2
    assert "config file /nonexistent/config.yaml does not exist" in err


def wait_degraded(recorder, device):
    """The device's retained status once it says degraded."""
    return recorder.wait_topic(device + "/status", lambda p: p.get("state") == "degraded", 10,
                               "degraded status")


def test_missing_model_is_reported_and_status_is_degraded(broker, recorder, tmp_path):
    args = agent_args(broker.port, "nomodel", str(tmp_path / "s"), "--set",
                      "model.name=no_such_model", "--duration", "3")
    code, err = run_cli(*args)
    assert code == 1
    assert "model 'no_such_model': no package found" in err
    assert "Traceback" not in err
    degraded = wait_degraded(recorder, "nomodel")
    assert "no_such_model" in degraded["detail"]


def test_corrupt_model_file_is_reported(broker, tmp_path):
    import shutil
    pkg = tmp_path / "models" / "broken"
    shutil.copytree(os.path.join(ROOT, "models", "efficientnet_lite0"), str(pkg))
    with open(str(pkg / "model.onnx"), "r+b") as handle:
        handle.seek(1000)
        handle.write(b"garbage!")
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: broken}\nsource: {uri: 'synthetic://'}\n")
    args = ["run", "-c", str(config), "--set", "mqtt.port={}".format(broker.port),
            "--set", "device.id=corrupt", "--duration", "2"]
    code, err = run_cli(*args)
    assert code == 1
    assert "has sha256" in err and "the file is corrupt or the manifest is stale" in err
    assert "Traceback" not in err


def test_unreadable_source_is_reported_and_agent_keeps_running(broker, recorder, tmp_path):
    args = agent_args(broker.port, "nosource", str(tmp_path / "s"), "--set",
                      "source.uri=file:///nonexistent/dir", "--duration", "3")
    code, err = run_cli(*args)
    assert code == 0
    assert "source file:///nonexistent/dir: /nonexistent/dir does not exist" in err
    assert "Traceback" not in err
    degraded = wait_degraded(recorder, "nosource")
    assert "/nonexistent/dir" in degraded["detail"]


def test_unknown_source_scheme(broker, tmp_path):
    args = agent_args(broker.port, "badscheme", str(tmp_path / "s"), "--set",
                      "source.uri=ftp://x/y", "--duration", "2")
    code, err = run_cli(*args)
    assert "unknown scheme 'ftp'" in err
    assert "Traceback" not in err


def test_help_teaches():
    code, err = run_cli("--help")
    proc = AgentProcess(["--help"])
    proc.wait(30)
    out = proc.stdout.decode()
    assert proc.proc.returncode == 0
    for word in ("run", "bench", "check", "send", "quick start", "--set"):
        assert word in out
    proc = AgentProcess(["run", "--help"])
    proc.wait(30)
    out = proc.stdout.decode()
    assert "--max-frames" in out and "--duration" in out and "retained" in out


def test_check_reports_and_fails_on_what_the_config_needs(broker, tmp_path):
    code, err = run_cli("check", "-c", os.path.join(ROOT, "config.yaml"), "--set",
                        "mqtt.port={}".format(broker.port), "--set",
                        "device.state_dir={}".format(tmp_path / "s"))
    proc = AgentProcess(["check", "-c", os.path.join(ROOT, "config.yaml"), "--json",
                         "--set", "mqtt.port={}".format(broker.port),
                         "--set", "device.state_dir={}".format(tmp_path / "s")])
    assert proc.wait(60) == 0, proc.err
    import json
    report = json.loads(proc.stdout.decode())
    status = {r["check"]: r["status"] for r in report["checks"]}
    assert status["onnxruntime"] == "ok" and status["broker"] == "ok"
    assert status["model"] == "ok" and status["source"] == "ok"
    proc = AgentProcess(["check", "-c", os.path.join(ROOT, "config.yaml"),
                         "--set", "source.uri=file:///nonexistent",
                         "--set", "device.state_dir={}".format(tmp_path / "s")])
    assert proc.wait(60) == 1
    assert "FAIL source" in proc.stdout.decode()


def _package_copy(tmp_path, name, **changes):
    """The bundled model copied to tmp_path/models/<name>, model.yaml edited by `changes`."""
    import shutil
    import yaml
    pkg = tmp_path / "models" / name
    shutil.copytree(os.path.join(ROOT, "models", "efficientnet_lite0"), str(pkg))
    manifest = yaml.safe_load((pkg / "model.yaml").read_text())
    manifest["name"] = name
    manifest.update(changes)
    (pkg / "model.yaml").write_text(yaml.safe_dump(manifest))
    return pkg


def _run_model(broker, tmp_path, name, device, *extra):
    config = tmp_path / "config.yaml"
    config.write_text("model: {{name: {}}}\nsource: {{uri: 'synthetic://?fps=20'}}\n"
                      .format(name))
    return run_cli("run", "-c", str(config), "--set", "mqtt.port={}".format(broker.port),
                   "--set", "device.id=" + device, "--set", "device.state_dir=state", *extra)


def test_labels_that_are_not_utf8_are_named(broker, tmp_path):
    pkg = _package_copy(tmp_path, "latin1labels")
    with open(str(pkg / "labels.txt"), "ab") as handle:
        handle.write(b"caf\xe9\n")
    code, err = _run_model(broker, tmp_path, "latin1labels", "latin1", "--duration", "2")
    assert code == 1
    assert "labels.txt: not UTF-8 text (byte 0xe9 on line 1001); save it as UTF-8" in err, err
    assert "Traceback" not in err


def test_a_model_named_like_the_stores_marker_file(broker, tmp_path):
    """`configured-model` was the name of the file where the store remembers model.name: a
    model of that name collided with it. Two starts: import, then the store's record."""
    _package_copy(tmp_path, "configured-model")
    for _ in range(2):
        code, err = _run_model(broker, tmp_path, "configured-model", "marker", "--max-frames",
                               "3")
        assert code == 0, err
        assert "Traceback" not in err
    store = tmp_path / "state" / "models"
    assert (store / "configured-model" / "1" / "model.onnx").is_file()
    assert (store / ".configured-model").read_text() == "configured-model"


def test_a_store_emptied_by_hand_gets_the_configured_model_again(broker, tmp_path):
    import shutil
    _package_copy(tmp_path, "seeded")
    code, err = _run_model(broker, tmp_path, "seeded", "emptied", "--max-frames", "3")
    assert code == 0, err
    shutil.rmtree(str(tmp_path / "state" / "models" / "seeded"))  # active (and only) version
    code, err = _run_model(broker, tmp_path, "seeded", "emptied", "--max-frames", "3")
    assert code == 0, err
    assert "are gone from" in err and "importing the configured model seeded again" in err, err
    assert (tmp_path / "state" / "models" / "seeded" / "1" / "model.onnx").is_file()
