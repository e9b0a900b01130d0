"""The local model store: installed model packages, which one is active, installs and removals.

Layout under `state_dir/models`:

    <name>/<version>/   a complete package: model.yaml, the ONNX file, labels, .install.json
    active.json         {"active": {"name", "version"}, "previous": {...} or null}
    .lock               serialises changes between threads and processes (daemon and CLI)
    .tmp-*              work in progress: a version being assembled, a record being written,
                        a version being deleted

Crash safety: a version directory is assembled in a `.tmp-*` directory (every file written to a
temp name, fsynced and renamed) and renamed to `<name>/<version>` only when complete and
verified; `active.json` is replaced by writing a temp file, fsyncing it, renaming it over the
old one and fsyncing the directory; a removal first renames the version out of sight. So after
a crash at any instant the record is absent or names a complete, verified version, and the only
debris is `.tmp-*` entries, which the next `ModelStore` removes (except those a live process
still holds: an install holds an flock on `.tmp-*/.lock` while it works).

Signatures: when `updates.public_key_file` names an ed25519 public key (PEM, or the raw 32-byte
key in base64), an install must carry `signature`: the standard base64 of the 64-byte ed25519
signature over the *canonical manifest bytes*:

    json.dumps(final_manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
               allow_nan=False).encode("ascii")

`final_manifest` is the manifest the install uses (the inline `manifest` object or the document
at `manifest_url`) with `name`, `version` (a string) and `sha256` (lowercase) set from the
command, `file` defaulting to "model.onnx" and, when `labels_url` is given, `labels` defaulting
to "labels.txt" and `labels_sha256` required. `final_manifest()` and `sign_manifest()` below
compute exactly this; a signer in another language must reproduce Python's JSON number
formatting (write floats like 127.0 as 127.0, or use integers). The signature thereby covers
the model's sha256 and, through `labels_sha256`, its labels: a signed install cannot be given
another model file or other labels. The signature is checked before the model is downloaded.
"""

import base64
import contextlib
import copy
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import atomicfile
from .atomicfile import fsync_dir
from .download import DownloadTooLarge, check_sha256, fetch, redact_url
from .errors import ModelError
from .package import MANIFEST_NAME, ModelPackage, _safe_component, load_untrusted_yaml

try:
    import fcntl
except ImportError:  # not Linux: locks become no-ops (the agent targets Linux)
    fcntl = None  # type: ignore

log = logging.getLogger(__name__)

RECORD_NAME = "active.json"
META_NAME = ".install.json"
LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
RESERVED_FILES = (MANIFEST_NAME, META_NAME, LOCK_NAME)
MAX_COMPONENT = 100
MANIFEST_MAX_BYTES = 64 * 1024  # a manifest is ~1 KB; refused above this before parsing
LABELS_MAX_BYTES = 16 << 20

# progress(phase, fraction 0..1 or None, detail): the same shape as backends.Progress.
Progress = Callable[[str, Optional[float], str], None]


class StoreError(ModelError):
    """The store cannot do what was asked (unknown version, protected version, bad record)."""


class SignatureError(ModelError):
    """A model's signature is missing, malformed or does not verify."""


# ------------------------------------------------------------------------------ names

def check_component(kind: str, value: Any) -> str:
    """A model name or version usable as one directory name; refuses traversal like '../x'."""
    if isinstance(value, int) and not isinstance(value, bool) and kind == "version":
        value = str(value)
    if (not isinstance(value, str) or not _safe_component(value) or value.startswith(".") or
            len(value) > MAX_COMPONENT or value == RECORD_NAME):
        raise StoreError("model {}: {!r} is not allowed; use 1 to {} letters, digits, '_', '-' "
                         "and '.', not starting with '.' (no '/', no '..')".format(
                             kind, value, MAX_COMPONENT))
    return value


# ------------------------------------------------------------------------------ manifests

def final_manifest(name: str, version: str, sha256: str, manifest: Any,
                   with_labels: bool) -> Dict[str, Any]:
    """The manifest an install writes (and a signature covers); see the module docstring."""
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
    with open(private_key_file, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), password=None,
                                                 backend=default_backend())
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError("{} is not an ed25519 private key".format(private_key_file))
    return base64.b64encode(key.sign(canonical_manifest_bytes(manifest))).decode("ascii")


# ------------------------------------------------------------------------------ ONNX checks

def _varint(handle: Any) -> Optional[int]:
    shift = 0
    value = 0
    while True:
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            return None


def scan_onnx_container(path: str) -> None:
    """Walk the top-level protobuf fields of an ONNX file without loading it.

    Catches a file that is not ONNX at all or is truncated, where the `onnx` package is not
    installed. A ModelProto must have ir_version (field 1) and a graph (field 7).
    """
    size = os.path.getsize(path)
    seen = set()
    with open(path, "rb") as handle:
        while handle.tell() < size:
            tag = _varint(handle)
            if tag is None or tag >> 3 == 0:
                raise ModelError("{}: is not an ONNX model (bad protobuf tag at byte {}); the "
                                 "file is corrupt or not ONNX".format(path, handle.tell()))
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(handle) is None:
                    raise ModelError("{}: is not an ONNX model (truncated field {}); the file "
                                     "is corrupt or not ONNX".format(path, field))
            elif wire in (1, 5):
                handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(handle)
                if length is None or handle.tell() + length > size:
                    raise ModelError("{}: is not an ONNX model (field {} runs past the end of "
                                     "the file); the file is truncated or corrupt".format(
                                         path, field))
                handle.seek(length, os.SEEK_CUR)
            else:
                raise ModelError("{}: is not an ONNX model (protobuf wire type {} at byte {}); "
                                 "the file is corrupt or not ONNX".format(
                                     path, wire, handle.tell()))
            seen.add((field, wire))
        if handle.tell() != size:
            raise ModelError("{}: is not an ONNX model (its last field runs past the end); the "
                             "file is truncated".format(path))
    if (1, 0) not in seen or (7, 2) not in seen:
        raise ModelError("{}: is not an ONNX model (no ir_version or no graph); export the "
                         "model to ONNX again".format(path))


def check_onnx(package: ModelPackage) -> None:
    """The package's ONNX file parses and its single input has the manifest's shape.

    Uses the `onnx` package when installed, else only the container walk; ONNX Runtime or
    TensorRT load it for real later, in the backend.
    """
    path = package.onnx_path
    scan_onnx_container(path)
    try:
        import onnx
    except Exception as exc:  # ImportError, or a broken install (e.g. SystemError from numpy)
        log.info("onnx package not installed or unusable (%s: %s): %s checked as a protobuf "
                 "container only", type(exc).__name__, exc, path)
        return
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise ModelError("model {}: {} does not parse as ONNX: {}; the file is corrupt or not "
                         "ONNX".format(package.ref, path, exc))
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ModelError("model {}: {} keeps weights in external data files; the store installs "
                         "single-file models: export it with the weights inside the .onnx "
                         "file".format(package.ref, path))
    initializers = set(t.name for t in graph.initializer)
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError("model {}: the ONNX graph has {} inputs ({}); image classifiers take "
                         "exactly one".format(package.ref, len(inputs),
                                              ", ".join(i.name for i in inputs) or "none"))
    if not graph.node or not graph.output:
        raise ModelError("model {}: the ONNX graph has no nodes or no outputs; export the model "
                         "again".format(package.ref))
    tensor_type = inputs[0].type.tensor_type
    want = list(package.input.shape)
    if tensor_type.HasField("shape"):
        have = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or "?"
                for d in tensor_type.shape.dim]
        if len(have) != len(want) or any(isinstance(h, int) and h != w
                                          for h, w in zip(have, want)):
            raise ModelError("model {}: the ONNX input {!r} has shape {} but the manifest's "
                             "input.shape is {}; fix input.shape in the manifest".format(
                                 package.ref, inputs[0].name, have, want))
    wanted = package.output.name
    outputs = [o.name for o in graph.output]
    if wanted and wanted not in outputs:
        raise ModelError("model {}: output {!r} named in the manifest is not an output of the "
                         "ONNX graph (outputs: {}); fix output.name".format(
                             package.ref, wanted, ", ".join(outputs)))


# ------------------------------------------------------------------------------ file helpers

def write_atomic(path: str, data: bytes) -> None:
    """Write a file so a crash leaves either the old or the new content, never a mix."""
    atomicfile.write_atomic(path, data, TMP_PREFIX)


def _copy_atomic(src: str, dst: str) -> None:
    atomicfile.copy_atomic(src, dst, TMP_PREFIX)


def _setting(config: Any, key: str, default: Any, keep_null: bool = False) -> Any:
    """A key of the `updates` config, given as a mapping or as an object with attributes.
    A null value gives `default`, unless `keep_null` (for keys where null means "off")."""
    if config is None:
        return default
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None and not keep_null else value


@contextlib.contextmanager
def _fs_errors(what: str, root: str) -> Iterator[None]:
    """Turn a file-system failure (disk full, permissions) into a StoreError for the user."""
    try:
        yield
    except OSError as exc:
        raise StoreError("model store: {} failed: {}; check free space and permissions under "
                         "{}".format(what, exc, root))


# ------------------------------------------------------------------------------ the store

class ModelStore(object):
    """Installed model versions under `state_dir/models` and the active/previous record.

    Safe to use from several threads and processes at once (an flock on `models/.lock`
    serialises changes); downloads run outside that lock.
    """

    def __init__(self, state_dir: str, keep_versions: int = 3,
                 allowed_schemes: Sequence[str] = ("https", "http", "file"),
                 max_download_mb: int = 512, ca_file: Optional[str] = None,
                 stall_timeout_s: float = 30.0) -> None:
        if keep_versions < 1:
            raise StoreError("updates.keep_versions: {!r} must be at least 1".format(
                keep_versions))
        self.state_dir = state_dir
        self.root = os.path.join(state_dir, "models")
        self.keep_versions = keep_versions
        self.allowed_schemes = [s.lower() for s in allowed_schemes]
        self.max_bytes = int(max_download_mb) * 1024 * 1024
        self.ca_file = ca_file
        self.stall_timeout_s = stall_timeout_s
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError("model store: cannot create {}: {}; fix device.state_dir or its "
                             "permissions".format(self.root, exc))
        with _fs_errors("opening", self.root):
            self._clean_leftovers()
            self._set_aside_bad_record()

    @classmethod
    def from_updates(cls, state_dir: str, updates: Any) -> "ModelStore":
        """A store configured by the `updates` config section (mapping or object)."""
        return cls(state_dir, keep_versions=int(_setting(updates, "keep_versions", 3)),
                   allowed_schemes=_setting(updates, "allowed_schemes",
                                            ["https", "http", "file"]),
                   max_download_mb=int(_setting(updates, "max_download_mb", 512)),
                   ca_file=_setting(updates, "ca_file", None))

    # -------------------------------------------------------------- locking and start

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self._depth += 1
            try:
                if self._depth == 1 and fcntl is not None:
                    self._lock_fd = os.open(os.path.join(self.root, LOCK_NAME),
                                            os.O_CREAT | os.O_RDWR, 0o644)
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd >= 0:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = -1

    def _clean_leftovers(self) -> None:
        """Remove `.tmp-*` debris of crashed writers; keep what a live process still holds."""
        with self._locked():
            changed = False
            for entry in os.listdir(self.root):
                if not entry.startswith(TMP_PREFIX):
                    continue
                path = os.path.join(self.root, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    holder = _try_lock(os.path.join(path, LOCK_NAME))
                    if holder is False:
                        continue  # an install in another process is still working here
                    try:
                        shutil.rmtree(path)
                    finally:
                        if holder is not None and holder is not True:
                            os.close(holder)
                else:
                    os.unlink(path)
                changed = True
                log.info("model store: removed %s left by an interrupted operation", path)
            for name in self._names():
                name_dir = os.path.join(self.root, name)
                if not os.listdir(name_dir):
                    os.rmdir(name_dir)
                    changed = True
            if changed:
                fsync_dir(self.root)

    def _set_aside_bad_record(self) -> None:
        """A record that cannot be read (disk damage, hand edits) is kept aside, not trusted."""
        with self._locked():
            try:
                self._read_record()
            except StoreError as exc:
                aside = os.path.join(self.root, ".bad-{}-{}".format(int(time.time()), RECORD_NAME))
                os.rename(os.path.join(self.root, RECORD_NAME), aside)
                fsync_dir(self.root)
                log.warning("%s; moved it to %s, no model is active now", exc, aside)

    # -------------------------------------------------------------- the record

    def _record_path(self) -> str:
        return os.path.join(self.root, RECORD_NAME)

    def _read_record(self) -> Dict[str, Optional[Tuple[str, str]]]:
        path = self._record_path()
        try:
            with open(path, "rb") as handle:
                raw = json.loads(handle.read().decode("utf-8"))
        except (OSError, IOError) as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return {"active": None, "previous": None}
            raise StoreError("model store: cannot read {}: {}".format(path, exc))
        except ValueError as exc:
            raise StoreError("model store: {} is not valid JSON ({})".format(path, exc))
        out = {}  # type: Dict[str, Optional[Tuple[str, str]]]
        if not isinstance(raw, dict):
            raise StoreError("model store: {} is not a JSON object".format(path))
        for key in ("active", "previous"):
            value = raw.get(key)
            if value is None:
                out[key] = None
                continue
            try:
                out[key] = (check_component("name", value["name"]),
                            check_component("version", value["version"]))
            except (TypeError, KeyError, StoreError):
                raise StoreError("model store: {}: {} {!r} is not {{name, version}}".format(
                    path, key, value))
        return out

    def _write_record(self, active: Optional[Tuple[str, str]],
                      previous: Optional[Tuple[str, str]]) -> None:
        def ref(value: Optional[Tuple[str, str]]) -> Optional[Dict[str, str]]:
            return {"name": value[0], "version": value[1]} if value else None
        data = json.dumps({"active": ref(active), "previous": ref(previous),
                           "updated_at": round(time.time(), 3)}, indent=2, sort_keys=True)
        write_atomic(self._record_path(), (data + "\n").encode("utf-8"))

    def active_ref(self) -> Optional[Tuple[str, str]]:
        """(name, version) of the active model, or None."""
        with self._locked():
            return self._read_record()["active"]

    def previous_ref(self) -> Optional[Tuple[str, str]]:
        """(name, version) the next rollback returns to, or None."""
        with self._locked():
            return self._read_record()["previous"]

    def active_package(self, verify: bool = True) -> Optional[ModelPackage]:
        """The active version's package (sha256 checked when `verify`), or None if none is."""
        ref = self.active_ref()
        return self.get(ref[0], ref[1], verify=verify) if ref else None

    def previous_package(self, verify: bool = True) -> Optional[ModelPackage]:
        """The previous version's package, or None if there is none."""
        ref = self.previous_ref()
        return self.get(ref[0], ref[1], verify=verify) if ref else None

    # -------------------------------------------------------------- reading

    def _names(self) -> List[str]:
        return sorted(e for e in os.listdir(self.root) if not e.startswith(".") and
                      e != RECORD_NAME and os.path.isdir(os.path.join(self.root, e)))

    def _versions(self, name: str) -> List[str]:
        name_dir = os.path.join(self.root, name)
        if not os.path.isdir(name_dir):
            return []
        return sorted(e for e in os.listdir(name_dir) if not e.startswith(".") and
                      os.path.isdir(os.path.join(name_dir, e)))

    def version_dir(self, name: str, version: str) -> str:
        return os.path.join(self.root, check_component("name", name),
                            check_component("version", version))

    def _meta(self, name: str, version: str) -> Dict[str, Any]:
        path = os.path.join(self.root, name, version, META_NAME)
        try:
            with open(path, "r", encoding="utf-8") as handle:
                meta = json.load(handle)
            if isinstance(meta, dict):
                return meta
        except (OSError, ValueError):
            pass
        return {"installed_at": os.path.getmtime(os.path.join(self.root, name, version))}

    def get(self, name: str, version: str, verify: bool = False) -> ModelPackage:
        """An installed version's package; `verify` also checks the model file's sha256."""
        path = self.version_dir(name, version)
        if not os.path.isdir(path):
            have = self._versions(name)
            raise StoreError("model {}@{} is not installed ({}); install it first".format(
                name, version, "installed versions of {}: {}".format(name, ", ".join(have))
                if have else "no version of {} is installed".format(name)))
        package = ModelPackage.load(path)
        if package.name != name or package.version != str(version):
            raise StoreError("model store: {} holds {} instead of {}@{}; remove that directory "
                             "and install again".format(path, package.ref, name, version))
        if verify:
            package.verify()
        return package

    def list(self) -> List[Dict[str, Any]]:
        """Every installed version: name, version, sha256, size, installed_at, active, previous."""
        with self._locked():
            record = self._read_record()
            out = []
            for name in self._names():
                for version in self._versions(name):
                    meta = self._meta(name, version)
                    out.append({"name": name, "version": version,
                                "sha256": meta.get("sha256"), "size": meta.get("size"),
                                "installed_at": meta.get("installed_at"),
                                "active": record["active"] == (name, version),
                                "previous": record["previous"] == (name, version)})
            return out

    # -------------------------------------------------------------- changing the record

    def activate(self, name: str, version: str) -> ModelPackage:
        """Make name@version active; the version active until now becomes `previous`."""
        with _fs_errors("activating {}@{}".format(name, version), self.root), self._locked():
            package = self.get(name, version, verify=True)
            record = self._read_record()
            target = (package.name, package.version)
            if record["active"] != target:
                self._write_record(target, record["active"])
            return package

    def rollback(self) -> ModelPackage:
        """Swap active and previous; returns the package that is active now."""
        with _fs_errors("rollback", self.root), self._locked():
            record = self._read_record()
            if record["previous"] is None:
                raise StoreError("model store: no previous version to roll back to (active: "
                                 "{}); activate a version by name instead".format(
                                     "@".join(record["active"]) if record["active"]
                                     else "none"))
            package = self.get(record["previous"][0], record["previous"][1], verify=True)
            self._write_record(record["previous"], record["active"])
            return package

    # -------------------------------------------------------------- removing

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version; the active and the previous one are refused."""
        with _fs_errors("removing {}@{}".format(name, version), self.root), self._locked():
            path = self.version_dir(name, version)
            record = self._read_record()
            if record["active"] == (name, version):
                raise StoreError("model {}@{} is the active version and cannot be removed; "
                                 "activate another version first".format(name, version))
            if record["previous"] == (name, version):
                raise StoreError("model {}@{} is the previous version, kept for rollback, and "
                                 "cannot be removed; activate another version first (it then "
                                 "stops being previous)".format(name, version))
            if not os.path.isdir(path):
                raise StoreError("model {}@{} is not installed; nothing to remove".format(
                    name, version))
            self._delete(name, version)

    def _delete(self, name: str, version: str) -> None:
        # Rename out of sight first: a crash mid-delete leaves only .tmp-* debris.
        name_dir = os.path.join(self.root, name)
        doomed = os.path.join(self.root, "{}del-{}".format(TMP_PREFIX, uuid.uuid4().hex))
        os.rename(os.path.join(name_dir, version), doomed)
        fsync_dir(name_dir)
        fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        if not os.listdir(name_dir):
            os.rmdir(name_dir)
            fsync_dir(self.root)

    def prune(self) -> List[Tuple[str, str]]:
        """Keep the newest `keep_versions` versions per name (plus active and previous)."""
        removed = []  # type: List[Tuple[str, str]]
        with _fs_errors("pruning old versions", self.root), self._locked():
            record = self._read_record()
            protected = [r for r in (record["active"], record["previous"]) if r]
            for name in self._names():
                versions = sorted(self._versions(name), reverse=True,
                                  key=lambda v: float(self._meta(name, v).get("installed_at")
                                                      or 0.0))
                excess = len(versions) - self.keep_versions
                for version in reversed(versions):  # oldest first
                    if excess <= 0:
                        break
                    if (name, version) in protected:
                        continue
                    self._delete(name, version)
                    removed.append((name, version))
                    excess -= 1
        for name, version in removed:
            log.info("model store: pruned %s@%s (updates.keep_versions=%d)", name, version,
                     self.keep_versions)
        return removed

    # -------------------------------------------------------------- adding

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[str]:
        """A `.tmp-*` directory held (flock) by this process until it is committed or dropped."""
        with self._locked():
            path = tempfile.mkdtemp(prefix=TMP_PREFIX + "install-", dir=self.root)
            lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
            if fcntl is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            os.close(lock_fd)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)

    def _commit(self, work: str, name: str, version: str) -> None:
        """Rename a complete work directory to name/version, durably."""
        with self._locked():
            target = os.path.join(self.root, name, version)
            if os.path.exists(target):
                raise StoreError("model {}@{} was installed by someone else meanwhile; remove it "
                                 "first to replace it".format(name, version))
            os.unlink(os.path.join(work, LOCK_NAME))
            fsync_dir(work)
            name_dir = os.path.join(self.root, name)
            if not os.path.isdir(name_dir):
                os.mkdir(name_dir)
                fsync_dir(self.root)
            os.rename(work, target)
            fsync_dir(name_dir)
            fsync_dir(self.root)

    def _existing(self, name: str, version: str, sha256: str) -> Optional[ModelPackage]:
        """The installed package when name@version with this sha256 is already there."""
        if not os.path.isdir(os.path.join(self.root, name, version)):
            return None
        package = self.get(name, version, verify=True)
        if (package.sha256 or "").lower() != sha256.lower():
            raise StoreError("model {}@{} is already installed with sha256 {}, not {}; use a new "
                             "version, or remove {}@{} first".format(
                                 name, version, package.sha256, sha256, name, version))
        return package

    def _write_meta(self, work: str, source: str, sha256: str, size: int, signed: bool) -> None:
        meta = {"installed_at": round(time.time(), 3), "source": source, "sha256": sha256,
                "size": size, "signed": signed}
        write_atomic(os.path.join(work, META_NAME),
                     (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def import_package(self, path: str) -> ModelPackage:
        """Copy a package directory (e.g. the bundled models/efficientnet_lite0) into the store."""
        source = ModelPackage.load(path)
        name = check_component("name", source.name)
        version = check_component("version", source.version)
        actual = source.verify()
        check_onnx(source)
        existing = self._existing(name, version, actual)
        if existing is not None:
            return existing
        for value in [source.file] + ([source.labels_file] if source.labels_file else []):
            if value in RESERVED_FILES:
                raise ModelError("model package {}: uses {!r} as a file name, which the store "
                                 "reserves; rename it".format(path, value))
        if source.labels_file and not os.path.isfile(os.path.join(path, source.labels_file)):
            raise ModelError("model package {}: labels file {} named in {} does not exist; add "
                             "it or drop 'labels'".format(path, source.labels_file, MANIFEST_NAME))
        with _fs_errors("importing {}".format(path), self.root), self._workdir() as work:
            if source.sha256:
                _copy_atomic(source.manifest_path, os.path.join(work, MANIFEST_NAME))
            else:  # the store's copy always records the hash it was verified with
                raw = dict(source.raw)
                raw["sha256"] = actual
                write_atomic(os.path.join(work, MANIFEST_NAME), _yaml_bytes(raw))
            _copy_atomic(source.onnx_path, os.path.join(work, source.file))
            if source.labels_file:
                _copy_atomic(os.path.join(source.root, source.labels_file),
                             os.path.join(work, source.labels_file))
            copy_ = ModelPackage.load(work)
            if copy_.verify() != actual:
                raise StoreError("model {}: {} changed while it was copied; retry".format(
                    source.ref, source.onnx_path))
            copy_.labels  # noqa: B018 - reads the labels file: fails now, not when serving
            self._write_meta(work, os.path.abspath(path), actual,
                             os.path.getsize(copy_.onnx_path), False)
            self._commit(work, name, version)
        return self.get(name, version)

    def install(self, name: str, version: str, url: str, sha256: str, size: Optional[int] = None,
                manifest: Optional[Dict[str, Any]] = None, manifest_url: Optional[str] = None,
                labels_url: Optional[str] = None, signature: Optional[str] = None,
                public_key_file: Optional[str] = None, progress: Optional[Progress] = None,
                cancel: Any = None, labels_sha256: Optional[str] = None,
                policy: Optional[Dict[str, Any]] = None) -> ModelPackage:
        """Download, verify and add name@version; it is NOT activated (see activate()).

        Installing a version that is already there with the same sha256 returns it (a retried
        command is harmless); with another sha256 it is refused.
        `progress(phase, fraction, detail)` gets phases "downloading" and "verifying".
        `labels_sha256` (from the command) is the labels' hash when the manifest has none.
        `policy` is what commands from MQTT add (agent.commands.ModelManager): "fetch" holds
        extra keyword arguments for every download (file_roots, deadline_s, min_rate_bps,
        rate_window_s) and "require_labels_sha256" refuses labels without a hash.
        """
        policy = policy or {}
        fetch_extra = dict(policy.get("fetch") or {})
        name = check_component("name", name)
        version = check_component("version", version)
        sha256 = check_sha256(sha256, "model {}@{}: sha256".format(name, version))
        if (manifest is None) == (manifest_url is None):
            raise ModelError("model {}@{}: give exactly one of manifest (an object) or "
                             "manifest_url".format(name, version))
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or
                                 size <= 0):
            raise ModelError("model {}@{}: size: {!r} must be a positive number of "
                             "bytes".format(name, version, size))
        existing = self._existing(name, version, sha256)
        if existing is not None:
            return existing

        def report(phase: str, fraction: Optional[float], detail: str) -> None:
            if progress is not None:
                progress(phase, fraction, detail)

        with _fs_errors("installing {}@{}".format(name, version), self.root), \
                self._workdir() as work:
            if manifest_url is not None:
                manifest = self._fetch_manifest(manifest_url, work, name, version, cancel,
                                                fetch_extra)
            final = final_manifest(name, version, sha256, manifest, labels_url is not None)
            if labels_url is not None and labels_sha256 is not None:
                labels_sha256 = check_sha256(labels_sha256, "model {}@{}: labels_sha256".format(
                    name, version))
                if final.get("labels_sha256") not in (None, labels_sha256):
                    raise ModelError("model {}@{}: the command's labels_sha256 differs from the "
                                     "manifest's; make them agree".format(name, version))
                if not public_key_file:  # a signed manifest must carry it itself
                    final["labels_sha256"] = labels_sha256
            if (labels_url is not None and not public_key_file and
                    policy.get("require_labels_sha256") and not final.get("labels_sha256")):
                raise ModelError("model {}@{}: labels_url is given without labels_sha256; labels "
                                 "are only fetched with their sha256 (add labels_sha256 to the "
                                 "command or the manifest)".format(name, version))
            ModelPackage.from_dict(work, final, "model {}@{}: manifest".format(name, version))
            canonical_manifest_bytes(final)  # refuses values JSON cannot carry, signed or not
            if public_key_file:
                verify_manifest_signature(final, signature, public_key_file)
                if labels_url is not None and not final.get("labels_sha256"):
                    raise SignatureError("model {}@{}: labels_url is given but the signed "
                                         "manifest has no labels_sha256, so the labels would "
                                         "not be covered by the signature; add labels_sha256 "
                                         "to the manifest".format(name, version))
            elif signature:
                log.warning("model %s@%s: signature given but updates.public_key_file is not "
                            "set, so it is not checked", name, version)
            shown = redact_url(url)

            def on_bytes(done: int, total: Optional[int]) -> None:
                report("downloading", (float(done) / total) if total else None,
                       "{} bytes of {}".format(done, total if total else "?"))

            _, nbytes = fetch(url, os.path.join(work, final["file"]), sha256, self.max_bytes,
                              self.allowed_schemes, progress=on_bytes,
                              stall_timeout_s=self.stall_timeout_s, cancel=cancel, size=size,
                              ca_file=self.ca_file, **fetch_extra)
            if labels_url is not None:
                fetch(labels_url, os.path.join(work, final["labels"]),
                      final.get("labels_sha256"), min(self.max_bytes, LABELS_MAX_BYTES),
                      self.allowed_schemes, stall_timeout_s=self.stall_timeout_s,
                      cancel=cancel, ca_file=self.ca_file, **fetch_extra)
            report("verifying", None, "checking {}".format(shown))
            write_atomic(os.path.join(work, MANIFEST_NAME), _yaml_bytes(
                final, "installed by edge-agent from {}".format(shown)))
            package = ModelPackage.load(work)
            package.verify()
            check_onnx(package)
            package.labels  # noqa: B018 - reads the labels file: fails now, not when serving
            self._write_meta(work, shown, sha256, nbytes, bool(public_key_file))
            self._commit(work, name, version)
        return self.get(name, version)

    def _fetch_manifest(self, url: str, work: str, name: str, version: str,
                        cancel: Any, fetch_extra: Optional[Dict[str, Any]] = None
                        ) -> Dict[str, Any]:
        import yaml
        path = os.path.join(work, TMP_PREFIX + "manifest")
        # The size cap applies before parsing; anchors/aliases are refused while parsing.
        try:
            fetch(url, path, None, MANIFEST_MAX_BYTES, self.allowed_schemes,
                  stall_timeout_s=self.stall_timeout_s, cancel=cancel, ca_file=self.ca_file,
                  **(fetch_extra or {}))
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
                             "version, input, output, ...)".format(name, version,
                                                                    redact_url(url)))
        return data


def _yaml_bytes(data: Dict[str, Any], comment: Optional[str] = None) -> bytes:
    import yaml
    text = yaml.safe_dump(data, default_flow_style=False)
    if comment:
        text = "# {}\n{}".format(comment, text)
    return text.encode("utf-8")


def _try_lock(path: str) -> Any:
    """An fd holding the lock at `path`; None when there is no such file; False when held."""
    if fcntl is None:
        return True if os.path.exists(path) else None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    return fd
