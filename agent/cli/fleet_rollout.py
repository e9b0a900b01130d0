"""`edge-agent fleet rollout|pause|abort|rollback`: staged rollouts from the operator's side."""

import argparse
import json
import sys
from typing import Any, Dict

from ..config import Config
from ..errors import AgentError

EXIT = {"done": 0, "incomplete": 3, "paused": 3, "aborted": 1, "rolled_back": 1}


def dispatch(config: Config, args: argparse.Namespace) -> int:
    from ..fleet import state as st
    action = args.fleet_command
    path = args.state or st.default_path(args.group or "")
    if action in ("pause", "abort"):
        st.RolloutState.load(path)  # names the file when there is none
        st.write_control(path, action)
        print("{} requested for the rollout in {}; the running `fleet rollout` {} at its next "
              "step".format(action, path, "pauses" if action == "pause" else
                            "rolls back the devices it changed and stops"))
        return 0
    if action == "rollback":
        return rollback_group(config, args.group, args.wait)
    return rollout(config, args, path)


def rollout(config: Config, args: argparse.Namespace, path: str) -> int:
    from ..fleet import state as st
    from ..fleet.rollout import Rollout
    from ..fleet.watch import FleetWatch
    from .progress import is_terminal
    live = None
    if not args.json and is_terminal(sys.stdout):
        from .fleet_progress import RolloutBar
        live = RolloutBar(path)
        emit = live.record
    else:
        emit = _printer(args.json)
    with FleetWatch(config, "fleet-rollout") as watch:
        watch.sync()
        if args.resume:
            state = st.RolloutState.load(path)
            if state.doc["outcome"] not in ("running", "paused", "incomplete"):
                raise AgentError("the rollout in {} ended ({}); start a new one".format(
                    path, state.doc["outcome"]))
            state.doc["outcome"] = "running"
            st.write_control(path, None)
            emit(state.note(None, "resumed", stage=state.doc["stage"]))
        else:
            if args.install is None or not args.group:
                raise AgentError("fleet rollout needs INSTALL.json and --group G "
                                 "(or --resume)")
            state = _new_state(watch, args, path)
        engine = Rollout(watch, state, emit)
        if live is not None:
            live.follow(engine)
        try:
            outcome = engine.run()
        finally:
            if live is not None:
                live.close()
    return EXIT.get(outcome, 1)


def _new_state(watch: Any, args: argparse.Namespace, path: str) -> Any:
    from ..fleet import state as st
    import os
    if os.path.exists(path):
        old = st.RolloutState.load(path)
        if old.doc["outcome"] in ("running", "paused", "incomplete"):
            raise AgentError("a rollout in {} is not finished ({}): continue it with --resume, "
                             "or stop it with `fleet abort`".format(path, old.doc["outcome"]))
    install = _read_install(args.install)
    devices = watch.inventory.devices(args.group)
    if not devices:
        raise AgentError("no device of group {!r} has a retained status under {}/+/status"
                         .format(args.group, watch.prefix))
    canary = st.parse_canary(args.canary, len(devices))
    stages = st.plan(devices, canary, args.batch)
    options = {"window_s": args.window, "max_failures": args.max_failures,
               "max_regression": args.max_regression,
               "activate_timeout_s": args.activate_timeout,
               "offline_wait_s": args.offline_wait}
    st.write_control(path, None)
    return st.RolloutState.create(path, args.group, install, stages, options)


def _read_install(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, ValueError) as exc:
        raise AgentError("{}: cannot read the install payload: {}".format(path, exc))
    if not isinstance(payload, dict) or not payload.get("name") or not payload.get("version"):
        raise AgentError("{}: must be a model/install payload with name, version, url, sha256, "
                         "manifest (see README, MQTT contract)".format(path))
    payload.pop("request_id", None)  # each device gets its own
    payload.pop("ts", None)
    return payload


def _printer(as_json: bool) -> Any:
    """JSON lines (--json), or one text line per step."""
    from .fleet_progress import format_record

    def emit(record: Dict[str, Any]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        else:
            sys.stdout.write(format_record(record) + "\n")
        sys.stdout.flush()
    return emit


def rollback_group(config: Config, group: str, wait_s: float) -> int:
    """model/rollback to every online device of `group`; prints each outcome."""
    from ..fleet.watch import FleetWatch
    with FleetWatch(config, "fleet-rollback") as watch:
        watch.sync()
        inv = watch.inventory
        devices = [d for d in inv.devices(group) if inv.online(d)]
        offline = [d for d in inv.devices(group) if not inv.online(d)]
        events = {}  # type: Dict[str, Any]

        def collect(device: str, suffix: str, payload: Dict[str, Any]) -> None:
            if suffix == "events" and payload.get("state") in ("activated", "failed",
                                                               "rejected"):
                events[str(payload.get("request_id"))] = payload
        watch.listeners.append(collect)
        sent = dict((d, watch.send(d, "model/rollback", {})) for d in devices)
        watch.wait(lambda: all(rid in events for rid in sent.values()), wait_s)
    bad = 0
    for device, rid in sorted(sent.items()):
        event = events.get(rid)
        state = event["state"] if event else "no answer within {:.0f} s".format(wait_s)
        bad += state != "activated"
        print("{:<16} {}{}".format(device, state, " " + json.dumps(event.get("error"))
                                   if event and event.get("error") else ""))
    for device in offline:
        print("{:<16} offline: not rolled back".format(device))
    return 0 if not bad and not offline else 1
