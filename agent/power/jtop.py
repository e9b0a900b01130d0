"""Power through the jtop service of jetson-stats (3.x and 4.x), and parsing its `power`."""

import logging
from typing import Any, Callable, Dict, Optional, Tuple

from .readers import (BOARD_INPUT_RAILS, Clock, PowerReader, PowerReading, PowerSourceUnavailable,
                      split_board_input)

logger = logging.getLogger(__name__)


def parse_jtop_power(power: Any) -> Tuple[Optional[float], Dict[str, float]]:
    """jtop's `power` property -> (board total W or None, {rail: W}).

    jtop 4.x: {'rail': {name: {'volt','curr','power','avg',...}}, 'tot': {...}} in mV/mA/mW;
    its `tot` is the board input rail when it carries that rail's `name`, else the sum of the
    rails (jetson-stats jtop/core/power.py total_power), which is not a board reading.
    jtop 3.x: (total, rails) with {'cur','avg'} mW; jtop 3.x moved the input rail (renamed
    'IN' / '5V IN') into `total` or else summed the rails, so a total equal to the rails' sum
    is that sum. `avg` is jtop's (prev+cur)/2, never used: energy comes from our own sampler.
    """
    if isinstance(power, tuple) and len(power) == 2:
        total_d, rails_d = power
        rails = {}  # type: Dict[str, float]
        for name, values in (rails_d or {}).items():
            if isinstance(values, dict) and values.get("cur") is not None:
                rails[str(name)] = float(values["cur"]) / 1000.0
        board, rails = split_board_input(rails)
        if board is not None:
            return board, rails
        total = None  # type: Optional[float]
        if isinstance(total_d, dict) and total_d.get("cur") is not None:
            total = float(total_d["cur"]) / 1000.0
            rails_sum = sum(rails.values())
            if len(rails) > 1 and abs(total - rails_sum) < 1e-6:
                total = None
        return total, rails
    if isinstance(power, dict):
        rails = {}
        for name, values in (power.get("rail") or {}).items():
            watts = _jtop4_watts(values)
            if watts is not None:
                rails[str(name)] = watts
        board, rails = split_board_input(rails)
        tot = power.get("tot")
        if board is None and isinstance(tot, dict) and tot.get("name") in BOARD_INPUT_RAILS:
            board = _jtop4_watts(tot)
        return board, rails
    return None, {}


def _jtop4_watts(values: Any) -> Optional[float]:
    if not isinstance(values, dict) or values.get("online") is False:
        return None
    if values.get("power") is not None:
        return float(values["power"]) / 1000.0
    if values.get("volt") is not None and values.get("curr") is not None:
        return float(values["volt"]) * float(values["curr"]) / 1e6
    return None


class JtopPowerReader(PowerReader):
    """Power through the jtop service (jetson-stats 3.x or 4.x).

    `jtop_factory()` returns an unstarted jtop object (default: `jtop.jtop(interval=...)`); it
    is started here. When the service socket is absent jtop raises JtopException: this reader
    is then unavailable and `auto` goes on to the raw sensors. jtop refreshes only every
    `interval` seconds, so faster sampling sees repeated values.
    """

    source = "jtop"
    coverage = "board"  # jtop's total is the board input rail (else None)

    def __init__(self, jtop_factory: Optional[Callable[[], Any]] = None, interval: float = 0.5,
                 clock: Optional[Clock] = None) -> None:
        super(JtopPowerReader, self).__init__(clock)
        if jtop_factory is None:
            try:
                import jtop as jtop_module  # lazily: only Jetson boards have it
            except Exception as exc:  # ImportError, or a broken install
                raise PowerSourceUnavailable(
                    "power: jtop: the jtop module (jetson-stats) cannot be imported ({}); fix: "
                    "`sudo pip3 install -U jetson-stats` and log in again, or set "
                    "telemetry.power to iio/hwmon".format(exc))

            def jtop_factory() -> Any:
                return jtop_module.jtop(interval=interval)
        self._jtop = None  # type: Any
        try:
            handle = jtop_factory()
            handle.start()
        except Exception as exc:  # JtopException, or the OSError jtop re-raises: no service
            raise PowerSourceUnavailable(
                "power: jtop: the jtop service is not reachable at /run/jtop.sock ({}: {}); fix: "
                "`sudo systemctl restart jtop.service` and add this user to group `jtop`"
                .format(type(exc).__name__, exc))
        self._jtop = handle
        total, rails = self._parse()
        if total is None and not rails:
            self.close()
            raise PowerSourceUnavailable(
                "power: jtop: the jtop service reports no power rails on this board; fix: "
                "set telemetry.power to none")

    def _parse(self) -> Tuple[Optional[float], Dict[str, float]]:
        try:
            return parse_jtop_power(self._jtop.power)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            logger.debug("jtop power not readable: %s", exc)
            return None, {}

    def read(self) -> PowerReading:
        ts = self._clock()
        total, rails = self._parse()
        return PowerReading(ts, total, rails)

    def close(self) -> None:
        handle, self._jtop = self._jtop, None
        if handle is not None:
            try:
                handle.close()
            except Exception as exc:  # closing a dead service connection must not fail shutdown
                logger.debug("jtop close: %s", exc)
