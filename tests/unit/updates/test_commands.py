"""Model commands end to end below the transport: payload bytes in, event dicts out.

Everything is real except the app's two seams: `prepare` loads the package with the real ONNX
Runtime backend and runs one frame (the app's validation also compares with the old model),
and `activate` stands in for the inference thread's swap by recording what now serves. Tests
can make either one fail or block, which is what the app's real callbacks do on bad models.
Downloads come from the real HTTP server of test_models_store.
"""

import json
import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest


from agent.backends import open_backend  # noqa: E402
from agent.backends.base import BackendOptions  # noqa: E402
from agent.updates.commands import CommandError, parse_command  # noqa: E402
from agent.updates.worker import ModelManager  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.errors import BackendError  # noqa: E402
from agent.store.store import ModelStore  # noqa: E402
from support.model_store import LABELS, FileServer, publish_model, sha  # noqa: E402

from support.commands_env import TERMINAL, Events, InferenceSeam, Env
INSTALL_ORDER = ["accepted", "downloading", "verifying", "building", "validating", "activated"]
SHA = "a" * 64


# ----------------------------------------------------------------------------- parsing

def payload(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def good_install(**changes: Any) -> Dict[str, Any]:
    body = {"request_id": "r1", "name": "tiny", "version": "2",
            "url": "https://models.example/tiny/2/model.onnx", "sha256": SHA,
            "manifest": {"input": {"shape": [1, 3, 32, 32]}}}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_parse_install_defaults() -> None:
    cmd = parse_command("model/install", payload(**good_install(size=1234)))
    assert cmd.name == "model/install" and cmd.request_id == "r1"
    assert cmd.args["activate"] is True and cmd.args["size"] == 1234
    assert cmd.args["sha256"] == SHA
    cmd = parse_command("model/install", payload(**good_install(version=3, activate=False)))
    assert cmd.args["version"] == "3" and cmd.args["activate"] is False


@pytest.mark.parametrize("command,body", [
    ("ping", b"{}"), ("model/list", b"{}"),
    ("model/rollback", b'{"request_id": "x"}'),
    ("model/activate", payload(name="tiny", version="1")),
    ("model/remove", payload(name="tiny", version="1.0-rc_2")),
])
def test_parse_valid_commands(command: str, body: bytes) -> None:
    assert parse_command(command, body).name == command


@pytest.mark.parametrize("command,body,message,request_id", [
    ("model/rollback", b"", "empty payload, ignored: an empty message is how MQTT clears a "
     "retained one", None),
    ("ping", b"  ", "empty payload, ignored", None),
    ("model/install", b"{not json", "payload is not valid JSON", None),
    ("model/install", b"\xff\xfe", "payload is not UTF-8", None),
    ("model/install", b"[1, 2]", "payload must be a JSON object, got list", None),
    ("model/install", b"x" * 70000, "payload is 70000 bytes, over the limit of 65536", None),
    ("model/upgrade", payload(request_id="u1"), "unknown command 'model/upgrade'; known: "
     "model/install, model/activate", "u1"),
    ("model/install", payload(**good_install(url=None)), "model/install: url: missing", "r1"),
    ("model/install", payload(**good_install(sha256="abc")), "sha256: 'abc' is not a sha256", "r1"),
    ("model/install", payload(**good_install(size="12")), "size: '12' must be a positive integer",
     "r1"),
    ("model/install", payload(**good_install(size=0)), "size: 0 must be a positive", "r1"),
    ("model/install", payload(**good_install(activate="yes")), "activate: 'yes' must be true or "
     "false", "r1"),
    ("model/install", payload(**good_install(manifest=[1])), "manifest: must be a JSON object",
     "r1"),
    ("model/install", payload(**good_install(manifest=None)), "exactly one of manifest", "r1"),
    ("model/install", payload(**good_install(manifest_url="https://x/m.yaml")),
     "exactly one of manifest", "r1"),
    ("model/install", payload(**good_install(url="ftp://x/m.onnx")), "url: scheme 'ftp' is not "
     "supported", "r1"),
    ("model/install", payload(**good_install(name="../x")), "name: '../x' is not allowed", "r1"),
    ("model/install", payload(**good_install(version="a/b")), "version: 'a/b' is not allowed",
     "r1"),
    ("model/install", payload(**good_install(name=5)), "name: 5 is not allowed", "r1"),
    ("model/install", payload(**good_install(sha265=SHA)), "unknown field 'sha265'; allowed: name",
     "r1"),
    ("model/install", payload(**good_install(request_id="x" * 129)), "request_id: 'xxx", None),
    ("model/install", payload(**good_install(request_id=7)), "request_id: 7 must be a non-empty",
     None),
    ("model/activate", payload(name="tiny"), "model/activate: version: missing", None),
    ("ping", payload(extra=1), "ping: unknown field 'extra'", None),
    ("model/install", b'{"size": NaN}', "NaN is not a JSON number", None),
])
def test_parse_refusals(command: str, body: bytes, message: str,
                        request_id: Optional[str]) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(command, body)
    assert message in str(info.value)
    assert info.value.request_id == request_id
    assert info.value.command == command


@pytest.fixture
def env(tmp_path: Any) -> Any:
    environment = Env(tmp_path)
    yield environment
    environment.close()


def assert_in_order(states: List[str], expected: List[str]) -> None:
    positions = [expected.index(s) for s in states]
    assert positions == sorted(positions), states


def test_install_reports_every_step_and_activates(env: Env) -> None:
    env.install("1", 1, "r1")
    final = env.events.finished("r1")
    assert final["state"] == "activated", final
    assert final["detail"] == "serving tiny@1 (was none)"
    states = env.events.states("r1")
    assert states == INSTALL_ORDER
    for event in env.events.of("r1"):
        assert event["command"] == "model/install" and isinstance(event["ts"], float)
        assert "error" not in event
    downloading = [e["progress"] for e in env.events.of("r1") if e["state"] == "downloading"]
    assert downloading == sorted(downloading) and downloading[-1] == 1.0
    assert env.seam.activated == ["tiny@1"]
    assert env.store.active_ref() == ("tiny", "1")


def test_rollback_activate_list_remove_ping(env: Env) -> None:
    env.install("1", 1, "i1")
    env.install("2", 2, "i2")
    assert env.events.finished("i2")["detail"] == "serving tiny@2 (was tiny@1)"
    assert env.seam.closed == ["tiny@1"]  # the old backend was released after the swap

    env.manager.submit_raw("model/rollback", b'{"request_id": "rb"}')
    final = env.events.finished("rb")
    assert final["state"] == "activated" and final["detail"] == "serving tiny@1 (was tiny@2)"
    assert env.events.states("rb") == ["accepted", "building", "validating", "activated"]
    assert env.seam.activated == ["tiny@1", "tiny@2", "tiny@1"]
    assert env.store.active_ref() == ("tiny", "1") and env.store.previous_ref() == ("tiny", "2")

    env.manager.submit_raw("model/activate", payload(request_id="a2", name="tiny", version="2"))
    assert env.events.finished("a2")["state"] == "activated"
    assert env.store.active_ref() == ("tiny", "2")

    env.manager.submit_raw("model/list", payload(request_id="ls"))
    listed = env.events.finished("ls")
    assert listed["state"] == "done" and listed["detail"] == "2 versions installed"
    assert {(m["version"], m["active"], m["previous"]) for m in listed["models"]} == {
        ("1", False, True), ("2", True, False)}

    env.manager.submit_raw("model/remove", payload(request_id="rm1", name="tiny", version="1"))
    refused = env.events.finished("rm1")
    assert refused["state"] == "failed" and "previous version" in refused["error"]
    env.install("3", 3, "i3", activate=False)
    assert env.events.finished("i3")["state"] == "installed"
    assert env.events.states("i3") == ["accepted", "downloading", "verifying", "installed"]
    assert env.store.active_ref() == ("tiny", "2")
    env.manager.submit_raw("model/remove", payload(request_id="rm3", name="tiny", version="3"))
    removed = env.events.finished("rm3")
    assert removed["state"] == "done" and removed["detail"] == "removed tiny@3"

    env.manager.submit_raw("ping", b"{}")
    env.events.wait_for(lambda items: any(e["command"] == "ping" for e in items), "pong")
    pong = [e for e in env.events.items if e["command"] == "ping"][0]
    assert pong["state"] == "done" and pong["detail"] == "pong"
    assert pong["request_id"].startswith("agent-")  # generated: the sender gave none


def test_rollback_without_previous_fails_clearly(env: Env) -> None:
    env.manager.submit_raw("model/rollback", b'{"request_id": "rb"}')
    final = env.events.finished("rb")
    assert final["state"] == "failed" and "no previous version" in final["error"]
    assert env.seam.activated == []


@pytest.mark.parametrize("command,body,request_id,error", [
    ("model/install", b"{oops", None, "not valid JSON"),
    ("model/install", b"x" * 100000, None, "over the limit"),
    ("model/install", payload(request_id="m1", name="tiny"), "m1", "version: missing"),
    ("model/format", payload(request_id="m2"), "m2", "unknown command 'model/format'"),
    ("model/install", payload(request_id="m3", name="../x", version="1", url="http://h/m",
                              sha256=SHA, manifest={}), "m3", "'../x' is not allowed"),
])
def test_malformed_commands_are_answered(env: Env, command: str, body: bytes,
                                         request_id: Optional[str], error: str) -> None:
    env.manager.submit_raw(command, body)
    env.events.wait_for(lambda items: len(items) >= 1, "the rejection")
    event = env.events.items[0]
    assert event["state"] == "rejected" and error in event["error"]
    assert event["request_id"] == request_id and event["command"] == command
    assert len(env.events.items) == 1 and not env.manager.busy


def test_replayed_request_id_is_rejected(env: Env) -> None:
    env.install("1", 1, "same")
    assert env.events.finished("same")["state"] == "activated"
    env.install("2", 2, "same")
    env.events.wait_for(lambda items: items[-1]["state"] == "rejected", "the replay rejection")
    rejection = env.events.items[-1]
    assert rejection["request_id"] == "same" and "duplicate request_id" in rejection["error"]
    assert [e["state"] for e in env.events.of("same")].count("accepted") == 1
    assert env.store.active_ref() == ("tiny", "1")
    assert [m["version"] for m in env.store.list()] == ["1"]  # the replay did not run


def test_second_install_waits_and_a_full_queue_refuses(tmp_path: Any) -> None:
    env = Env(tmp_path, queue_size=1)
    try:
        env.seam.gate = threading.Event()
        env.install("1", 1, "first")
        assert env.seam.entered.wait(20)  # first is in prepare(), holding the worker
        env.install("2", 2, "second")
        env.install("3", 3, "third")
        queued = env.events.of("second")
        assert [e["state"] for e in queued] == ["accepted"]
        assert queued[0]["detail"] == "queued: 1 command ahead"
        third = env.events.finished("third")
        assert third["state"] == "rejected" and "busy" in third["error"]
        env.manager.submit_raw("ping", payload(request_id="p"))
        assert "running model/install first" in env.events.finished("p")["detail"]

        env.seam.gate.set()
        assert env.events.finished("first")["state"] == "activated"
        assert env.events.finished("second")["state"] == "activated"
        # Never interleaved: after its "accepted", everything of `second` follows `first`'s end.
        order = [(e["request_id"], e["state"]) for e in env.events.items]
        first_end = order.index(("first", "activated"))
        second_work = [i for i, (rid, state) in enumerate(order)
                       if rid == "second" and state != "accepted"]
        assert min(second_work) > first_end
        assert env.seam.activated == ["tiny@1", "tiny@2"]
        # A request refused for a full queue may be sent again under the same request_id.
        env.install("3", 3, "third")
        assert env.events.finished("third", nth=2)["state"] == "activated"
    finally:
        env.close()


def test_failed_prepare_keeps_the_active_model(env: Env) -> None:
    env.install("1", 1, "i1")
    assert env.events.finished("i1")["state"] == "activated"
    env.seam.fail_prepare = "TensorRT build failed: out of memory (workspace 256 MiB)"
    env.install("2", 2, "i2")
    final = env.events.finished("i2")
    assert final["state"] == "failed"
    assert final["error"] == "TensorRT build failed: out of memory (workspace 256 MiB)"
    assert final["detail"] == "serving continues on tiny@1"
    assert env.events.states("i2") == ["accepted", "downloading", "verifying", "building",
                                       "failed"]
    assert env.store.active_ref() == ("tiny", "1") and env.store.previous_ref() is None
    assert env.seam.activated == ["tiny@1"]
    # The new version stays installed, so it can be activated once the problem is fixed.
    assert sorted(m["version"] for m in env.store.list()) == ["1", "2"]


def test_failed_swap_closes_the_new_backend_and_keeps_the_record(env: Env) -> None:
    env.install("1", 1, "i1")
    assert env.events.finished("i1")["state"] == "activated"
    env.seam.fail_activate = "inference thread did not take the new model within 30 s"
    env.manager.submit_raw("model/rollback", b"{}")  # no previous yet: fails before prepare
    env.install("2", 2, "i2")
    final = env.events.finished("i2")
    assert final["state"] == "failed" and "did not take the new model" in final["error"]
    assert env.seam.closed == ["tiny@2"]
    assert env.store.active_ref() == ("tiny", "1")


def test_failed_download_is_reported(env: Env) -> None:
    env.install("1", 1, "bad", sha256="0" * 64)
    final = env.events.finished("bad")
    assert final["state"] == "failed"
    assert "does not match the expected " + "0" * 64 in final["error"]
    assert final["detail"] == "no model was active"
    assert env.seam.activated == [] and env.store.list() == []


def test_scheme_policy_from_the_store(tmp_path: Any) -> None:
    env = Env(tmp_path)
    try:
        env.manager.store = env.manager.handlers.store = ModelStore.from_updates(
            str(tmp_path / "state2"), load_config(data={"updates": {
                "allowed_schemes": ["https"], "max_download_mb": 1}}).updates)
        env.install("1", 1, "h1")
        final = env.events.finished("h1")
        assert final["state"] == "failed" and "updates.allowed_schemes: https" in final["error"]
    finally:
        env.close()


def test_signed_installs_are_enforced_from_the_updates_config(tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    pub = tmp_path / "updates.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env = Env(tmp_path, updates={"public_key_file": str(pub)})
    try:
        env.install("1", 1, "u1")
        final = env.events.finished("u1")
        assert final["state"] == "failed" and "unsigned" in final["error"]
        assert env.store.list() == []
    finally:
        env.close()


def test_stop_answers_waiting_commands(tmp_path: Any) -> None:
    env = Env(tmp_path)
    env.seam.gate = threading.Event()
    env.install("1", 1, "first")
    assert env.seam.entered.wait(20)
    env.install("2", 2, "second")
    env.stop.set()
    env.seam.gate.set()
    assert env.manager.join(20)
    first = env.events.finished("first")
    assert first["state"] == "failed" and "stopping" in first["error"]
    second = env.events.finished("second")
    assert second["state"] == "failed" and "stopped before this command ran" in second["error"]
    assert env.seam.closed == ["tiny@1"] and env.store.active_ref() is None
    assert env.restart().items == []  # both answered: nothing is left open for the next start
    env.install("3", 3, "late")
    late = env.events.finished("late")
    assert late["state"] == "rejected" and "stopping" in late["error"]
    env.server.close()


@pytest.mark.parametrize("by", ["model/cancel", "stop"])
def test_prepare_gets_a_flag_that_a_cancel_or_the_stop_sets(tmp_path: Any, by: str) -> None:
    """The flag a TensorRT 10 build polls: set by model/cancel naming the command, or by the
    agent stopping."""
    env = Env(tmp_path)
    try:
        env.seam.gate = threading.Event()
        env.install("1", 1, "slow")
        assert env.seam.entered.wait(20)
        flag = env.seam.cancel
        assert not flag.is_set()
        if by == "stop":
            env.stop.set()
        else:
            env.manager.submit_raw("model/cancel", payload(request_id="c", target="slow"))
        assert flag.is_set()
        env.seam.gate.set()
        final = env.events.finished("slow")
        assert final["state"] == "failed"
        assert final.get("cancelled") is (True if by == "model/cancel" else None), final
    finally:
        env.close()
