#!/usr/bin/env python3
"""What a pipeline step costs right after its thread slept, against the same step run back to
back: the agent's own preprocessing (resize, normalize) and classifier on the sample photos,
timed with the thread's CPU clock (time.thread_time, so the sleep itself is not counted).

The agent's capture and publish threads sleep between two frames (they wait for the inference
thread). On this project's 2-core VM a step run after such a sleep costs several times what it
costs in a tight loop, whatever the step; this shows it without the agent's threads around.

    python tools/bench/wake_cost.py [--calls 600] [--beside-inference]
        [--sleeps-ms 0,0.5,2,8] [--batches 1,2,4] [--set KEY=VALUE ...]

--beside-inference runs the real model (ONNX Runtime, the config's threads) in another thread
the whole time, as in a run. --batches: the sleep (8 ms per frame) comes once every k frames,
as if a thread woke for k frames at a time.
"""

import argparse
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

PHOTOS = ("cat.jpg", "coffee.jpg", "rocket.jpg")


def timed_steps(steps: Dict[str, Callable[[int], Any]], calls: int, sleep_s: float,
                every: int) -> Dict[str, float]:
    """ms of thread CPU per call of each step; `sleep_s` * `every` slept before every
    `every`-th frame."""
    spent = dict((name, 0.0) for name in steps)
    for i in range(calls):
        if sleep_s and i % every == 0:
            time.sleep(sleep_s * every)  # the pause under test, not a synchronisation
        for name, step in steps.items():
            t0 = time.thread_time()
            step(i)
            spent[name] += time.thread_time() - t0
    return dict((name, 1000.0 * total / calls) for name, total in spent.items())


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--sleeps-ms", default="0,0.5,2,8")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--beside-inference", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. backend.threads=2")
    args = parser.parse_args(argv)

    import cv2
    from agent.postprocess import Classifier
    from stage_cpu import open_model  # tools/bench/stage_cpu.py: the same set-up

    _, package, backend, prep = open_model(args.set)
    clf = Classifier(package.labels, package.output.activation, package.output.name, top_k=5)
    photos = [cv2.imread(os.path.join(ROOT, "models", "samples", name)) for name in PHOTOS]
    resized = [prep.resize(p) for p in photos]
    outputs = [backend.infer(prep.normalize(r)) for r in resized]
    steps = {"resize": lambda i: prep.resize(photos[i % 3]),
             "normalize": lambda i: prep.normalize(resized[i % 3]),
             "classifier": lambda i: clf(outputs[i % 3])}

    stop = threading.Event()
    worker = None
    if args.beside_inference:
        tensor = prep.normalize(resized[0])

        def infer_loop() -> None:
            while not stop.is_set():
                backend.infer(tensor)
        worker = threading.Thread(target=infer_loop, name="inference", daemon=True)
        worker.start()

    print("ms of thread CPU per call ({} calls{}; cores: {})".format(
        args.calls, ", ONNX Runtime running in another thread" if worker else "",
        os.cpu_count()))
    row = "{:<28}{:>10}{:>11}{:>12}"
    print(row.format("sleep before each frame", "resize", "normalize", "classifier"))

    def show(label: str, ms: Dict[str, float]) -> None:
        print(row.format(label, *("{:.3f}".format(ms[k]) for k in steps)))
    try:
        for sleep_ms in [float(s) for s in args.sleeps_ms.split(",")]:
            show("{:g} ms".format(sleep_ms), timed_steps(steps, args.calls, sleep_ms / 1000.0, 1))
        for every in [int(b) for b in args.batches.split(",")]:
            show("8 ms, woken for {} frame{}".format(every, "s" if every > 1 else ""),
                 timed_steps(steps, args.calls, 0.008, every))
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
