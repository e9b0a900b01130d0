"""Camera sources: pipeline strings (docs/PLATFORM.md section 5), URI options, error messages,
the reader thread's timeouts, and real GStreamer where Debian's packages are installed: a
gst:// test pattern and an RTSP server read through make_source, `check`, and an agent that
loses its RTSP camera and gets it back without a restart."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, List, Optional
from urllib.parse import urlsplit

import numpy as np
import pytest

from agent.errors import SourceError
from agent.redact import redact_text
from agent.sources import make_source, register_scheme
from agent.sources.cameras import CameraSource, open_v4l2_capture
from agent.sources.gstreamer import RtspSource, csi_open_error, rtsp_factory
from agent.sources.pipelines import (APPSINK, csi_pipeline, launch_command, rtsp_pipeline,
                                     v4l2_pipeline)
from agent.sources.platform import (gstreamer_in_build, highgui_in_build, is_jetson,
                                    no_gstreamer_error)
from support.paths import ROOT, SAMPLES
from support.net import free_port
from support.waiting import wait_until
from support.system_cv2 import make_overlay, overlay_env

PY = sys.executable
DEBIAN_PY = "/usr/bin/python3"


# ---------------------------------------------------------------- pipeline strings

@pytest.mark.parametrize("flip, method", [("none", 0), ("rotate-180", 2), ("horizontal", 4),
                                          ("vertical", 6)])
def test_csi_pipeline_is_platform_md_with_each_flip(flip, method):
    assert csi_pipeline(0, 1280, 720, 30, flip) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,"
        "format=NV12,framerate=30/1 ! nvvidconv flip-method={} ! video/x-raw,width=1280,"
        "height=720,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 "
        "max-buffers=1 sync=false".format(method))


def test_csi_uri_takes_config_and_query_options():
    src = make_source("csi://1", width=1920, height=1080, fps=60, flip="rotate-180")
    assert src.live and not src.paced
    assert src.pipeline.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),"
                                   "width=1920,height=1080,format=NV12,framerate=60/1 ! "
                                   "nvvidconv flip-method=2 ! ")
    src = make_source("csi://0?width=640&height=480&fps=29.97&flip=vertical")
    assert "width=640,height=480,format=NV12,framerate=2997/100 ! nvvidconv flip-method=6" \
        in src.pipeline
    assert "framerate" not in make_source("csi://0", fps=0).pipeline  # 0: the sensor's rate


def test_v4l2_gstreamer_pipelines():
    assert v4l2_pipeline("/dev/video0", 1280, 720, 30) == (
        "v4l2src device=/dev/video0 ! video/x-raw,width=1280,height=720,framerate=30/1 ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false")
    assert v4l2_pipeline("/dev/video2", 1920, 1080, 30, "mjpeg") == (
        "v4l2src device=/dev/video2 ! image/jpeg,width=1920,height=1080,framerate=30/1 ! "
        "jpegdec ! videoconvert ! video/x-raw,format=BGR ! " + APPSINK)


class RecordingCv2(object):
    """Test double for the cv2 module's capture API (no camera here): records VideoCapture
    calls and `set`s; `gstreamer` decides what getBuildInformation() says."""

    CAP_GSTREAMER, CAP_V4L2 = 1800, 200
    CAP_PROP_FRAME_WIDTH, CAP_PROP_FRAME_HEIGHT, CAP_PROP_FPS = 3, 4, 5
    CAP_PROP_FOURCC, CAP_PROP_BUFFERSIZE = 6, 38
    __version__ = "4.1.1"

    def __init__(self, gstreamer: bool) -> None:
        self.gstreamer = gstreamer
        self.opened = []  # type: List[Any]
        self.props = {}  # type: dict

    def getBuildInformation(self) -> str:
        return "  Video I/O:\n    GStreamer:                   {}\n".format(
            "YES (1.14.5)" if self.gstreamer else "NO")

    @staticmethod
    def VideoWriter_fourcc(*chars: str) -> int:
        return sum(ord(c) << (8 * i) for i, c in enumerate(chars))

    def VideoCapture(self, target: Any, api: int) -> Any:
        self.opened.append((target, api))
        outer = self

        class Cap(object):
            def isOpened(self) -> bool:
                return True

            def set(self, prop: int, value: Any) -> bool:
                outer.props[prop] = value
                return True

        return Cap()


def test_v4l2_uses_gstreamer_when_cv2_has_it_else_the_v4l2_backend(tmp_path):
    device = tmp_path / "video-by-id"
    device.write_text("")  # stands for a device node: only its existence is checked
    src = make_source("v4l2://" + str(device), width=640, height=480, fps=15)
    with_gst = RecordingCv2(gstreamer=True)
    src._prepare(with_gst)
    assert src.pipeline == v4l2_pipeline(str(device), 640, 480, 15)
    src._capture(with_gst)
    assert with_gst.opened == [(src.pipeline, RecordingCv2.CAP_GSTREAMER)]

    without = RecordingCv2(gstreamer=False)
    src = make_source("v4l2://" + str(device) + "?format=mjpeg", width=640, height=480, fps=15)
    src._prepare(without)
    assert src.pipeline is None
    src._capture(without)
    assert without.opened == [(str(device), RecordingCv2.CAP_V4L2)]
    assert without.props[RecordingCv2.CAP_PROP_FRAME_WIDTH] == 640
    assert without.props[RecordingCv2.CAP_PROP_FRAME_HEIGHT] == 480
    assert without.props[RecordingCv2.CAP_PROP_FPS] == 15
    assert without.props[RecordingCv2.CAP_PROP_FOURCC] == RecordingCv2.VideoWriter_fourcc(
        *"MJPG")
    # /dev/videoN goes to OpenCV as the index N.
    by_index = RecordingCv2(gstreamer=False)
    open_v4l2_capture(by_index, "/dev/video3", 1280, 720, 30, "raw")
    assert by_index.opened == [(3, RecordingCv2.CAP_V4L2)]
    assert make_source("v4l2://3").device == "/dev/video3"
    assert make_source("v4l2:///dev/video0").device == "/dev/video0"


def test_rtsp_pipeline_on_jetson_and_desktop():
    url = "rtsp://10.0.0.5:554/stream1"
    assert rtsp_pipeline(url, hw_decode=True) == (
        "rtspsrc location=rtsp://10.0.0.5:554/stream1 latency=200 ! rtph264depay ! h264parse ! "
        "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false")
    assert rtsp_pipeline(url, hw_decode=False) == (
        "rtspsrc location=rtsp://10.0.0.5:554/stream1 latency=200 ! rtph264depay ! h264parse ! "
        "avdec_h264 ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 "
        "sync=false")
    assert "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv" in rtsp_pipeline(
        url, codec="h265", hw_decode=True)
    assert "rtph265depay ! h265parse ! avdec_h265 ! videoconvert" in rtsp_pipeline(
        url, codec="h265")
    # A location gst_parse_launch would split is quoted.
    assert 'location="rtsp://cam/a b" latency=' in rtsp_pipeline("rtsp://cam/a b")


def _jetson_root(tmp_path, model: str) -> str:
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    return str(tmp_path)


def test_rtsp_decoder_follows_the_board(tmp_path):
    uri = "rtsp://cam.local/live?codec=h265"
    jetson = rtsp_factory(uri, urlsplit(uri), ".", root=_jetson_root(
        tmp_path, "NVIDIA Jetson Nano Developer Kit"))
    assert is_jetson(jetson.root)
    assert "h265parse ! nvv4l2decoder ! nvvidconv" in jetson.pipeline
    desktop_root = tmp_path / "desktop"
    desktop_root.mkdir()
    assert not is_jetson(str(desktop_root))
    forced = make_source("rtsp://cam.local/live?decoder=sw")
    assert "avdec_h264" in forced.pipeline and not forced.hw_decode
    assert "nvv4l2decoder" in make_source("rtsp://cam.local/live?decoder=hw").pipeline


def test_rtsp_options_leave_the_camera_query_and_hide_the_password():
    src = make_source("rtsp://admin:s3cret@cam:554/Streaming?channel=1&codec=hevc&latency=50"
                      "&subtype=0")
    assert src.url == "rtsp://admin:s3cret@cam:554/Streaming?channel=1&subtype=0"
    assert "location=rtsp://admin:s3cret@cam:554/Streaming?channel=1&subtype=0 latency=50 ! " \
        "rtph265depay" in src.pipeline
    assert "s3cret" not in src.describe() and "admin:***@cam" in src.describe()
    assert "s3cret" not in src.safe_pipeline() and "s3cret" not in src._open_error()
    assert redact_text("rtsps://u:p@h/x") == "rtsps://u:***@h/x"
    assert redact_text("rtsp://h/x") == "rtsp://h/x"
    assert isinstance(make_source("rtsps://cam/x"), RtspSource)


@pytest.mark.parametrize("uri, message", [
    ("csi://left", "the CSI sensor must be a number"),
    ("csi://0?flip=sideways", "flip 'sideways' is not one of"),
    ("csi://0?exposure=3", "unknown option 'exposure'"),
    ("csi://0?fps=fast", "must be numbers"),
    ("v4l2://0?format=h264", "format 'h264' is not one of raw, mjpeg"),
    ("rtsp:///nohost", "no host"),
    ("rtsp://cam/x?codec=vp9", "codec 'vp9' is not one of h264, h265"),
    ("rtsp://cam/x?latency=low", "latency must be milliseconds"),
    ("rtsp://u:pw@cam/x?decoder=gpu", "decoder 'gpu' is not one of auto, hw, sw"),
    ("gst://videotestsrc ! autovideosink", "must end in appsink"),
    ("gst://", "no pipeline"),
])
def test_bad_camera_uris_are_refused_with_the_fix(uri, message):
    with pytest.raises(SourceError) as err:
        make_source(uri)
    assert message in str(err.value)
    assert "pw@" not in str(err.value)


def test_missing_v4l2_device_names_the_cameras_there():
    with pytest.raises(SourceError) as err:
        make_source("v4l2:///dev/video97").open()
    text = str(err.value)
    assert "/dev/video97 does not exist" in text and "cameras here:" in text


def test_no_gstreamer_error_tells_to_use_the_system_cv2():
    text = no_gstreamer_error("csi://0", "4.8.0", "/venv/cv2/__init__.py")
    assert "csi:// sources need" in text and "4.8.0" in text
    assert "pip OpenCV wheels have no GStreamer" in text
    # JetPack's cv2 is NVIDIA's OpenCV package; Ubuntu's python3-opencv (3.2, no GStreamer)
    # shadows it and must never be advised (docs/PLATFORM.md section 1).
    assert "JetPack's own cv2" in text and "sudo apt-get install nvidia-opencv" in text
    assert not re.search(r"install\s+python3-opencv", text), text
    assert "edge-agent check" in text
    import cv2
    if gstreamer_in_build(cv2.getBuildInformation()):
        pytest.skip("this venv's cv2 has GStreamer: nothing more to check here")
    for uri in ("csi://0", "rtsp://cam/x", "gst://videotestsrc ! appsink"):
        with pytest.raises(SourceError) as err:
            make_source(uri).open()  # the real pip cv2 of this venv
        assert "pip OpenCV wheels have no GStreamer" in str(err.value)


def test_csi_failure_on_a_jetson_says_to_restart_nvargus(tmp_path):
    pipeline = csi_pipeline(0, 1280, 720, 30)
    on_jetson = csi_open_error("csi://0", pipeline, jetson=True)
    assert "sudo systemctl restart nvargus-daemon" in on_jetson and pipeline in on_jetson
    elsewhere = csi_open_error("csi://0", pipeline, jetson=False)
    assert "only on a Jetson" in elsewhere and "nvargus-daemon" not in elsewhere
    src = make_source("csi://0")
    src.root = _jetson_root(tmp_path, "NVIDIA Jetson Xavier NX Developer Kit")
    assert "restart nvargus-daemon" in src._open_error()
    assert "restart nvargus-daemon" in src._read_error(12)


def test_build_information_parsing():
    import cv2
    info = cv2.getBuildInformation()
    assert gstreamer_in_build(info) == ("GStreamer:" in info and "YES" in
                                        info.split("GStreamer:")[1].split("\n")[0])
    assert gstreamer_in_build("  Video I/O:\n    GStreamer:   YES (1.16.3)\n")
    assert not gstreamer_in_build("  Video I/O:\n    GStreamer:   NO\n")
    assert highgui_in_build("  GUI:                           QT5\n    QT:   YES (ver 5.15)\n")
    assert highgui_in_build("  GUI:\n    GTK+:                        YES (ver 3.22.30)\n")
    assert not highgui_in_build("  GUI:                           NONE\n  Media I/O:\n")
    assert not highgui_in_build("  GUI:\n    GTK+:                        NO\n  Media I/O:\n")


def test_launch_command_for_debugging():
    cmd = launch_command(csi_pipeline(0, 640, 480, 30))
    assert cmd.endswith("! fakesink") and "'video/x-raw(memory:NVMM)," in cmd


# ---------------------------------------------------------------- reader thread (no camera)

class StuckCapture(object):
    """Test double for a cv2.VideoCapture of a camera that hangs: read() blocks until released
    (the real OpenCV 4.1 on JetPack 4.6 has no read timeout). Delivers `frames` first."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return True

    def read(self) -> Any:
        if self.frames > 0:
            self.frames -= 1
            return True, np.zeros((4, 4, 3), np.uint8)
        self.released.wait(30)
        return False, None

    def release(self) -> None:
        self.released.set()


class DoubleCamera(CameraSource):
    """Test double: a CameraSource whose capture is a StuckCapture (or blocks while opening)."""

    def __init__(self, frames: int = 2, open_blocks: bool = False) -> None:
        CameraSource.__init__(self, "test://camera")
        self.cap = StuckCapture(frames)
        self.open_blocks = open_blocks
        self.unblock = threading.Event()

    def _capture(self, cv2: Any) -> Any:
        if self.open_blocks:
            self.unblock.wait(30)
        return self.cap


def test_a_stalled_camera_becomes_a_source_error_not_a_hang():
    cam = DoubleCamera(frames=2)
    cam.stall_timeout_s = 0.3
    cam.open()
    assert cam.read().shape == (4, 4, 3)  # the newest of the frames delivered so far
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        cam.read()
        cam.read()
    assert "no frame from the camera for 0.3 s" in str(err.value)
    assert time.monotonic() - started < 10
    cam.cap.release()  # unblocks the reader, as OpenCV's own read timeout would
    cam.close()


def test_a_camera_that_never_opens_times_out():
    cam = DoubleCamera(open_blocks=True)
    cam.open_timeout_s = 0.3
    with pytest.raises(SourceError) as err:
        cam.open()
    assert "did not open within" in str(err.value)
    cam.unblock.set()
    # The reader left behind releases the capture when the open finally returns.
    assert cam.cap.released.wait(10)


class UnopenedCapture(object):
    """A capture that failed to open and is slow to release, as OpenCV's GStreamer teardown is.

    A process that exits while another thread is inside that release aborts in C++ ("terminate
    called without an active exception"; seen in CI with `gst://nosuchelement ! appsink`).
    """

    def __init__(self, returned: threading.Event) -> None:
        self.returned = returned
        self.order = []  # type: List[str]

    def isOpened(self) -> bool:
        return False

    def release(self) -> None:
        self.returned.wait(1.0)  # set at once if open() returned without waiting for us
        self.order.append("released")


def test_a_failed_open_returns_only_after_the_capture_is_released():
    returned = threading.Event()
    cam = DoubleCamera()
    cam.cap = UnopenedCapture(returned)  # type: ignore
    cam.stop_timeout_s = 30.0
    with pytest.raises(SourceError) as err:
        cam.open()
    cam.cap.order.append("open returned")
    returned.set()
    assert "could not open the camera" in str(err.value)
    assert cam.cap.order[0] == "released", cam.cap.order


# ---------------------------------------------------------------- real GStreamer

@pytest.fixture(scope="module")
def syscv(tmp_path_factory: Any) -> str:
    folder, why = make_overlay(str(tmp_path_factory.mktemp("system-cv2")))
    if folder is None:
        pytest.skip(why)
    return folder


READ_FRAMES = textwrap.dedent("""
    import json, sys
    import numpy as np
    from agent.sources import make_source
    from agent.errors import SourceError
    src = make_source(sys.argv[1])
    want = int(sys.argv[2])
    frames, error, kind = [], None, type(src).__name__
    try:
        src.open()
        while len(frames) < want:
            frames.append(src.read())
    except SourceError as exc:
        error = str(exc)
    finally:
        src.close()
    print(json.dumps({"kind": kind, "count": len(frames), "error": error,
                      "shape": list(frames[0].shape) if frames else None,
                      "distinct": len({f.tobytes() for f in frames}),
                      "pipeline": src.pipeline}))
""")


def read_frames(syscv: str, uri: str, want: int, timeout: float = 60) -> dict:
    proc = subprocess.Popen([PY, "-c", READ_FRAMES, uri, str(want)], env=overlay_env(syscv),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


TEST_PATTERN = ("gst://videotestsrc is-live=true pattern=ball num-buffers={} ! video/x-raw,"
                "width=160,height=120,framerate=30/1 ! videoconvert ! video/x-raw,format=BGR ! "
                "appsink drop=1 max-buffers=1 sync=false")


def test_gst_test_pattern_through_make_source(syscv):
    result = read_frames(syscv, TEST_PATTERN.format(1000), 20)
    assert result["kind"] == "GstSource" and result["error"] is None
    assert result["count"] == 20 and result["shape"] == [120, 160, 3]
    assert result["distinct"] > 10  # a moving ball: real, changing frames


def test_gst_stream_end_is_a_source_error(syscv):
    result = read_frames(syscv, TEST_PATTERN.format(15), 1000)
    assert 1 <= result["count"] <= 15
    assert "stopped delivering frames" in result["error"]


def test_bad_pipeline_says_how_to_see_gstreamers_error(syscv):
    result = read_frames(syscv, "gst://nosuchelement ! appsink", 1)
    assert result["count"] == 0
    assert "could not open the GStreamer pipeline" in result["error"]
    assert "gst-launch-1.0 nosuchelement ! fakesink" in result["error"]


class RtspServer(object):
    """tests/support/rtsp_server.py (gst-rtsp-server, the real thing) in a Debian-Python subprocess."""

    def __init__(self, port: int, codec: str = "h264") -> None:
        self.port = port
        self.codec = codec
        self.proc = None  # type: Optional[subprocess.Popen]

    @property
    def url(self) -> str:
        return "rtsp://127.0.0.1:{}/test".format(self.port)

    def start(self) -> "RtspServer":
        def launched() -> bool:
            self.proc = subprocess.Popen(
                [DEBIAN_PY, os.path.join(ROOT, "tests", "support", "rtsp_server.py"), str(self.port),
                 self.codec], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            line = b""
            deadline = time.monotonic() + 20
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
                if ready:
                    chunk = os.read(self.proc.stdout.fileno(), 1)
                    if not chunk:
                        break
                    line += chunk
            if line.strip() == b"ready":
                return True
            self.stop()
            return False
        wait_until(launched, 30, "the RTSP server to listen on port {}".format(self.port),
                   interval=0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _rtsp_server_missing() -> Optional[str]:
    if not os.path.exists(DEBIAN_PY):
        return "no {}".format(DEBIAN_PY)
    probe = subprocess.call([DEBIAN_PY, "-c", "import gi; gi.require_version('GstRtspServer', "
                             "'1.0'); from gi.repository import GstRtspServer"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe != 0:
        return ("gst-rtsp-server for Debian's Python is missing: apt-get install python3-gi "
                "python3-gst-1.0 gir1.2-gst-rtsp-server-1.0")
    inspect = shutil.which("gst-inspect-1.0")
    for element in ("x264enc", "x265enc", "avdec_h264", "avdec_h265", "rtspsrc"):
        if not inspect or subprocess.call([inspect, "--exists", element]) != 0:
            return ("GStreamer element {} is missing: apt-get install gstreamer1.0-tools "
                    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly "
                    "gstreamer1.0-plugins-bad gstreamer1.0-libav".format(element))
    return None


@pytest.fixture
def rtsp_server(syscv: str):
    missing = _rtsp_server_missing()
    if missing:
        pytest.skip(missing)
    servers = []  # type: List[RtspServer]

    def start(codec: str = "h264", port: Optional[int] = None) -> RtspServer:
        server = RtspServer(port or free_port(), codec).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_rtsp_stream_decoded_in_software(syscv, rtsp_server, codec):
    server = rtsp_server(codec)
    # The camera's own query (here one gst_parse_launch needs quoted) goes to the camera.
    uri = server.url + "?token=a,b;c" + ("&codec=h265" if codec == "h265" else "")
    result = read_frames(syscv, uri, 10)
    assert result["error"] is None, result
    assert result["kind"] == "RtspSource" and result["count"] == 10
    assert result["shape"] == [240, 320, 3]
    assert 'location="{}?token=a,b;c" latency=200'.format(server.url) in result["pipeline"]
    assert "avdec_{}".format(codec) in result["pipeline"]  # not a Jetson: FFmpeg decodes


def test_check_opens_the_rtsp_source_and_fails_fast_without_it(syscv, rtsp_server):
    server = rtsp_server()
    args = [PY, "-m", "agent", "check", "-c", os.path.join(ROOT, "config.yaml"), "--json",
            "--set", "source.uri=" + server.url, "--set", "mqtt.port={}".format(free_port())]
    proc = subprocess.Popen(args, env=overlay_env(syscv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.communicate(timeout=120)
    rows = {r["check"]: r for r in json.loads(out.decode())["checks"]}
    assert rows["gstreamer"]["status"] == "ok", rows
    assert rows["source"]["status"] == "ok" and "gives 320x240 frames" in \
        rows["source"]["detail"], rows["source"]
    server.stop()
    started = time.monotonic()
    proc = subprocess.Popen(args, env=overlay_env(syscv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.communicate(timeout=120)
    rows = {r["check"]: r for r in json.loads(out.decode())["checks"]}
    assert proc.returncode == 1
    assert rows["source"]["status"] == "FAIL"
    assert "could not open the RTSP stream" in rows["source"]["detail"]
    assert time.monotonic() - started < 60


def _status(recorder: Any, device: str) -> List[dict]:
    return [p for t, p, _ in list(recorder.messages) if t == "edge/{}/status".format(device)
            and isinstance(p, dict)]


def _predictions(recorder: Any, device: str) -> List[dict]:
    return [p for t, p, _ in list(recorder.messages)
            if t == "edge/{}/predictions".format(device) and isinstance(p, dict)]


def _wait_state_after(recorder: Any, device: str, index: int, state: str, timeout: float,
                      what: str) -> int:
    """Wait for status `state` published after the first `index` status messages; its index."""
    def found() -> Any:
        for i, payload in enumerate(_status(recorder, device)):
            if i >= index and payload.get("state") == state:
                return i + 1  # +1 so index 0 is truthy
        return None
    return wait_until(found, timeout, what, interval=0.05) - 1


def test_agent_reconnects_to_a_restarted_rtsp_camera(syscv, rtsp_server, run_agent, recorder):
    server = rtsp_server()
    device = "rtsp-cam"
    agent = run_agent(device, "--set", "source.uri=" + server.url,
                      "--set", "telemetry.interval_s=1", env=overlay_env(syscv))
    serving = _wait_state_after(recorder, device, 0, "serving", 90, "status serving")
    wait_until(lambda: len(_predictions(recorder, device)) >= 5, 60, "predictions from RTSP")

    server.stop()  # the camera goes away mid-stream
    degraded = _wait_state_after(recorder, device, serving, "degraded", 60, "status degraded")
    detail = _status(recorder, device)[degraded]["detail"]
    assert "source: source {}".format(server.url) in detail, detail
    assert agent.proc.poll() is None, "the agent must stay up without its camera"
    before = max(p["seq"] for p in _predictions(recorder, device))

    server.start()  # the camera comes back on the same address
    _wait_state_after(recorder, device, degraded, "serving", 90, "status serving again")
    wait_until(lambda: max(p["seq"] for p in _predictions(recorder, device)) >= before + 5,
               60, "predictions after the reconnect")
    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0, agent.err
    assert "reconnecting" in agent.err


# ---------------------------------------------------------------- reconnect, in process

class FlakyCamera(CameraSource):
    """Test double for a camera that fails (no camera here): serves the sample photos, is
    unplugged after `FAIL_AFTER` frames of its first connection, refuses the next open, then
    works. Class-level counters, since the agent makes a new source per connection."""

    FAIL_AFTER = 8
    opens = 0
    events = []  # type: List[str]

    def __init__(self, uri: str, **kw: Any) -> None:
        CameraSource.__init__(self, uri, **kw)
        from agent.sources.files import FileSource
        self.photos = FileSource("file://" + SAMPLES, SAMPLES)
        self.served = 0
        self.connection = 0

    def open(self) -> None:
        FlakyCamera.opens += 1
        self.connection = FlakyCamera.opens
        if self.connection == 2:
            FlakyCamera.events.append("open refused")
            raise SourceError("source {}: test double: camera still missing".format(self.uri))
        self.photos.open()
        FlakyCamera.events.append("opened")

    def read(self) -> Any:
        if self.connection == 1 and self.served >= self.FAIL_AFTER:
            FlakyCamera.events.append("unplugged")
            raise SourceError("source {}: test double: camera unplugged".format(self.uri))
        self.served += 1
        time.sleep(0.02)  # a camera delivers at its frame rate (50 fps here)
        return self.photos.read()

    def close(self) -> None:
        self.photos.close()


def test_agent_in_process_goes_degraded_and_back_when_the_camera_fails(broker, recorder,
                                                                       tmp_path):
    from agent.daemon import Agent
    from agent.config import load_config
    register_scheme("flaky", lambda uri, parts, base_dir, **kw: FlakyCamera(uri, **kw))
    FlakyCamera.opens = 0
    FlakyCamera.events = []
    device = "flaky-cam"
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "source.uri=flaky://0", "mqtt.host=127.0.0.1", "mqtt.port={}".format(broker.port),
        "device.id=" + device, "device.state_dir=" + str(tmp_path / "state"),
        "telemetry.interval_s=1"])
    agent = Agent(config)
    result = []  # type: List[int]
    runner = threading.Thread(target=lambda: result.append(agent.run()), daemon=True)
    runner.start()
    try:
        serving = _wait_state_after(recorder, device, 0, "serving", 90, "status serving")
        degraded = _wait_state_after(recorder, device, serving, "degraded", 30,
                                     "status degraded")
        # A pending retained status is superseded by a newer one (spool.py), so the broker may
        # see "unplugged", "still missing" or both: either names the source and the reason.
        detail = _status(recorder, device)[degraded].get("detail", "")
        assert detail.startswith("source: source flaky://0: test double: camera "), detail
        before = max(p["seq"] for p in _predictions(recorder, device))
        assert before >= 1
        back = _wait_state_after(recorder, device, degraded, "serving", 60,
                                 "status serving again")
        assert "detail" not in _status(recorder, device)[back]
        wait_until(lambda: max(p["seq"] for p in _predictions(recorder, device)) >= before + 5,
                   30, "predictions after the reconnect")
        assert FlakyCamera.events[:4] == ["opened", "unplugged", "open refused", "opened"]
    finally:
        agent.stop.set()
        runner.join(60)
    assert result == [0]


# ---------------------------------------------------------------- credentials never shown

@pytest.mark.parametrize("uri", [
    "gst://rtspsrc location=rtsp://cam:PW7731x@127.0.0.1:9/s latency=0 ! decodebin ! appsink",
    'gst://rtspsrc location="rtsp://cam:PW7731x !x@127.0.0.1:9/s" ! decodebin ! appsink',
    "gst://rtspsrc location=rtsp://127.0.0.1:9/s user-id=cam user-pw=PW7731x ! appsink",
    "rtsp://cam:PW7731x@127.0.0.1:9/s",
    "rtsp://cam:PW7731x[@127.0.0.1:9/s",       # urllib cannot parse it (unbalanced '[')
    "rtsp://cam:PW7731x@127.0.0.1:port/s",      # nor the port
    "rtsp://cam:PW/7731x@127.0.0.1:9/s",        # an unescaped '/' in the password
    "rtsp://cam:PW?7731x@127.0.0.1:9/s",
    "rtsp://127.0.0.1:9/s?user=cam&password=PW7731x",
    "ftp://cam:PW7731x@127.0.0.1/s",            # an unknown scheme
])
def test_camera_credentials_are_hidden_everywhere(uri):
    from agent.config import load_config
    shown = redact_text(uri)
    assert "7731x" not in shown and "***" in shown, shown
    try:
        src = make_source(uri)
    except SourceError as exc:  # refused: the refusal hides the password too
        assert "7731x" not in str(exc), str(exc)
    else:
        assert "7731x" not in src.describe() and "7731x" not in src.safe_pipeline()
        assert "7731x" not in src._open_error()
    redacted = load_config(None, ["source.uri=" + uri]).redacted()
    assert "7731x" not in str(redacted) and redacted["source"]["uri"] == shown


def test_one_redaction_rule_for_downloads_and_cameras():
    from agent.store.download import redact_url
    assert redact_url("https://u:tok@h/m.onnx?X-Amz-Signature=abc") == \
        "https://***@h/m.onnx?<hidden>"
    assert redact_url("https://h/pkg@1.2/m.onnx") == "https://h/pkg@1.2/m.onnx"
    assert redact_url("https://tok3n@h/m.onnx") == "https://***@h/m.onnx"
    assert redact_url("https://u:p[w@h/m.onnx") == "https://***@h/m.onnx"
    assert redact_text("rtsp://h:554/x?codec=h265&token=t1") == \
        "rtsp://h:554/x?codec=h265&token=***"


@pytest.mark.parametrize("uri", [
    "gst://rtspsrc location=rtsp://cam:PW5521q@127.0.0.1:9/s latency=0 ! decodebin ! "
    "videoconvert ! appsink",
    "rtsp://cam:PW5521q[@127.0.0.1:9/s",  # urllib cannot parse it
])
def test_camera_password_never_reaches_mqtt_or_the_log(broker, recorder, run_agent, uri):
    """The real agent on a camera it cannot open, logging at DEBUG: the retained status, the
    health events and every log line show the URI with the password hidden."""
    device = "campw" + str(len(uri))
    since = recorder.mark()
    proc = run_agent(device, "--set", "source.uri=" + uri, "--set", "logging.level=DEBUG")
    status = recorder.wait_topic(device + "/status", lambda p: p.get("state") == "degraded" and
                                 "source" in p.get("detail", ""), 90, "degraded status",
                                 since=since)
    assert "cam:***@127.0.0.1:9/s" in status["source"], status
    recorder.wait_topic(device + "/events", lambda p: p.get("command") == "health" and
                        p.get("detail") == "source", 30, "a health event", since=since)
    proc.signal(15)
    assert proc.wait(30) == 0, proc.err
    with recorder.cond:
        published = json.dumps([m for m in recorder.messages[since:] if device in m[0]])
    assert "PW5521q" not in published
    assert "PW5521q" not in proc.err and "cam:***@" in proc.err
    assert "config (secrets hidden)" in proc.err and "Traceback" not in proc.err
