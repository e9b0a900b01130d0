"""Ed25519 signatures of model manifests: the canonical bytes, verification and signing.

When `updates.public_key_file` names an ed25519 public key (PEM, or the raw 32-byte key in
base64), an install must carry `signature`: the standard base64 of the 64-byte ed25519
signature over the *canonical manifest bytes*:

    json.dumps(final_manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
               allow_nan=False).encode("ascii")

`final_manifest` is the manifest the install uses (the inline `manifest` object or the document
at `manifest_url`) with `name`, `version` (a string) and `sha256` (lowercase) set from the
command, `file` defaulting to "model.onnx" and, when `labels_url` is given, `labels` defaulting
to "labels.txt" and `labels_sha256` required. `agent.store.manifest.final_manifest()` and
`sign_manifest()` below compute exactly this; a signer in another language must reproduce
Python's JSON number formatting (write floats like 127.0 as 127.0, or use integers). The
signature thereby covers the model's sha256 and, through `labels_sha256`, its labels: a signed
install cannot be given another model file or other labels. The signature is checked before
the model is downloaded.
"""

import base64
import json
import os
from typing import Any, Dict, Optional

from ..errors import ModelError


class SignatureError(ModelError):
    """A model's signature is missing, malformed or does not verify."""


def canonical_manifest_bytes(manifest: Dict[str, Any]) -> bytes:
    """The bytes an install signature signs; see the module docstring."""
    try:
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError("manifest of {}@{}: holds a value JSON cannot carry ({}); use only "
                         "strings, numbers, booleans, lists and mappings".format(
                             manifest.get("name"), manifest.get("version"), exc))
    return text.encode("ascii")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.backends import default_backend
        from cryptography.exceptions import InvalidSignature
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise SignatureError("updates.public_key_file is set, so installs must be signed, but the "
                             "'cryptography' package (2.6 or newer, for ed25519) is not installed "
                             "or does not import ({}: {}): pip3 install 'cryptography>=2.6' "
                             "(Ubuntu 18.04's python3-cryptography 2.1 is too old)".format(
                                 type(exc).__name__, exc))
    return ed25519, serialization, default_backend, InvalidSignature


def _load_public_key(path: str) -> Any:
    ed25519, serialization, default_backend, _ = _crypto()
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise SignatureError("updates.public_key_file: cannot read {}: {}; fix the path or "
                             "the file's permissions".format(path, exc))
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data, backend=default_backend())
        else:
            key = ed25519.Ed25519PublicKey.from_public_bytes(
                base64.b64decode(data.strip(), validate=True))
    except Exception as exc:  # cryptography raises several types for a bad key
        raise SignatureError("updates.public_key_file: {} is not an ed25519 public key (PEM, or "
                             "32 raw bytes in base64): {}".format(path, exc))
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError("updates.public_key_file: {} holds a {} key; model signatures use "
                             "ed25519".format(path, type(key).__name__))
    return key


def verify_manifest_signature(manifest: Dict[str, Any], signature: Optional[str],
                              public_key_file: str) -> None:
    """Refuse a manifest that is unsigned or whose signature does not verify."""
    ref = "{}@{}".format(manifest.get("name"), manifest.get("version"))
    key = _load_public_key(public_key_file)
    if not signature:
        raise SignatureError("model {}: unsigned, but this device only installs signed models "
                             "(updates.public_key_file is set); sign the manifest and send "
                             "'signature'".format(ref))
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True) \
            if isinstance(signature, str) else b""
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 64:
        raise SignatureError("model {}: signature is not the base64 of a 64-byte ed25519 "
                             "signature; send base64(sign(canonical manifest bytes))".format(ref))
    invalid = _crypto()[3]
    try:
        key.verify(raw, canonical_manifest_bytes(manifest))
    except invalid:
        raise SignatureError("model {}: the signature does not verify with {}; the manifest or "
                             "model sha256 was changed after signing, or it was signed with "
                             "another key".format(ref, public_key_file))


def sign_manifest(manifest: Dict[str, Any], private_key_file: str) -> str:
    """The base64 `signature` for a final manifest (for operator tools, e.g. `send`)."""
    ed25519, serialization, default_backend, _ = _crypto()
    try:
        with open(private_key_file, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None,
                                                     backend=default_backend())
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError("cannot use {} as a signing key: {}; give the private key PEM "
                             "that `edge-agent keys generate` wrote".format(private_key_file, exc))
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError("{} is not an ed25519 private key".format(private_key_file))
    return base64.b64encode(key.sign(canonical_manifest_bytes(manifest))).decode("ascii")


def generate_keypair(private_key_file: str, public_key_file: str) -> str:
    """Write a new ed25519 key pair (PEM; the private key 0600, never over an existing file)
    and return the public key as base64 of its 32 raw bytes."""
    ed25519, serialization, _, _ = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_key_file, public_key_file):
        if os.path.exists(path):
            raise SignatureError("{} exists; keys are never overwritten: choose another name or "
                                 "remove it first".format(path))
    for path, data, mode in ((private_key_file, private_pem, 0o600),
                             (public_key_file, public_pem, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")
