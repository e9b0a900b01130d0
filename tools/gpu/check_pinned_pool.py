"""GPU check of pinned capture: REAL pycuda and CUDA, the TensorRT TEST DOUBLE for the engine.

1. Per 1280x720 frame, for the bundled model's preprocessing (what the inference thread
   spends; the copy into the pool happens in the capture thread and is timed on its own):
   - CPU `Preprocessor`;
   - GPU from an ordinary numpy frame (copy into the staging buffer + upload + kernel);
   - GPU from a frame in the pinned pool (upload + kernel), PinnedFramePool as the agent uses it.
2. The whole agent (capture, inference, publish threads) on a synthetic 1280x720 source,
   unpaced, with backend.preprocess cpu and gpu: frames per second, and the pool's hits.
   No TensorRT exists on the GPU machine: the double runs the engine with ONNX Runtime on the
   CPU, so the agent's fps is bounded by that, not by the GPU.

    python3 tools/gpu/check_pinned_pool.py --trt-double tests/support/doubles [--runs 300]
        [--frames 600] [--out result.json]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trt_choice  # noqa: E402
from check_cuda_backend import median_ms  # noqa: E402


def per_frame(runs):
    import cv2
    import numpy as np
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.frame_pool import PinnedFramePool
    from agent.backends.tensorrt.gpu_preprocess import checked_gpu_preprocessor
    from agent.preprocess import Preprocessor
    from agent.store.package import ModelPackage
    spec = ModelPackage.load(os.path.join(ROOT, "models", "efficientnet_lite0")).input
    photo = cv2.imread(os.path.join(ROOT, "models", "samples", "cat.jpg"))
    frame = np.ascontiguousarray(cv2.resize(photo, (1280, 720)))
    cpu = Preprocessor(spec)
    out = {}
    with CudaContext(0) as cuda:
        gpu = checked_gpu_preprocessor(cuda, spec)
        dst = cuda.device_alloc(int(np.prod(spec.shape)) * 4)
        pool = PinnedFramePool(cuda)
        pool.acquire(frame.shape)
        pool.serve()
        buf = pool.acquire(frame.shape)
        np.copyto(buf, frame)  # what the capture thread does

        def timed(fn):
            return round(median_ms(fn, runs), 4)

        def numpy_frame():
            gpu.run(frame, int(dst))
            cuda.synchronize()

        def pooled_frame():
            gpu.run(buf, int(dst), pinned=True)
            cuda.synchronize()
        out["cpu_ms"] = timed(lambda: cpu(frame))
        out["gpu_numpy_frame_ms"] = timed(numpy_frame)
        out["gpu_pool_frame_ms"] = timed(pooled_frame)
        out["capture_copy_into_pool_ms"] = timed(lambda: np.copyto(buf, frame))
        host = cuda.pinned((int(np.prod(spec.shape[1:])),), np.float32)
        cuda.dtoh_async(host, dst)
        cuda.synchronize()
        want = cpu(frame).ravel()
        out["pool_vs_cpu_max_diff"] = float(abs(host - want).max())
        del buf
        pool.close()  # its buffers are freed now, while the context is current
    out["speedup_cpu_over_pool"] = round(out["cpu_ms"] / out["gpu_pool_frame_ms"], 2)
    out["speedup_cpu_over_numpy_frame"] = round(out["cpu_ms"] / out["gpu_numpy_frame_ms"], 2)
    return out


def whole_agent(frames, mode):
    from agent.cli.bench import LocalSink
    from agent.config import load_config
    from agent.daemon import Agent
    from agent.spool import Spool
    state = tempfile.mkdtemp(prefix="edge-agent-pool-")
    config = load_config(os.path.join(ROOT, "config.yaml"), [
        "device.state_dir=" + state, "backend.kind=tensorrt", "backend.precision=fp16",
        "backend.preprocess=" + mode, "source.uri=synthetic://?width=1280&height=720",
        "source.fps=0", "source.loop=true"])
    spool = Spool(os.path.join(state, "spool.db"))
    agent = Agent(config, max_frames=frames, link=LocalSink(spool), telemetry=False)
    stamps = []
    agent.listeners.append(lambda frame, payload: stamps.append(time.monotonic()))
    code = agent.run()
    spool.close()
    stamps = stamps[50:]
    pool = agent.backends.model.backend.frame_pool()
    samples = agent.stats.take()["samples"]
    shutil.rmtree(state, ignore_errors=True)
    return {"exit_code": code, "fps": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1),
            "preprocess_mode": agent.backends.describe().get("preprocess"),
            "infer_stage_p50_ms": round(statistics.median(samples["infer"][50:]), 3),
            "preprocess_stage_p50_ms": round(statistics.median(samples["preprocess"][50:]), 3),
            "capture_stage_p50_ms": round(statistics.median(samples["capture"][50:]), 3),
            "pool_hits": pool.hits if pool is not None else None,
            "pool_misses": pool.misses if pool is not None else None,
            "errors": agent.stats.errors}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--out", default=None)
    trt_choice.add_argument(parser)
    args = parser.parse_args()
    import pycuda.driver as drv
    drv.init()
    result = {"gpu": drv.Device(0).name(), "tensorrt": trt_choice.install(args.trt_double),
              "cpu_count": os.cpu_count()}
    result["per_frame_1280x720"] = per_frame(args.runs)
    print(json.dumps(result["per_frame_1280x720"]), flush=True)
    for mode in ("cpu", "gpu"):
        result["agent_" + mode] = whole_agent(args.frames, mode)
        print(mode, json.dumps(result["agent_" + mode]), flush=True)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    pf = result["per_frame_1280x720"]
    ok = pf["pool_vs_cpu_max_diff"] < 0.05 and result["agent_gpu"]["pool_hits"] and \
        result["agent_gpu"]["errors"] == 0 and result["agent_cpu"]["errors"] == 0
    print("CHECK PASSED" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
