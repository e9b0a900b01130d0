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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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
    from agent.backends import open_backend
    from agent.cli.bench import resolve_package
    from agent.config import load_config
    from agent.postprocess import Classifier
    from agent.preprocess import Preprocessor
    from agent.updates.loader import backend_options

    cv2.setNumThreads(1)  # as the agent does
    config = load_config(os.path.join(ROOT, "config.yaml"), args.set)
    config.base_dir = ROOT
    package = resolve_package(config, None)
    backend, _ = open_backend(package, backend_options(config))
    prep = Preprocessor(package.input)
    clf = Classifier(package.labels, package.output.activation, package.output.name, top_k=5)
    photos = [cv2.imread(os.path.join(ROOT, "models", "samples", name)) for name in PHOTOS]
    resized = [prep.resize(p) for p in photos]
    outputs = [backend.infer(prep.normalize(r)) for r in resized]
    steps = {"resize": lambda i: prep.resize(photos[i % 3]),
             "normalize": lambda i: prep.normalize(resized[i % 3]),
             "classifier": lambda i: clf(outputs[i % 3])}

    stop = threading.Event()
    inferences = [0]
    worker = None
    if args.beside_inference:
        tensor = prep.normalize(resized[0])

        def infer_loop() -> None:
            while not stop.is_set():
                backend.infer(tensor)
                inferences[0] += 1
        worker = threading.Thread(target=infer_loop, name="inference", daemon=True)
        worker.start()

    print("ms of thread CPU per call ({} calls{}; cores: {})".format(
        args.calls, ", ONNX Runtime running in another thread" if worker else "",
        os.cpu_count()))
    print("{:<28}{:>10}{:>11}{:>12}".format("sleep before each frame", "resize", "normalize",
                                            "classifier"))
    try:
        for sleep_ms in [float(s) for s in args.sleeps_ms.split(",")]:
            ms = timed_steps(steps, args.calls, sleep_ms / 1000.0, 1)
            print("{:<28}{:>10.3f}{:>11.3f}{:>12.3f}".format(
                "{:g} ms".format(sleep_ms), ms["resize"], ms["normalize"], ms["classifier"]))
        for every in [int(b) for b in args.batches.split(",")]:
            ms = timed_steps(steps, args.calls, 0.008, every)
            print("{:<28}{:>10.3f}{:>11.3f}{:>12.3f}".format(
                "8 ms, woken for {} frame{}".format(every, "s" if every > 1 else ""),
                ms["resize"], ms["normalize"], ms["classifier"]))
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
