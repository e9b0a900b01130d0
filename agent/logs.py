"""Logging setup: the root handler on stderr, journald-style priorities under systemd.

Under systemd (``$JOURNAL_STREAM`` or ``$INVOCATION_ID``) each line gets an sd-daemon(3)
``<N>`` priority prefix and no timestamp (journald adds the time, the unit and the PID);
anywhere else lines are timestamped. Pure stdlib.
"""

import codecs
import io
import logging
import os
import sys
from typing import Any, List, Mapping, Optional, Union

from .errors import ConfigError

# sd-daemon(3) priority prefixes, understood by journald on a service's stdout/stderr.
_SYSLOG_PRIORITY = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _priority(levelno):
    # type: (int) -> int
    for threshold, priority in _SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


_ESCAPE = "edge-agent-escape"
_kept_streams = []  # type: List[Any]


def _escape_error(exc):
    # type: (UnicodeError) -> Any
    """What a character the output's encoding lacks becomes: an argv or file name byte that
    Python decoded with surrogateescape goes out as that byte again; anything else as a
    backslash escape (as Python writes stderr), never an exception."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start:exc.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return bytes(ord(c) - 0xDC00 for c in text), exc.end
    return codecs.backslashreplace_errors(exc)


codecs.register_error(_ESCAPE, _escape_error)


def printable_stdout():
    # type: () -> None
    """Make `print` of any text safe on an ASCII stdout.

    Python 3.6 (JetPack 4.6) under the C locale (l4t containers, cron, a shell without LANG)
    writes stdout as ASCII and raises UnicodeEncodeError at the first label, device name or
    message with another character, after the command may have done half its work; 3.7+
    switch to UTF-8 there. Such characters are escaped instead, as stderr already does."""
    stream = sys.stdout
    encoding = getattr(stream, "encoding", None)
    if getattr(stream, "buffer", None) is None or not encoding or \
            getattr(stream, "errors", None) not in ("strict", "surrogateescape"):
        return
    try:
        if codecs.lookup(encoding).name.startswith("utf"):
            return
    except LookupError:
        return
    stream.flush()
    if hasattr(stream, "reconfigure"):  # Python 3.7+
        stream.reconfigure(errors=_ESCAPE)
        return
    # The old wrapper would close the shared buffer when collected: keep it.
    _kept_streams.append(stream)
    sys.stdout = io.TextIOWrapper(stream.buffer, encoding=encoding, errors=_ESCAPE,
                                  line_buffering=stream.line_buffering)


def under_journald(environ=None, stream=None):
    # type: (Optional[Mapping[str, str]], Optional[object]) -> bool
    """True when ``stream`` (default stderr) goes to the journal.

    ``$JOURNAL_STREAM`` ("DEV:INODE", systemd >= 231) decides when present: it must match the
    stream's fstat, otherwise stderr was redirected elsewhere. Without it, ``$INVOCATION_ID``
    (set for every unit, systemd >= 232) is taken as "started by systemd".
    """
    env = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    journal = env.get("JOURNAL_STREAM")
    if journal:
        try:
            dev, ino = (int(part) for part in journal.split(":", 1))
            st = os.fstat(stream.fileno())  # type: ignore
        except (ValueError, OSError, AttributeError):
            return False
        return (st.st_dev, st.st_ino) == (dev, ino)
    return bool(env.get("INVOCATION_ID"))


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` lines; journald adds the time, the unit and the PID itself.

    Every line of a multi-line record (tracebacks) carries the prefix, so the whole traceback is
    filed at the record's priority instead of its continuation lines at the default (info).
    """

    def __init__(self, fmt="%(name)s: %(message)s"):
        # type: (str) -> None
        super(JournalFormatter, self).__init__(fmt)

    def format(self, record):
        # type: (logging.LogRecord) -> str
        prefix = "<%d>" % _priority(record.levelno)
        text = super(JournalFormatter, self).format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level, environ=None, stream=None):
    # type: (Union[str, int], Optional[Mapping[str, str]], Optional[object]) -> logging.Handler
    """Point the root logger at stderr, journald style under systemd, timestamped otherwise.

    Calling it again replaces the handler it installed before. ``level`` is a name such as
    "INFO" (the ``logging.level`` config key); a bad name is a ConfigError naming the key.
    """
    if isinstance(level, int):
        levelno = level
    else:
        name = str(level).upper()
        if name not in _LEVELS:
            raise ConfigError(
                "logging.level: %r is not one of %s" % (level, ", ".join(_LEVELS))
            )
        levelno = getattr(logging, name)
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)  # type: ignore
    if under_journald(environ, stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler._edge_agent = True  # type: ignore  # marks the handler we replace on the next call
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_edge_agent", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
