"""Adding versions to the store: a package directory copied in, or a model downloaded.

Each is assembled and verified in a held `.tmp-*` work directory and renamed into place only
when complete (see agent.store.layout).
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, Optional

from ..errors import ModelError
from .download import check_sha256, fetch, redact_url
from .layout import (LOCK_NAME, META_NAME, RESERVED_FILES, TMP_PREFIX, StoreError,
                     check_component, copy_atomic, fs_errors, fsync_dir, hold_workdir_lock,
                     write_atomic)
from .manifest import fetch_manifest, final_manifest, yaml_bytes
from .onnx_check import check_onnx
from .package import MANIFEST_NAME, ModelPackage
from .signing import SignatureError, canonical_manifest_bytes, verify_manifest_signature

log = logging.getLogger(__name__)

LABELS_MAX_BYTES = 16 << 20

# progress(phase, fraction 0..1 or None, detail): the same shape as backends.Progress.
Progress = Callable[[str, Optional[float], str], None]


class Installer(object):
    """Adds versions to a ModelStore (its root, lock, download settings and `get`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    # -------------------------------------------------------------- work directories

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[str]:
        """A `.tmp-*` directory held (flock) by this process until it is committed or dropped."""
        with self.store.lock.held():
            path = tempfile.mkdtemp(prefix=TMP_PREFIX + "install-", dir=self.store.root)
            lock_fd = hold_workdir_lock(path)
        try:
            yield path
        finally:
            os.close(lock_fd)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)

    def _commit(self, work: str, name: str, version: str) -> None:
        """Rename a complete work directory to name/version, durably."""
        root = self.store.root
        with self.store.lock.held():
            target = os.path.join(root, name, version)
            if os.path.exists(target):
                raise StoreError("model {}@{} was installed by someone else meanwhile; remove it "
                                 "first to replace it".format(name, version))
            os.unlink(os.path.join(work, LOCK_NAME))
            fsync_dir(work)
            name_dir = os.path.join(root, name)
            if not os.path.isdir(name_dir):
                os.mkdir(name_dir)
                fsync_dir(root)
            os.rename(work, target)
            fsync_dir(name_dir)
            fsync_dir(root)

    def _existing(self, name: str, version: str, sha256: str) -> Optional[ModelPackage]:
        """The installed package when name@version with this sha256 is already there."""
        if not os.path.isdir(os.path.join(self.store.root, name, version)):
            return None
        package = self.store.get(name, version, verify=True)
        if (package.sha256 or "").lower() != sha256.lower():
            raise StoreError("model {}@{} is already installed with sha256 {}, not {}; use a new "
                             "version, or remove {}@{} first".format(
                                 name, version, package.sha256, sha256, name, version))
        return package

    @staticmethod
    def _write_meta(work: str, source: str, sha256: str, size: int, signed: bool) -> None:
        meta = {"installed_at": round(time.time(), 3), "source": source, "sha256": sha256,
                "size": size, "signed": signed}
        write_atomic(os.path.join(work, META_NAME),
                     (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    # -------------------------------------------------------------- a package directory

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
        with fs_errors("importing {}".format(path), self.store.root), self._workdir() as work:
            if source.sha256:
                copy_atomic(source.manifest_path, os.path.join(work, MANIFEST_NAME))
            else:  # the store's copy always records the hash it was verified with
                raw = dict(source.raw)
                raw["sha256"] = actual
                write_atomic(os.path.join(work, MANIFEST_NAME), yaml_bytes(raw))
            copy_atomic(source.onnx_path, os.path.join(work, source.file))
            if source.labels_file:
                copy_atomic(os.path.join(source.root, source.labels_file),
                            os.path.join(work, source.labels_file))
            copy_ = ModelPackage.load(work)
            if copy_.verify() != actual:
                raise StoreError("model {}: {} changed while it was copied; retry".format(
                    source.ref, source.onnx_path))
            copy_.labels  # noqa: B018 - reads the labels file: fails now, not when serving
            self._write_meta(work, os.path.abspath(path), actual,
                             os.path.getsize(copy_.onnx_path), False)
            self._commit(work, name, version)
        return self.store.get(name, version)

    # -------------------------------------------------------------- a download

    def install(self, name: str, version: str, url: str, sha256: str, size: Optional[int] = None,
                manifest: Optional[Dict[str, Any]] = None, manifest_url: Optional[str] = None,
                labels_url: Optional[str] = None, signature: Optional[str] = None,
                public_key_file: Optional[str] = None, progress: Optional[Progress] = None,
                cancel: Any = None, labels_sha256: Optional[str] = None,
                policy: Optional[Dict[str, Any]] = None) -> ModelPackage:
        """Download, verify and add name@version (not activated); see ModelStore.install.

        Exactly one of `manifest` (a mapping) or `manifest_url` gives the manifest; `size` is
        the expected byte count when known. `progress(phase, fraction, detail)` gets phases
        "downloading" and "verifying". `labels_sha256` (from the command) is the labels' hash
        when the manifest has none. With `public_key_file`, `signature` must verify (see
        agent.store.signing). `cancel` has is_set(), polled by downloads. `policy` is what
        commands from MQTT add (agent.updates.worker): "fetch" holds extra keyword arguments
        for every download (file_roots, deadline_s, min_rate_bps, rate_window_s) and
        "require_labels_sha256" refuses labels without a hash.
        """
        policy = policy or {}
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
        options = self._fetch_options(cancel, policy)

        def on_bytes(done: int, total: Optional[int]) -> None:
            if progress is not None:
                progress("downloading", (float(done) / total) if total else None,
                         "{} bytes of {}".format(done, total if total else "?"))

        with fs_errors("installing {}@{}".format(name, version), self.store.root), \
                self._workdir() as work:
            if manifest_url is not None:
                manifest = fetch_manifest(manifest_url, os.path.join(work, TMP_PREFIX + "manifest"),
                                          name, version, self.store.allowed_schemes, **options)
            final = final_manifest(name, version, sha256, manifest, labels_url is not None)
            self._check_labels_and_signature(work, final, labels_url, labels_sha256, signature,
                                             public_key_file, policy)
            shown = redact_url(url)
            _, nbytes = fetch(url, os.path.join(work, final["file"]), sha256,
                              self.store.max_bytes, self.store.allowed_schemes,
                              progress=on_bytes, size=size, **options)
            if labels_url is not None:
                fetch(labels_url, os.path.join(work, final["labels"]),
                      final.get("labels_sha256"), min(self.store.max_bytes, LABELS_MAX_BYTES),
                      self.store.allowed_schemes, **options)
            if progress is not None:
                progress("verifying", None, "checking {}".format(shown))
            write_atomic(os.path.join(work, MANIFEST_NAME), yaml_bytes(
                final, "installed by edge-agent from {}".format(shown)))
            package = ModelPackage.load(work)
            package.verify()
            check_onnx(package)
            package.labels  # noqa: B018 - reads the labels file: fails now, not when serving
            self._write_meta(work, shown, sha256, nbytes, bool(public_key_file))
            self._commit(work, name, version)
        return self.store.get(name, version)

    def _fetch_options(self, cancel: Any, policy: Dict[str, Any]) -> Dict[str, Any]:
        """Keyword arguments of every fetch of an install: the store's, then the policy's."""
        options = {"stall_timeout_s": self.store.stall_timeout_s, "cancel": cancel,
                   "ca_file": self.store.ca_file}  # type: Dict[str, Any]
        options.update(policy.get("fetch") or {})
        return options

    @staticmethod
    def _check_labels_and_signature(work: str, final: Dict[str, Any], labels_url: Optional[str],
                                    labels_sha256: Optional[str], signature: Optional[str],
                                    public_key_file: Optional[str],
                                    policy: Dict[str, Any]) -> None:
        """Settle the labels' sha256 in `final` and verify the signature, before any download."""
        name, version = final["name"], final["version"]
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
