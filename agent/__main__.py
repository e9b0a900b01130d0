"""edge-agent command line. `edge-agent COMMAND --help` explains each command."""

import argparse
import logging
import sys
from typing import List, Optional

from . import __version__
from .demo import build_demo_parser, cmd_demo
from .errors import AgentError

DESCRIPTION = """\
edge-agent: a managed inference device. It serves an image classification model on a camera
or file source, publishes predictions and telemetry over MQTT, and installs new models on
command. TensorRT is used where installed (Jetson), ONNX Runtime elsewhere.

quick start (broker on localhost:1883, bundled model and sample photos):
  edge-agent run -c config.yaml --max-frames 20
  mosquitto_sub -t 'edge/+/predictions' -v          # in another terminal
"""

EPILOG = """\
configuration: every key of config.yaml is optional; --set key.path=value overrides one
(e.g. --set mqtt.host=broker.local --set source.uri=csi://0). `edge-agent check` tells what
this machine lacks for the given config.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config.yaml to use (default: built-in defaults; relative paths in the "
                        "file are relative to the file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set mqtt.port=1884 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="edge-agent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon: capture, infer, publish over MQTT",
                       description="Run the agent until SIGTERM/SIGINT (or the limits below). "
                                   "Predictions go to P/D/predictions, telemetry to "
                                   "P/D/telemetry, state to the retained P/D/status.")
    _add_config_args(p)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")

    p = sub.add_parser("bench", help="measure raw backend speed vs the full pipeline",
                       description="Runs the model on pre-made tensors (raw backend), then the "
                                   "whole pipeline on a real source, then a live-like 30 fps "
                                   "synthetic source, and prints fps, stage latencies "
                                   "p50/p95/p99 and their ratio. No broker needed: messages are "
                                   "serialized and spooled locally as in a run.")
    _add_config_args(p)
    p.add_argument("--model", metavar="NAME|PATH",
                   help="model package name or directory (default: model.name)")
    p.add_argument("--frames", type=int, default=300, metavar="N",
                   help="frames per measurement (default 300)")
    p.add_argument("--source", metavar="URI", help="pipeline source (default: source.uri)")
    p.add_argument("--rounds", type=int, default=3, metavar="R",
                   help="alternate raw and pipeline R times and report medians (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("check", help="environment doctor: what this machine has and lacks",
                       description="Checks Python, numpy, OpenCV (+GStreamer), ONNX Runtime, "
                                   "TensorRT, pycuda, jtop, power sensors, the broker, the "
                                   "source and the model. Exit code 0 when everything the "
                                   "config needs is there, 1 otherwise.")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("send", help="operator side: send a command to a device, print events",
                       description="Publishes COMMAND to P/D/cmd/COMMAND (or the group topic) "
                                   "and prints the device's events for it until the command "
                                   "is done. Exit code 0 on success.")
    _add_config_args(p)
    p.add_argument("cmd", metavar="COMMAND",
                   help="ping, model/install, model/activate, model/rollback, model/list, "
                        "model/remove")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID", help="device id")
    target.add_argument("--group", metavar="G", help="device group")
    p.add_argument("--json", dest="payload", metavar="PAYLOAD", default="{}",
                   help="JSON payload, e.g. '{\"name\": \"m\", \"version\": \"2\"}'")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the final event (default 30)")
    build_demo_parser(sub)
    from .cli_models import add_parsers
    add_parsers(sub, _add_config_args)
    return parser


def _load_config(args: argparse.Namespace):
    from .config import load_config
    return load_config(args.config, args.overrides)


def _setup_logging(level: str) -> None:
    """Timestamped lines on a terminal; `<N>` priorities and no timestamps under journald."""
    from .systemd import configure_logging
    configure_logging(level)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Agent
    from .systemd import Notifier
    config = _load_config(args)
    _setup_logging(config.logging.level)
    logging.getLogger("edge-agent").debug("config (secrets hidden): %s", config.redacted())
    agent = Agent(config, max_frames=args.max_frames, duration=args.duration,
                  notifier=Notifier(), overrides=args.overrides)
    agent.install_signal_handlers()
    return agent.run()


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    config = _load_config(args)
    _setup_logging("WARNING" if config.logging.level == "INFO" else config.logging.level)
    return run_bench(config, model=args.model, frames=args.frames, source=args.source,
                     as_json=args.json, rounds=max(1, args.rounds))


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check
    config = _load_config(args)
    return run_check(config, as_json=args.json)


def cmd_send(args: argparse.Namespace) -> int:
    from .send import send_command
    config = _load_config(args)
    _setup_logging("WARNING")
    return send_command(config, args.cmd, device=args.device, group=args.group,
                        payload_text=args.payload, wait_s=args.wait)


def cmd_models(args: argparse.Namespace) -> int:
    from .cli_models import cmd_models as run_models
    return run_models(args, _load_config(args))


def cmd_build(args: argparse.Namespace) -> int:
    from .cli_models import cmd_build as run_build
    return run_build(args)


def cmd_profile(args: argparse.Namespace) -> int:
    from .cli_models import cmd_profile as run_profile
    return run_profile(args, _load_config(args))


COMMANDS = {"run": cmd_run, "bench": cmd_bench, "check": cmd_check, "send": cmd_send,
            "models": cmd_models, "build": cmd_build, "profile": cmd_profile}
COMMANDS["demo"] = cmd_demo


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except AgentError as exc:
        print("edge-agent: error: {}".format(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
