"""Live view: the newest frame with its prediction drawn on it, in a window or a web page.

The view reads only what it is handed: frames and predictions through `LiveView.on_prediction`
and `on_telemetry` (the daemon adds them to its listeners), the model's description and the
status through functions. `server` serves it as a web page, `window` shows it in a window.
"""

from .live import LiveView
from .overlay import BAR_BGR, draw_overlay, fit_width, overlay_text
from .server import ViewServer, render_page, start_view_server
from .window import display_available, highgui_available, run_window, window_available

__all__ = ["BAR_BGR", "LiveView", "ViewServer", "display_available", "draw_overlay",
           "fit_width", "highgui_available", "overlay_text", "render_page", "run_window",
           "start_view_server", "window_available"]
