"""Live view: the newest frame with its prediction drawn on it, in a window or a web page.

`LiveView` listens to the agent (`agent.listeners`, `agent.telemetry_listeners`) and only keeps
references to the newest frame, prediction and telemetry: the publish thread pays nothing for
it. Drawing the overlay and JPEG encoding happen on demand, in the thread that shows the frame
(the window loop, or the HTTP thread of a connected client), at most once per frame.

Outputs:
- a window (`cv2.imshow`), where a display is reachable and cv2 has HighGUI (`run_window`);
- `ViewServer`, a small HTTP server (stdlib, one thread per client) with `/` (a page with the
  MJPEG stream and the latest prediction and telemetry as text, refreshed by polling
  `/state.json`), `/stream.mjpg` (multipart/x-mixed-replace JPEGs, at most `stream_fps`, encoded
  only while a client watches), `/state.json` and `/snapshot.jpg`. It binds to `view.host`
  (127.0.0.1 by default: put it on 0.0.0.0 only on a trusted network; it has no login) and
  stops with the agent's stop Event.
"""

import json
import logging
import os
import select
import socket
import socketserver
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from .errors import AgentError

log = logging.getLogger(__name__)

STREAM_FPS = 12.0       # MJPEG frames per second per client, at most
JPEG_QUALITY = 80
MIN_WIDTH = 640         # frames are scaled to MIN_WIDTH..MAX_WIDTH for drawing and encoding
MAX_WIDTH = 960
TOP_N = 3
PANEL_BGR = (24, 24, 24)
TEXT_BGR = (255, 255, 255)
BAR_BGR = (80, 200, 120)
NA = "n/a"


# ---------------------------------------------------------------- what the overlay says

def _get(data: Optional[Dict[str, Any]], *path: str) -> Any:
    node = data  # type: Any
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def format_number(value: Any, fmt: str, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NA
    return fmt.format(value) + unit


def overlay_text(payload: Optional[Dict[str, Any]], telemetry: Optional[Dict[str, Any]],
                 model: Optional[Dict[str, Any]], fps: Optional[float]
                 ) -> Tuple[List[Tuple[str, float]], List[str]]:
    """(top predictions as (text, score), info lines) for the overlay and the page.

    Power and energy come from telemetry (`power.total_w`, `energy.inferences_per_joule`) and
    read "n/a" where this machine has no power sensor.
    """
    top = []  # type: List[Tuple[str, float]]
    for item in (_get(payload, "top") or [])[:TOP_N]:
        score = item.get("score") if isinstance(item, dict) else None
        score = float(score) if isinstance(score, (int, float)) else 0.0
        label = item.get("label") if isinstance(item, dict) else None
        if label is None and isinstance(item, dict):
            label = "class {}".format(item.get("index"))
        top.append(("{} {:.1f}%".format(label, score * 100.0), score))
    ref = _get(payload, "model")
    if not ref and model:
        ref = "{}@{}".format(model.get("name"), model.get("version"))
    backend = "{} {}".format(_get(model, "backend") or NA, _get(model, "precision") or NA)
    lines = [
        "{}  {}".format(ref or NA, backend),
        "{} fps  latency {}".format(format_number(fps, "{:.1f}"),
                                    format_number(_get(payload, "latency_ms"), "{:.0f}", " ms")),
        "power {}  energy {}".format(
            format_number(_get(telemetry, "power", "total_w"), "{:.2f}", " W"),
            format_number(_get(telemetry, "energy", "inferences_per_joule"), "{:.1f}",
                          " inf/J")),
    ]
    return top, lines


def fit_width(image: np.ndarray, min_width: int = MIN_WIDTH,
              max_width: int = MAX_WIDTH) -> np.ndarray:
    """A copy of `image` scaled so its width lies in [min_width, max_width]."""
    import cv2
    h, w = image.shape[:2]
    target = min(max(w, min_width), max_width)
    if target == w:
        return image.copy()
    scale = float(target) / w
    size = (target, max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else
                      cv2.INTER_LINEAR)


def draw_overlay(image: np.ndarray, top: List[Tuple[str, float]], lines: List[str]
                 ) -> np.ndarray:
    """A new image: `image` scaled for display with a translucent panel at the top left holding
    the top predictions (with score bars) and the info lines. `image` is not modified."""
    import cv2
    canvas = fit_width(image)
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    h, w = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.45, min(0.8, w / 1200.0))
    thick = 1 if scale < 0.6 else 2
    line_h = int(32 * scale) + 6
    pad = 10
    texts = [t for t, _ in top] + lines
    text_w = max([cv2.getTextSize(t, font, scale, thick)[0][0] for t in texts] + [100])
    panel_w = min(w - 2 * pad, text_w + 2 * pad)
    panel_h = min(h - 2 * pad, line_h * len(texts) + 6 * len(top) + pad)
    x0, y0 = pad, pad
    region = canvas[y0:y0 + panel_h, x0:x0 + panel_w]
    shade = np.empty_like(region)
    shade[:] = PANEL_BGR
    cv2.addWeighted(region, 0.35, shade, 0.65, 0, dst=region)
    y = y0 + line_h - 4
    for text, score in top:
        cv2.putText(canvas, text, (x0 + pad, y), font, scale, TEXT_BGR, thick, cv2.LINE_AA)
        bar = int((panel_w - 2 * pad) * max(0.0, min(1.0, score)))
        cv2.rectangle(canvas, (x0 + pad, y + 4), (x0 + pad + max(bar, 1), y + 8), BAR_BGR,
                      cv2.FILLED)
        y += line_h + 6
    for text in lines:
        cv2.putText(canvas, text, (x0 + pad, y), font, scale * 0.85, TEXT_BGR, thick,
                    cv2.LINE_AA)
        y += line_h
    return canvas


# ---------------------------------------------------------------- the newest frame

class LiveView(object):
    """The newest frame, prediction and telemetry; renders and encodes them on demand.

    `model_info` and `status` are called from the showing thread (agent.model.describe and
    agent.status_payload); both may be None.
    """

    def __init__(self, model_info: Optional[Callable[[], Optional[Dict[str, Any]]]] = None,
                 status: Optional[Callable[[], Dict[str, Any]]] = None,
                 jpeg_quality: int = JPEG_QUALITY) -> None:
        self.model_info = model_info
        self.status = status
        self.jpeg_quality = jpeg_quality
        self._cond = threading.Condition()
        self._image = None  # type: Optional[np.ndarray]
        self._payload = None  # type: Optional[Dict[str, Any]]
        self._telemetry = None  # type: Optional[Dict[str, Any]]
        self._seq = 0
        self._times = deque(maxlen=30)  # type: Deque[float]
        self._render_lock = threading.Lock()
        self._rendered = (0, None)  # type: Tuple[int, Optional[np.ndarray]]
        self._jpeg = (0, None)  # type: Tuple[int, Optional[bytes]]
        self.encoded = 0  # JPEGs made (the stream costs CPU only while watched)

    # -- the agent's threads (publish, telemetry): keep references, nothing more
    def on_prediction(self, frame: Any, payload: Dict[str, Any]) -> None:
        with self._cond:
            self._image = frame.image
            self._payload = payload
            self._seq += 1
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def on_telemetry(self, message: Dict[str, Any]) -> None:
        with self._cond:
            self._telemetry = message

    # -- the showing threads
    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    def wait_newer(self, seq: int, timeout: float) -> int:
        """The current frame number once it differs from `seq`, or after `timeout`."""
        with self._cond:
            if self._seq == seq:
                self._cond.wait(timeout)
            return self._seq

    def fps(self) -> Optional[float]:
        with self._cond:
            times = list(self._times)
        if len(times) < 2 or time.monotonic() - times[-1] > 5.0:
            return None
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else None

    def _model(self) -> Optional[Dict[str, Any]]:
        try:
            return self.model_info() if self.model_info is not None else None
        except Exception:  # the model is being swapped; the next frame will tell
            return None

    def state(self) -> Dict[str, Any]:
        """What /state.json serves: prediction, telemetry, model, status and the overlay text."""
        with self._cond:
            seq, payload, telemetry = self._seq, self._payload, self._telemetry
            image = self._image
        model = self._model()
        fps = self.fps()
        top, lines = overlay_text(payload, telemetry, model, fps)
        status = None  # type: Optional[Dict[str, Any]]
        if self.status is not None:
            try:
                status = self.status()
            except Exception:
                status = None
        return {"seq": seq, "prediction": payload, "telemetry": telemetry, "model": model,
                "status": status, "fps": round(fps, 2) if fps else None,
                "frame_size": [int(image.shape[1]), int(image.shape[0])]
                if image is not None else None,
                "overlay": {"top": [t for t, _ in top], "lines": lines}}

    def rendered(self) -> Tuple[int, Optional[np.ndarray]]:
        """(frame number, the newest frame with the overlay), drawn once per frame."""
        with self._render_lock:
            with self._cond:
                seq, image, payload, telemetry = (self._seq, self._image, self._payload,
                                                  self._telemetry)
            if image is None:
                return 0, None
            if self._rendered[0] == seq:
                return self._rendered
            top, lines = overlay_text(payload, telemetry, self._model(), self.fps())
            self._rendered = (seq, draw_overlay(image, top, lines))
            return self._rendered

    def jpeg(self) -> Tuple[int, Optional[bytes]]:
        """(frame number, JPEG of the rendered frame), encoded once per frame for all clients."""
        import cv2
        seq, canvas = self.rendered()
        if canvas is None:
            return 0, None
        with self._render_lock:
            if self._jpeg[0] == seq:
                return self._jpeg
            ok, data = cv2.imencode(".jpg", canvas, [int(cv2.IMWRITE_JPEG_QUALITY),
                                                     self.jpeg_quality])
            if not ok:
                return 0, None
            self.encoded += 1
            self._jpeg = (seq, data.tobytes())
            return self._jpeg


# ---------------------------------------------------------------- the web page

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
                        name = _get(state, "prediction", "frame")
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


# ---------------------------------------------------------------- the window

def display_available(env: Optional[Dict[str, str]] = None) -> Tuple[bool, str]:
    """(True, '') when a display server answers (X11 DISPLAY or WAYLAND_DISPLAY), else why not.

    Probing the socket first matters: Qt builds of cv2 abort the process when the display in
    DISPLAY cannot be reached.
    """
    env = dict(os.environ) if env is None else env
    wayland = env.get("WAYLAND_DISPLAY")
    if wayland:
        path = wayland if wayland.startswith("/") else os.path.join(
            env.get("XDG_RUNTIME_DIR", "/run/user/{}".format(os.getuid())), wayland)
        if os.path.exists(path):
            return True, ""
    display = env.get("DISPLAY")
    if not display:
        return False, "no DISPLAY or WAYLAND_DISPLAY"
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return False, "DISPLAY={!r} is not host:N".format(display)
    try:
        if host in ("", "unix"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            try:
                path = "/tmp/.X11-unix/X{}".format(number)
                try:
                    sock.connect("\0" + path)  # Linux abstract socket, what Xorg listens on too
                except OSError:
                    sock.connect(path)
            finally:
                sock.close()
        else:
            socket.create_connection((host, 6000 + int(number)), timeout=1.0).close()
    except OSError as exc:
        return False, "display {} does not answer ({})".format(display, exc)
    return True, ""


def highgui_available() -> Tuple[bool, str]:
    try:
        import cv2
    except Exception as exc:  # ImportError, or a cv2 built for another numpy
        return False, "OpenCV is not importable ({})".format(exc)
    from .sources.platform import highgui_in_build
    if not highgui_in_build(cv2.getBuildInformation()):
        return False, ("this OpenCV ({}) has no GUI support (opencv-python-headless); "
                       "JetPack's cv2 (nvidia-opencv) or opencv-python has it".format(
                           cv2.__version__))
    return True, ""


def window_available(env: Optional[Dict[str, str]] = None) -> Tuple[bool, str]:
    """Whether `run_window` can work here, and why not."""
    ok, why = display_available(env)
    if not ok:
        return ok, why
    return highgui_available()


def run_window(view: LiveView, stop: threading.Event, title: str = "edge-agent") -> None:
    """Show the live view in a window until `stop` is set, q/Esc is pressed or the window is
    closed (then `stop` is set). Must run in the main thread (GUI toolkits want that)."""
    import cv2
    # GUI_NORMAL: no Qt toolbar (the overlay says what matters); GTK builds ignore it.
    cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | getattr(cv2, "WINDOW_GUI_NORMAL", 0))
    shown = 0
    try:
        while not stop.is_set():
            seq = view.wait_newer(shown, 0.03)
            if seq != shown:
                seq, canvas = view.rendered()
                if canvas is not None:
                    cv2.imshow(title, canvas)
                    shown = seq
            key = cv2.waitKey(10) & 0xFF
            if key in (27, ord("q")):
                stop.set()
            elif shown and hasattr(cv2, "WND_PROP_VISIBLE") and \
                    cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                stop.set()  # the user closed the window
    finally:
        cv2.destroyWindow(title)
        cv2.waitKey(1)


# ---------------------------------------------------------------- wiring into the agent

def live_view_for(agent: Any) -> LiveView:
    """A LiveView fed by `agent` (listeners added once; the same view on later calls)."""
    view = getattr(agent, "live_view", None)
    if view is None:
        view = LiveView(model_info=lambda: agent.model.describe() if agent.model else None,
                        status=agent.status_payload)
        agent.listeners.append(view.on_prediction)
        agent.telemetry_listeners.append(view.on_telemetry)
        agent.live_view = view
    return view


def attach_view(agent: Any, required: bool = False) -> Optional[ViewServer]:
    """Serve the web view of `agent` on view.host:view.port until the agent's stop Event.

    A port that cannot be bound is an AgentError when `required` (the demo); otherwise the
    agent goes on without the view and reports `degraded` with the reason. Calling it again
    returns the running server.
    """
    server = getattr(agent, "view_server", None)
    if server is not None:
        return server
    view = live_view_for(agent)
    cfg = agent.config.view
    try:
        server = ViewServer(view, cfg.host, cfg.port, agent.stop)
    except AgentError as exc:
        if required:
            raise
        log.error("%s", exc)
        agent.problem("view", str(exc))
        return None
    agent.view_server = server
    return server.start()
