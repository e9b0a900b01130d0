"""CPU energy of x86 machines through the powercap RAPL counters (intel-rapl, recent AMD)."""

import glob
import os
import threading
from typing import Any, Dict, List, Optional

from .readers import Clock, PowerReader, PowerReading, PowerSourceUnavailable
from .sysfs import read_number, read_line, under


class _RaplDomain(object):
    """One powercap domain: a wrapping microjoule counter made monotonic."""

    __slots__ = ("name", "path", "top", "max_uj", "last_raw", "acc_uj")

    def __init__(self, name: str, path: str, top: bool, max_uj: float, raw: float) -> None:
        self.name = name
        self.path = path
        self.top = top
        self.max_uj = max_uj
        self.last_raw = raw
        self.acc_uj = 0.0

    def poll(self) -> None:
        raw = read_number(self.path)
        delta = raw - self.last_raw
        if delta < 0:  # the counter wrapped at max_energy_range_uj
            delta += self.max_uj
        self.acc_uj += delta
        self.last_raw = raw


class RaplReader(PowerReader):
    """CPU energy through `/sys/class/powercap/intel-rapl:*/energy_uj` (Intel; recent AMD too).

    RAPL has counters, not power: read() gives the mean watts since the previous read(), and
    the counter as `energy_j`. Wraparound is undone with `max_energy_range_uj`. Since Linux
    5.10 energy_uj is root-only on most distributions: unreadable domains are not available.
    Total: the `psys` (platform) domain where present, else the sum of the `package-*` domains.
    """

    source = "rapl"
    coverage = "cpu_package"  # "platform" where the psys domain exists (set in __init__)
    PATTERN = "sys/class/powercap/intel-rapl:*"

    def __init__(self, root: str = "/", clock: Optional[Clock] = None) -> None:
        super(RaplReader, self).__init__(clock)
        self._domains = []  # type: List[_RaplDomain]
        unreadable = []
        names = {}  # type: Dict[str, str]
        paths = sorted(glob.glob(under(root, self.PATTERN)))
        for path in paths:
            base = os.path.basename(path)
            try:
                names[base] = read_line(os.path.join(path, "name"))
            except OSError:
                names[base] = base
        for path in paths:
            base = os.path.basename(path)
            energy = os.path.join(path, "energy_uj")
            if not os.path.exists(energy):
                continue
            try:
                raw = read_number(energy)
            except (OSError, ValueError) as exc:
                unreadable.append("{} ({})".format(energy, type(exc).__name__))
                continue
            try:
                max_uj = read_number(os.path.join(path, "max_energy_range_uj"))
            except (OSError, ValueError):
                max_uj = 2.0 ** 32  # the counter register width when the range is not exposed
            parts = base.split(":")
            top = len(parts) == 2
            name = names[base]
            if not top:
                name = "{}/{}".format(names.get(":".join(parts[:2]), parts[1]), name)
            self._domains.append(_RaplDomain(name, energy, top, max_uj, raw))
        if not self._domains:
            if unreadable:
                raise PowerSourceUnavailable(
                    "power: rapl: {} is not readable by this user (root-only since Linux 5.10); "
                    "fix: run the agent as root or grant read access with a udev rule, or set "
                    "telemetry.power to another source".format(", ".join(unreadable)))
            raise PowerSourceUnavailable(
                "power: rapl: no {}/energy_uj (not an x86 machine with powercap RAPL); fix: "
                "`sudo modprobe intel_rapl_common`, or set telemetry.power to another source"
                .format(under(root, self.PATTERN)))
        psys = [d for d in self._domains if d.top and d.name.startswith("psys")]
        packages = [d for d in self._domains if d.top and d.name.startswith("package")]
        self._total_domains = psys[:1] or packages or [d for d in self._domains if d.top]
        # psys is the platform; packages (or other top domains) are the CPU packages only.
        self.coverage = "platform" if psys else "cpu_package"
        self._lock = threading.Lock()
        self._last_read = (self._clock(), self._snapshot())

    def _poll(self) -> None:
        for domain in self._domains:
            try:
                domain.poll()
            except (OSError, ValueError):
                continue  # the next successful poll catches up: the counter is cumulative

    def _snapshot(self) -> Dict[str, float]:
        return {d.name: d.acc_uj for d in self._domains}

    @property
    def has_energy_counter(self) -> bool:
        return bool(self._total_domains)

    def read(self) -> PowerReading:
        with self._lock:
            ts = self._clock()
            self._poll()
            now = self._snapshot()
            last_ts, last = self._last_read
            self._last_read = (ts, now)
            energy = self._total_uj() / 1e6
        dt = ts - last_ts
        rails = {}  # type: Dict[str, float]
        if dt > 0:
            for name, acc in now.items():
                rails[name] = (acc - last[name]) / 1e6 / dt
        total = None  # type: Optional[float]
        if dt > 0 and self._total_domains:
            total = sum(rails[d.name] for d in self._total_domains)
        return PowerReading(ts, total, rails, energy)

    def _total_uj(self) -> float:
        return sum(d.acc_uj for d in self._total_domains)

    def energy_j(self) -> Optional[float]:
        """Joules of the total domains since this reader was created (wraparound undone)."""
        with self._lock:
            self._poll()
            return self._total_uj() / 1e6

    def describe(self) -> Dict[str, Any]:
        return {"source": self.source, "coverage": self.coverage, "domains": [d.name for d in self._domains],
                "total": [d.name for d in self._total_domains]}
