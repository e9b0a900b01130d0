"""Edges of the model store (agent/store/store.py ModelStore) that mutation testing found untested:
names and versions at their limits, pruning that keeps exactly the newest versions, the
start-up clean-up (empty name directories, leftover temp directories, durable), records with
no active model, a version directory holding another version, and a rollback to a damaged
previous version."""

import json
import os
import shutil

import pytest

from agent.errors import ModelError
from agent.store.layout import MAX_COMPONENT, StoreError, check_component
from agent.store.store import ModelStore
from support.fileops import FileOps
from support.model_store import make_package_dir


def test_numeric_versions_become_strings_but_numeric_names_and_bools_do_not():
    assert check_component("version", 3) == "3"
    with pytest.raises(StoreError, match="model name: 3 is not allowed"):
        check_component("name", 3)
    with pytest.raises(StoreError, match="model version: True is not allowed"):
        check_component("version", True)


def test_name_length_limit_is_inclusive():
    assert check_component("name", "n" * MAX_COMPONENT) == "n" * MAX_COMPONENT
    with pytest.raises(StoreError, match="is not allowed"):
        check_component("name", "n" * (MAX_COMPONENT + 1))


def _import(store, tmp_path, version, seed):
    path = make_package_dir(str(tmp_path / ("pkg-" + version)), version=version, seed=seed)
    return store.import_package(path)


def _set_installed_at(store, version, when):
    meta_path = os.path.join(store.root, "tiny", version, ".install.json")
    with open(meta_path) as handle:
        meta = json.load(handle)
    meta["installed_at"] = when
    with open(meta_path, "w") as handle:
        json.dump(meta, handle)


def test_prune_removes_exactly_the_oldest_beyond_the_limit(tmp_path):
    store = ModelStore(str(tmp_path / "state"), keep_versions=3)
    # Installed in this order; their string order ("10" < "9") differs from it.
    order = ["9", "10", "11", "12", "13"]
    for seed, version in enumerate(order):
        _import(store, tmp_path, version, seed)
        _set_installed_at(store, version, 1000.0 + seed)
    store.activate("tiny", "12")
    store.activate("tiny", "13")  # active 13, previous 12
    removed = store.prune()
    assert removed == [("tiny", "9"), ("tiny", "10")]
    assert sorted(m["version"] for m in store.list()) == ["11", "12", "13"]
    assert store.prune() == []  # at the limit: nothing more goes


def test_prune_skips_protected_old_versions_and_counts_them(tmp_path):
    store = ModelStore(str(tmp_path / "state"), keep_versions=2)
    for seed, version in enumerate(["1", "2", "3", "4"]):
        _import(store, tmp_path, version, seed)
        _set_installed_at(store, version, 1000.0 + seed)
    store.activate("tiny", "1")
    store.activate("tiny", "4")  # active 4 (newest), previous 1 (oldest)
    assert store.prune() == [("tiny", "2"), ("tiny", "3")]
    assert sorted(m["version"] for m in store.list()) == ["1", "4"]


def test_start_removes_leftovers_and_empty_name_directories_durably(tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    ModelStore(state)
    root = os.path.join(state, "models")
    os.makedirs(os.path.join(root, "gone"))                     # a name with no versions
    os.makedirs(os.path.join(root, ".tmp-install-1"))           # a crashed install
    with open(os.path.join(root, ".tmp-install-1", ".lock"), "w"):
        pass
    with open(os.path.join(root, ".tmp-record"), "w") as handle:  # a crashed record write
        handle.write("{")
    fds_before = len(os.listdir("/proc/self/fd"))
    ops = FileOps(monkeypatch)
    ModelStore(state)
    monkeypatch.undo()
    assert sorted(os.listdir(root)) == [".lock"]
    assert len(os.listdir("/proc/self/fd")) == fds_before      # the lock fds are closed
    removals = [i for i, op in enumerate(ops.ops) if op[0] == "unlink"]
    assert ("fsync", os.path.abspath(root)) in ops.ops[max(removals):], \
        "removals at start are not made durable"


def test_a_bad_record_is_set_aside_durably(tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    ModelStore(state)
    root = os.path.join(state, "models")
    with open(os.path.join(root, "active.json"), "w") as handle:
        handle.write("not json")
    ops = FileOps(monkeypatch)
    store = ModelStore(state)
    monkeypatch.undo()
    assert store.active_ref() is None
    renames = [i for i, op in enumerate(ops.ops) if op[0] == "rename"
               and op[1].endswith("active.json")]
    assert renames and ("fsync", os.path.abspath(root)) in ops.ops[renames[-1]:]


def test_a_record_without_an_active_model_keeps_its_previous(tmp_path):
    store = ModelStore(str(tmp_path / "state"))
    _import(store, tmp_path, "1", 1)
    with open(os.path.join(store.root, "active.json"), "w") as handle:
        json.dump({"active": None, "previous": {"name": "tiny", "version": "1"}}, handle)
    assert store.active_ref() is None
    assert store.previous_ref() == ("tiny", "1")


def test_a_version_directory_holding_another_version_is_refused(tmp_path):
    store = ModelStore(str(tmp_path / "state"))
    _import(store, tmp_path, "1", 1)
    shutil.copytree(os.path.join(store.root, "tiny", "1"), os.path.join(store.root, "tiny", "2"))
    with pytest.raises(StoreError, match="holds tiny@1 instead of tiny@2"):
        store.get("tiny", "2")


def test_activate_returns_the_package_it_activated(tmp_path):
    store = ModelStore(str(tmp_path / "state"))
    _import(store, tmp_path, "1", 1)
    package = store.activate("tiny", "1")
    assert (package.name, package.version) == ("tiny", "1")


def test_rollback_to_a_damaged_previous_version_is_refused(tmp_path):
    store = ModelStore(str(tmp_path / "state"))
    _import(store, tmp_path, "1", 1)
    _import(store, tmp_path, "2", 2)
    store.activate("tiny", "1")
    store.activate("tiny", "2")
    with open(os.path.join(store.root, "tiny", "1", "model.onnx"), "r+b") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(ModelError, match="sha256"):
        store.rollback()
    assert store.active_ref() == ("tiny", "2") and store.previous_ref() == ("tiny", "1")


def test_start_removes_a_crashed_install_without_a_lock_file_durably(tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    ModelStore(state)
    root = os.path.join(state, "models")
    os.makedirs(os.path.join(root, ".tmp-install-2", "sub"))    # crashed before its lock
    ops = FileOps(monkeypatch)
    ModelStore(state)
    monkeypatch.undo()
    assert sorted(os.listdir(root)) == [".lock"]
    assert ("fsync", os.path.abspath(root)) in ops.ops, "the removal is not made durable"
