"""Real headless Chromium driven over the DevTools protocol (--remote-debugging-pipe: JSON
messages separated by NUL on fds 3 and 4; no websocket library needed): open a page, read its
DOM with JavaScript, wait on DOM conditions, take screenshots."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Dict, Optional

from support.waiting import wait_until

CHROMIUM = "/usr/bin/chromium"


class BrowserError(Exception):
    pass


def _pipe_fds(read_end: int, write_end: int) -> None:
    """In the child: the commands' read end on fd 3, the replies' write end on fd 4 (dup2
    makes them inheritable; every other pipe end is close-on-exec)."""
    read_copy, write_copy = os.dup(read_end), os.dup(write_end)
    os.dup2(read_copy, 3)
    os.dup2(write_copy, 4)


class Browser(object):
    """One headless Chromium with one page (`open(url)`), as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900,
                 executable: str = CHROMIUM) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-cdp-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             "--window-size={},{}".format(width, height), "--user-data-dir=" + self.profile,
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=lambda: _pipe_fds(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._replies = {}  # type: Dict[int, Dict[str, Any]]
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = None  # type: Optional[str]
        self.size = (width, height)

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    message = json.loads(raw.decode("utf-8"))
                    if "id" in message:
                        with self._cond:
                            self._replies[message["id"]] = message
                            self._cond.notify_all()
        with self._cond:
            self._replies[-1] = {}
            self._cond.notify_all()

    def call(self, method: str, params: Optional[Dict[str, Any]] = None,
             timeout: float = 30.0, session: bool = True) -> Dict[str, Any]:
        """Send one DevTools command (to the page's session unless session=False); its
        result, or BrowserError with Chromium's error."""
        with self._cond:
            self._next += 1
            ident = self._next
        message = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode("utf-8") + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._replies or -1 in self._replies,
                                       timeout):
                raise BrowserError("no reply to {} within {:.0f} s".format(method, timeout))
            if ident not in self._replies:
                raise BrowserError("chromium exited: {}".format(self._stderr()))
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError("{}: {}".format(method, reply["error"]))
        return reply.get("result", {})

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode("utf-8", "replace")[-2000:]

    def open(self, url: str) -> "Browser":
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                       "flatten": True}, session=False)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1,
            "mobile": False})  # the viewport, whatever the window's decorations take
        self.call("Page.navigate", {"url": url})
        return self

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError("{}: {}".format(expression, result["exceptionDetails"]))
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """The expression's value once it is truthy (polled), else AssertionError."""
        def probe() -> Any:
            try:
                return self.evaluate(expression)
            except BrowserError:
                return None  # the page is still loading
        return wait_until(probe, timeout, what, interval=0.2)

    def screenshot(self, path: str) -> str:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        try:
            os.close(self._to_chrome)
        except OSError:
            pass
        self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
