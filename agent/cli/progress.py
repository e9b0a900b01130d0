"""Progress on a terminal for the CLI's long commands: the text bar (`tune`, `fleet rollout`)
and a live line rewritten in place on a TTY, with messages printed above it."""

import shutil
import sys
import threading
from typing import Any, Optional


def bar(done: float, total: float, width: int = 20) -> str:
    """`#####...............` for done/total (full when total is 0)."""
    filled = int(width * min(1.0, done / float(total))) if total else width
    return "#" * filled + "." * (width - filled)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class LiveLine(object):
    """One line of a TTY rewritten in place (`update`), closed with `finish`; `message` prints
    a whole line above it. Thread-safe: a ticker may redraw while events arrive."""

    def __init__(self, out: Optional[Any] = None) -> None:
        self.out = out or sys.stdout
        self._text = ""  # the live line, "" when none is shown
        self._lock = threading.Lock()

    def _fit(self, text: str) -> str:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        return text if len(text) <= width else text[:max(1, width - 1)] + "~"

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def update(self, text: str) -> None:
        with self._lock:
            self._text = self._fit(text)
            self._write("\r\x1b[K" + self._text)

    def message(self, text: str) -> None:
        """A line above the live one (which is drawn again below it)."""
        with self._lock:
            self._write("\r\x1b[K" + text + "\n" + self._text)

    def finish(self, text: Optional[str] = None) -> None:
        """Leave the live line (or `text` in its place) on screen and start a new line."""
        with self._lock:
            if text is not None:
                self._text = self._fit(text)
            if self._text:
                self._write("\r\x1b[K" + self._text + "\n")
            self._text = ""
