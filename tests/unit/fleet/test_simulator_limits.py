"""The fleet simulator (tools/fleet/simulate.py) refuses more devices per process than paho's
select() can serve (file descriptors above 1023), naming the way out, instead of leaving the
newest devices unable to connect."""

import os
import subprocess
import sys

from support.paths import ROOT


def test_too_many_devices_for_one_process_are_refused_with_the_fix(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fleet", "simulate.py"),
                          "--count", "151", "--dir", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 2
    err = out.stderr.decode()
    assert "--count 151: at most 150 devices per process" in err
    assert "--first" in err and "--processes" in err
    assert os.listdir(str(tmp_path)) == []  # nothing started
