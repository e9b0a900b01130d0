"""Energy arithmetic: the trapezoid integral of watts, and windows between cumulative totals."""

from typing import Any, Dict, Iterable, Optional, Tuple

from .readers import PowerReading


class TrapezoidIntegrator(object):
    """Running trapezoid-rule integral of one (time, watts) signal, in joules.

    Samples with no value are bridged (the next value joins the last one); samples whose time
    does not advance add nothing.
    """

    __slots__ = ("joules", "seconds", "last_ts", "last_w")

    def __init__(self) -> None:
        self.joules = 0.0
        self.seconds = 0.0
        self.last_ts = None  # type: Optional[float]
        self.last_w = None  # type: Optional[float]

    def add(self, ts: float, watts: Optional[float]) -> None:
        if watts is None:
            return
        if self.last_ts is not None and self.last_w is not None:
            dt = ts - self.last_ts
            if dt <= 0:
                return
            self.joules += 0.5 * (watts + self.last_w) * dt
            self.seconds += dt
        self.last_ts = ts
        self.last_w = watts

    @property
    def started(self) -> bool:
        return self.last_ts is not None


def integrate_trapezoid(samples: Iterable[Tuple[float, Optional[float]]]) -> float:
    """Joules of a (monotonic seconds, watts) trace by the trapezoid rule; None values bridged."""
    integrator = TrapezoidIntegrator()
    for ts, watts in samples:
        integrator.add(ts, watts)
    return integrator.joules


NOISE_SIGMAS = 2.0  # a marginal figure must exceed this many baseline spreads to count


def within_noise(marginal_j: float, seconds: float, idle_spread_w: Optional[float],
                 joules: float = 0.0) -> bool:
    """True when `marginal_j` joules over `seconds` are not above the idle baseline's noise:
    not above NOISE_SIGMAS x `idle_spread_w` x seconds (the spread is the standard deviation
    of the baseline's sub-window means; None counts as 0), nor above float rounding of the
    window's `joules`. A marginal of zero or below is always within noise: the work cannot
    have drawn less than idle."""
    rounding = 1e-9 * abs(joules)
    return marginal_j <= NOISE_SIGMAS * (idle_spread_w or 0.0) * seconds + rounding


class EnergyWindow(object):
    """Energy between two EnergyTotals snapshots: joules, seconds, mean watts, per-rail joules."""

    __slots__ = ("joules", "seconds", "mean_w", "rails_j", "samples", "method")

    def __init__(self, joules: Optional[float], seconds: float, rails_j: Dict[str, float],
                 samples: int, method: Optional[str]) -> None:
        self.joules = joules
        self.seconds = seconds
        self.mean_w = joules / seconds if joules is not None and seconds > 0 else None
        self.rails_j = rails_j
        self.samples = samples
        self.method = method  # "counter", "trapezoid" or None (no power)

    def marginal_joules(self, idle_w: Optional[float]) -> Optional[float]:
        """Joules above the idle baseline: joules - idle_w * seconds."""
        if self.joules is None or idle_w is None:
            return None
        return self.joules - idle_w * self.seconds

    def per_inference(self, n: int, idle_w: Optional[float] = None,
                      idle_spread_w: Optional[float] = None,
                      coverage: Optional[str] = None) -> Dict[str, Any]:
        """The telemetry `energy` fields for `n` inferences in this window (None when n == 0 or
        there is no power), labelled with the meter's `coverage`; with `idle_w`, also the
        marginal (above idle) figures, which are null with `marginal_within_noise` true when
        the marginal joules are not above the baseline's noise (see within_noise)."""
        out = {"joules": self.joules, "mj_per_inference": None,
               "inferences_per_joule": None, "coverage": coverage}  # type: Dict[str, Any]
        if self.joules is not None and n > 0:
            out["mj_per_inference"] = 1000.0 * self.joules / n
            if self.joules > 0:
                out["inferences_per_joule"] = n / self.joules
        if idle_w is not None:
            marginal = self.marginal_joules(idle_w)
            noisy = marginal is not None and within_noise(marginal, self.seconds,
                                                          idle_spread_w, self.joules or 0.0)
            out["idle_w"] = idle_w
            out["idle_spread_w"] = idle_spread_w
            out["marginal_within_noise"] = noisy if marginal is not None else None
            out["marginal_joules"] = None if noisy else marginal
            out["marginal_mj_per_inference"] = (
                1000.0 * marginal / n if marginal is not None and not noisy and n > 0 else None)
        return out

    def __repr__(self) -> str:
        return "EnergyWindow(joules={!r}, seconds={!r}, mean_w={!r}, samples={!r})".format(
            self.joules, self.seconds, self.mean_w, self.samples)


class EnergyTotals(object):
    """Cumulative energy at one instant, as the sampler saw it; subtract two with since().

    `ts` is the time of the last sample integrated; `total_j` is from the hardware counter
    where the reader has one (`method` "counter"), else the trapezoid integral of total_w.
    Both integrals stay available as `counter_j` and `trapezoid_j`.
    """

    __slots__ = ("ts", "total_j", "trapezoid_j", "counter_j", "rails_j", "samples", "last",
                 "method", "source")

    def __init__(self, ts: Optional[float], trapezoid_j: Optional[float],
                 counter_j: Optional[float], rails_j: Dict[str, float], samples: int,
                 last: Optional[PowerReading], source: str) -> None:
        self.ts = ts
        self.trapezoid_j = trapezoid_j
        self.counter_j = counter_j
        self.total_j = None  # type: Optional[float]
        self.method = None  # type: Optional[str]
        if counter_j is not None:
            self.total_j, self.method = counter_j, "counter"
        elif trapezoid_j is not None:
            self.total_j, self.method = trapezoid_j, "trapezoid"
        self.rails_j = rails_j
        self.samples = samples
        self.last = last
        self.source = source

    def since(self, earlier: "EnergyTotals") -> EnergyWindow:
        """The window from `earlier` to this snapshot (same sampler)."""
        if self.ts is None or earlier.ts is None:
            return EnergyWindow(None, 0.0, {}, self.samples - earlier.samples, None)
        seconds = max(0.0, self.ts - earlier.ts)
        joules = None  # type: Optional[float]
        method = None  # type: Optional[str]
        if self.counter_j is not None and earlier.counter_j is not None:
            joules, method = self.counter_j - earlier.counter_j, "counter"
        elif self.trapezoid_j is not None and earlier.trapezoid_j is not None:
            joules, method = self.trapezoid_j - earlier.trapezoid_j, "trapezoid"
        rails = {name: j - earlier.rails_j.get(name, 0.0) for name, j in self.rails_j.items()}
        return EnergyWindow(joules, seconds, rails, self.samples - earlier.samples, method)

    def trapezoid_since(self, earlier: "EnergyTotals") -> Optional[float]:
        """Trapezoid joules over the window even where a counter exists (for cross-checks)."""
        if self.trapezoid_j is None or earlier.trapezoid_j is None:
            return None
        return self.trapezoid_j - earlier.trapezoid_j
