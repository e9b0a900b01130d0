"""Hostile commands (issue 12, items 1, 2, 4, 5, 7, 8, 9): each test fails without its fix.

Real parts only: the real ModelManager on a real store (test_commands.Env: ONNX Runtime behind
the app's prepare/activate seam), real HTTP servers on loopback (test_models_store.FileServer
and a trickle server below that sends slowly and stops by itself), and, where the bug is end
to end, the agent as a subprocess on the session's Mosquitto broker.
"""

import hashlib
import http.server
import json
import os
import socketserver
import threading
import time
from typing import Any, Dict, List

import pytest


from agent.updates.commands import Command  # noqa: E402
from agent.updates.handlers import is_downgrade  # noqa: E402
from agent.store.manifest import final_manifest  # noqa: E402
from agent.store.signing import sign_manifest  # noqa: E402
from support.commands_env import Env  # noqa: E402
from support.model_store import LABELS, publish_model, sha, tiny_manifest  # noqa: E402

SECRET = b"hunter2-broker-password\n"


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def all_text(env: Env) -> str:
    return json.dumps(env.events.items)


@pytest.fixture
def env(tmp_path: Any) -> Any:
    environment = Env(tmp_path)
    yield environment
    environment.close()


# ------------------------------------------------------------------ 1. local files

def test_file_urls_from_commands_are_refused_by_default(env: Env, tmp_path: Any) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(SECRET)
    args = publish_model(env.server, "1", 1)
    # The secret as labels (it would become the top label of every prediction).
    args.update(request_id="labels", labels_url="file://" + str(secret),
                labels_sha256=sha(SECRET))
    env.manager.submit_raw("model/install", json.dumps(args).encode())
    final = env.events.finished("labels")
    assert final["state"] == "failed", final
    assert "updates.file_roots" in final["error"] and "no file: URL" in final["error"]
    # A wrong sha256 on a local file must not tell the sender the file's real hash.
    args = publish_model(env.server, "2", 2)
    args.update(request_id="hash", url="file://" + str(secret), sha256="0" * 64,
                labels_sha256=sha(LABELS))
    env.manager.submit_raw("model/install", json.dumps(args).encode())
    assert env.events.finished("hash")["state"] == "failed"
    assert sha(SECRET) not in all_text(env) and "hunter2" not in all_text(env)
    assert env.store.list() == []


def test_file_roots_allow_only_real_paths_inside(tmp_path: Any) -> None:
    roots = tmp_path / "www"
    roots.mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(SECRET)
    (roots / "link").symlink_to(outside)
    (roots / "labels.txt").write_bytes(LABELS)
    env = Env(tmp_path, updates={"file_roots": [str(roots)]})
    try:
        for rid, url in (("symlink", "file://" + str(roots / "link")),
                         ("dotdot", "file://" + str(roots) + "/../secret")):
            args = publish_model(env.server, "1", 1)
            args.update(request_id=rid, labels_url=url, labels_sha256=sha(SECRET))
            env.manager.submit_raw("model/install", json.dumps(args).encode())
            final = env.events.finished(rid)
            assert final["state"] == "failed" and "updates.file_roots" in final["error"], final
        assert "hunter2" not in all_text(env)
        args = publish_model(env.server, "1", 1)
        args.update(request_id="inside", labels_url="file://" + str(roots / "labels.txt"),
                    labels_sha256=sha(LABELS))
        env.manager.submit_raw("model/install", json.dumps(args).encode())
        assert env.events.finished("inside")["state"] == "activated"
    finally:
        env.close()


def test_labels_need_their_own_sha256(env: Env) -> None:
    args = publish_model(env.server, "1", 1)  # labels_url without labels_sha256
    args.update(request_id="nolabelsha")
    env.manager.submit_raw("model/install", json.dumps(args).encode())
    final = env.events.finished("nolabelsha")
    assert final["state"] == "failed" and "labels_sha256" in final["error"], final
    args.update(request_id="wrong", labels_sha256="1" * 64)
    env.manager.submit_raw("model/install", json.dumps(args).encode())
    final = env.events.finished("wrong")
    assert final["state"] == "failed" and "does not match the expected " + "1" * 64 in \
        final["error"]
    assert sha(LABELS) not in final["error"]
    # In the manifest works as well as in the command.
    args.update(request_id="inmanifest", labels_sha256=None,
                manifest=dict(args["manifest"], labels_sha256=sha(LABELS)))
    env.manager.submit_raw("model/install", json.dumps(
        {k: v for k, v in args.items() if v is not None}).encode())
    assert env.events.finished("inmanifest")["state"] == "activated"


# ------------------------------------------------------------------ 2. replays

def test_replay_window_survives_a_restart_and_stays_bounded(tmp_path: Any) -> None:
    env = Env(tmp_path)
    env.manager.submit_raw("ping", body(request_id="before-restart"))
    assert env.events.finished("before-restart")["state"] == "done"
    env.close()
    env = Env(tmp_path)  # a new process on the same state_dir
    try:
        env.manager.submit_raw("ping", body(request_id="before-restart"))
        final = env.events.finished("before-restart")
        assert final["state"] == "rejected" and "duplicate request_id" in final["error"]
        window = env.manager.replay.size
        for i in range(window + 5):
            env.manager.submit_raw("ping", body(request_id="flood-{}".format(i)))
        with open(str(tmp_path / "state" / "commands-seen.json")) as handle:
            kept = json.load(handle)["request_ids"]
        assert len(kept) == window and kept[-1] == "flood-{}".format(window + 4)
    finally:
        env.close()


def test_retained_commands_are_answered_and_never_run(env: Env) -> None:
    env.manager.submit_raw("ping", body(request_id="kept"), retained=True)
    final = env.events.finished("kept")
    assert final["state"] == "rejected" and "retained" in final["error"]
    env.manager.submit_raw("model/rollback", b"[" * 3000, retained=True)
    env.events.wait_for(lambda items: any(e["command"] == "model/rollback" for e in items),
                        "the answer to a retained, unparsable rollback")
    assert [e["state"] for e in env.events.items] == ["rejected", "rejected"]


def test_old_and_future_commands_are_refused(tmp_path: Any) -> None:
    env = Env(tmp_path, updates={"command_max_age_s": 60})
    try:
        now = time.time()
        env.manager.submit_raw("ping", body(request_id="old", ts=now - 3600))
        old = env.events.finished("old")
        assert old["state"] == "rejected" and "updates.command_max_age_s" in old["error"]
        env.manager.submit_raw("ping", body(request_id="future", ts=now + 3600))
        future = env.events.finished("future")
        assert future["state"] == "rejected" and "in the future" in future["error"]
        env.manager.submit_raw("ping", body(request_id="fresh", ts=now))
        assert env.events.finished("fresh")["state"] == "done"
        env.manager.submit_raw("ping", body(request_id="bad", ts="yesterday"))
        assert "ts:" in env.events.finished("bad")["error"]
    finally:
        env.close()
    env = Env(tmp_path / "off", updates={"command_max_age_s": None})  # null: no age check
    try:
        env.manager.submit_raw("ping", body(request_id="old", ts=time.time() - 3600))
        assert env.events.finished("old")["state"] == "done"
    finally:
        env.close()


# ------------------------------------------------------------------ 4. downgrades

@pytest.mark.parametrize("new, active, lower", [
    ("9", "10", True), ("10", "9", False), ("1.2", "1.10", True), ("1.0", "1.0.1", True),
    ("1.0.1", "1.0", False), ("2", "2", False), ("2024-01-02", "2024-01-10", True),
    ("v2", "2", True), ("2", "v2", True), ("b", "a", False)])
def test_version_order(new: str, active: str, lower: bool) -> None:
    assert is_downgrade(new, active) is lower


def test_downgrade_is_refused_unless_allowed(env: Env) -> None:
    env.install("10", 10, "i10")
    assert env.events.finished("i10")["state"] == "activated"
    env.install("9", 9, "i9")
    final = env.events.finished("i9")
    assert final["state"] == "failed" and "downgrade refused" in final["error"], final
    assert final["detail"] == "serving continues on tiny@10"
    assert [m["version"] for m in env.store.list()] == ["10"]  # nothing was downloaded
    env.install("9", 9, "i9-allowed", allow_downgrade=True)
    assert env.events.finished("i9-allowed")["state"] == "activated"
    # model/activate of a lower version is a downgrade too; model/rollback stays allowed.
    env.manager.submit_raw("model/activate", body(request_id="a10", name="tiny", version="10"))
    assert env.events.finished("a10")["state"] == "activated"
    env.manager.submit_raw("model/activate", body(request_id="a9", name="tiny", version="9"))
    assert "downgrade refused" in env.events.finished("a9")["error"]
    env.manager.submit_raw("model/rollback", body(request_id="rb"))
    assert env.events.finished("rb")["state"] == "activated"
    assert env.store.active_ref() == ("tiny", "9")


def test_signed_downgrade_needs_allow_downgrade_in_the_signed_manifest(tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / "updates.key", tmp_path / "updates.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env = Env(tmp_path, updates={"public_key_file": str(public)})

    def signed(version: str, seed: int, rid: str, manifest_extra: Dict[str, Any],
               **command: Any) -> None:
        args = publish_model(env.server, version, seed)
        args["manifest"] = dict(args["manifest"], labels_sha256=sha(LABELS), **manifest_extra)
        final = final_manifest("tiny", version, args["sha256"], args["manifest"], True)
        args.update(request_id=rid, signature=sign_manifest(final, str(private)), **command)
        env.manager.submit_raw("model/install", json.dumps(args).encode())

    try:
        signed("2", 2, "s2", {})
        assert env.events.finished("s2")["state"] == "activated"
        # A captured older signed install, replayed with allow_downgrade added by the sender:
        signed("1", 1, "s1", {}, allow_downgrade=True)
        final = env.events.finished("s1")
        assert final["state"] == "failed" and "signed manifest" in final["error"], final
        signed("1", 1, "s1-signed", {"allow_downgrade": True}, allow_downgrade=True)
        assert env.events.finished("s1-signed")["state"] == "activated"
    finally:
        env.close()


# ------------------------------------------------------------------ 5. manifests

def test_manifest_url_with_aliases_or_oversized_is_refused(env: Env) -> None:
    aliased = ("input: &in\n  shape: [1, 3, 32, 32]\n  resize: {mode: stretch}\n"
               "output: {activation: softmax}\nspare: *in\n").encode()
    laughs = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        "{}: &{} [{}]\n".format(chr(98 + i), chr(98 + i), ", ".join(
            ["*" + chr(97 + i)] * 9)).encode() for i in range(8))
    big = json.dumps(tiny_manifest()).encode() + b"\n#" + b" " * 70000 + b"\n"
    for rid, document, words in (("alias", aliased, "anchors and aliases"),
                                 ("laughs", laughs, "anchors and aliases"),
                                 ("big", big, "over the limit of 65536 bytes for a manifest")):
        args = publish_model(env.server, "1", 1)
        del args["manifest"]
        args.update(request_id=rid, labels_sha256=sha(LABELS),
                    manifest_url=env.server.publish("/{}.yaml".format(rid), document))
        env.manager.submit_raw("model/install", json.dumps(args).encode())
        final = env.events.finished(rid)
        assert final["state"] == "failed" and words in final["error"], final
    assert env.store.list() == []


# ------------------------------------------------------------------ 7. probation rollback

def test_agents_own_rollback_goes_ahead_of_a_full_queue(tmp_path: Any) -> None:
    import threading as _threading
    env = Env(tmp_path, queue_size=1)
    try:
        env.install("1", 1, "i1")
        assert env.events.finished("i1")["state"] == "activated"
        env.seam.gate = _threading.Event()
        env.seam.entered.clear()
        env.install("2", 2, "i2")
        assert env.seam.entered.wait(20)  # i2 is building: the worker is busy
        env.install("3", 3, "i3")  # fills the queue
        env.install("4", 4, "i4")
        assert "busy" in env.events.finished("i4")["error"]
        env.manager.submit(Command("model/rollback", {}, "auto-rollback-1"), urgent=True)
        accepted = env.events.of("auto-rollback-1")
        assert [e["state"] for e in accepted] == ["accepted"], accepted
        env.manager.submit_raw("model/cancel", body(request_id="c", target="auto-rollback-1"))
        assert env.events.finished("c")["state"] == "rejected"  # the agent's own: not cancelled
        env.seam.gate.set()
        assert env.events.finished("i2")["state"] == "activated"
        assert env.events.finished("auto-rollback-1")["state"] == "activated"
        assert env.events.finished("i3")["state"] == "activated"
        order = [(e["request_id"], e["state"]) for e in env.events.items]
        assert order.index(("auto-rollback-1", "activated")) < order.index(("i3", "building"))
        assert env.seam.activated == ["tiny@1", "tiny@2", "tiny@1", "tiny@3"]
    finally:
        env.close()


# ------------------------------------------------------------------ 8. slow downloads

class _Trickle(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = self.server  # type: Any
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        server.started.set()
        deadline = time.monotonic() + server.max_s  # bounded: stops by itself
        try:
            while time.monotonic() < deadline and not server.done.is_set():
                self.wfile.write(b"x")
                self.wfile.flush()
                server.done.wait(server.interval)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent gave up: that is what the tests want

    def log_message(self, *args: Any) -> None:
        pass


class TrickleServer(object):
    """Answers every GET with a 100000-byte body sent one byte per `interval` seconds, for
    at most `max_s` seconds."""

    def __init__(self, interval: float = 0.05, max_s: float = 60.0) -> None:
        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
        self.httpd = Server(("127.0.0.1", 0), _Trickle)
        self.httpd.interval, self.httpd.max_s = interval, max_s  # type: ignore
        self.httpd.done = threading.Event()  # type: ignore
        self.httpd.started = threading.Event()  # type: ignore
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:{}/model.onnx".format(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.done.set()  # type: ignore
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trickle() -> Any:
    server = TrickleServer()
    yield server
    server.close()


def _install_from(env: Env, url: str, rid: str) -> None:
    args = publish_model(env.server, "2", 2)
    args.update(request_id=rid, url=url, labels_sha256=sha(LABELS))
    del args["size"]
    env.manager.submit_raw("model/install", json.dumps(args).encode())


@pytest.mark.parametrize("updates, words", [
    ({"download_min_rate_bps": 1000, "download_rate_window_s": 1}, "download_min_rate_bps"),
    ({"download_min_rate_bps": None, "download_timeout_s": 1}, "download_timeout_s")])
def test_a_trickling_download_is_stopped(tmp_path: Any, trickle: TrickleServer,
                                         updates: Dict[str, Any], words: str) -> None:
    env = Env(tmp_path, updates=updates)
    try:
        _install_from(env, trickle.url, "slow")
        final = env.events.finished("slow")
        assert final["state"] == "failed" and words in final["error"], final
        assert env.store.list() == []
    finally:
        env.close()


def test_ping_list_and_cancel_are_answered_during_a_download(env: Env,
                                                             trickle: TrickleServer) -> None:
    env.install("1", 1, "i1")
    assert env.events.finished("i1")["state"] == "activated"
    _install_from(env, trickle.url, "slow")
    env.install("3", 3, "queued")
    env.events.wait_for(lambda items: any(e["request_id"] == "slow" and
                                          e["state"] == "downloading" for e in items),
                        "the slow download to start")
    env.manager.submit_raw("ping", body(request_id="p"))
    assert "running model/install slow" in env.events.finished("p")["detail"]
    env.manager.submit_raw("model/list", body(request_id="l"))
    assert env.events.finished("l")["state"] == "done"
    # Cancel the queued one first (it never runs), then the running download.
    env.manager.submit_raw("model/cancel", body(request_id="c1", target="queued"))
    assert env.events.finished("c1")["state"] == "done"
    queued = env.events.finished("queued")
    assert queued["state"] == "failed" and queued["cancelled"] is True
    env.manager.submit_raw("model/cancel", body(request_id="c2", target="slow"))
    assert env.events.finished("c2")["state"] == "done"
    slow = env.events.finished("slow")
    assert slow["state"] == "failed" and slow["cancelled"] is True, slow
    assert "cancelled by model/cancel c2" in slow["error"]
    assert slow["detail"] == "serving continues on tiny@1"
    env.manager.submit_raw("model/cancel", body(request_id="c3", target="slow"))
    assert env.events.finished("c3")["state"] == "failed"  # nothing by that id runs now
    assert env.store.active_ref() == ("tiny", "1") and env.seam.activated == ["tiny@1"]


# ------------------------------------------------------------------ 2 and 9 over MQTT

def test_retained_and_deeply_nested_commands_over_mqtt(broker: Any, run_agent: Any) -> None:
    from support.mqtt_recorder import Recorder
    device = "hostile-{}".format(os.getpid())
    # Only the events: a recorder on "#" would get the nested payloads too, and its own JSON
    # decoding would hit the RecursionError this test is about.
    recorder = Recorder(broker.port, "edge/{}/+".format(device))  # not cmd/...
    base = "edge/{}/cmd/".format(device)
    # A retained command waiting on the broker before the agent starts.
    recorder.client.publish(base + "ping", json.dumps({"request_id": "kept"}), qos=1,
                            retain=True).wait_for_publish()
    try:
        for start in (1, 2):  # the broker replays it at every (re)connect
            since = recorder.mark()
            agent = run_agent(device, "--set", "source.uri=synthetic://?fps=5")
            rejected = recorder.wait_topic(
                device + "/events", lambda p: p.get("request_id") == "kept", 60,
                "the answer to the retained command (start {})".format(start), since=since)
            assert rejected["state"] == "rejected" and "retained" in rejected["error"], rejected
            if start == 1:
                recorder.wait_topic(device + "/status", lambda p: p.get("state") == "serving",
                                    60, "serving", since=since)
                # 3,000 '[' (RecursionError in json) must be answered like any bad payload.
                for command, payload in (
                        ("model/install", b"[" * 3000),
                        ("ping", ('{"request_id": "deep", "x": ' + "[" * 3000 + "]" * 3000 +
                                  "}").encode())):
                    mark = recorder.mark()
                    recorder.publish(base + command, payload)
                    answer = recorder.wait_topic(
                        device + "/events", lambda p: p.get("command") == command, 60,
                        "the answer to a deeply nested " + command, since=mark)
                    assert answer["state"] == "rejected", answer
                    assert "nested too deeply" in answer["error"], answer
                recorder.publish(base + "ping", {"request_id": "alive"})
                alive = recorder.wait_topic(device + "/events",
                                            lambda p: p.get("request_id") == "alive", 30, "pong")
                assert alive["state"] == "done"
            agent.signal(15)
            assert agent.wait(30) == 0, agent.err
        kept = [p for p in recorder.of(device + "/events") if p.get("request_id") == "kept"]
        assert [p["state"] for p in kept] == ["rejected", "rejected"]
    finally:
        recorder.client.publish(base + "ping", b"", qos=1, retain=True).wait_for_publish()
        recorder.close()
