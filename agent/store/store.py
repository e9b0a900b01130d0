"""The local model store: installed versions, which one is active, activation and removal.

Versions live under `state_dir/models`; the store activates, rolls back, removes and prunes
them.

The directory layout and its crash safety are described in agent.store.layout; adding versions
(import or download) is agent.store.install; signatures are agent.store.signing.
"""

import json
import logging
import os
import shutil
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..atomicfile import fsync_dir
from .install import Installer
from .layout import (META_NAME, TMP_PREFIX, StoreError, StoreLock, check_component, fs_errors,
                     name_dirs, remove_leftovers)
from .package import ModelPackage
from .record import ActiveRecord

log = logging.getLogger(__name__)


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
        self.lock = StoreLock(self.root)
        self._record = ActiveRecord(self.root)
        self._installer = Installer(self)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError("model store: cannot create {}: {}; fix device.state_dir or its "
                             "permissions".format(self.root, exc))
        with fs_errors("opening", self.root), self.lock.held():
            remove_leftovers(self.root)
            self._record.set_aside_if_bad()

    @classmethod
    def from_updates(cls, state_dir: str, updates: Any) -> "ModelStore":
        """A store configured by the validated `updates` config section."""
        return cls(state_dir, keep_versions=updates.keep_versions,
                   allowed_schemes=updates.allowed_schemes,
                   max_download_mb=updates.max_download_mb, ca_file=updates.ca_file)

    # -------------------------------------------------------------- the record

    def active_ref(self) -> Optional[Tuple[str, str]]:
        """(name, version) of the active model, or None."""
        with self.lock.held():
            return self._record.read()["active"]

    def previous_ref(self) -> Optional[Tuple[str, str]]:
        """(name, version) the next rollback returns to, or None."""
        with self.lock.held():
            return self._record.read()["previous"]

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
        return name_dirs(self.root)

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
        with self.lock.held():
            record = self._record.read()
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
        with fs_errors("activating {}@{}".format(name, version), self.root), self.lock.held():
            package = self.get(name, version, verify=True)
            record = self._record.read()
            target = (package.name, package.version)
            if record["active"] != target:
                self._record.write(target, record["active"])
            return package

    def rollback(self) -> ModelPackage:
        """Swap active and previous; returns the package that is active now."""
        with fs_errors("rollback", self.root), self.lock.held():
            record = self._record.read()
            if record["previous"] is None:
                raise StoreError("model store: no previous version to roll back to (active: "
                                 "{}); activate a version by name instead".format(
                                     "@".join(record["active"]) if record["active"]
                                     else "none"))
            package = self.get(record["previous"][0], record["previous"][1], verify=True)
            self._record.write(record["previous"], record["active"])
            return package

    # -------------------------------------------------------------- removing

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version; the active and the previous one are refused."""
        with fs_errors("removing {}@{}".format(name, version), self.root), self.lock.held():
            path = self.version_dir(name, version)
            record = self._record.read()
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
        with fs_errors("pruning old versions", self.root), self.lock.held():
            record = self._record.read()
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

    def import_package(self, path: str) -> ModelPackage:
        """Copy a package directory (e.g. the bundled models/efficientnet_lite0) into the store."""
        return self._installer.import_package(path)

    def install(self, name: str, version: str, url: str, sha256: str,
                **options: Any) -> ModelPackage:
        """Download, verify and add name@version; it is NOT activated (see activate()).

        Installing a version that is already there with the same sha256 returns it (a retried
        command is harmless); with another sha256 it is refused. `options` (size, manifest or
        manifest_url, labels_url, labels_sha256, signature, public_key_file, progress, cancel,
        policy) are described at agent.store.install.Installer.install.
        """
        return self._installer.install(name, version, url, sha256, **options)
