"""Limits and field checks of the command parser (agent/updates/commands.py parse_command) at
their boundaries, found untested by mutation testing: payload and request_id sizes, URL and
signature fields, sizes, how long values are shortened in messages, and plural field names."""

import json

import pytest

from agent.updates.commands import (MAX_PAYLOAD, MAX_REQUEST_ID, MAX_SIGNATURE, MAX_URL, CommandError,
                            parse_command)

SHA = "a" * 64


def install(**fields):
    body = {"name": "m", "version": "1", "url": "https://example.invalid/m.onnx",
            "sha256": SHA, "manifest": {}}
    body.update(fields)
    return json.dumps(body).encode()


def refused(command, payload):
    with pytest.raises(CommandError) as info:
        parse_command(command, payload)
    return str(info.value)


def test_payload_of_exactly_the_limit_is_read():
    body = b'{"request_id": "r"}'
    padded = body + b" " * (MAX_PAYLOAD - len(body))
    assert len(padded) == MAX_PAYLOAD
    assert parse_command("ping", padded).request_id == "r"
    assert "over the limit of {}".format(MAX_PAYLOAD) in refused("ping", padded + b" ")


def test_request_id_of_exactly_the_limit_is_accepted():
    rid = "r" * MAX_REQUEST_ID
    assert parse_command("ping", json.dumps({"request_id": rid}).encode()).request_id == rid
    message = refused("ping", json.dumps({"request_id": rid + "r"}).encode())
    assert "request_id" in message and "at most {}".format(MAX_REQUEST_ID) in message


@pytest.mark.parametrize("url", ["", 5, ["https://x"], {"u": 1}, True])
def test_url_must_be_a_non_empty_string(url):
    message = refused("model/install", install(url=url))
    assert message.startswith("model/install: url: ")
    assert "must be a URL string of at most {} characters".format(MAX_URL) in message


def test_url_length_limit_is_inclusive():
    base = "https://example.invalid/"
    url = base + "a" * (MAX_URL - len(base))
    assert parse_command("model/install", install(url=url)).args["url"] == url
    assert "at most {} characters".format(MAX_URL) in refused("model/install",
                                                              install(url=url + "a"))


def test_size_must_be_positive():
    assert parse_command("model/install", install(size=1)).args["size"] == 1
    for bad in (0, -1, 1.5, True, "10"):
        assert "must be a positive integer (bytes)" in refused("model/install",
                                                               install(size=bad))


def test_signature_field():
    good = "s" * MAX_SIGNATURE
    assert parse_command("model/install", install(signature=good)).args["signature"] == good
    for bad in ("", "s" * (MAX_SIGNATURE + 1), 5, ["sig"], {"s": 1}, False):
        message = refused("model/install", install(signature=bad))
        assert message == ("model/install: signature: must be the base64 ed25519 signature "
                           "(a string)"), message


def test_a_name_error_keeps_the_whole_value_in_the_message():
    message = refused("model/activate", json.dumps({"name": "a: b/c", "version": "1"}).encode())
    assert message.startswith("model/activate: name: 'a: b/c' is not allowed"), message


def test_long_values_are_shortened_to_80_characters_in_messages():
    fits = "c" * 78                       # repr is 80 characters: shown whole
    assert "unknown command {!r};".format(fits) in refused(fits, b"{}")
    long = "c" * 79                       # repr is 81: cut to 77 and "..."
    message = refused(long, b"{}")
    shown = "'" + "c" * 76 + "..."
    assert "unknown command {};".format(shown) in message, message
    assert len(shown) == 80


def test_unknown_fields_are_named_in_singular_and_plural():
    one = refused("ping", json.dumps({"a": 1}).encode())
    assert "ping: unknown field 'a'; allowed: request_id, ts" == one, one
    two = refused("ping", json.dumps({"a": 1, "b": 2}).encode())
    assert two.startswith("ping: unknown fields 'a', 'b';"), two


def test_cancel_target_field():
    longest = "t" * MAX_REQUEST_ID
    cmd = parse_command("model/cancel", json.dumps({"target": longest}).encode())
    assert cmd.args["target"] == longest
    for bad in ("", "t" * (MAX_REQUEST_ID + 1), 7, ["r1"], None):
        message = refused("model/cancel", json.dumps({"target": bad}).encode())
        assert message.startswith("model/cancel: target: "), message
    assert "must be a non-empty string of at most {} characters".format(MAX_REQUEST_ID) in \
        refused("model/cancel", json.dumps({"target": 7}).encode())


def test_ts_must_be_a_positive_finite_number():
    assert parse_command("ping", b'{"ts": 1700000000.5}').ts == 1700000000.5
    for bad in ("0", "-5", "true", '"1700000000"', "1e999", "[1]"):
        message = refused("ping", '{{"ts": {}}}'.format(bad).encode())
        assert message.startswith("ping: ts: "), message
