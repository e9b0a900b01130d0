#!/usr/bin/env python3
"""What a helper thread's work costs the inference beside it, without the rest of the agent.

The raw backend (`backend.infer` on a pre-made tensor, the agent's set-up from config.yaml)
runs back to back in the main thread. After each inference one job is handed to a helper
thread, as the inference thread hands frames to the publish thread and takes them from the
capture thread; the helper does it while the next inference runs. Jobs:

- none: no helper (the raw rate);
- preprocess: the agent's own resize and normalize of a sample photo (OpenCV and numpy,
  which release the GIL for most of it), what the capture thread does per frame;
- python: about as long in pure Python, holding the GIL throughout.

Each job runs in a helper at SCHED_IDLE (as the agent's helpers by default) and, for
preprocess, also at normal priority. Modes alternate within each round, so a drift of a
shared machine's speed falls on all of them; reported per mode: the median over rounds of
inferences per second, its ratio to `none` in the same round, and the ONNX Runtime call's p50.

    python tools/bench/interference.py [--rounds 6] [--seconds 3] [--set KEY=VALUE ...]

Linux only (SCHED_IDLE). If every helper slows inference by a similar share, the cost is not
the scheduler's: the cores' shared resources (caches, memory, or two vCPUs of one physical
core) are, and no thread priority removes it.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

MODES = ("none", "preprocess idle", "preprocess normal", "python idle")


class Helper(object):
    """A thread at `policy` that runs `job` once per release()."""

    def __init__(self, job: Callable[[], Any], policy: int) -> None:
        self.job = job
        self.policy = policy
        self.work = threading.Semaphore(0)
        self.stop = False
        self.thread = threading.Thread(target=self._run, name="helper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        os.sched_setscheduler(0, self.policy, os.sched_param(0))  # 0: this thread
        while True:
            self.work.acquire()
            if self.stop:
                return
            self.job()

    def release(self) -> None:
        self.work.release()

    def close(self) -> None:
        self.stop = True
        self.work.release()
        self.thread.join()


def measure(backend: Any, tensor: Any, helper: Optional[Helper], seconds: float
            ) -> Dict[str, float]:
    """Inferences per second and the p50 of one backend.infer call over `seconds`."""
    calls = []  # type: List[float]
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        a = time.perf_counter()
        backend.infer(tensor)
        calls.append(time.perf_counter() - a)
        if helper is not None:
            helper.release()
    elapsed = time.monotonic() - t0
    return {"fps": len(calls) / elapsed, "infer_p50_ms": 1000.0 * statistics.median(calls)}


def python_job(loops: int) -> Callable[[], int]:
    def job() -> int:
        total = 0
        for i in range(loops):
            total += i
        return total
    return job


def loops_for(ms: float) -> int:
    """Loop count of python_job that takes about `ms` of this thread's CPU."""
    job = python_job(100000)
    t0 = time.thread_time()
    job()
    per_loop = (time.thread_time() - t0) / 100000
    return max(1, int(ms / 1000.0 / per_loop))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured seconds of each mode in each round (3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. backend.threads=2")
    args = parser.parse_args(argv)

    import cv2
    from stage_cpu import open_model  # tools/bench/stage_cpu.py: the agent's set-up

    _, _, backend, prep = open_model(args.set)
    photo = cv2.imread(os.path.join(ROOT, "models", "samples", "coffee.jpg"))
    tensor = prep.normalize(prep.resize(photo))

    def preprocess() -> Any:
        return prep.normalize(prep.resize(photo))
    t0 = time.thread_time()
    for _ in range(50):
        preprocess()
    job_ms = (time.thread_time() - t0) * 1000.0 / 50
    helpers = {"none": None,
               "preprocess idle": Helper(preprocess, os.SCHED_IDLE),
               "preprocess normal": Helper(preprocess, os.SCHED_OTHER),
               "python idle": Helper(python_job(loops_for(job_ms)), os.SCHED_IDLE)
               }  # type: Dict[str, Optional[Helper]]
    results = dict((mode, []) for mode in MODES)  # type: Dict[str, List[Dict[str, float]]]
    try:
        measure(backend, tensor, None, 1.0)  # warm-up
        for n in range(args.rounds):
            order = MODES if n % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                results[mode].append(measure(backend, tensor, helpers[mode], args.seconds))
            print("round {}/{}: {}".format(n + 1, args.rounds, ", ".join(
                "{} {:.1f}".format(m, results[m][-1]["fps"]) for m in MODES)), file=sys.stderr)
    finally:
        for helper in helpers.values():
            if helper is not None:
                helper.close()
        backend.close()
    print("one job ~{:.2f} ms of CPU; {} rounds of {:g} s per mode; cores: {}".format(
        job_ms, args.rounds, args.seconds, os.cpu_count()))
    row = "{:<20}{:>12}{:>16}{:>18}"
    print(row.format("helper", "fps", "fps / none", "infer p50 ms"))
    for mode in MODES:
        ratios = [r["fps"] / base["fps"] for r, base in zip(results[mode], results["none"])]
        print(row.format(mode, "{:.1f}".format(statistics.median(r["fps"] for r in results[mode])),
                         "{:.3f}".format(statistics.median(ratios)),
                         "{:.3f}".format(statistics.median(r["infer_p50_ms"]
                                                           for r in results[mode]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
