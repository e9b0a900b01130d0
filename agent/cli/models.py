"""`edge-agent models ...`, `build` and `profile`: local operations on this machine.

`models` works on the store under device.state_dir. A running agent reads the store's active
record at start; to switch a running agent without a restart, use `edge-agent send
model/activate --device ID` instead.
"""

import argparse
import json
import os
import sys
from typing import Any

from ..config import Config
from ..errors import AgentError
from . import config_from_args


def _store(config: Config) -> Any:
    from ..store.store import ModelStore
    return ModelStore.from_updates(config.resolve(config.device.state_dir), config.updates)


ACTIVATED = "active: {} (a running agent switches at its next start)\n"


def cmd_models(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    config = config_from_args(args)
    store = _store(config)
    action = args.models_command
    if action == "list":
        _list(store, args.json, out)
        return 0
    if action == "install":
        package = _install(store, args, config, out)
        out.write("installed {}\n".format(package.ref))
        if args.activate:
            store.activate(package.name, package.version)
            out.write(ACTIVATED.format(package.ref))
        return 0
    if action == "activate":
        out.write(ACTIVATED.format(store.activate(args.name, args.version).ref))
        return 0
    if action == "rollback":
        out.write(ACTIVATED.format(store.rollback().ref))
        return 0
    store.remove(args.name, args.version)
    out.write("removed {}@{}\n".format(args.name, args.version))
    return 0


def _list(store: Any, as_json: bool, out: Any) -> None:
    rows = store.list()
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    if not rows:
        out.write("no models installed in {} (the agent imports model.name at its first "
                  "start)\n".format(store.root))
    for row in rows:
        mark = "*" if row.get("active") else ("previous" if row.get("previous") else "")
        out.write("{:<9} {}@{}  sha256 {}  {} bytes\n".format(
            mark, row["name"], row["version"], str(row.get("sha256"))[:12], row.get("size")))


def _install(store: Any, args: argparse.Namespace, config: Config, out: Any) -> Any:
    """Install a package directory, or download a model by URL; the installed package."""
    if os.path.isdir(args.source):
        return store.import_package(args.source)
    missing = [k for k in ("name", "version", "sha256", "manifest") if not getattr(args, k)]
    if missing:
        raise AgentError("models install URL needs --{} (or give a package "
                         "directory)".format(", --".join(missing)))
    import yaml
    with open(args.manifest, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)

    def progress(phase: str, fraction: Any, detail: str) -> None:
        out.write("{} {}{}\n".format(phase, "{:.0%} ".format(fraction)
                                     if fraction is not None else "", detail or ""))
    return store.install(args.name, args.version, args.source, args.sha256,
                         manifest=manifest, labels_url=args.labels_url,
                         signature=args.signature,
                         public_key_file=config.updates.public_key_file, progress=progress)


def cmd_build(args: argparse.Namespace) -> int:
    from .engine import cmd_build as build
    return build(args.onnx, precision=args.precision, calib_dir=args.calib, out=args.out,
                 workspace_mb=args.workspace_mb, max_batch=args.max_batch,
                 dla_core=args.dla_core, state_dir=args.state_dir, log=print)


def cmd_profile(args: argparse.Namespace) -> int:
    from ..updates.loader import backend_options
    from .engine import cmd_profile as profile
    from .bench import resolve_package
    config = config_from_args(args)
    package = resolve_package(config, args.model)
    return profile(package, backend_options(config), runs=args.runs, log=print)
