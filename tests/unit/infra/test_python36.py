"""agent/ must run on Python 3.6.9 (the only Python with TensorRT on Jetson Nano/TX2)."""

import os
import shutil
import subprocess
import sys

from support.paths import ROOT


def test_agent_package_needs_nothing_newer_than_python_3_6():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    assert os.path.exists(vermin), "vermin is not installed (pip install vermin; .ci/run does)"
    proc = subprocess.run([vermin, "-q", "--no-tips", "--violations", "-t=3.6-",
                           "--eval-annotations", os.path.join(ROOT, "agent")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and not out.strip(), "agent/ uses features newer than " \
        "Python 3.6:\n" + out


def test_vermin_catches_a_3_8_feature(tmp_path):
    """The check above must be able to fail: a walrus is 3.8+."""
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    (tmp_path / "m.py").write_text("if (n := 3):\n    pass\n")
    proc = subprocess.run([vermin, "-q", "--no-tips", "--violations", "-t=3.6-",
                           str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode != 0 or proc.stdout.strip()
