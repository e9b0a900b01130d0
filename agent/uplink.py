"""The daemon's MQTT link and its spool, and the retrying of a spool file that failed.

A spool that cannot be opened (disk full, spool.db unusable) is no reason to stop: messages
wait in memory meanwhile, the `spool` problem says so, and `SpoolWatch.check()` (called by
the main thread) moves them to the file when it opens again.
"""

import logging
import os
import time
from typing import Any, Callable, Optional

from . import __version__
from .config import Config
from .mqtt import MqttLink
from .spool_fallback import FallbackSpool

log = logging.getLogger("edge-agent")
Problem = Callable[[str, Optional[str]], None]


def open_link(config: Config, device_id: str, state_dir: str,
              on_command: Callable[..., None]) -> MqttLink:
    """The MQTT link (not started) over a FallbackSpool in `state_dir` (`link.spool`)."""
    spool = FallbackSpool(os.path.join(state_dir, "spool.db"),
                          max_messages=config.mqtt.spool_max_messages)
    return MqttLink(config.mqtt, device_id, config.device.group, spool, on_command=on_command,
                    will_payload={"state": "offline", "device": device_id,
                                  "group": config.device.group,
                                  "agent": __version__, "reason": "connection lost"})


def close_link(link: Any, spool: Any, flush_s: float = 3.0) -> None:
    """At shutdown: send what the broker takes within `flush_s`, say what stays spooled (or
    is lost with a spool in memory), stop the link and close the spool."""
    drained = link.flush(flush_s)
    if not drained and getattr(spool, "fault", None) is not None:
        log.error("broker unreachable at shutdown and the spool file unusable: %d messages "
                  "held in memory are lost", len(spool))
    elif not drained:
        log.warning("broker unreachable at shutdown: %d messages stay spooled in %s and "
                    "are sent at the next start", len(spool), spool.path)
    link.stop(timeout=0.5)
    spool.close()


class SpoolWatch(object):
    """Reports a spool held in memory as the `spool` problem and retries its file."""

    # Seconds between attempts to reopen a spool file that could not be opened.
    RETRY_S = 2.0

    def __init__(self, spool: Any, problem: Problem) -> None:
        self.spool = spool
        self.problem = problem
        self.retry_at = time.monotonic() + self.RETRY_S
        self.note()

    def note(self) -> None:
        fault = getattr(self.spool, "fault", None)
        self.problem("spool", None if fault is None else
                     "{}; messages wait in memory (lost if the agent stops) until it can be "
                     "opened: free disk space or fix device.state_dir".format(fault))

    def check(self) -> None:
        """While the spool is in memory, try the file again now and then."""
        if getattr(self.spool, "fault", None) is None or time.monotonic() < self.retry_at:
            return
        self.retry_at = time.monotonic() + self.RETRY_S
        self.spool.recover()
        self.note()
