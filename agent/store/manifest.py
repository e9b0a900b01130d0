"""Manifests an install writes: built from a command, fetched from manifest_url, dumped as YAML."""

import copy
import os
from typing import Any, Dict, Optional, Sequence

from ..errors import ModelError
from .download import DownloadTooLarge, check_sha256, fetch, redact_url
from .layout import RESERVED_FILES
from .package import load_untrusted_yaml

MANIFEST_MAX_BYTES = 64 * 1024  # a manifest is ~1 KB; refused above this before parsing


def final_manifest(name: str, version: str, sha256: str, manifest: Any,
                   with_labels: bool) -> Dict[str, Any]:
    """The manifest an install writes and a signature covers (see agent.store.signing)."""
    if not isinstance(manifest, dict):
        raise ModelError("model {}@{}: manifest must be a mapping (name, version, input, "
                         "output, ...), got {}".format(name, version, type(manifest).__name__))
    final = copy.deepcopy(manifest)
    for key, want in (("name", name), ("version", version), ("sha256", sha256.lower())):
        have = final.get(key)
        if have is not None:
            have_s = str(have).lower() if key == "sha256" else str(have)
            if have_s != want:
                raise ModelError("model {}@{}: the manifest's {} {!r} differs from the "
                                 "command's {!r}; make them agree".format(
                                     name, version, key, have, want))
        final[key] = want
    final.setdefault("file", "model.onnx")
    if with_labels:
        if final.get("labels") is None:
            final["labels"] = "labels.txt"
    elif final.get("labels") is not None:
        raise ModelError("model {}@{}: the manifest names labels file {!r} but the command has "
                         "no labels_url; add labels_url or drop 'labels' from the "
                         "manifest".format(name, version, final["labels"]))
    if final.get("labels_sha256") is not None:
        final["labels_sha256"] = check_sha256(
            final["labels_sha256"], "model {}@{}: manifest labels_sha256".format(name, version))
    files = [final["file"]] + ([final["labels"]] if final.get("labels") else [])
    for value in files:
        if value in RESERVED_FILES:
            raise ModelError("model {}@{}: the manifest uses {!r} as a file name, which the "
                             "store reserves; rename it".format(name, version, value))
    if len(files) == 2 and files[0] == files[1]:
        raise ModelError("model {}@{}: 'file' and 'labels' are both {!r}; they must "
                         "differ".format(name, version, files[0]))
    return final


def fetch_manifest(url: str, path: str, name: str, version: str,
                   allowed_schemes: Sequence[str], **fetch_options: Any) -> Dict[str, Any]:
    """The mapping at `url` (JSON or YAML), downloaded to the scratch file `path` (removed
    after); `fetch_options` are agent.store.download.fetch's keyword arguments."""
    import yaml
    # The size cap applies before parsing; anchors/aliases are refused while parsing.
    try:
        fetch(url, path, None, MANIFEST_MAX_BYTES, allowed_schemes, **fetch_options)
    except DownloadTooLarge:
        raise ModelError("model {}@{}: manifest_url {} is over the limit of {} bytes for a "
                         "manifest (a few KB: name, version, input, output); check that the "
                         "URL names the manifest, not the model".format(
                             name, version, redact_url(url), MANIFEST_MAX_BYTES))
    try:
        with open(path, "rb") as handle:
            data = load_untrusted_yaml(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError("model {}@{}: manifest_url {} is not a JSON or YAML document: "
                         "{}".format(name, version, redact_url(url),
                                     " ".join(str(exc).split())))
    finally:
        os.unlink(path)
    if not isinstance(data, dict):
        raise ModelError("model {}@{}: manifest_url {} does not hold a mapping (name, "
                         "version, input, output, ...)".format(name, version, redact_url(url)))
    return data


def yaml_bytes(data: Dict[str, Any], comment: Optional[str] = None) -> bytes:
    """A manifest as model.yaml's bytes, with an optional comment line on top."""
    import yaml
    text = yaml.safe_dump(data, default_flow_style=False)
    if comment:
        text = "# {}\n{}".format(comment, text)
    return text.encode("utf-8")
