"""The live view in a desktop window (cv2.imshow), where a display and HighGUI exist."""

import os
import socket
import threading
from typing import Dict, Optional, Tuple

from .live import LiveView


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
    from ..sources.platform import highgui_in_build
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
    """Show the live view (the overlay with score bars, and a footer: fps, ms, W,
    inferences/J) in a window until `stop` is set, q/Esc is pressed or the window is
    closed (then `stop` is set). Must run in the main thread (GUI toolkits want that)."""
    import cv2
    # GUI_NORMAL: no Qt toolbar (the overlay says what matters); GTK builds ignore it.
    cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | getattr(cv2, "WINDOW_GUI_NORMAL", 0))
    shown = 0
    try:
        while not stop.is_set():
            seq = view.wait_newer(shown, 0.03)
            if seq != shown:
                seq, canvas = view.rendered(footer=True)
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
