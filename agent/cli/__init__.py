"""Command-line interface: one module per `edge-agent` subcommand; agent/__main__.py only parses."""

import argparse
from typing import Any


def config_from_args(args: argparse.Namespace) -> Any:
    """The Config that a command's -c/--config and --set options name."""
    from ..config import load_config
    return load_config(args.config, args.overrides)
