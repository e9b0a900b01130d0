"""Verified downloads of model files: https, http and file URLs, streamed to disk.

`fetch` never leaves a partial file at the destination: bytes go to a temp file beside it,
the sha256 is computed on the fly, and only a complete, size- and hash-checked file is fsynced
and renamed into place. Every refusal is a `DownloadError` subclass whose message names the URL
(with credentials, query and fragment hidden), the value at fault and what to do about it.

TLS certificates are always verified (Python's default context, or a CA file for a private
CA). Redirects are followed only to schemes the caller allows, so an https URL cannot be
downgraded to http when http is not allowed.
"""

import base64
import hashlib
import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .. import __version__, redact
from ..atomicfile import atomic_file, write_all
from ..errors import AgentError

SCHEMES = ("https", "http", "file")
CHUNK = 64 * 1024
PROGRESS_INTERVAL_S = 0.25

# progress(done_bytes, total_bytes_or_None)
ByteProgress = Callable[[int, Optional[int]], None]


class DownloadError(AgentError):
    """A download failed or was refused; nothing was written at the destination."""


class SchemeError(DownloadError):
    """The URL's scheme is unknown or not in updates.allowed_schemes."""


class DownloadTooLarge(DownloadError):
    """The file is bigger than updates.max_download_mb allows."""


class DownloadTruncated(DownloadError):
    """Fewer bytes arrived than the server or the command announced."""


class ChecksumMismatch(DownloadError):
    """The bytes that arrived do not have the expected sha256."""


class DownloadStalled(DownloadError):
    """No byte arrived for stall_timeout_s seconds."""


class DownloadCancelled(DownloadError):
    """The caller asked to stop (the agent is shutting down, or model/cancel)."""


class DownloadTooSlow(DownloadError):
    """The download ran past its deadline or below the minimum rate."""


class FileNotAllowed(DownloadError):
    """A file: URL outside the directories the caller allows (updates.file_roots)."""


def redact_url(url: str) -> str:
    """The URL fit for messages and logs: credentials, query string and fragment hidden."""
    return redact.redact_url(url, strict=True)


def check_sha256(value: Any, what: str = "sha256") -> str:
    """A 64-hex-digit sha256, lowercased; anything else is a DownloadError naming `what`."""
    if (not isinstance(value, str) or len(value) != 64 or
            any(c not in "0123456789abcdefABCDEF" for c in value)):
        raise DownloadError("{}: {!r} is not a sha256 (64 hex digits); compute it with "
                            "`sha256sum FILE`".format(what, value))
    return value.lower()


class _Progress(object):
    """Calls progress(done, total) at start, at most every PROGRESS_INTERVAL_S, and at the end."""

    def __init__(self, callback: Optional[ByteProgress], total: Optional[int]) -> None:
        self.callback = callback
        self.total = total
        self.last = None  # type: Optional[float]
        self.last_done = -1

    def update(self, done: int, final: bool = False) -> None:
        if self.callback is None or done == self.last_done:
            return
        now = time.monotonic()
        if final or self.last is None or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self.last_done = done
            self.callback(done, self.total)


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a scheme the caller allows."""

    def __init__(self, allowed: Sequence[str], shown: str) -> None:
        self.allowed = allowed
        self.shown = shown

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            newurl = urllib.parse.urljoin(req.full_url, location)
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in self.allowed or scheme not in ("http", "https"):
                fp.close()
                raise SchemeError("download {}: the server redirects to {}, whose scheme {!r} "
                                  "is not allowed (updates.allowed_schemes: {}); publish the "
                                  "file at an allowed URL".format(
                                      self.shown, redact_url(newurl), scheme,
                                      ", ".join(self.allowed)))
        return urllib.request.HTTPRedirectHandler.http_error_302(
            self, req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _LazyHTTPSHandler(urllib.request.HTTPSHandler):
    """HTTPS with the system CAs (or `ca_file`); the context (~50 ms of CPU to load the CAs)
    is made only when an https URL is opened, not for every http download."""

    def __init__(self, ca_file: Optional[str], shown: str) -> None:
        # Not HTTPSHandler.__init__: from Python 3.12 on it makes a default context at once.
        urllib.request.AbstractHTTPHandler.__init__(self)
        self._ca_file = ca_file
        self._shown = shown
        self._context = None  # type: Any
        self._check_hostname = None  # Python < 3.12 reads it in https_open

    def https_open(self, req: Any) -> Any:
        if self._context is None:
            try:
                self._context = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise DownloadError("download {}: cannot use CA file {}: {}; point it at a PEM "
                                    "certificate bundle".format(self._shown, self._ca_file, exc))
        return self.do_open(http.client.HTTPSConnection, req, context=self._context)


def _open_http(url: str, shown: str, timeout: float, ca_file: Optional[str],
               allowed: Sequence[str]) -> Tuple[Any, Optional[int]]:
    opener = urllib.request.build_opener(_LazyHTTPSHandler(ca_file, shown),
                                         _SchemeCheckingRedirects(allowed, shown))
    parts = urllib.parse.urlsplit(url)
    credentials = None
    if parts.username is not None:
        # user:password@ in the URL becomes HTTP basic auth for this host only (an unredirected
        # header is not sent on to wherever the server redirects).
        host = parts.netloc.rsplit("@", 1)[1]
        url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query,
                                       parts.fragment))
        pair = "{}:{}".format(urllib.parse.unquote(parts.username),
                              urllib.parse.unquote(parts.password or ""))
        credentials = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    request = urllib.request.Request(url, headers={
        "User-Agent": "edge-agent/{}".format(__version__), "Accept-Encoding": "identity"})
    if credentials:
        request.add_unredirected_header("Authorization", credentials)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError("download {}: the server answered HTTP {} {}; check the URL and "
                            "that the file is published".format(shown, exc.code, exc.reason))
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.timeout):
            raise DownloadStalled("download {}: no answer within {:g} s; check the server and "
                                  "the network".format(shown, timeout))
        if isinstance(reason, ssl.SSLError) or isinstance(reason, ssl.CertificateError):
            raise DownloadError("download {}: TLS failed: {}; the server's certificate must be "
                                "valid for its host name and signed by a trusted CA (for a "
                                "private CA, give its certificate as the CA file)".format(
                                    shown, reason))
        raise DownloadError("download {}: cannot connect: {}; check the host name, port and "
                            "network".format(shown, reason))
    except socket.timeout:
        raise DownloadStalled("download {}: no answer within {:g} s; check the server and the "
                              "network".format(shown, timeout))
    except (OSError, ValueError) as exc:
        raise DownloadError("download {}: {}".format(shown, exc))
    length = response.headers.get("Content-Length")
    total = None  # type: Optional[int]
    if length is not None:
        try:
            total = int(length)
        except ValueError:
            response.close()
            raise DownloadError("download {}: the server sent an invalid Content-Length "
                                "{!r}".format(shown, length))
        if total < 0:
            response.close()
            raise DownloadError("download {}: the server sent an invalid Content-Length "
                                "{!r}".format(shown, length))
    return response, total


def within_roots(path: str, roots: Sequence[str]) -> Optional[str]:
    """The real path of `path` when it lies inside one of `roots` (both resolved: no '..' or
    symlink leads out), else None."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return real
    return None


def _open_file(url: str, shown: str,
               file_roots: Optional[Sequence[str]] = None) -> Tuple[Any, Optional[int]]:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError("download {}: a file URL must name an absolute path on this "
                            "machine, like file:///var/models/model.onnx (host {!r} is not "
                            "supported)".format(shown, parts.netloc))
    path = urllib.request.url2pathname(parts.path)
    if file_roots is not None:
        # Checked before anything about the file is looked at, so a refusal says nothing
        # about whether it exists.
        real = within_roots(path, file_roots)
        if real is None:
            raise FileNotAllowed(
                "download {}: file URLs in commands may only name files under "
                "updates.file_roots ({}); put the file there or serve it over "
                "https".format(shown, ", ".join(file_roots) if file_roots else
                               "empty, so no file: URL is accepted"))
        path = real
    if not os.path.isfile(path):
        raise DownloadError("download {}: {} is not a file on this device; check the "
                            "path".format(shown, path))
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DownloadError("download {}: cannot read {}: {}".format(shown, path, exc))
    return handle, os.fstat(handle.fileno()).st_size


def _check_request(url: str, shown: str, expected_sha256: Optional[str], max_bytes: int,
                   allowed_schemes: Sequence[str], cancel: Any, size: Optional[int]
                   ) -> Tuple[str, List[str], Optional[str]]:
    """What fetch refuses before connecting; returns (scheme, allowed schemes, sha256)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    allowed = [s.lower() for s in allowed_schemes]
    if scheme not in SCHEMES:
        raise SchemeError("download {}: scheme {!r} is not supported; use an https, http or "
                          "file URL".format(shown, scheme))
    if scheme not in allowed:
        raise SchemeError("download {}: scheme {!r} is not allowed on this device "
                          "(updates.allowed_schemes: {}); use an allowed URL or add {} to "
                          "updates.allowed_schemes".format(shown, scheme, ", ".join(allowed),
                                                           scheme))
    if expected_sha256 is not None:
        expected_sha256 = check_sha256(expected_sha256, "download {}: sha256".format(shown))
    if size is not None and size > max_bytes:
        raise DownloadTooLarge("download {}: size {} bytes is over the limit of {} bytes; raise "
                               "updates.max_download_mb or ship a smaller model".format(
                                   shown, size, max_bytes))
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("download {}: cancelled before it started".format(shown))
    return scheme, allowed, expected_sha256


def fetch(url: str, dest_path: str, expected_sha256: Optional[str], max_bytes: int,
          allowed_schemes: Sequence[str], progress: Optional[ByteProgress] = None,
          stall_timeout_s: float = 30.0, cancel: Any = None, size: Optional[int] = None,
          ca_file: Optional[str] = None, file_roots: Optional[Sequence[str]] = None,
          deadline_s: Optional[float] = None, min_rate_bps: Optional[float] = None,
          rate_window_s: float = 30.0) -> Tuple[str, int]:
    """Download `url` to `dest_path`; returns (sha256 hex, byte count).

    `expected_sha256` None skips the hash check (the hash is still returned). `size`, when
    given, is the exact byte count the caller expects. `cancel` is anything with is_set()
    (a threading.Event), checked between chunks. A stalled connection is detected by the
    socket timeout, so a cancel during a stall is noticed within stall_timeout_s.
    `file_roots` None allows any file: URL (local CLI installs); a list allows only files whose
    real path lies under one of its directories (commands from MQTT). `deadline_s` bounds the
    whole download; `min_rate_bps` refuses a transfer that brings fewer bytes per second than
    that, averaged over each `rate_window_s` (a trickle that never stalls long enough for the
    socket timeout).
    """
    shown = redact_url(url)
    scheme, allowed, expected_sha256 = _check_request(url, shown, expected_sha256,
                                                      max_bytes, allowed_schemes, cancel, size)

    if scheme == "file":
        stream, total = _open_file(url, shown, file_roots)
    else:
        stream, total = _open_http(url, shown, stall_timeout_s, ca_file, allowed)
    done = 0
    try:
        with atomic_file(dest_path, prefix=".part-") as fd:
            try:
                if total is not None and total > max_bytes:
                    raise DownloadTooLarge("download {}: the server announces {} bytes, over "
                                           "the limit of {} bytes; raise "
                                           "updates.max_download_mb or ship a smaller "
                                           "model".format(shown, total, max_bytes))
                if total is not None and size is not None and total != size:
                    raise DownloadError("download {}: the server announces {} bytes but the "
                                        "command says size {}; fix size or the published "
                                        "file".format(shown, total, size))
                expected_total = total if total is not None else size
                reporter = _Progress(progress, expected_total)
                reporter.update(0)
                digest = hashlib.sha256()
                pace = _Pace(shown, deadline_s, min_rate_bps, rate_window_s)
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled("download {}: cancelled after {} bytes".format(
                            shown, done))
                    block = _read(stream, shown, done, expected_total, stall_timeout_s)
                    if not block:
                        break
                    done += len(block)
                    if done > max_bytes:
                        raise DownloadTooLarge("download {}: more than {} bytes arrived, over "
                                               "the limit; raise updates.max_download_mb or "
                                               "ship a smaller model".format(shown, max_bytes))
                    if size is not None and done > size:
                        raise DownloadError("download {}: more than the {} bytes the "
                                            "command's size says arrived; fix size or the "
                                            "published file".format(shown, size))
                    digest.update(block)
                    write_all(fd, block)
                    reporter.update(done)
                    pace.check(done, expected_total)
            finally:
                stream.close()
            if expected_total is not None and done < expected_total:
                raise DownloadTruncated("download {}: truncated: {} of {} bytes arrived; the "
                                        "connection was cut, retry the install".format(
                                            shown, done, expected_total))
            actual = digest.hexdigest()
            if expected_sha256 is not None and actual != expected_sha256:
                # The computed hash is never shown: it would tell the sender the hash of a
                # file it may not be allowed to read.
                raise ChecksumMismatch("download {}: sha256 does not match the expected {}; "
                                       "the published file is not the one announced (fix "
                                       "the sha256 or the file)".format(shown, expected_sha256))
            reporter.update(done, final=True)
    except OSError:
        stream.close()  # the temp file could not be made: do not leave the connection open
        raise
    return actual, done


class _Pace(object):
    """The overall deadline and the minimum rate of one download."""

    def __init__(self, shown: str, deadline_s: Optional[float], min_rate_bps: Optional[float],
                 window_s: float) -> None:
        self.shown = shown
        self.deadline_s = deadline_s
        self.min_rate = min_rate_bps
        self.window_s = max(float(window_s), 0.001)
        self.start = self.window_start = time.monotonic()
        self.window_done = 0

    def check(self, done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if self.deadline_s is not None and now - self.start > self.deadline_s:
            raise DownloadTooSlow("download {}: not finished after {:g} s ({} of {} bytes), "
                                  "over updates.download_timeout_s; use a faster link or a "
                                  "smaller model, or raise the limit".format(
                                      self.shown, self.deadline_s, done,
                                      total if total is not None else "?"))
        if self.min_rate and now - self.window_start >= self.window_s:
            rate = (done - self.window_done) / (now - self.window_start)
            if rate < self.min_rate:
                raise DownloadTooSlow("download {}: too slow: {:.0f} bytes/s over the last "
                                      "{:g} s, below updates.download_min_rate_bps ({:g}); "
                                      "check the server and the network, then "
                                      "retry".format(self.shown, rate, now - self.window_start,
                                                     self.min_rate))
            self.window_start, self.window_done = now, done


def _read(stream: Any, shown: str, done: int, total: Optional[int], timeout: float) -> bytes:
    import http.client
    # read1 returns what has arrived instead of waiting for a full chunk, so progress and the
    # byte count in a stall message are exact; older responses without it still work.
    reader = getattr(stream, "read1", None) or stream.read
    try:
        return reader(CHUNK)
    except socket.timeout:
        raise DownloadStalled("download {}: stalled: no data for {:g} s after {} of {} bytes; "
                              "check the server and the network, then retry".format(
                                  shown, timeout, done, total if total is not None else "?"))
    except http.client.IncompleteRead as exc:
        raise DownloadTruncated("download {}: truncated: {} of {} bytes arrived; the connection "
                                "was cut, retry the install".format(
                                    shown, done + len(exc.partial),
                                    total if total is not None else "?"))
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError("download {}: connection lost after {} bytes: {}; retry the "
                            "install".format(shown, done, exc))


