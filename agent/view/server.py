"""The live view as a web page: an HTTP server for the page, its frames, state and history.

`ViewServer` (stdlib, one thread per connection, HTTP/1.1 keep-alive) serves `/` (the page,
agent/view/page.html), `/frame.jpg?after=N` (the newest frame once it is not N, with its
number in `X-Frame-Seq` and its own prediction in `X-Prediction`: the page shows a frame and
its prediction together), `/stream.mjpg` (multipart/x-mixed-replace JPEGs for other players,
at most `stream_fps`, each part with `X-Frame-Seq`), `/state.json` (prediction, telemetry,
status), `/history.json?version=N` (chart points and events of the last minutes; 204 while
unchanged since version N) and `/snapshot.jpg`.
JPEGs are encoded only while someone watches, once per frame for all clients. It binds to
`view.host` (127.0.0.1 by default: put it on 0.0.0.0 only on a trusted network; it has no
login) and stops with the agent's stop Event.
"""

import json
import logging
import os
import select
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Dict, List, Optional

from ..errors import AgentError
from .live import LiveView
from .overlay import lookup

log = logging.getLogger(__name__)

STREAM_FPS = 12.0       # MJPEG frames per second per client, at most


PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
_page = []  # type: List[str]  # the page's text, read once
FRAME_WAIT_S = 10.0     # /frame.jpg?after=N waits this long at most for a newer frame


def _esc(value: Any) -> str:
    import html
    return html.escape(str(value))


def render_page(state: Dict[str, Any], stream_fps: float = STREAM_FPS) -> str:
    """The page (agent/view/page.html) with the current state written in, so it reads right
    before any script runs."""
    if not _page:
        with open(PAGE_FILE, encoding="utf-8") as handle:
            _page.append(handle.read())
    status = state.get("status") or {}
    overlay = state.get("overlay") or {}
    values = {"device": _esc(status.get("device", "")), "state": _esc(status.get("state", "?")),
              "top": "".join("<li>{}</li>".format(_esc(t)) for t in overlay.get("top", [])),
              "stream_fps": "{:g}".format(stream_fps if stream_fps > 0 else 30.0)}
    page = _page[0]
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", value)
    return page


def prediction_header(seq: int, payload: Optional[Dict[str, Any]]) -> str:
    """X-Prediction: the frame's prediction as one line of ASCII JSON (labels escaped)."""
    keep = ("seq", "model", "top", "latency_ms", "frame", "frame_seq", "ts")
    body = {k: v for k, v in (payload or {}).items() if k in keep}
    body.setdefault("seq", seq)
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=str)


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True       # a watching client must not hold up shutdown
    allow_reuse_address = True


class ViewServer(object):
    """The web view: binds at construction (errors name host and port), serves in a thread."""

    def __init__(self, view: LiveView, host: str, port: int, stop: threading.Event,
                 stream_fps: float = STREAM_FPS) -> None:
        self.view = view
        self.stop = stop
        self.stream_fps = stream_fps
        self.clients = 0
        self._lock = threading.Lock()
        handler = _make_handler(self)
        try:
            self.httpd = _Server((host, port), handler)
        except (OSError, socket.gaierror) as exc:
            raise AgentError("view: cannot listen on {}:{}: {}; set view.port (or --set "
                             "view.port=N) to a free port, view.host to an address of this "
                             "machine".format(host, port, exc))
        self.host, self.port = self.httpd.server_address[:2]
        self._threads = []  # type: List[threading.Thread]

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return "http://{}:{}/".format(host, self.port)

    def start(self) -> "ViewServer":
        serve = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                 name="view-http", daemon=True)
        watch = threading.Thread(target=self._stop_on_event, name="view-stop", daemon=True)
        serve.start()
        watch.start()
        self._threads = [serve, watch]
        log.info("live view at %s", self.url)
        return self

    def _stop_on_event(self) -> None:
        self.stop.wait()
        self.httpd.shutdown()
        self.httpd.server_close()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        """MJPEG: the newest rendered frame, at most stream_fps, until the client leaves."""
        period = 1.0 / self.stream_fps if self.stream_fps > 0 else 0.0
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.send_header("Cache-Control", "no-cache, no-store, private")
        handler.send_header("Pragma", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        with self._lock:
            self.clients += 1
        last = 0
        try:
            while not self.stop.is_set():
                seq = self.view.wait_newer(last, 0.5)
                if seq == last:
                    if _client_gone(handler.connection):
                        break  # no frames to write lately, so look: the client left
                    continue
                started = time.monotonic()
                seq, data = self.view.jpeg()
                if data is None:
                    continue
                last = seq
                handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                    + str(len(data)).encode("ascii") + b"\r\nX-Frame-Seq: "
                                    + str(seq).encode("ascii") + b"\r\n\r\n" + data
                                    + b"\r\n")
                handler.wfile.flush()
                left = period - (time.monotonic() - started)
                if left > 0 and self.stop.wait(left):
                    break
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the client went away
        finally:
            with self._lock:
                self.clients -= 1


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (readable, and nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return True


def _query(path: str) -> Dict[str, str]:
    from urllib.parse import parse_qsl
    return dict(parse_qsl(path.partition("?")[2], keep_blank_values=True))


def _make_handler(server: ViewServer) -> Any:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-agent-view"
        protocol_version = "HTTP/1.1"  # keep-alive: the page fetches one JPEG per frame
        timeout = 60  # an idle keep-alive connection is closed after this

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("view %s: " + fmt, self.client_address[0], *args)

        def _send(self, code: int, body: bytes, content_type: str,
                  headers: Optional[Dict[str, str]] = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: Any) -> None:
            self._send(200, json.dumps(data, default=str).encode("utf-8"), "application/json")

        def _frame(self, query: Dict[str, str]) -> None:
            """The newest frame (once it differs from `after`, waiting up to `wait` s; 204
            when none came) with its number and its own prediction in the headers."""
            if "after" in query:
                try:
                    wait = min(float(query.get("wait", FRAME_WAIT_S)), FRAME_WAIT_S)
                except ValueError:
                    wait = FRAME_WAIT_S
                after = query["after"]
                deadline = time.monotonic() + wait
                while str(server.view.seq) == after and not server.stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    server.view.wait_newer(server.view.seq, min(left, 0.5))
            seq, data, payload = server.view.frame_jpeg()
            if data is None:
                self._send(503, b"no frame yet\n", "text/plain", {"Retry-After": "1"})
                return
            if str(seq) == query.get("after"):
                self._send(204, b"", "text/plain")
                return
            headers = {"X-Frame-Seq": str(seq), "X-Prediction": prediction_header(seq, payload)}
            name = lookup(payload, "frame")
            if isinstance(name, str):
                name = os.path.basename(name)
                if name.isprintable() and all(ord(c) < 128 for c in name):  # no header breaks
                    headers["X-Frame-Name"] = name
            self._send(200, data, "image/jpeg", headers)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    page = render_page(server.view.state(), server.stream_fps)
                    self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
                elif path == "/state.json":
                    self._json(server.view.state())
                elif path == "/history.json":
                    # ?version=N: 204 while nothing was added since (the page polls it)
                    if _query(self.path).get("version") == str(server.view.history.version):
                        self._send(204, b"", "text/plain")
                        return
                    history = server.view.history.snapshot()
                    history["now"] = round(time.time(), 3)
                    self._json(history)
                elif path == "/frame.jpg":
                    self._frame(_query(self.path))
                elif path == "/snapshot.jpg":
                    self._frame({})
                elif path == "/stream.mjpg":
                    server.stream(self)
                else:
                    self._send(404, b"not found; try / /frame.jpg /stream.mjpg /state.json "
                                    b"/history.json /snapshot.jpg\n", "text/plain")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def start_view_server(view: LiveView, host: str, port: int, stop: threading.Event,
                      problem: Callable[[str, Optional[str]], None],
                      required: bool = False) -> Optional[ViewServer]:
    """Serve `view` on host:port until `stop`.

    A port that cannot be bound is an AgentError when `required` (the demo); otherwise the
    agent goes on without the view and reports the `view` problem (status `degraded`).
    """
    try:
        server = ViewServer(view, host, port, stop)
    except AgentError as exc:
        if required:
            raise
        log.error("%s", exc)
        problem("view", str(exc))
        return None
    return server.start()
