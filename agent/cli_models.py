"""`edge-agent models ...`, `build` and `profile`: local operations on this machine.

`models` works on the store under device.state_dir. A running agent reads the store's active
record at start; to switch a running agent without a restart, use `edge-agent send
model/activate --device ID` instead.
"""

import argparse
import json
import os
import sys
from typing import Any, List

from .config import Config
from .errors import AgentError


def add_parsers(sub: Any, add_config_args: Any) -> None:
    p = sub.add_parser("models", help="list, install, activate, roll back, remove local models",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_config_args(p)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    q = msub.add_parser("list", help="installed models; * marks the active one")
    q.add_argument("--json", action="store_true")
    q = msub.add_parser("install", help="install a package directory, or a model by URL",
                        description="Install a model package directory (model.yaml, model file, "
                                    "labels), or download a model: URL with --name, --version, "
                                    "--sha256 and --manifest (a model.yaml without name/version/"
                                    "sha256).")
    q.add_argument("source", metavar="DIR|URL")
    q.add_argument("--name")
    q.add_argument("--version")
    q.add_argument("--sha256")
    q.add_argument("--manifest", metavar="FILE", help="manifest YAML for a URL install")
    q.add_argument("--labels-url", metavar="URL")
    q.add_argument("--signature", help="base64 ed25519 signature (see README)")
    q.add_argument("--activate", action="store_true", help="make it the active model")
    for action in ("activate", "remove"):
        q = msub.add_parser(action, help="{} NAME VERSION".format(action))
        q.add_argument("name")
        q.add_argument("version")
    msub.add_parser("rollback", help="make the previous version active again")

    p = sub.add_parser("build", help="build a TensorRT engine from an ONNX file",
                       description="Like trtexec --onnx --saveEngine: parses the ONNX file, "
                                   "checks what this TensorRT is known to reject, builds an "
                                   "engine for this exact GPU and writes it with a JSON "
                                   "fingerprint beside it.")
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--calib", metavar="DIR", help="images for INT8 calibration")
    p.add_argument("--out", metavar="FILE", help="engine file (default: beside the ONNX file)")
    p.add_argument("--workspace-mb", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--dla-core", type=int, default=None)
    p.add_argument("--state-dir", default="./var", help="where the timing cache lives")

    p = sub.add_parser("profile", help="per-layer times of the model's TensorRT engine",
                       description="Like trtexec --dumpProfile: runs the engine of the "
                                   "configured model (built and cached as `run` would) and "
                                   "prints each layer's average time, slowest first.")
    add_config_args(p)
    p.add_argument("--model", metavar="NAME|PATH", help="model package (default: model.name)")
    p.add_argument("--runs", type=int, default=50)


def _store(config: Config) -> Any:
    from .models import ModelStore
    return ModelStore.from_updates(config.resolve(config.device.state_dir), config.updates)


def cmd_models(args: argparse.Namespace, config: Config, out: Any = None) -> int:
    out = out or sys.stdout
    store = _store(config)
    action = args.models_command
    if action == "list":
        rows = store.list()
        if args.json:
            json.dump(rows, out, indent=2)
            out.write("\n")
            return 0
        if not rows:
            out.write("no models installed in {} (the agent imports model.name at its first "
                      "start)\n".format(store.root))
        for row in rows:
            mark = "*" if row.get("active") else ("previous" if row.get("previous") else "")
            out.write("{:<9} {}@{}  sha256 {}  {} bytes\n".format(
                mark, row["name"], row["version"], str(row.get("sha256"))[:12],
                row.get("size")))
        return 0
    if action == "install":
        if os.path.isdir(args.source):
            package = store.import_package(args.source)
        else:
            missing = [k for k in ("name", "version", "sha256", "manifest")
                       if not getattr(args, k)]
            if missing:
                raise AgentError("models install URL needs --{} (or give a package "
                                 "directory)".format(", --".join(missing)))
            import yaml
            with open(args.manifest, encoding="utf-8") as handle:
                manifest = yaml.safe_load(handle)

            def progress(phase: str, fraction: Any, detail: str) -> None:
                out.write("{} {}{}\n".format(phase, "{:.0%} ".format(fraction)
                                            if fraction is not None else "", detail or ""))
            package = store.install(args.name, args.version, args.source, args.sha256,
                                    manifest=manifest, labels_url=args.labels_url,
                                    signature=args.signature,
                                    public_key_file=config.updates.public_key_file,
                                    progress=progress)
        out.write("installed {}\n".format(package.ref))
        if args.activate:
            store.activate(package.name, package.version)
            out.write("active: {} (a running agent switches at its next start)\n".format(
                package.ref))
        return 0
    if action == "activate":
        package = store.activate(args.name, args.version)
        out.write("active: {} (a running agent switches at its next start)\n".format(
            package.ref))
        return 0
    if action == "rollback":
        package = store.rollback()
        out.write("active: {} (a running agent switches at its next start)\n".format(
            package.ref))
        return 0
    store.remove(args.name, args.version)
    out.write("removed {}@{}\n".format(args.name, args.version))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .backends.tensorrt import cmd_build as build
    return build(args.onnx, precision=args.precision, calib_dir=args.calib, out=args.out,
                 workspace_mb=args.workspace_mb, max_batch=args.max_batch,
                 dla_core=args.dla_core, state_dir=args.state_dir, log=print)


def cmd_profile(args: argparse.Namespace, config: Config) -> int:
    from .updates.loader import backend_options
    from .backends.tensorrt import cmd_profile as profile
    from .bench import resolve_package
    package = resolve_package(config, args.model)
    return profile(package, backend_options(config), runs=args.runs, log=print)


