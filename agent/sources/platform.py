"""What this machine offers camera sources: an OpenCV built with GStreamer (or a GUI), a
Jetson, GStreamer elements, video devices; and what to tell the user when one is missing."""

import functools
import os
import re
import shutil
import subprocess
from typing import List

# JetPack's cv2 is NVIDIA's OpenCV 4.x with GStreamer (packages libopencv, libopencv-python,
# pulled in by nvidia-opencv / nvidia-jetpack). Ubuntu 18.04's python3-opencv is OpenCV 3.2
# WITHOUT GStreamer and, in /usr/lib/python3/dist-packages, shadows JetPack's: never advise it.
JETPACK_CV2 = ("JetPack's own cv2 (NVIDIA's OpenCV 4.x with GStreamer: sudo apt-get install "
               "nvidia-opencv; a venv needs --system-site-packages)")
NO_GSTREAMER_FIX = ("pip OpenCV wheels have no GStreamer, nor has Ubuntu's python3-opencv "
                    "(OpenCV 3.2, it shadows JetPack's); on a Jetson use " + JETPACK_CV2 + ", "
                    "pip uninstall opencv-python opencv-python-headless and sudo apt-get remove "
                    "python3-opencv; `edge-agent check` shows which cv2 is imported and whether "
                    "it has GStreamer")


def gstreamer_in_build(build_info: str) -> bool:
    """True when an OpenCV build-information text says `GStreamer: YES`."""
    for line in build_info.splitlines():
        stripped = line.strip()
        if stripped.startswith("GStreamer:"):
            return stripped[len("GStreamer:"):].strip().upper().startswith("YES")
    return False


def highgui_in_build(build_info: str) -> bool:
    """True when OpenCV was built with a GUI backend (GTK, QT, ...): cv2.imshow can work."""
    in_gui = False
    for line in build_info.splitlines():
        stripped = line.strip()
        if stripped.startswith("GUI:"):
            value = stripped[len("GUI:"):].strip().upper()
            if value and value != "NONE":
                return True
            in_gui = True
            continue
        if in_gui:
            if not line.startswith("    "):
                return False
            key, _, value = stripped.partition(":")
            if key.strip().upper() in ("GTK+", "GTK", "QT", "WIN32 UI", "COCOA", "FRAMEBUFFER") \
                    and value.strip().upper().startswith("YES"):
                return True
    return False


def needs_gstreamer(uri: str) -> bool:
    """Sources that cannot work without an OpenCV built with GStreamer."""
    return uri.split("://", 1)[0].lower() in ("csi", "rtsp", "rtsps", "gst")


def is_jetson(root: str = "/") -> bool:
    """A Jetson board: /proc/device-tree/model names one, or L4T's release file is there."""
    try:
        with open(os.path.join(root, "proc/device-tree/model"), "rb") as handle:
            model = handle.read().decode("utf-8", "replace").lower()
        if "jetson" in model:
            return True
    except OSError:
        pass
    return os.path.exists(os.path.join(root, "etc/nv_tegra_release"))


@functools.lru_cache(maxsize=None)
def gst_element_exists(name: str) -> bool:
    """Whether GStreamer has element `name` (asks gst-inspect-1.0 once per name)."""
    tool = shutil.which("gst-inspect-1.0")
    if not tool:
        return False
    try:
        return subprocess.call([tool, "--exists", name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def jetson_decoder_available(root: str = "/") -> bool:
    """Hardware decode (`nvv4l2decoder ! nvvidconv`) is there: on a Jetson, or where both exist."""
    if is_jetson(root):
        return True
    return gst_element_exists("nvv4l2decoder") and gst_element_exists("nvvidconv")


def video_devices(root: str = "/") -> List[str]:
    """The /dev/video* nodes present, for error messages."""
    dev = os.path.join(root, "dev")
    try:
        names = sorted(n for n in os.listdir(dev) if re.match(r"^video\d+$", n))
    except OSError:
        return []
    return ["/dev/" + n for n in names]


def no_gstreamer_error(uri: str, cv2_version: str, cv2_path: str) -> str:
    """The error for a source that needs GStreamer when this cv2 has none."""
    return ("source {}: this OpenCV ({} at {}) was built without GStreamer, which {}:// sources "
            "need; {}".format(uri, cv2_version, cv2_path, uri.split("://", 1)[0],
                              NO_GSTREAMER_FIX))

