#!/usr/bin/env python3
"""Where a py-spy profile of `edge-agent bench` spends its time, per pipeline thread.

Record (py-spy from PyPI, in any venv; it attaches to the child it starts):

    py-spy record -r 200 --threads -f raw -o prof.txt -- .venv/bin/python -m agent bench --rounds 1
    python tools/bench/profile_summary.py prof.txt

Prints, per thread name (runs of the same stage are added up), the share of samples inside
ONNX Runtime's Session.run, waiting (Condition.wait), and the rest with its top frames: the
Python work the pipeline adds around inference.
"""

import collections
import sys
from typing import Dict, List, Tuple

WAIT = ("Condition.wait", "Event.wait", "Thread.join")


def summarize(path: str, top: int = 12) -> Dict[str, Dict[str, object]]:
    threads = collections.defaultdict(collections.Counter)  # type: Dict[str, collections.Counter]
    rest = collections.defaultdict(collections.Counter)  # type: Dict[str, collections.Counter]
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            name = frames[0].split(": ", 1)[-1]
            leaf = frames[-1].split(" (")[0]
            n = int(count)
            if leaf == "Session.run":
                threads[name]["session.run"] += n
            elif leaf in WAIT:
                threads[name]["waiting"] += n
            else:
                threads[name]["other"] += n
                rest[name][" > ".join(f.split(" (")[0] for f in frames[-3:])] += n
    out = {}  # type: Dict[str, Dict[str, object]]
    for name, counts in threads.items():
        out[name] = {"samples": sum(counts.values()), "counts": dict(counts),
                     "top_other": rest[name].most_common(top)}
    return out


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    result = summarize(argv[1])
    for name, info in sorted(result.items(), key=lambda kv: -int(kv[1]["samples"])):  # type: ignore
        counts = info["counts"]  # type: Dict[str, int]  # type: ignore
        total = float(info["samples"])  # type: ignore
        print("{:<12} {:>6} samples: session.run {:5.1%}, waiting {:5.1%}, other {:5.1%}".format(
            name, int(total), counts.get("session.run", 0) / total,
            counts.get("waiting", 0) / total, counts.get("other", 0) / total))
        for stack, n in info["top_other"][:6]:  # type: ignore
            print("    {:>5}  {}".format(n, stack))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
