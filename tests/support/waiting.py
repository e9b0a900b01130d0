"""Polling with a deadline."""

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after {:.0f} s waiting for {}".format(timeout, what))
        time.sleep(interval)
