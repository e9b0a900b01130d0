"""`edge-agent run`: the daemon, until SIGTERM/SIGINT or --max-frames/--duration."""

import argparse
import logging

from . import config_from_args


def cmd_run(args: argparse.Namespace) -> int:
    from ..daemon import Agent
    from ..logs import configure_logging
    from ..systemd import Notifier
    config = config_from_args(args)
    configure_logging(config.logging.level)
    logging.getLogger("edge-agent").debug("config (secrets hidden): %s", config.redacted())
    agent = Agent(config, max_frames=args.max_frames, duration=args.duration,
                  notifier=Notifier(), overrides=args.overrides)
    agent.install_signal_handlers()
    return agent.run()
