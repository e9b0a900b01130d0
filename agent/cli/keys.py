"""`edge-agent keys generate` and `edge-agent verify`: signing keys, signed packages, checks.

A package's signature is what a device checks at model/install (agent/store/signing.py): the
base64 ed25519 signature over the canonical bytes of the *final manifest*, the one the device
computes from the install command. For a package written by `edge-agent package`, model.yaml
already is that final manifest (name, version, sha256, file, labels, labels_sha256), so the
signature in DIR/model.sig is valid for the install payload that `serve-models` prints.
"""

import argparse
import os
from typing import Any, Dict, List, Optional

from ..errors import AgentError, ModelError
from ..store.manifest import final_manifest
from ..store.package import ModelPackage, load_untrusted_yaml, sha256_file

SIGNATURE_FILE = "model.sig"


def signed_manifest(root: str) -> Dict[str, Any]:
    """The final manifest of the package in `root`, as a device computes it at install."""
    package = ModelPackage.load(root)
    with open(package.manifest_path, "r", encoding="utf-8") as handle:
        raw = load_untrusted_yaml(handle.read())
    if not package.sha256:
        raise ModelError("{}: has no sha256; package it with `edge-agent package`, which "
                         "writes it".format(package.manifest_path))
    if package.labels_file and not raw.get("labels_sha256"):
        raise ModelError("{}: names labels but has no labels_sha256, so a signature would not "
                         "cover them; package it with `edge-agent package`".format(
                             package.manifest_path))
    return final_manifest(package.name, package.version, package.sha256, raw,
                          package.labels_file is not None)


def sign_package(root: str, private_key_file: str) -> str:
    """Sign the package in `root`, writing root/model.sig; returns the signature."""
    from ..store.signing import sign_manifest
    signature = sign_manifest(signed_manifest(root), private_key_file)
    with open(os.path.join(root, SIGNATURE_FILE), "w", encoding="ascii") as handle:
        handle.write(signature + "\n")
    return signature


def read_signature(root: str) -> Optional[str]:
    """root/model.sig's signature, or None when the package is unsigned."""
    path = os.path.join(root, SIGNATURE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="ascii", errors="replace") as handle:
        return handle.read().strip()


def verify_package(root: str, public_key_file: Optional[str]) -> List[str]:
    """Check the package as a device would; the lines to print. ModelError on a problem."""
    from ..store.onnx_check import check_onnx
    from ..store.signing import verify_manifest_signature
    package = ModelPackage.load(root)
    lines = ["{}: model {}".format(package.manifest_path, package.ref)]
    lines.append("sha256 {} matches {}".format(package.verify(), package.file))
    final = signed_manifest(root)
    if package.labels_file:
        labels_path = os.path.join(package.root, package.labels_file)
        actual = sha256_file(labels_path)
        if actual != final["labels_sha256"]:
            raise ModelError("{}: labels_sha256 says {} but {} has {}; package again".format(
                package.manifest_path, final["labels_sha256"], labels_path, actual))
        lines.append("labels_sha256 matches {} ({} labels)".format(package.labels_file,
                                                                   len(package.labels)))
    check_onnx(package)
    lines.append("ONNX install check: passed")
    signature = read_signature(root)
    if public_key_file:
        verify_manifest_signature(final, signature, public_key_file)
        lines.append("signature: valid for {}".format(public_key_file))
    elif signature:
        lines.append("signature: present, not checked (give --key PUBLIC.pem)")
    else:
        lines.append("signature: none (unsigned package)")
    return lines


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys generate`: a new ed25519 pair, PREFIX.key (private) and PREFIX.pub (public)."""
    from ..store.signing import generate_keypair
    private, public = args.out + ".key", args.out + ".pub"
    raw = generate_keypair(private, public)
    print("private key: {} (keep it off the devices; `edge-agent package --sign {}`)".format(
        private, private))
    print("public key:  {} (on each device: updates.public_key_file)".format(public))
    print("public key, raw base64: {}".format(raw))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        lines = verify_package(args.dir, args.key)
    except AgentError as exc:
        print("edge-agent: verify {}: FAILED: {}".format(args.dir, exc))
        return 1
    for line in lines:
        print(line)
    print("OK")
    return 0
