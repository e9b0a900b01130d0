"""The model store, verified downloads and signed installs, against real files and a real server.

Downloads go to an http.server on 127.0.0.1 (and an https one with a throwaway certificate)
whose handlers can truncate, stall, lie about Content-Length and serve oversized bodies; stalls
block on an Event the test releases, never on sleeps. Models are real ONNX files: a tiny
classifier built here with the `onnx` package (fast), and the bundled models/efficientnet_lite0.
Crash safety is checked by killing a real installer process (SIGKILL) before each of its
renames and fsyncs, then opening the store again.
"""

import base64
import datetime
import errno
import hashlib
import http.server
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import yaml


import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from agent.store import download as download_mod  # noqa: E402
from agent.store.download import (ChecksumMismatch, DownloadCancelled,  # noqa: E402
                                  DownloadError, DownloadStalled, DownloadTooLarge,
                                  DownloadTruncated, SchemeError, fetch)
from agent.errors import AgentError, ModelError  # noqa: E402
from agent.store.layout import StoreError  # noqa: E402
from agent.store.manifest import final_manifest  # noqa: E402
from agent.store.signing import SignatureError, sign_manifest  # noqa: E402
from agent.store.store import ModelStore  # noqa: E402
from agent.store.package import ModelPackage  # noqa: E402
from support.model_store import (LABELS, tiny_onnx_bytes, tiny_manifest, sha, make_package_dir,
                                 Route, _Handler, _ThreadingServer, FileServer, publish_model)

from support.paths import ROOT

BUNDLED = os.path.join(ROOT, "models", "efficientnet_lite0")


@pytest.fixture
def server() -> Any:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def store(tmp_path: Any) -> ModelStore:
    return ModelStore(str(tmp_path / "state"), keep_versions=3,
                      allowed_schemes=["https", "http", "file"], max_download_mb=1,
                      stall_timeout_s=5.0)


def store_entries(store: ModelStore) -> List[str]:
    return sorted(os.listdir(store.root))


def assert_untouched(store: ModelStore, before: List[str]) -> None:
    """A refused install leaves nothing behind: no version, no temp files."""
    assert store_entries(store) == before
    assert not [e for e in os.listdir(store.root) if e.startswith(".tmp-")]


# ----------------------------------------------------------------------------- store basics

def test_install_activate_rollback_list_remove(server: FileServer, store: ModelStore) -> None:
    seen = []  # type: List[Any]
    v1 = store.install(progress=lambda *a: seen.append(a), **publish_model(server, "1", 1))
    assert v1.ref == "tiny@1" and v1.labels == LABELS.decode().split()
    assert seen[0][0] == "downloading" and seen[-1][0] == "verifying"
    fractions = [f for phase, f, _ in seen if phase == "downloading"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert store.active_package() is None

    store.activate("tiny", "1")
    v2 = store.install(**publish_model(server, "2", 2))
    assert v2.sha256 != v1.sha256
    store.activate("tiny", "2")
    assert store.active_ref() == ("tiny", "2") and store.previous_ref() == ("tiny", "1")
    assert store.active_package().verify() == v2.sha256

    listed = {(m["name"], m["version"]): m for m in store.list()}
    assert set(listed) == {("tiny", "1"), ("tiny", "2")}
    assert listed[("tiny", "2")]["active"] and not listed[("tiny", "2")]["previous"]
    assert listed[("tiny", "1")]["previous"] and not listed[("tiny", "1")]["active"]
    assert listed[("tiny", "1")]["sha256"] == v1.sha256
    assert listed[("tiny", "1")]["size"] == os.path.getsize(v1.onnx_path)
    assert listed[("tiny", "1")]["installed_at"] > 0

    back = store.rollback()
    assert back.ref == "tiny@1"
    assert store.active_ref() == ("tiny", "1") and store.previous_ref() == ("tiny", "2")

    with pytest.raises(StoreError, match="active version"):
        store.remove("tiny", "1")
    with pytest.raises(StoreError, match="previous version"):
        store.remove("tiny", "2")
    store.install(**publish_model(server, "3", 3))
    store.remove("tiny", "3")
    assert not os.path.exists(os.path.join(store.root, "tiny", "3"))
    with pytest.raises(StoreError, match="not installed"):
        store.get("tiny", "3")

    # The manifest written into the store is the one the package was checked against.
    on_disk = ModelPackage.load(os.path.join(store.root, "tiny", "1"))
    assert on_disk.sha256 == v1.sha256 and on_disk.input.shape == [1, 3, 32, 32]


def test_rollback_without_previous_is_refused(server: FileServer, store: ModelStore) -> None:
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback()
    store.install(**publish_model(server, "1", 1))
    store.activate("tiny", "1")
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback()


def test_reinstall_same_version(server: FileServer, store: ModelStore) -> None:
    """A retried install is harmless; the same version with other bytes is refused."""
    args = publish_model(server, "1", 1)
    first = store.install(**args)
    again = store.install(**args)
    assert again.sha256 == first.sha256
    other = publish_model(server, "1b", 7)
    args.update(url=other["url"], sha256=other["sha256"], size=other["size"])
    with pytest.raises(StoreError, match="already installed with sha256"):
        store.install(**args)


def test_import_bundled_package(store: ModelStore) -> None:
    if not os.path.isfile(os.path.join(BUNDLED, "model.yaml")):
        pytest.skip("models/efficientnet_lite0 is not in this checkout")
    package = store.import_package(BUNDLED)
    assert package.ref == "efficientnet_lite0@1"
    assert package.verify() == ModelPackage.load(BUNDLED).sha256
    assert len(package.labels) == 1000
    store.activate(package.name, package.version)
    assert store.active_package().ref == "efficientnet_lite0@1"


def test_import_package_fills_in_missing_sha256(tmp_path: Any, store: ModelStore) -> None:
    src = make_package_dir(str(tmp_path / "pkg"), version="5", seed=5)
    manifest = yaml.safe_load(open(os.path.join(src, "model.yaml")))
    del manifest["sha256"]
    with open(os.path.join(src, "model.yaml"), "w") as handle:
        yaml.safe_dump(manifest, handle)
    package = store.import_package(src)
    assert package.sha256 == sha(open(os.path.join(src, "model.onnx"), "rb").read())


def test_prune_keeps_newest_and_protected(server: FileServer, tmp_path: Any) -> None:
    store = ModelStore(str(tmp_path / "state"), keep_versions=2)
    for index in range(1, 6):
        store.install(**publish_model(server, str(index), index))
        if index == 1:
            store.activate("tiny", "1")
        if index == 2:
            store.activate("tiny", "2")  # previous := 1
    store.rollback()  # active 1, previous 2: both old, both protected
    removed = store.prune()
    assert sorted(removed) == [("tiny", "3"), ("tiny", "4"), ("tiny", "5")]
    assert sorted(m["version"] for m in store.list()) == ["1", "2"]


@pytest.mark.parametrize("name,version", [
    ("../x", "1"), ("tiny", "../x"), ("a/b", "1"), ("tiny", "1/2"), ("", "1"), ("tiny", ""),
    ("/etc", "1"), ("tiny", "/abs"), ("..", "1"), ("tiny", "."), (".hidden", "1"),
    ("active.json", "1"), ("x" * 101, "1"),
])
def test_path_traversal_names_are_refused(server: FileServer, store: ModelStore, name: str,
                                          version: str) -> None:
    args = publish_model(server, "1", 1)
    args.update(name=name, version=version)
    before = store_entries(store)
    with pytest.raises(StoreError, match="is not allowed"):
        store.install(**args)
    with pytest.raises(StoreError, match="is not allowed"):
        store.activate(name, version)
    with pytest.raises(StoreError, match="is not allowed"):
        store.remove(name, version)
    assert_untouched(store, before)
    assert not os.path.exists(os.path.join(os.path.dirname(store.root), "x"))


# ----------------------------------------------------------------------------- refusals

def test_wrong_sha256_is_refused(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    args["sha256"] = "0" * 64
    before = store_entries(store)
    with pytest.raises(ChecksumMismatch) as info:
        store.install(**args)
    message = str(info.value)
    # The expected hash only: the computed one would leak the hash of an unreadable file.
    assert "0" * 64 in message and sha(tiny_onnx_bytes(1)) not in message
    assert "/tiny/1/model.onnx" in message
    assert_untouched(store, before)


def test_oversized_by_content_length(server: FileServer, store: ModelStore) -> None:
    body = b"\0" * (1024 * 1024 + 1)
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/big", body), sha256=sha(body), size=None)
    before = store_entries(store)
    with pytest.raises(DownloadTooLarge, match="announces 1048577 bytes.*max_download_mb"):
        store.install(**args)
    assert_untouched(store, before)


def test_oversized_without_content_length(server: FileServer, store: ModelStore) -> None:
    body = b"\0" * (3 * 1024 * 1024)
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/big", body, mode="no_length"), sha256=sha(body), size=None)
    before = store_entries(store)
    with pytest.raises(DownloadTooLarge, match="more than 1048576 bytes arrived"):
        store.install(**args)
    assert_untouched(store, before)


def test_oversized_by_declared_size(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    args["size"] = 5 * 1024 * 1024
    with pytest.raises(DownloadTooLarge, match="size 5242880 bytes is over the limit"):
        store.install(**args)
    assert server.httpd.requests == []  # refused before any download


def test_truncated_download(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    body = tiny_onnx_bytes(1)
    args["url"] = server.publish("/cut", body, mode="truncate")
    before = store_entries(store)
    with pytest.raises(DownloadTruncated, match=r"truncated: {} of {} bytes".format(
            len(body) // 2, len(body))):
        store.install(**args)
    assert_untouched(store, before)


def test_content_length_longer_than_body(server: FileServer, store: ModelStore) -> None:
    body = tiny_onnx_bytes(1)
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/lie", body, content_length=len(body) + 100), size=None)
    with pytest.raises(DownloadTruncated, match="truncated"):
        store.install(**args)


def test_content_length_shorter_than_body(server: FileServer, store: ModelStore) -> None:
    """A server that under-announces delivers fewer bytes than the hash was made over."""
    body = tiny_onnx_bytes(1)
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/lie", body, content_length=len(body) - 100), size=None)
    with pytest.raises(ChecksumMismatch):
        store.install(**args)
    args["size"] = len(body)
    with pytest.raises(DownloadError, match="announces {} bytes but the command says size".format(
            len(body) - 100)):
        store.install(**args)


def test_declared_size_larger_than_file(server: FileServer, store: ModelStore) -> None:
    body = tiny_onnx_bytes(1)
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/nolen", body, mode="no_length"), size=len(body) + 10)
    with pytest.raises(DownloadTruncated, match="{} of {} bytes".format(len(body),
                                                                         len(body) + 10)):
        store.install(**args)


def test_stalled_download(server: FileServer, tmp_path: Any) -> None:
    body = tiny_onnx_bytes(1)
    url = server.publish("/stall", body, mode="stall")
    dest = str(tmp_path / "model.onnx")
    with pytest.raises(DownloadStalled, match="no data for 0.3 s after {} of {} bytes".format(
            len(body) // 2, len(body))):
        fetch(url, dest, sha(body), 1 << 20, ["http"], stall_timeout_s=0.3)
    assert server.stalled.is_set()
    assert os.listdir(str(tmp_path)) == []


def test_http_error_status(server: FileServer, tmp_path: Any) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing"), str(tmp_path / "x"), None, 1 << 20, ["http"])


def test_connection_refused(tmp_path: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch("http://127.0.0.1:{}/m.onnx".format(port), str(tmp_path / "x"), None, 1 << 20,
              ["http"])


@pytest.mark.parametrize("url", ["ftp://example.com/m.onnx", "gopher://x/m", "m.onnx",
                                 "s3://bucket/m.onnx"])
def test_unknown_scheme(store: ModelStore, server: FileServer, url: str) -> None:
    args = publish_model(server, "1", 1)
    args["url"] = url
    with pytest.raises(SchemeError, match="is not supported"):
        store.install(**args)


def test_scheme_not_allowed(server: FileServer, tmp_path: Any) -> None:
    store = ModelStore(str(tmp_path / "state"), allowed_schemes=["https"])
    args = publish_model(server, "1", 1)
    with pytest.raises(SchemeError, match=r"'http' is not allowed on this device "
                                          r"\(updates.allowed_schemes: https\)"):
        store.install(**args)
    assert server.httpd.requests == []


def test_redirect_to_disallowed_scheme(server: FileServer, tmp_path: Any) -> None:
    body = tiny_onnx_bytes(1)
    server.publish("/real", body)
    url = server.publish("/moved", b"", mode="redirect", location=server.url("/real"))
    fetch(url, str(tmp_path / "ok"), sha(body), 1 << 20, ["http"])  # http -> http is fine
    to_file = server.publish("/to-file", b"", mode="redirect", location="file:///etc/passwd")
    with pytest.raises(SchemeError, match="redirects to file:///etc/passwd"):
        fetch(to_file, str(tmp_path / "x"), None, 1 << 20, ["http", "file"])
    to_https = server.publish("/to-https", b"", mode="redirect",
                              location="https://example.invalid/m.onnx?sig=secret")
    with pytest.raises(SchemeError, match=r"redirects to https://example.invalid/m.onnx\?<hidden>, "
                                          r"whose scheme 'https' is not allowed"):
        fetch(to_https, str(tmp_path / "x"), None, 1 << 20, ["http"])
    assert os.listdir(str(tmp_path)) == ["ok"]


def test_credentials_and_query_are_not_shown(server: FileServer, tmp_path: Any) -> None:
    body = tiny_onnx_bytes(1)
    url = server.publish("/m.onnx", body).replace("http://", "http://user:hunter2@")
    with pytest.raises(ChecksumMismatch) as info:
        fetch(url + "?token=s3cret", str(tmp_path / "x"), "1" * 64, 1 << 20, ["http"])
    message = str(info.value)
    assert "hunter2" not in message and "s3cret" not in message and "user" not in message
    assert "/m.onnx?<hidden>" in message
    # The credentials were used, as HTTP basic auth.
    assert server.httpd.auth == ["Basic " + base64.b64encode(b"user:hunter2").decode()]


def test_file_url_and_progress(tmp_path: Any) -> None:
    data = os.urandom(700 * 1024)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    calls = []  # type: List[Any]
    digest, count = fetch("file://" + str(src), str(tmp_path / "dst.bin"), sha(data), 1 << 20,
                          ["file"], progress=lambda done, total: calls.append((done, total)))
    assert (digest, count) == (sha(data), len(data))
    assert (tmp_path / "dst.bin").read_bytes() == data
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    assert len(calls) < 10  # throttled: 11 chunks, not one call each
    with pytest.raises(DownloadError, match="absolute path on this machine"):
        fetch("file://relative/path", str(tmp_path / "y"), None, 1 << 20, ["file"])


def test_cancel(server: FileServer, tmp_path: Any) -> None:
    url = server.publish("/m", b"x" * 200000)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        fetch(url, str(tmp_path / "m"), None, 1 << 20, ["http"], cancel=cancel)

    cancel.clear()

    def cancel_midway(done: int, total: Optional[int]) -> None:
        if done:
            cancel.set()
    download_mod.PROGRESS_INTERVAL_S, saved = 0.0, download_mod.PROGRESS_INTERVAL_S
    try:
        with pytest.raises(DownloadCancelled, match="cancelled after"):
            fetch(url, str(tmp_path / "m"), None, 1 << 20, ["http"], cancel=cancel,
                  progress=cancel_midway)
    finally:
        download_mod.PROGRESS_INTERVAL_S = saved
    assert os.listdir(str(tmp_path)) == []


def _tls_pair(tmp_path: Any) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.backends import default_backend
    from cryptography.x509.oid import NameOID
    backend = default_backend()  # required by cryptography < 3.1 (Jetson's Python 3.6)
    key = ec.generate_private_key(ec.SECP256R1(), backend)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256(), backend))
    cert_file, key_file = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with open(cert_file, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_file, key_file


def test_https_verifies_certificates(tmp_path: Any) -> None:
    cert_file, key_file = _tls_pair(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    srv = FileServer(context)
    try:
        body = tiny_onnx_bytes(1)
        url = srv.publish("/m.onnx", body)
        dest = str(tmp_path / "dl" / "m.onnx")
        os.makedirs(os.path.dirname(dest))
        with pytest.raises(DownloadError, match="TLS failed.*CA file"):
            fetch(url, dest, sha(body), 1 << 20, ["https"])
        assert not os.path.exists(dest)
        fetch(url, dest, sha(body), 1 << 20, ["https"], ca_file=cert_file)
        assert open(dest, "rb").read() == body
    finally:
        srv.close()


def test_the_ca_file_is_read_for_https_only(tmp_path: Any, server: FileServer) -> None:
    # The TLS context (the CA bundle, ~50 ms of CPU) is made only for an https URL: a plain
    # http download never reads it, an https one still refuses an unusable CA file.
    bad_ca = str(tmp_path / "not-a-bundle.pem")
    with open(bad_ca, "w") as handle:
        handle.write("not a certificate\n")
    body = tiny_onnx_bytes(1)
    dest = str(tmp_path / "m.onnx")
    fetch(server.publish("/m.onnx", body), dest, sha(body), 1 << 20, ["http"], ca_file=bad_ca)
    assert open(dest, "rb").read() == body
    with pytest.raises(DownloadError, match="cannot use CA file .*not-a-bundle.pem"):
        fetch("https://127.0.0.1:9/m.onnx", str(tmp_path / "x"), sha(body), 1 << 20,
              ["https"], ca_file=bad_ca)
    assert not os.path.exists(str(tmp_path / "x"))


def test_corrupt_onnx_is_refused(server: FileServer, store: ModelStore) -> None:
    junk = b"this is not an onnx model at all, just text\n" * 50
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/junk.onnx", junk), sha256=sha(junk), size=len(junk))
    before = store_entries(store)
    with pytest.raises(ModelError, match="not an ONNX model"):
        store.install(**args)
    assert_untouched(store, before)


def test_truncated_onnx_is_refused_without_onnx_package(server: FileServer, store: ModelStore,
                                                         monkeypatch: Any) -> None:
    """Where `onnx` is not installed (a bare Jetson), the protobuf container walk still runs."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    cut = tiny_onnx_bytes(1)[:-40]
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/cut.onnx", cut), sha256=sha(cut), size=len(cut))
    with pytest.raises(ModelError, match="truncated|not an ONNX model"):
        store.install(**args)
    assert store.install(**publish_model(server, "2", 2)).ref == "tiny@2"


def test_onnx_that_fails_to_parse(server: FileServer, store: ModelStore) -> None:
    """A well-formed protobuf container whose graph bytes are garbage: onnx.load refuses."""
    good = tiny_onnx_bytes(1)
    model = onnx.load_from_string(good)
    graph = model.graph.SerializeToString()
    junk_graph = bytes(b ^ 0x5A for b in graph)
    bad = b"\x08\x07" + b"\x3a" + _varint(len(junk_graph)) + junk_graph
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/bad.onnx", bad), sha256=sha(bad), size=len(bad))
    with pytest.raises(ModelError, match="does not parse as ONNX"):
        store.install(**args)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_external_data_models_are_refused(server: FileServer, store: ModelStore,
                                          tmp_path: Any) -> None:
    from onnx import numpy_helper
    model = onnx.load_from_string(tiny_onnx_bytes(1))
    for tensor in model.graph.initializer:  # raw_data is what external data holds
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    path = str(tmp_path / "ext.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    data = open(path, "rb").read()
    assert os.path.exists(str(tmp_path / "ext.data"))
    args = publish_model(server, "1", 1)
    args.update(url=server.publish("/ext.onnx", data), sha256=sha(data), size=len(data))
    with pytest.raises(ModelError, match="external data files"):
        store.install(**args)


def test_input_shape_must_match_manifest(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    args["manifest"] = tiny_manifest(side=64)
    before = store_entries(store)
    with pytest.raises(ModelError, match=r"has shape \[1, 3, 32, 32\] but the manifest's "
                                         r"input.shape is \[1, 3, 64, 64\]"):
        store.install(**args)
    assert_untouched(store, before)


def test_manifest_errors(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    bad = tiny_manifest()
    bad["input"]["layout"] = "CHWN"
    with pytest.raises(ModelError, match="input: layout: 'CHWN' is not one of NCHW, NHWC"):
        store.install(**dict(args, manifest=bad))
    with pytest.raises(ModelError, match="manifest's name 'other' differs"):
        store.install(**dict(args, manifest=dict(tiny_manifest(), name="other")))
    with pytest.raises(ModelError, match="no labels_url"):
        store.install(**dict(args, manifest=dict(tiny_manifest(), labels="l.txt"),
                             labels_url=None))
    with pytest.raises(ModelError, match="exactly one of manifest"):
        store.install(**dict(args, manifest=None))
    assert server.httpd.requests == []  # all refused before downloading the model


def test_manifest_url(server: FileServer, store: ModelStore) -> None:
    args = publish_model(server, "1", 1)
    manifest = args.pop("manifest")
    args["manifest_url"] = server.publish("/tiny/1/model.yaml",
                                          yaml.safe_dump(manifest).encode())
    assert store.install(**args).input.shape == [1, 3, 32, 32]
    args2 = publish_model(server, "2", 2)
    del args2["manifest"]
    args2["manifest_url"] = server.publish("/tiny/2/model.json", b"[1, 2]")
    with pytest.raises(ModelError, match="does not hold a mapping"):
        store.install(**args2)


# ----------------------------------------------------------------------------- signatures

@pytest.fixture
def keys(tmp_path: Any) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def write(tag: str) -> Any:
        private = Ed25519PrivateKey.generate()
        priv_file = str(tmp_path / "{}.key".format(tag))
        pub_file = str(tmp_path / "{}.pub".format(tag))
        with open(priv_file, "wb") as handle:
            handle.write(private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        with open(pub_file, "wb") as handle:
            handle.write(private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return private, priv_file, pub_file
    return write("device"), write("other")


def signed_args(server: FileServer, version: str, seed: int, priv_file: str) -> Dict[str, Any]:
    args = publish_model(server, version, seed)
    args["manifest"] = dict(args["manifest"], labels_sha256=sha(LABELS))
    final = final_manifest(args["name"], version, args["sha256"], args["manifest"], True)
    args["signature"] = sign_manifest(final, priv_file)
    return args


def test_good_signature_is_accepted(server: FileServer, store: ModelStore, keys: Any) -> None:
    (private, priv_file, pub_file), _ = keys
    args = signed_args(server, "1", 1, priv_file)
    package = store.install(public_key_file=pub_file, **args)
    assert package.ref == "tiny@1"
    # The canonical bytes are what the module docstring says, signed by this very key.
    final = dict(tiny_manifest(), name="tiny", version="1", sha256=args["sha256"],
                 labels="labels.txt", labels_sha256=sha(LABELS))
    canonical = json.dumps(final, sort_keys=True, separators=(",", ":")).encode()
    private.public_key().verify(base64.b64decode(args["signature"]), canonical)
    # A raw 32-byte key in base64 works as well as PEM.
    from cryptography.hazmat.primitives import serialization
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    raw_file = str(os.path.join(os.path.dirname(pub_file), "raw.pub"))
    with open(raw_file, "wb") as handle:
        handle.write(base64.b64encode(raw) + b"\n")
    assert store.install(public_key_file=raw_file,
                         **signed_args(server, "2", 2, priv_file)).ref == "tiny@2"


def test_unsigned_model_is_refused_when_a_key_is_set(server: FileServer, store: ModelStore,
                                                     keys: Any) -> None:
    (_, _, pub_file), _ = keys
    args = publish_model(server, "1", 1)
    before = store_entries(store)
    with pytest.raises(SignatureError, match="unsigned, but this device only installs signed"):
        store.install(public_key_file=pub_file, **args)
    assert_untouched(store, before)
    assert server.httpd.requests == []  # refused before downloading anything


def test_bad_signatures_are_refused(server: FileServer, store: ModelStore, keys: Any) -> None:
    (_, priv_file, pub_file), (_, other_priv, _) = keys
    before = store_entries(store)
    wrong_key = signed_args(server, "1", 1, other_priv)
    with pytest.raises(SignatureError, match="does not verify"):
        store.install(public_key_file=pub_file, **wrong_key)
    # Signed for one model file, sent with another one's sha256: the signature breaks.
    swapped = signed_args(server, "1", 1, priv_file)
    evil = tiny_onnx_bytes(99)
    swapped.update(url=server.publish("/evil.onnx", evil), sha256=sha(evil), size=len(evil))
    with pytest.raises(SignatureError, match="does not verify"):
        store.install(public_key_file=pub_file, **swapped)
    # Tampered manifest.
    tampered = signed_args(server, "1", 1, priv_file)
    tampered["manifest"]["output"] = {"name": "logits", "activation": "sigmoid"}
    with pytest.raises(SignatureError, match="does not verify"):
        store.install(public_key_file=pub_file, **tampered)
    garbage = signed_args(server, "1", 1, priv_file)
    garbage["signature"] = "bm90IGEgc2lnbmF0dXJl"
    with pytest.raises(SignatureError, match="not the base64 of a 64-byte"):
        store.install(public_key_file=pub_file, **garbage)
    unsigned_labels = signed_args(server, "1", 1, priv_file)
    unsigned_labels["manifest"].pop("labels_sha256")
    final = final_manifest("tiny", "1", unsigned_labels["sha256"], unsigned_labels["manifest"],
                           True)
    unsigned_labels["signature"] = sign_manifest(final, priv_file)
    with pytest.raises(SignatureError, match="no labels_sha256"):
        store.install(public_key_file=pub_file, **unsigned_labels)
    assert_untouched(store, before)


def test_labels_must_match_signed_hash(server: FileServer, store: ModelStore,
                                       keys: Any) -> None:
    (_, priv_file, pub_file), _ = keys
    args = signed_args(server, "1", 1, priv_file)
    server.publish("/tiny/1/labels.txt", b"cat\ndog\n")
    with pytest.raises(ChecksumMismatch, match="labels.txt"):
        store.install(public_key_file=pub_file, **args)


def test_missing_cryptography_is_explained(server: FileServer, store: ModelStore, keys: Any,
                                           monkeypatch: Any) -> None:
    (_, priv_file, pub_file), _ = keys
    args = signed_args(server, "1", 1, priv_file)
    for mod in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(SignatureError, match="'cryptography' package .* is not installed"):
        store.install(public_key_file=pub_file, **args)


def test_bad_public_key_file(server: FileServer, store: ModelStore, tmp_path: Any) -> None:
    args = publish_model(server, "1", 1)
    with pytest.raises(SignatureError, match="cannot read"):
        store.install(public_key_file=str(tmp_path / "nope.pub"), signature="x", **args)
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    with pytest.raises(SignatureError, match="is not an ed25519 public key"):
        store.install(public_key_file=str(junk), signature="x", **args)


# ----------------------------------------------------------------------------- crash safety

def check_store_is_sound(state_dir: str, allowed_active: List[Any]) -> ModelStore:
    """Open the store as the agent does at start and check every promise it makes."""
    store = ModelStore(state_dir)
    leftovers = [e for e in os.listdir(store.root) if e.startswith(".tmp-")]
    assert leftovers == [], leftovers
    active = store.active_ref()
    assert active in allowed_active
    if active is not None:
        package = store.active_package(verify=True)
        assert package.ref == "@".join(active)
        from agent.store.onnx_check import check_onnx
        check_onnx(package)
        assert package.labels
    if store.previous_ref() is not None:
        store.previous_package(verify=True)
    for entry in store.list():
        store.get(entry["name"], entry["version"], verify=True)
    return store


CHILD = r"""
import json, os, sys
sys.path.insert(0, {root!r})
from agent.store.store import ModelStore
args = json.loads(sys.argv[1])
store = ModelStore(args["state_dir"])

def gate(op, real):
    def wrapped(*a, **kw):
        sys.stdout.write("OP " + op + "\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            os._exit(3)
        return real(*a, **kw)
    return wrapped

os.rename = gate("rename", os.rename)
os.fsync = gate("fsync", os.fsync)
store.install(args["name"], "3", args["url"], args["sha256"], manifest=args["manifest"],
              labels_url=args["labels_url"])
store.activate(args["name"], "3")
store.remove(args["name"], "1")
sys.stdout.write("DONE\n")
sys.stdout.flush()
"""


def _base_state(tmp_path: Any) -> Any:
    """A store with tiny@1 (old), tiny@2 active; the child installs tiny@3 from file URLs."""
    base = str(tmp_path / "base")
    store = ModelStore(base)
    for version, seed in (("1", 1), ("2", 2)):
        store.import_package(make_package_dir(str(tmp_path / "src{}".format(version)),
                                              version=version, seed=seed))
    store.activate("tiny", "2")
    model = tiny_onnx_bytes(3)
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "model.onnx").write_bytes(model)
    (tmp_path / "pub" / "labels.txt").write_bytes(LABELS)
    args = {"name": "tiny", "url": "file://" + str(tmp_path / "pub" / "model.onnx"),
            "sha256": sha(model), "manifest": tiny_manifest(),
            "labels_url": "file://" + str(tmp_path / "pub" / "labels.txt")}
    script = str(tmp_path / "child.py")
    with open(script, "w") as handle:
        handle.write(CHILD.format(root=ROOT))
    return base, args, script


def _run_child(script: str, args: Dict[str, Any], kill_before: Optional[int]) -> int:
    """Run the installer; SIGKILL it just before its `kill_before`-th rename/fsync.

    Returns how many renames/fsyncs it reached. The child announces each one on stdout and
    waits for "go" on stdin, so the kill lands exactly there, with no timing involved.
    """
    proc = subprocess.Popen([sys.executable, script, json.dumps(args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    count = 0
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "installer child sent nothing for 60 s"
            line = proc.stdout.readline().decode()
            if not line:
                raise AssertionError("installer child ended early: {}".format(
                    proc.stderr.read().decode()[-2000:]))
            if line.startswith("DONE"):
                break
            assert line.startswith("OP "), line
            count += 1
            if count == kill_before:
                os.kill(proc.pid, signal.SIGKILL)
                break
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
    finally:
        proc.wait(30)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    if kill_before is None:
        assert proc.returncode == 0
    else:
        assert proc.returncode == -signal.SIGKILL
    return count


def test_crash_at_every_rename_and_fsync_leaves_a_sound_store(tmp_path: Any) -> None:
    base, args, script = _base_state(tmp_path)
    full = str(tmp_path / "full")
    shutil.copytree(base, full)
    total = _run_child(script, dict(args, state_dir=full), None)
    assert total >= 10
    done = check_store_is_sound(full, [("tiny", "3")])
    assert sorted(m["version"] for m in done.list()) == ["2", "3"]

    outcomes = set()
    for point in range(1, total + 1):
        state = str(tmp_path / "crash{}".format(point))
        shutil.copytree(base, state)
        _run_child(script, dict(args, state_dir=state), point)
        store = check_store_is_sound(state, [("tiny", "2"), ("tiny", "3")])
        outcomes.add((store.active_ref(), tuple(sorted(m["version"] for m in store.list()))))
        shutil.rmtree(state)
    # The kills landed before the install, between install and activation, and after it.
    assert (("tiny", "2"), ("1", "2")) in outcomes
    assert (("tiny", "2"), ("1", "2", "3")) in outcomes
    assert (("tiny", "3"), ("1", "2", "3")) in outcomes


def test_failing_fsync_aborts_cleanly(server: FileServer, store: ModelStore,
                                      monkeypatch: Any) -> None:
    """A disk error (EIO on the Nth fsync) fails the install with a clear error, nothing half."""
    store.install(**publish_model(server, "1", 1))
    store.activate("tiny", "1")
    before = store_entries(store)
    real_fsync = os.fsync
    calls = []

    def counting(fd: int) -> None:
        calls.append(fd)
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", counting)
    store.install(**publish_model(server, "2", 2))
    total = len(calls)
    store.remove("tiny", "2")
    before = store_entries(store)
    for point in range(1, total + 1):
        calls[:] = []

        def failing(fd: int, point: int = point) -> None:
            calls.append(fd)
            if len(calls) == point:
                raise OSError(errno.EIO, "Input/output error")
            return real_fsync(fd)
        monkeypatch.setattr(os, "fsync", failing)
        try:
            store.install(**publish_model(server, "2", 2))
        except StoreError as exc:
            assert "Input/output error" in str(exc) and "check free space" in str(exc)
            assert_untouched(store, before)
        else:
            # Only the fsyncs after the version was renamed into place can fail "late";
            # then the version is there and complete.
            monkeypatch.setattr(os, "fsync", real_fsync)
            store.get("tiny", "2", verify=True)
            store.remove("tiny", "2")
        monkeypatch.setattr(os, "fsync", real_fsync)
        check_store_is_sound(store.state_dir, [("tiny", "1")])


def test_leftovers_are_cleaned_but_live_work_is_kept(tmp_path: Any) -> None:
    import fcntl
    state = str(tmp_path / "state")
    store = ModelStore(state)
    dead = os.path.join(store.root, ".tmp-install-dead")
    os.makedirs(dead)
    open(os.path.join(dead, ".lock"), "w").close()
    open(os.path.join(dead, "model.onnx"), "wb").close()
    open(os.path.join(store.root, ".tmp-abc123"), "w").close()
    live = os.path.join(store.root, ".tmp-install-live")
    os.makedirs(live)
    fd = os.open(os.path.join(live, ".lock"), os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as an install in another process holds it
    try:
        ModelStore(state)
        assert sorted(e for e in os.listdir(store.root) if e.startswith(".tmp-")) == [
            ".tmp-install-live"]
    finally:
        os.close(fd)
    ModelStore(state)
    assert [e for e in os.listdir(store.root) if e.startswith(".tmp-")] == []


def test_unreadable_record_is_set_aside(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    store = ModelStore(state)
    store.import_package(make_package_dir(str(tmp_path / "src")))
    with open(os.path.join(store.root, "active.json"), "w") as handle:
        handle.write('{"active": {"name": "../../etc", "version": "1"}}')
    reopened = ModelStore(state)
    assert reopened.active_ref() is None
    assert [e for e in os.listdir(store.root) if e.startswith(".bad-")]


def test_active_record_pointing_at_a_damaged_version(tmp_path: Any) -> None:
    store = ModelStore(str(tmp_path / "state"))
    package = store.import_package(make_package_dir(str(tmp_path / "src")))
    store.activate("tiny", "1")
    with open(package.onnx_path, "ab") as handle:
        handle.write(b"bitrot")
    with pytest.raises(ModelError, match="has sha256 .* but the manifest says"):
        store.active_package()
    with pytest.raises(AgentError):
        store.activate("tiny", "1")
