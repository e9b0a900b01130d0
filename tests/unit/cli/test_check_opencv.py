"""`edge-agent check` says which cv2 Python imported (version and file) and whether it has
GStreamer, and on a Jetson names the fix when it is not JetPack's (issue 11, 1.3).

The cv2 objects below stand in for the OpenCV builds a Jetson can end up with
(docs/PLATFORM.md section 1): NVIDIA's 4.1.1 with GStreamer (JetPack 4.6), Ubuntu 18.04's
python3-opencv 3.2 without it, a pip wheel without it. The last test runs the real command on
this machine's cv2.
"""

import json
import os
import re
import subprocess
import sys

from agent.cli.check import OK, WARN, describe_opencv
from support.paths import ROOT
from support.net import free_port


class FakeCv2(object):
    """Just what check reads of a cv2 module: __version__, __file__, getBuildInformation()."""

    def __init__(self, version, path, gstreamer):
        self.__version__ = version
        self.__file__ = path
        self._gst = "YES (1.14.5)" if gstreamer else "NO"

    def getBuildInformation(self):
        return "General configuration for OpenCV\n  Video I/O:\n    GStreamer:  {}\n".format(
            self._gst)


JETPACK_46 = FakeCv2("4.1.1", "/usr/lib/python3.6/dist-packages/cv2/python-3.6/"
                     "cv2.cpython-36m-aarch64-linux-gnu.so", True)
UBUNTU_1804 = FakeCv2("3.2.0", "/usr/lib/python3/dist-packages/"
                      "cv2.cpython-36m-aarch64-linux-gnu.so", False)
PIP_WHEEL = FakeCv2("4.5.5", "/home/nano/venv/lib/python3.6/site-packages/cv2/__init__.py", False)


def jetson_root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n")
    return str(tmp_path)


def test_jetpacks_cv2_is_ok_and_named_with_its_file(tmp_path):
    status, detail, gst = describe_opencv(JETPACK_46, jetson_root(tmp_path))
    assert (status, gst) == (OK, True)
    assert detail == "4.1.1 from {} (GStreamer: yes)".format(JETPACK_46.__file__)


def test_ubuntus_python3_opencv_on_a_jetson_is_named_and_removed_not_installed(tmp_path):
    status, detail, gst = describe_opencv(UBUNTU_1804, jetson_root(tmp_path))
    assert (status, gst) == (WARN, False)
    assert detail.startswith("3.2.0 from {} (GStreamer: no)".format(UBUNTU_1804.__file__))
    assert "Ubuntu's python3-opencv" in detail and "sudo apt-get remove python3-opencv" in detail
    assert not re.search(r"install\s+python3-opencv", detail)


def test_a_pip_wheel_on_a_jetson_gets_jetpacks_cv2_as_the_fix(tmp_path):
    status, detail, _ = describe_opencv(PIP_WHEEL, jetson_root(tmp_path))
    assert status == WARN
    assert PIP_WHEEL.__file__ in detail and "(GStreamer: no)" in detail
    assert "sudo apt-get install nvidia-opencv" in detail
    assert "pip uninstall opencv-python opencv-python-headless" in detail
    assert not re.search(r"install\s+python3-opencv", detail)


def test_a_cv2_without_gstreamer_off_a_jetson_is_fine(tmp_path):
    status, detail, gst = describe_opencv(PIP_WHEEL, str(tmp_path))
    assert (status, gst) == (OK, False)
    assert detail == "4.5.5 from {} (GStreamer: no)".format(PIP_WHEEL.__file__)


def test_check_command_names_the_imported_cv2_file_version_and_gstreamer(tmp_path):
    import cv2
    from agent.sources.platform import gstreamer_in_build
    gst = "yes" if gstreamer_in_build(cv2.getBuildInformation()) else "no"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", os.path.join(ROOT, "config.yaml"),
         "--json", "--set", "mqtt.port={}".format(free_port()),
         "--set", "device.state_dir={}".format(tmp_path / "state")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT))
    rows = {r["check"]: r for r in json.loads(proc.stdout.decode())["checks"]}
    assert rows["opencv"]["detail"].startswith("{} from {} (GStreamer: {})".format(
        cv2.__version__, cv2.__file__, gst)), rows["opencv"]
