#!/usr/bin/env python3
"""The CPU each pipeline step costs per frame, in the agent's own threads (bench's pipeline:
capture -> inference -> publish into a local spool, sample photos, unpaced).

Each step is timed with the calling thread's CPU clock (time.thread_time), so waiting is not
counted. With `--backend sleep`, inference is replaced by a sleep of `--sleep-ms` that returns
the real model's outputs: ONNX Runtime then takes no CPU, and what is left is what the
pipeline itself costs per frame. With `--backend real` the same steps are timed while ONNX
Runtime runs beside them. `--hot` also times each step alone in a tight loop on the same data
(warm caches, no other thread), to show how much running between frames costs each step.

    python tools/bench/stage_cpu.py [--backend sleep|real] [--frames 1200] [--hot]

Prints ms of CPU per call for each step and the process's user/system CPU per frame; first,
how much of the cores raw inference (bench's measure_raw, the real backend) keeps busy.
"""

import argparse
import collections
import functools
import os
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SOURCE = "file://models/samples"


class Timed(object):
    """Patches methods so each call adds its thread CPU time to `cpu[label]`."""

    def __init__(self) -> None:
        self.cpu = collections.Counter()  # type: collections.Counter
        self.calls = collections.Counter()  # type: collections.Counter
        self._originals = []  # type: List[Any]

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        self._originals.append((owner, name, original))

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[label] += time.thread_time() - start
                self.calls[label] += 1
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)


class SleepingBackend(object):
    """The real backend with infer() replaced by a sleep that returns fixed real outputs."""

    def __init__(self, backend: Any, outputs: Dict[str, Any], sleep_s: float) -> None:
        self._backend, self._outputs, self._sleep_s = backend, outputs, sleep_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def infer(self, tensor: Any) -> Dict[str, Any]:
        time.sleep(self._sleep_s)
        return self._outputs


def hot_loop(step: Callable[[], Any], calls: int = 500) -> float:
    """ms of thread CPU per call of `step`, repeated back to back."""
    step()
    start = time.thread_time()
    for _ in range(calls):
        step()
    return (time.thread_time() - start) * 1000.0 / calls


def open_model(overrides: List[str]) -> Tuple[Any, Any, Any, Any]:
    """config.yaml (with `overrides`), its model package, the backend the agent would open
    for it and the package's Preprocessor; OpenCV single-threaded, as in the agent."""
    import cv2
    from agent.backends import open_backend
    from agent.cli.bench import resolve_package
    from agent.config import load_config
    from agent.preprocess import Preprocessor
    from agent.updates.loader import backend_options

    cv2.setNumThreads(1)
    config = load_config(os.path.join(ROOT, "config.yaml"), overrides)
    config.base_dir = ROOT
    package = resolve_package(config, None)
    backend, _ = open_backend(package, backend_options(config))
    return config, package, backend, Preprocessor(package.input)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sleep", "real"), default="sleep")
    parser.add_argument("--sleep-ms", type=float, default=8.0,
                        help="the sleeping backend's inference time (8 ms: about the bundled "
                             "model's on 2 cores)")
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--hot", action="store_true",
                        help="also time each step alone in a tight loop")
    args = parser.parse_args(argv)
    os.chdir(ROOT)

    import cv2
    from agent import postprocess, preprocess, spool
    from agent.cli.bench import _source_tensors, measure_pipeline, measure_raw
    from agent.pipeline import frames
    from agent.sources import files

    config, package, backend, prep = open_model([])
    tensors = _source_tensors(config, SOURCE, prep)
    outputs = backend.infer(tensors[0])
    cpu0, wall0 = time.process_time(), time.monotonic()
    raw = measure_raw(backend, tensors, 300)
    print("raw inference: {} fps, {:.0f} % of a core (process CPU over wall time, {} cores)"
          .format(raw["fps"], 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0),
                  os.cpu_count()))
    if args.backend == "sleep":
        backend = SleepingBackend(backend, outputs, args.sleep_ms / 1000.0)

    timed = Timed()
    steps = [(preprocess.Preprocessor, "resize", "preprocess: resize"),
             (preprocess.Preprocessor, "normalize", "preprocess: normalize"),
             (files.FileSource, "read", "capture: source.read"),
             (frames.FrameSlot, "put", "capture: slot.put"),
             (frames.FrameSlot, "get", "inference: slot.get"),
             (postprocess.Classifier, "__call__", "publish: classifier (top-k)"),
             (spool.Spool, "put", "publish: spool.put"),
             (spool.Spool, "ack", "sink: spool.ack")]
    for owner, name, label in steps:
        timed.wrap(owner, name, label)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = measure_pipeline(config, backend, SOURCE, 0.0, args.frames)
    after = resource.getrusage(resource.RUSAGE_SELF)
    timed.restore()
    frames_run = result["frames"] + 10  # and bench's 10 warm-up frames
    print("pipeline ({} backend): {} frames, {} fps; process CPU per frame: user {:.2f} ms, "
          "system {:.2f} ms (the whole run, set-up included)".format(
              args.backend, result["frames"], result["fps"],
              (after.ru_utime - before.ru_utime) * 1000.0 / frames_run,
              (after.ru_stime - before.ru_stime) * 1000.0 / frames_run))
    hot = {}  # type: Dict[str, float]
    if args.hot:
        image = cv2.imread(os.path.join(ROOT, "models", "samples", "cat.jpg"), cv2.IMREAD_COLOR)
        small = prep.resize(image)
        classifier = postprocess.Classifier(package.labels, package.output.activation,
                                            package.output.name, top_k=5)
        hot["preprocess: resize"] = hot_loop(lambda: prep.resize(image))
        hot["preprocess: normalize"] = hot_loop(lambda: prep.normalize(small))
        hot["publish: classifier (top-k)"] = hot_loop(lambda: classifier(outputs))
    print("{:<30} {:>12} {:>8} {:>16}".format("step", "ms CPU/call", "calls",
                                              "alone, ms/call" if hot else ""))
    for label, cpu in timed.cpu.most_common():
        print("{:<30} {:>12.3f} {:>8} {:>16}".format(
            label, cpu * 1000.0 / timed.calls[label], timed.calls[label],
            "{:.3f}".format(hot[label]) if label in hot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
