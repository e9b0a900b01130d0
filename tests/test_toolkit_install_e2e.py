"""From an ONNX file to a running agent serving it, with the toolkit only: `keys generate`,
`package --sign`, `serve-models` (a real loopback HTTP server) and `send model/install` with the
payload it printed, to a real agent (ONNX Runtime, signatures required) through a real
Mosquitto."""

import json
import os

from conftest import MODEL_DIR, ROOT, AgentProcess, requires

DEVICE = "toolkit"


def cli(*args, cwd=ROOT):
    proc = AgentProcess([str(a) for a in args], cwd=str(cwd))
    code = proc.wait(180)
    return code, proc.stdout.decode(errors="replace"), proc.err


def send(broker, payload):
    return cli("send", "model/install", "-c", os.path.join(ROOT, "config.yaml"),
               "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.port={}".format(broker.port),
               "--device", DEVICE, "--json", json.dumps(payload), "--wait", "150")


def test_package_serve_send_activates_the_signed_model(broker, recorder, run_agent, tmp_path):
    requires("onnxruntime")
    requires("cryptography")
    assert cli("keys", "generate", "--out", "fleet", cwd=tmp_path)[0] == 0
    www = tmp_path / "www"
    code, stdout, err = cli("package", os.path.join(MODEL_DIR, "model.onnx"),
                            "--labels", os.path.join(MODEL_DIR, "labels.txt"),
                            "--name", "efficientnet_lite0", "--version", "2", "--preset", "lite",
                            "--out", www / "efficientnet_lite0" / "2",
                            "--sign", tmp_path / "fleet.key")
    assert code == 0, err + stdout
    server = AgentProcess(["serve-models", str(www), "--host", "127.0.0.1", "--port", "0"])
    try:
        line = server.proc.stdout.readline().decode()
        payload = json.loads(line)
        assert sorted(payload) == ["labels_sha256", "labels_url", "manifest", "name", "sha256",
                                   "signature", "size", "url", "version"], payload
        assert payload["url"].startswith("http://127.0.0.1:") and \
            payload["url"].endswith("/efficientnet_lite0/2/model.onnx")

        since = recorder.mark()
        agent = run_agent(DEVICE, "--set", "source.uri=file://models/samples",
                          "--set", "source.fps=20",
                          "--set", "updates.public_key_file={}".format(tmp_path / "fleet.pub"))
        recorder.wait_topic(DEVICE + "/status", lambda p: p.get("state") == "serving", 60,
                            "serving", since=since)

        # The signature covers the manifest: another normalisation is refused before download.
        forged = json.loads(line)
        forged["manifest"]["input"]["mean"] = [0.0, 0.0, 0.0]
        code, out, err = send(broker, forged)
        assert code == 1 and "failed" in out and "does not verify" in out, out + err

        code, out, err = send(broker, payload)
        assert code == 0, out + err
        assert "toolkit model/install activated" in out, out
        recorder.wait_topic(DEVICE + "/predictions",
                            lambda p: p["model"] == "efficientnet_lite0@2", 60,
                            "a prediction from the packaged version 2", since=since)
        status = recorder.wait_topic(DEVICE + "/status", lambda p: (p.get("model") or {}).get(
            "version") == "2", 30, "status serving version 2", since=since)
        assert status["model"]["sha256"] == payload["sha256"]
        agent.kill()
    finally:
        server.kill()
