"""Debian's system OpenCV (python3-opencv, built with GStreamer and Qt HighGUI) for the venv.

The venv's pip OpenCV has no GStreamer, like every pip wheel. Debian bookworm's python3-opencv
is built for CPython 3.11 against numpy 1.x, so a folder holding links to it and to a numpy 1.x
(put first on PYTHONPATH) lets the venv's Python 3.11 run the agent, ONNX Runtime included, on
the system cv2: the situation of a Jetson, whose JetPack cv2 has GStreamer. The numpy is pip's
last 1.x in `.venv/numpy1` (Debian's 1.24 is too old for the venv's onnx/ml_dtypes, the venv's
own numpy 2 too new for the system cv2). The venv's onnx imports beside it only because
constraints/main.txt pins an ml_dtypes that works with numpy 1.x and 2.x (ml_dtypes 0.6+ needs
numpy 2: `import onnx` then raises SystemError). Nothing here imitates anything: these are the
real libraries, run in a subprocess.
"""

import glob
import os
import subprocess
import sys
from typing import Dict, Optional, Tuple

from support.paths import ROOT

DIST = "/usr/lib/python3/dist-packages"
APT_HINT = ("apt-get install python3-opencv gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools (.ci/setup --tests "
            "does)")


def make_overlay(folder: str) -> Tuple[Optional[str], str]:
    """(folder for PYTHONPATH, '') with Debian's cv2 and numpy linked in, or (None, why not)."""
    tag = "cpython-{}{}".format(sys.version_info[0], sys.version_info[1])
    libs = glob.glob(os.path.join(DIST, "cv2.{}-*.so".format(tag))) or \
        glob.glob(os.path.join(DIST, "cv2", "python-3*", "cv2.{}-*.so".format(tag)))
    if not libs:
        return None, "no system cv2 for Python {}.{} in {}: {}".format(
            sys.version_info[0], sys.version_info[1], DIST, APT_HINT)
    numpy1 = os.path.join(sys.prefix, "numpy1", "numpy")
    if not os.path.isdir(numpy1):
        return None, ("no numpy 1.x for the system cv2 at {}: {} -m pip install --target {} "
                      "'numpy<2' (.ci/setup --tests does)".format(
                          numpy1, sys.executable, os.path.dirname(numpy1)))
    os.makedirs(folder, exist_ok=True)
    for src, name in ((libs[0], os.path.basename(libs[0])), (numpy1, "numpy")):
        dst = os.path.join(folder, name)
        if not os.path.lexists(dst):
            os.symlink(src, dst)
    probe = subprocess.Popen(
        [sys.executable, "-c", "import cv2, numpy; from agent.sources.platform import "
         "gstreamer_in_build; print(gstreamer_in_build(cv2.getBuildInformation()))"],
        env=overlay_env(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = probe.communicate(timeout=60)[0].decode(errors="replace")
    if probe.returncode != 0:
        return None, "the system cv2 does not import into {}: {}".format(sys.executable,
                                                                        out[-500:])
    if out.strip().splitlines()[-1] != "True":
        return None, "the system cv2 has no GStreamer: {}".format(APT_HINT)
    return folder, ""


def overlay_env(folder: str) -> Dict[str, str]:
    """Environment for a subprocess that runs the agent on the system cv2."""
    root = ROOT
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([folder, root])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    return env
