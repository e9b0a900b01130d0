"""Test double of the jtop client (jetson-stats): no machine here runs the jtop service.

It is a test double following docs/PLATFORM.md section 4 and jetson-stats' documented return
shapes: `power` is the 4.x dict `{'rail': {name: {'volt','curr','power','avg',...}}, 'tot':
{...}}` (mV, mA, mW; `tot` carries `name` when it is the VDD_IN / POM_5V_IN rail, else it is
jtop's sum of the rails: jtop/core/power.py total_power) or the 3.x tuple `(total, rails)` with
`{'cur','avg'}` mW (3.x renames rails 'VDD_IN' -> 'IN', 'POM_5V_GPU' -> '5V GPU' and moves the
input rail into total: jtop/service.py _total_power). `start()` raises JtopException when the
service socket /run/jtop.sock is absent, as jtop.start() does.
"""

from typing import Any, Callable, Optional


class JtopException(Exception):
    """Stands in for jtop.JtopException."""


class FakeJtop(object):
    """A jtop object: start(), the `power` property, close()."""

    def __init__(self, power: Any = None, service_running: bool = True) -> None:
        self._power = power
        self.service_running = service_running
        self.started = False
        self.closed = False

    def start(self) -> None:
        if not self.service_running:
            raise JtopException("The jetson_stats.service is not active. Please run:\n"
                                "sudo systemctl restart jetson_stats.service")
        self.started = True

    @property
    def power(self) -> Any:
        if not self.started:
            raise JtopException("jtop is not started")
        return self._power

    def set_power(self, power: Any) -> None:
        self._power = power

    def close(self) -> None:
        self.closed = True


def factory_for(fake: FakeJtop) -> Callable[[], FakeJtop]:
    """A jtop_factory returning `fake`, as discover_power expects."""
    def make() -> FakeJtop:
        return fake
    return make


# Shapes as jtop reports them on the boards named (values in mW, mV, mA).
JTOP4_ORIN_NANO = {
    "rail": {
        "VDD_CPU_GPU_CV": {"online": True, "type": "I2C", "status": "ok", "volt": 5000,
                           "curr": 400, "warn": 0, "crit": 0, "power": 2000, "avg": 1900},
        "VDD_SOC": {"online": True, "type": "I2C", "status": "ok", "volt": 5000, "curr": 300,
                    "warn": 0, "crit": 0, "power": 1500, "avg": 1450},
    },
    "tot": {"online": True, "type": "I2C", "status": "ok", "volt": 5000, "curr": 1200,
            "warn": 0, "crit": 0, "power": 6000, "avg": 5800, "name": "VDD_IN"},
}

# AGX Xavier has no board input rail: jtop 4.x `tot` is the sum of the rails, with no name.
JTOP4_XAVIER_SUM = {
    "rail": {
        "GPU": {"online": True, "volt": 1000, "curr": 1000, "power": 1000, "avg": 1000},
        "CPU": {"online": True, "volt": 1000, "curr": 2000, "power": 2000, "avg": 2000},
    },
    "tot": {"power": 3000, "avg": 3000},
}

# jtop 3.x on a Nano: POM_5V_IN became the total ('5V IN' taken out of the rails).
JTOP3_NANO = ({"cur": 2545, "avg": 2547},
              {"5V GPU": {"cur": 0, "avg": 0}, "5V CPU": {"cur": 549, "avg": 529}})

# jtop 3.x on an AGX Xavier: no input rail, so `total` is the sum of the rails.
JTOP3_XAVIER_SUM = ({"cur": 3000, "avg": 3000},
                    {"GPU": {"cur": 1000, "avg": 1000}, "CPU": {"cur": 2000, "avg": 2000}})
