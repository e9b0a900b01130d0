"""The live view as a web page: a small HTTP server with the MJPEG stream and the state.

`ViewServer` (stdlib, one thread per client) serves `/` (a page with the MJPEG stream and the
latest prediction and telemetry as text, refreshed by polling `/state.json`), `/stream.mjpg`
(multipart/x-mixed-replace JPEGs, at most `stream_fps`, encoded only while a client watches),
`/state.json` and `/snapshot.jpg`. It binds to `view.host` (127.0.0.1 by default: put it on
0.0.0.0 only on a trusted network; it has no login) and stops with the agent's stop Event.
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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-agent live view: {device}</title>
<style>
body {{ background: #111; color: #eee; font: 15px/1.4 system-ui, sans-serif; margin: 16px; }}
h1 {{ font-size: 18px; margin: 0 0 12px; }}
a {{ color: #8cf; }}
#wrap {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
#live {{ max-width: 100%; background: #000; min-width: 320px; min-height: 180px; }}
#side {{ flex: 1 1 300px; min-width: 280px; max-width: 560px; }}
pre {{ white-space: pre-wrap; word-break: break-all; max-height: 50vh; overflow: auto;
       font-size: 12px; color: #aaa; }}
table {{ border-collapse: collapse; }}
td {{ padding: 2px 10px 2px 0; vertical-align: top; }}
.state {{ font-weight: bold; }}
.degraded, .offline {{ color: #f66; }} .serving {{ color: #6d6; }}
ol {{ padding-left: 20px; margin: 4px 0 12px; }}
</style></head>
<body>
<h1>edge-agent live view: <span id="device">{device}</span>
  <span id="state" class="state {state}">{state}</span></h1>
<div id="wrap">
<img id="live" alt="live camera view with predictions (MJPEG)">
<div id="side">
<div>top predictions</div>
<ol id="top">{top}</ol>
<table>
<tr><td>model</td><td id="model">{model}</td></tr>
<tr><td>frames</td><td id="seq">{seq}</td></tr>
<tr><td>info</td><td id="lines">{lines}</td></tr>
<tr><td>detail</td><td id="detail">{detail}</td></tr>
</table>
<p><a href="/snapshot.jpg">snapshot</a> · <a href="/state.json">state.json</a>
 · <a href="/stream.mjpg">stream.mjpg</a></p>
<pre id="telemetry"></pre>
</div></div>
<script>
"use strict";
function text(id, value) {{ document.getElementById(id).textContent = value; }}
function render(s) {{
  var top = document.getElementById("top");
  while (top.firstChild) top.removeChild(top.firstChild);
  (s.overlay.top || []).forEach(function (t) {{
    var li = document.createElement("li"); li.textContent = t; top.appendChild(li);
  }});
  text("lines", (s.overlay.lines || []).join(" | "));
  text("seq", s.seq);
  var st = s.status || {{}};
  var el = document.getElementById("state");
  el.textContent = st.state || "?"; el.className = "state " + (st.state || "");
  text("detail", st.detail || "");
  var m = s.model || {{}};
  text("model", (m.name || "?") + "@" + (m.version || "?") + " " + (m.backend || "") + " " +
       (m.precision || ""));
  text("telemetry", s.telemetry ? JSON.stringify(s.telemetry, null, 1) : "telemetry: waiting");
}}
function poll() {{
  fetch("/state.json", {{cache: "no-store"}}).then(function (r) {{ return r.json(); }})
    .then(function (s) {{ render(s); document.body.dataset.updated = String(s.seq); }})
    .catch(function () {{ text("state", "unreachable"); }})
    .then(function () {{ setTimeout(poll, 500); }});
}}
window.addEventListener("load", function () {{
  document.getElementById("live").src = "/stream.mjpg";
  poll();
}});
</script>
</body></html>
"""


def _esc(value: Any) -> str:
    import html
    return html.escape(str(value))


def render_page(state: Dict[str, Any]) -> str:
    """The page with the current state written in (so it reads right before any script runs)."""
    status = state.get("status") or {}
    model = state.get("model") or {}
    overlay = state.get("overlay") or {}
    return PAGE.format(
        device=_esc(status.get("device", "")), state=_esc(status.get("state", "?")),
        top="".join("<li>{}</li>".format(_esc(t)) for t in overlay.get("top", [])),
        model=_esc("{}@{} {} {}".format(model.get("name", "?"), model.get("version", "?"),
                                        model.get("backend", ""), model.get("precision", ""))),
        seq=_esc(state.get("seq", 0)), lines=_esc(" | ".join(overlay.get("lines", []))),
        detail=_esc(status.get("detail", "")))


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
        handler.end_headers()
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
                                    + str(len(data)).encode("ascii") + b"\r\n\r\n" + data
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


def _make_handler(server: ViewServer) -> Any:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-agent-view"
        protocol_version = "HTTP/1.0"

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

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    page = render_page(server.view.state())
                    self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
                elif path == "/state.json":
                    body = json.dumps(server.view.state(), default=str).encode("utf-8")
                    self._send(200, body, "application/json")
                elif path == "/snapshot.jpg":
                    seq, data = server.view.jpeg()
                    if data is None:
                        self._send(503, b"no frame yet\n", "text/plain", {"Retry-After": "1"})
                    else:
                        state = server.view.state()
                        name = lookup(state, "prediction", "frame")
                        headers = {"X-Frame-Seq": str(seq)}
                        if isinstance(name, str):
                            headers["X-Frame-Name"] = os.path.basename(name)
                        self._send(200, data, "image/jpeg", headers)
                elif path == "/stream.mjpg":
                    server.stream(self)
                else:
                    self._send(404, b"not found; try / /stream.mjpg /state.json "
                                    b"/snapshot.jpg\n", "text/plain")
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
