"""`edge-agent demo`: the agent with the live view on: a window where a display and a GUI-capable
OpenCV are there, else the web page (its URL is printed). Everything else is `edge-agent run`:
predictions and telemetry still go to MQTT (the agent spools while no broker answers)."""

import argparse
import json
import logging
import sys
import threading

from ..errors import AgentError

log = logging.getLogger("edge-agent")


def choose_view(requested: str) -> str:
    """window or web for --view; refuses `window` where it cannot work, saying why."""
    if requested == "web":
        return "web"
    from ..view import window_available
    ok, why = window_available()
    if ok:
        return "window"
    if requested == "window":
        raise AgentError("demo: --view window is not possible here: {}; use --view web".format(
            why))
    print("edge-agent demo: no window ({}); serving the live view as a web page".format(why),
          file=sys.stderr)
    return "web"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..daemon import Agent
    from ..config import load_config
    from ..logs import configure_logging
    from ..systemd import Notifier
    overrides = list(args.overrides)
    if args.source:
        overrides.append("source.uri=" + json.dumps(args.source))  # JSON is YAML: kept as is
    config = load_config(args.config, overrides)
    configure_logging(config.logging.level)
    mode = choose_view(args.view)
    agent = Agent(config, max_frames=args.max_frames, duration=args.duration,
                  notifier=Notifier(), overrides=overrides)
    agent.install_signal_handlers()
    if mode == "web":
        server = agent.serve_view(required=True)
        print("edge-agent demo: live view at {} (Ctrl-C to stop)".format(server.url),
              flush=True)
        return agent.run()
    from ..view import run_window
    view = agent.live_view()
    result = []  # type: list

    def run_agent() -> None:
        try:
            result.append(agent.run())
        except Exception as exc:
            log.error("%s", exc)
            result.append(2 if isinstance(exc, AgentError) else 1)
            agent.stop.set()

    worker = threading.Thread(target=run_agent, name="agent", daemon=True)
    worker.start()
    print("edge-agent demo: live view in a window (q, Esc or closing it stops)", flush=True)
    try:
        run_window(view, agent.stop, title="edge-agent {}".format(agent.device_id))
    finally:
        agent.stop.set()
        worker.join(30.0)
    return result[0] if result else 1
