"""One named background thread with start, join and running: what the agent's workers share."""

import threading
from typing import Callable, Optional


class BackgroundThread(object):
    """A daemon thread running `target`, started at most once.

    The power sampler, the model manager and the systemd tickers each own one; their stop
    condition (an Event) stays theirs, this only runs and joins the thread.
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self.name = name
        self._thread = None  # type: Optional[threading.Thread]

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> bool:
        """Start the thread; False (and nothing done) when it was started before."""
        if self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the thread to end (after its stop condition is set); True when it has
        ended or never started."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """Started, and no longer alive."""
        return self._thread is not None and not self._thread.is_alive()
