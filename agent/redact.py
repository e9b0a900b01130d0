"""Hiding credentials in URLs, and in text that holds URLs (GStreamer pipelines, errors), before
they reach a log, an error message or an MQTT message.

One rule for every URL the agent shows (camera sources, model downloads): what sits between
`scheme://` and the `@` of the authority is a credential: `user:password@` becomes
`user:***@` (`***@` for download URLs, which show no user either), a lone `name@` (often a
token) becomes `***@`. The rule is applied to the text itself, not to what `urllib` makes of
it, so a URL that urllib cannot parse (an unescaped `[` or `/` in the password, a bad port) is
hidden just the same: when in doubt, more is hidden, never less. Query values whose names say
secret (`password=`, `token=`, `sig=`, ...) and GStreamer properties such as rtspsrc's
`user-pw=` are replaced by `***` too.

Use `redact_text` for a camera URI (it may be a whole GStreamer pipeline) and any other text,
`redact_url` for a download URL.
"""

import re
from typing import Any

HIDDEN = "***"
# Last parts (split on - and _) of parameter and property names whose values are secrets.
SECRET_WORDS = frozenset(("pw", "pwd", "pass", "passwd", "password", "passphrase", "secret",
                          "token", "key", "auth", "authorization", "sig", "signature",
                          "credential", "credentials", "apikey"))

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
_QUOTED_URL = re.compile(r'"(' + _SCHEME + r'(?:[^"\\]|\\.)*)"')
_BARE_URL = re.compile(_SCHEME + r"[^\s\"'!,;]*")
_PROPERTY = re.compile(r'(?<![\w-])([A-Za-z][\w-]*)(\s*=\s*)("(?:[^"\\]|\\.)*"|[^\s!"]+)')


def is_secret_name(name: str) -> bool:
    """True for names like `password`, `user-pw`, `api_key`, `X-Amz-Signature`."""
    words = [w for w in re.split(r"[-_.]", name.lower()) if w]
    return bool(words) and words[-1] in SECRET_WORDS


def redact_url(url: str, strict: bool = True) -> str:
    """`url` fit for messages and logs.

    Credentials before the authority's `@` are hidden (see the module doc). `strict` (model
    downloads, whose signed URLs carry tokens in the query) hides the user name too and shows
    the query and fragment as `?<hidden>`; otherwise (camera URIs, whose options live in the
    query) the user name stays and only the values of secret-looking parameters are hidden.
    Text that is not a URL is passed through `redact_text`.
    """
    match = re.match(r"(" + _SCHEME + r")(.*)\Z", url, re.S)
    if match is None:
        return redact_text(url)
    scheme, rest = match.group(1), match.group(2)
    cut = rest.rfind("@")
    if cut >= 0 and _is_userinfo(rest[:cut]):
        user, colon, _ = rest[:cut].partition(":")
        shown = "{}:{}".format(user, HIDDEN) if colon and user and not strict else HIDDEN
        scheme, rest = scheme + shown + "@", rest[cut + 1:]
    end = len(rest)
    for stop in ("?", "#"):
        at = rest.find(stop)
        if at >= 0:
            end = min(end, at)
    head, tail = rest[:end], rest[end:]
    if not tail:
        return scheme + head
    if strict:
        return scheme + head + "?<hidden>"
    return scheme + head + _redact_query(tail)


def _is_userinfo(before: str) -> bool:
    """Whether the text between `://` and the last `@` is credentials, not a host and path
    with an `@` in it (`host/pkg@1.2`, `host:8080/a@b`). A `/`, `?` or `#` ends a host, so
    one in credentials (an unescaped password character) shows as a non-numeric "port"."""
    stops = [i for i in (before.find(c) for c in "/?#") if i >= 0]
    if not stops:
        return True
    first = min(stops)
    colon = before.find(":", 0, first)
    return colon >= 0 and not before[colon + 1:first].isdigit()


def _redact_query(tail: str) -> str:
    """`?a=1&password=x#frag` with the values of secret-looking keys hidden."""
    query, hash_mark, fragment = tail.partition("#")
    if query.startswith("?"):
        pieces = []
        for piece in query[1:].split("&"):
            name, eq, _ = piece.partition("=")
            pieces.append(name + eq + HIDDEN if eq and is_secret_name(name) else piece)
        query = "?" + "&".join(pieces)
    return query + (hash_mark + HIDDEN if hash_mark and fragment else hash_mark)


def redact_text(text: str) -> str:
    """Any text (a GStreamer pipeline, an error message) with the credentials of every URL in
    it hidden, and the values of secret-looking `name=value` properties."""
    if not text:
        return text
    text = _PROPERTY.sub(_redact_property, text)
    text = _QUOTED_URL.sub(lambda m: '"{}"'.format(redact_url(m.group(1), strict=False)),
                           text)
    return _BARE_URL.sub(lambda m: _redact_bare(m.group(0)), text)


def _redact_property(match: Any) -> str:
    name, eq, value = match.group(1), match.group(2), match.group(3)
    if not is_secret_name(name):
        return match.group(0)
    return name + eq + ('"{}"'.format(HIDDEN) if value.startswith('"') else HIDDEN)


def _redact_bare(url: str) -> str:
    return redact_url(url, strict=False) if "://" in url else url
