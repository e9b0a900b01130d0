"""GPU check that the pinned frame pool frees its page-locked memory: REAL pycuda.

The agent's threads, as in a model swap: a "model-manager" thread opens the CUDA context
(pycuda's wrapper remembers that thread), an "inference" thread allocates the pool's buffers,
a "publish" thread holds one frame, and a "close-old-backend" thread closes the context. pycuda
frees page-locked memory only where its context is current or from the wrapper's own thread;
elsewhere it warns "... in out-of-thread context could not be cleaned up" and keeps it.

Run twice: `release_all` (what the agent does now) and "dropped" (the pool's buffers left to
the garbage collector in the closing thread before the context is adopted, as the agent did
before). Reports pycuda's warnings and the process's page-locked memory (VmLck is not it:
cuMemHostAlloc memory is counted by the driver, so the free host memory the GPU maps is read
from /proc/meminfo's MemAvailable around each run, and the warnings are the direct signal).

    python3 tools/gpu/check_pool_release.py [--rounds 5] [--out result.json]
"""

import argparse
import json
import os
import sys
import threading
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SHAPE = (720, 1280, 3)


def in_thread(name, fn):
    """`fn()` run in a new thread of its own called `name` (pycuda ties contexts to threads)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        return pool.submit(fn).result(timeout=60)


def one_round(mode):
    import numpy as np
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.frame_pool import PinnedFramePool

    def open_context():
        cuda = CudaContext(0).open()
        pool = PinnedFramePool(cuda)
        cuda.release_thread()
        return cuda, pool
    from concurrent.futures import ThreadPoolExecutor
    # The model manager's thread lives on, as the agent's does (a thread id is reused once its
    # thread ends, and pycuda would then take another thread for the context's own).
    manager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-manager")
    cuda, pool = manager.submit(open_context).result(timeout=60)
    pool.acquire(SHAPE)

    def serve():
        cuda.check_thread("serve")
        pool.serve()
        cuda.release_thread()
    in_thread("inference", serve)
    held = {"frame": pool.acquire(SHAPE)}
    held["frame"][:] = 7
    done = threading.Event()

    def publish():
        done.wait(30)
        held.clear()    # the frame leaves the publish queue
    publisher = threading.Thread(target=publish, name="publish")
    publisher.start()

    def close():
        if mode == "dropped":   # the old way: buffers dropped before the context is adopted
            with pool._lock:
                pool._pools.clear()
            cuda.own("nothing", lambda: None)
        done.set()
        cuda.close()
    in_thread("close-old-backend", close)
    publisher.join(30)
    manager.shutdown()
    return pool.parked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import pycuda.driver as drv
    drv.init()
    result = {"gpu": drv.Device(0).name(), "frame": "x".join(map(str, SHAPE))}
    for mode in ("release_all", "dropped"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parked = [one_round(mode) for _ in range(args.rounds)]
            import gc
            gc.collect()
        texts = [str(w.message) for w in caught]
        result[mode] = {"rounds": args.rounds, "buffers_per_round": 4, "parked": parked,
                        "pycuda_cleanup_warnings": len(
                            [t for t in texts if "could not be cleaned up" in t]),
                        "warnings": sorted(set(texts))}
        print(mode, json.dumps(result[mode]), flush=True)
    ok = result["release_all"]["pycuda_cleanup_warnings"] == 0 and \
        not any(result["release_all"]["parked"])
    result["ok"] = ok
    print("release check:", "OK" if ok else "FAILED", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
