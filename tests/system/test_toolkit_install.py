"""From an ONNX file to a running agent serving it, with the toolkit only: `keys generate`,
`package --sign`, `serve-models` (a real loopback HTTPS server) and `send model/install` with
the payload it printed, to a real agent (ONNX Runtime, signatures required) through a real
Mosquitto."""

import datetime
import ipaddress
import json
import os

from support.agent_process import AgentProcess
from support.paths import MODEL_DIR, ROOT
from support.strict import requires

DEVICE = "toolkit"


def cli(*args, cwd=ROOT):
    proc = AgentProcess([str(a) for a in args], cwd=str(cwd))
    code = proc.wait(180)
    return code, proc.stdout.decode(errors="replace"), proc.err


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that is its own CA (the agent's updates.ca_file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(tmp_path / "tls.pem"), str(tmp_path / "tls.key")


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
    cert, key = self_signed(tmp_path)
    server = AgentProcess(["serve-models", str(www), "--host", "127.0.0.1", "--port", "0",
                           "--cert", cert, "--tls-key", key])
    try:
        line = server.proc.stdout.readline().decode()
        payload = json.loads(line)
        assert sorted(payload) == ["labels_sha256", "labels_url", "manifest", "name", "sha256",
                                   "signature", "size", "url", "version"], payload
        assert payload["url"].startswith("https://127.0.0.1:") and \
            payload["url"].endswith("/efficientnet_lite0/2/model.onnx")

        since = recorder.mark()
        agent = run_agent(DEVICE, "--set", "source.uri=file://models/samples",
                          "--set", "source.fps=20", "--set", "updates.ca_file=" + cert,
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


def test_print_only_names_another_server(tmp_path):
    requires("onnxruntime")
    www = tmp_path / "www"
    code, stdout, err = cli("package", os.path.join(MODEL_DIR, "model.onnx"),
                            "--labels", os.path.join(MODEL_DIR, "labels.txt"), "--name", "m",
                            "--version", "1.2", "--preset", "lite", "--out", www / "m" / "1.2",
                            "--sample", os.path.join(ROOT, "models", "samples", "cat.jpg"))
    assert code == 0, err
    code, stdout, err = cli("serve-models", www, "--print-only", "--base-url",
                            "https://models.example/fleet/")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["url"] == "https://models.example/fleet/m/1.2/model.onnx"
    assert payload["labels_url"] == "https://models.example/fleet/m/1.2/labels.txt"
    assert "signature" not in payload  # unsigned package
    # What the agent's own command parser accepts, unchanged.
    from agent.updates.commands import parse_command
    command = parse_command("model/install", stdout.encode())
    assert command.args["manifest"]["labels_sha256"] == payload["labels_sha256"]
    code, _, err = cli("serve-models", tmp_path / "empty-nothing")
    assert code == 2 and "is not a directory" in err
