"""The agent behind a locked-down broker: mutual TLS (a CA and certificates made here),
passwords and topic ACLs, as README.md "Security" describes. Real Mosquitto, real agent."""

import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import threading

import pytest

from support.broker import Broker
from support.net import free_port

ACL = """\
# Devices publish only under their own prefix and read only their own and their group's
# commands; the operator reads and writes everything; an intruder may only read.
user dev1
topic write edge/dev1/#
topic read edge/dev1/cmd/#
topic read edge/groups/lab/cmd/#

user operator
topic readwrite edge/#

user intruder
topic read edge/#
"""


def _pki(tmp):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.utcnow()

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path, key, cert):
        with open(path + ".key", "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
        with open(path + ".pem", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edge test CA")).issuer_name(name(
        "edge test CA")).public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))
    write(os.path.join(tmp, "ca"), ca_key, ca)

    def leaf(cn, serial, server=False):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=2)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        write(os.path.join(tmp, cn), key, builder.sign(ca_key, hashes.SHA256()))

    leaf("broker", 2, server=True)
    for i, cn in enumerate(("dev1", "operator", "intruder")):
        leaf(cn, 10 + i)


class TlsClient(object):
    """A paho client over mutual TLS; records messages; `connect_rc` is the CONNACK code."""

    def __init__(self, port, tmp, user, password, subscribe=None):
        import paho.mqtt.client as mqtt
        self.messages = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.connect_rc = None
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            self.client.on_connect = lambda c, u, f, rc, p=None: self._on_connect(rc)
        else:
            self.client = mqtt.Client()
            self.client.on_connect = lambda c, u, f, rc: self._on_connect(rc)
        cn = user or "intruder"
        self.client.tls_set(ca_certs=os.path.join(tmp, "ca.pem"),
                            certfile=os.path.join(tmp, cn + ".pem"),
                            keyfile=os.path.join(tmp, cn + ".key"),
                            cert_reqs=ssl.CERT_REQUIRED)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connected.wait(10)
        if subscribe and self.connect_rc == 0:
            self.client.subscribe(subscribe, qos=1)
            assert self.subscribed.wait(10)

    def _on_connect(self, rc):
        self.connect_rc = int(getattr(rc, "value", rc))
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        import json
        with self.cond:
            try:
                payload = json.loads(msg.payload.decode())
            except ValueError:
                payload = msg.payload
            self.messages.append((msg.topic, payload))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout, what):
        import time
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for topic, payload in self.messages:
                    if predicate(topic, payload):
                        return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for " + what)
                self.cond.wait(left)

    def publish(self, topic, payload):
        import json
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish()

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def secure_broker(tmp_path):
    tmp = str(tmp_path)
    _pki(tmp)
    pwfile = os.path.join(tmp, "passwd")
    for i, user in enumerate(("dev1", "operator", "intruder")):
        subprocess.check_call(["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) +
                              [pwfile, user, user + "-secret"])
    with open(os.path.join(tmp, "acl"), "w") as f:
        f.write(ACL)
    port = free_port()
    extra = ("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
             "acl_file {tmp}/acl\ncafile {tmp}/ca.pem\ncertfile {tmp}/broker.pem\n"
             "keyfile {tmp}/broker.key\nrequire_certificate true\n").format(
                 port=port, pw=pwfile, tmp=tmp)
    broker = Broker(tmp, port=port, extra=extra).start()
    yield broker, tmp
    broker.stop()


def test_agent_works_through_tls_passwords_and_acls(secure_broker, run_agent, tmp_path):
    broker, tmp = secure_broker
    with open(os.path.join(tmp, "dev1.password"), "w") as f:
        f.write("dev1-secret\n")
    operator = TlsClient(broker.port, tmp, "operator", "operator-secret", subscribe="#")
    try:
        agent = run_agent(
            "dev1", "--set", "source.uri=synthetic://?fps=10", "--set", "device.group=lab",
            "--set", "mqtt.tls.enabled=true", "--set", "mqtt.tls.ca_file=" + tmp + "/ca.pem",
            "--set", "mqtt.tls.cert_file=" + tmp + "/dev1.pem",
            "--set", "mqtt.tls.key_file=" + tmp + "/dev1.key",
            "--set", "mqtt.username=dev1", "--set",
            "mqtt.password_file=" + tmp + "/dev1.password", port=broker.port)
        # 1. It works: predictions and a group command's answer arrive.
        operator.wait_for(lambda t, p: t == "edge/dev1/predictions", 60, "predictions over TLS")
        operator.publish("edge/groups/lab/cmd/ping", {"request_id": "group-1"})
        operator.wait_for(lambda t, p: t == "edge/dev1/events" and
                          p.get("request_id") == "group-1", 10, "answer to a group command")

        # 2. No credentials: the broker refuses the connection.
        anonymous = TlsClient(broker.port, tmp, None, None)
        assert anonymous.connect_rc not in (None, 0)
        anonymous.close()

        # 3. An intruder with valid credentials but no write right cannot command the device.
        intruder = TlsClient(broker.port, tmp, "intruder", "intruder-secret")
        assert intruder.connect_rc == 0
        intruder.publish("edge/dev1/cmd/ping", {"request_id": "evil"})
        intruder.close()
        operator.publish("edge/dev1/cmd/ping", {"request_id": "good"})
        operator.wait_for(lambda t, p: isinstance(p, dict) and p.get("request_id") == "good",
                          10, "the operator's ping answer")
        assert not any(isinstance(p, dict) and p.get("request_id") == "evil"
                       for _, p in operator.messages)
        assert not any(t == "edge/dev1/cmd/ping" and p.get("request_id") == "evil"
                       for t, p in operator.messages if isinstance(p, dict))

        # 4. The device's credentials cannot publish outside its own prefix.
        device_creds = TlsClient(broker.port, tmp, "dev1", "dev1-secret")
        device_creds.publish("edge/dev2/cmd/model/remove", {"request_id": "cross"})
        device_creds.publish("edge/dev1/events", {"request_id": "own-prefix"})
        device_creds.close()
        operator.wait_for(lambda t, p: t == "edge/dev1/events" and
                          p.get("request_id") == "own-prefix", 10, "the control message")
        assert not any(t.startswith("edge/dev2") for t, _ in operator.messages)
        print("security: anonymous refused (rc {}), intruder command dropped, cross-prefix "
              "publish dropped".format(anonymous.connect_rc))
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.err
        assert "dev1-secret" not in agent.err  # the password is never logged
    finally:
        operator.close()


def test_wrong_password_is_reported_not_treated_as_connected(secure_broker, run_agent):
    broker, tmp = secure_broker
    with open(os.path.join(tmp, "bad.password"), "w") as f:
        f.write("wrong\n")
    agent = run_agent(
        "dev1", "--set", "source.uri=synthetic://?fps=10", "--max-frames", "20",
        "--set", "mqtt.tls.enabled=true", "--set", "mqtt.tls.ca_file=" + tmp + "/ca.pem",
        "--set", "mqtt.tls.cert_file=" + tmp + "/dev1.pem",
        "--set", "mqtt.tls.key_file=" + tmp + "/dev1.key",
        "--set", "mqtt.username=dev1", "--set", "mqtt.password_file=" + tmp + "/bad.password",
        port=broker.port)
    assert agent.wait(60) == 0
    assert "broker refused the connection" in agent.err
    assert "MQTT connected" not in agent.err
    assert "stay spooled" in agent.err
