"""`edge-agent fleet`: the operator's view of many devices (`ls`) and staged rollouts."""

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from ..config import Config
from . import config_from_args


def cmd_fleet(args: argparse.Namespace) -> int:
    from ..logs import configure_logging
    config = config_from_args(args)
    configure_logging("WARNING")
    if args.fleet_command == "ls":
        return fleet_ls(config, group=args.group, as_json=args.json, wait_s=args.wait)
    from . import fleet_rollout
    return fleet_rollout.dispatch(config, args)


def inventory_rows(config: Config, group: Optional[str] = None, wait_s: float = 6.0
                   ) -> List[Dict[str, Any]]:
    """One row per device (of `group`): retained status and info, then telemetry from each
    online device, waiting at most `wait_s` for those that have not sent one yet."""
    from ..fleet.watch import FleetWatch
    with FleetWatch(config, "fleet-ls") as watch:
        watch.sync()
        inv = watch.inventory

        def all_reported() -> bool:
            return all(d in inv.telemetry and inv.telemetry[d].get("boot") ==
                       inv.status[d].get("boot")
                       for d in inv.devices(group) if inv.online(d))
        if wait_s > 0:
            watch.wait(all_reported, wait_s)
        with watch.cond:
            return [inv.row(d) for d in inv.devices(group)]


def fleet_ls(config: Config, group: Optional[str] = None, as_json: bool = False,
             wait_s: float = 6.0, out: Any = None) -> int:
    out = out or sys.stdout
    from ..fleet.inventory import format_table
    rows = inventory_rows(config, group, wait_s)
    if as_json:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    elif rows:
        out.write(format_table(rows))
        online = sum(1 for r in rows if r["state"] not in (None, "offline"))
        out.write("{} device(s), {} online\n".format(len(rows), online))
    else:
        out.write("no device has a retained status under {}/+/status{}\n".format(
            config.mqtt.prefix, " in group " + group if group else ""))
    return 0
