"""Test helpers shared by several test modules (from tests/unit/power/test_power.py)."""

import os
import sys

from agent.power import sysfs


# --------------------------------------------------------------------------------------------
# sysfs trees


def write(root, relative, text):
    path = os.path.join(str(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def iio_chip(root, chip, device, rails):
    """rails: list of (name, mW, mV, mA) for channels 0..2 of one INA3221 (JetPack 4 iio)."""
    base = "sys/bus/i2c/drivers/ina3221x/{}/{}".format(chip, device)
    for n, (name, mw, mv, ma) in enumerate(rails):
        write(root, "{}/rail_name_{}".format(base, n), name + "\n")
        write(root, "{}/in_power{}_input".format(base, n), "{}\n".format(mw))
        write(root, "{}/in_voltage{}_input".format(base, n), "{}\n".format(mv))
        write(root, "{}/in_current{}_input".format(base, n), "{}\n".format(ma))
    return os.path.join(str(root), base)
