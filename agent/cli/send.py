"""`edge-agent send`: the operator side. Publishes a command and prints the device's events
for it until the command is done."""

import argparse
import json
import sys
import threading
import uuid
from typing import Any, Dict, List, Optional

from ..config import Config
from ..errors import AgentError
from ..updates.events import FINAL_OK, FINAL_STATES
from . import config_from_args


def cmd_send(args: argparse.Namespace) -> int:
    from ..logs import configure_logging
    config = config_from_args(args)
    configure_logging("WARNING")
    return send_command(config, args.cmd, device=args.device, group=args.group,
                        payload_text=args.payload, wait_s=args.wait)


def send_command(config: Config, command: str, device: Optional[str] = None,
                 group: Optional[str] = None, payload_text: str = "{}",
                 wait_s: float = 30.0, out: Any = None) -> int:
    out = out or sys.stdout
    payload = _payload(payload_text)
    request_id = payload["request_id"]
    prefix = config.mqtt.prefix
    if device:
        cmd_topic = "{}/{}/cmd/{}".format(prefix, device, command)
        events_topic = "{}/{}/events".format(prefix, device)
    else:
        cmd_topic = "{}/groups/{}/cmd/{}".format(prefix, group, command)
        events_topic = "{}/+/events".format(prefix)

    from ..mqtt import make_client
    client = make_client(config.mqtt, "edge-agent-send-" + request_id)
    done = threading.Event()
    subscribed = threading.Event()
    outcomes = []  # type: List[str]
    lock = threading.Lock()

    def on_subscribe(*args: Any) -> None:
        subscribed.set()

    def on_message(c: Any, u: Any, message: Any) -> None:
        try:
            event = json.loads(message.payload.decode("utf-8"))
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("request_id") != request_id:
            return
        with lock:
            out.write(_event_line(message.topic.split("/")[-2], event))
            out.flush()
            if event.get("state") in FINAL_STATES:
                outcomes.append(event["state"])
                if device:
                    done.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    try:
        client.connect(config.mqtt.host, config.mqtt.port, keepalive=30)
    except OSError as exc:
        raise AgentError("cannot reach the broker {}:{}: {}".format(
            config.mqtt.host, config.mqtt.port, exc))
    client.loop_start()
    try:
        client.subscribe(events_topic, qos=1)
        if not subscribed.wait(10.0):
            raise AgentError("broker did not confirm the subscription to {}".format(
                events_topic))
        client.publish(cmd_topic, json.dumps(payload), qos=1).wait_for_publish()
        done.wait(wait_s)
    finally:
        client.loop_stop()
        client.disconnect()
    if not outcomes:
        out.write("no final event for request {} within {:.0f} s\n".format(request_id, wait_s))
        return 1
    return 0 if all(o in FINAL_OK for o in outcomes) else 1


def _payload(payload_text: str) -> Dict[str, Any]:
    """The --json payload, a JSON object, with a request_id (a new one unless given)."""
    try:
        payload = json.loads(payload_text)
    except ValueError as exc:
        raise AgentError("--json: not valid JSON: {}".format(exc))
    if not isinstance(payload, dict):
        raise AgentError("--json: must be a JSON object, e.g. '{\"name\": \"m\"}'")
    payload.setdefault("request_id", uuid.uuid4().hex[:12])
    return payload


def _event_line(who: str, event: Dict[str, Any]) -> str:
    """`DEVICE COMMAND STATE [PROGRESS] [ERROR or DETAIL]`, one line per event."""
    progress = event.get("progress")
    problem = event.get("error") or event.get("detail")
    return "{} {} {}{}{}\n".format(
        who, event.get("command"), event.get("state"),
        " {:.0%}".format(progress) if isinstance(progress, (int, float)) else "",
        " " + json.dumps(problem) if problem else "")
