"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server serving a test pattern.

Run with Debian's Python (it needs PyGObject and the GstRtspServer typelib, Debian packages
python3-gi, python3-gst-1.0, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly (x264enc)):

    /usr/bin/python3 tests/support/rtsp_server.py PORT [h264|h265]

It serves rtsp://127.0.0.1:PORT/test, prints "ready" on stdout once it listens, and runs until
killed. Nothing here stands in for a camera's RTSP server: it is the reference implementation.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
            "! rtph264pay name=pay0 pt=96",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
            "! rtph265pay name=pay0 pt=96",
}


def main() -> int:
    port = sys.argv[1]
    codec = sys.argv[2] if len(sys.argv) > 2 else "h264"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( videotestsrc is-live=true pattern=ball "
                       "! video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert "
                       "! {} )".format(ENCODERS[codec]))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print("cannot listen on 127.0.0.1:{}".format(port), flush=True)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
