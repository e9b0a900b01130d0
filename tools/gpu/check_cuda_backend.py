"""GPU check of the CUDA glue and the GPU preprocessing kernel, on a real NVIDIA GPU.

Runs everything from a worker thread (never the main thread, never pycuda.autoinit), as the
agent's inference thread does: CudaContext open, pinned/device buffers, async copies on one
stream, the preprocessing kernel on 1280x720 frames for every resize mode compared with the CPU
`Preprocessor`, timings (GPU upload + kernel vs CPU), then close and check that no context is
left current. Needs pycuda (built against the local CUDA), numpy, OpenCV, PyYAML.

    python3 tools/gpu/check_cuda_backend.py [--out results.json] [--runs 300]
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from agent.backends.tensorrt.cuda import CudaContext  # noqa: E402
from agent.backends.tensorrt.gpu_preprocess import GpuPreprocessor, kernel_args  # noqa: E402
from agent.errors import BackendError  # noqa: E402
from agent.store.package import InputSpec, ModelPackage  # noqa: E402
from agent.preprocess import Preprocessor  # noqa: E402


def specs():
    """The bundled model's spec plus variants covering every kernel path."""
    base = ModelPackage.load(os.path.join(ROOT, "models", "efficientnet_lite0")).input
    def variant(mode, size=None, color=None, layout=None, mean=None, std=None):
        shape = list(base.shape)
        if (layout or base.layout) == "NHWC":
            shape = [1, base.height, base.width, 3]
        return InputSpec(base.name, shape, layout or base.layout, color or base.color, mode,
                         size, mean or base.mean, std or base.std)
    return [
        ("shorter_side_crop (bundled model)", base),
        ("stretch", variant("stretch")),
        ("letterbox", variant("letterbox")),
        ("shorter_side_crop size 300 (sub-pixel crop)", variant("shorter_side_crop", 300)),
        ("letterbox BGR NHWC ImageNet mean/std", variant(
            "letterbox", color="BGR", layout="NHWC", mean=[103.53, 116.28, 123.675],
            std=[57.375, 57.12, 58.395])),
    ]


def frames_1280x720():
    import cv2
    out = []
    sample_dir = os.path.join(ROOT, "models", "samples")
    for name in sorted(os.listdir(sample_dir)):
        if name.lower().endswith((".jpg", ".png")):
            img = cv2.imread(os.path.join(sample_dir, name), cv2.IMREAD_COLOR)
            if img is not None:
                out.append((name, cv2.resize(img, (1280, 720), interpolation=cv2.INTER_AREA)))
    rng = np.random.RandomState(0)
    out.append(("random uint8", rng.randint(0, 256, size=(720, 1280, 3)).astype(np.uint8)))
    return out


def median_ms(fn, runs, warmup=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def worker(result, runs):
    import pycuda.driver as drv
    cuda = CudaContext(0).open()
    try:
        result["thread"] = threading.current_thread().name
        result["gpu"] = cuda.device_name()
        result["compute_capability"] = "{}.{}".format(*cuda.compute_capability())
        result["context_current_in_worker"] = drv.Context.get_current() is not None

        # Pinned + device buffers, async copies on the context's one stream.
        src = cuda.pinned((1 << 20,), np.float32)
        src[:] = np.random.RandomState(1).standard_normal(src.shape).astype(np.float32)
        back = cuda.pinned((1 << 20,), np.float32)
        back[:] = 0
        dev = cuda.device_alloc(src.nbytes)
        cuda.htod_async(dev, src)
        cuda.dtoh_async(back, dev)
        cuda.synchronize()
        result["async_roundtrip_equal"] = bool(np.array_equal(src, back))

        frames = frames_1280x720()
        result["frames"] = [name for name, _ in frames]
        result["modes"] = []
        for label, spec in specs():
            pre_gpu = GpuPreprocessor(cuda, spec)
            pre_cpu = Preprocessor(spec)
            count = int(np.prod(spec.shape))
            out_host = cuda.pinned((count,), np.float32)
            out_dev = cuda.device_alloc(out_host.nbytes)
            worst = 0.0
            mismatched = 0
            total = 0
            for _, frame in frames:
                pre_gpu.run(frame, int(out_dev))
                cuda.dtoh_async(out_host, out_dev)
                cuda.synchronize()
                want = pre_cpu(frame).ravel()
                diff = np.abs(out_host - want)
                worst = max(worst, float(diff.max()))
                mismatched += int(np.count_nonzero(diff > 1e-6))
                total += diff.size
            frame = frames[0][1]
            gpu_pageable = median_ms(lambda: (pre_gpu.run(frame, int(out_dev)),
                                              cuda.synchronize()), runs)
            staging = pre_gpu.host_frame(720, 1280)
            np.copyto(staging, frame)
            gpu_pinned = median_ms(lambda: (pre_gpu.run(staging, int(out_dev)),
                                            cuda.synchronize()), runs)
            frame_dev = cuda.device_alloc(frame.nbytes)
            cuda.htod_async(frame_dev, frame)
            cuda.synchronize()
            args = kernel_args(spec, 720, 1280)
            kernel_only = median_ms(lambda: (pre_gpu.launch(frame_dev, 1280 * 3, out_dev, args),
                                             cuda.synchronize()), runs)
            cpu = median_ms(lambda: pre_cpu(frame), runs)
            level = 1.0 / min(spec.std)
            row = {"mode": label, "max_abs_diff": worst, "one_uint8_level": level,
                   "max_diff_in_uint8_levels": worst / level,
                   "elements_differing": mismatched, "elements": total,
                   "gpu_ms_pageable_frame": gpu_pageable, "gpu_ms_pinned_frame": gpu_pinned,
                   "gpu_ms_kernel_only": kernel_only, "cpu_ms": cpu,
                   "speedup_pageable": cpu / gpu_pageable, "speedup_pinned": cpu / gpu_pinned}
            result["modes"].append(row)
            print("{mode:<45} max|diff| {max_abs_diff:.6f} ({max_diff_in_uint8_levels:.2f} "
                  "uint8 levels, {elements_differing}/{elements} differ)  GPU {gpu_ms_pageable_frame:.3f} ms "
                  "(pinned frame {gpu_ms_pinned_frame:.3f}, kernel {gpu_ms_kernel_only:.3f})  "
                  "CPU {cpu_ms:.3f} ms  speedup {speedup_pageable:.1f}x / {speedup_pinned:.1f}x"
                  .format(**row), flush=True)

        # Misuse from another thread is refused, not silently wrong.
        errors = []
        def other():
            try:
                cuda.device_alloc(16)
            except BackendError as exc:
                errors.append(str(exc))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        result["other_thread_refused"] = bool(errors)
    finally:
        cuda.close()
    result["context_current_after_close"] = drv.Context.get_current() is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    import cv2
    import pycuda.driver as drv
    drv.init()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpu_threads_cv2": cv2.getNumThreads(), "cpu_count": os.cpu_count()}
    failure = []
    def run():
        try:
            worker(result, args.runs)
        except BaseException:
            failure.append(traceback.format_exc())
    t = threading.Thread(target=run, name="inference")
    t.start()
    t.join()
    result["context_current_in_main"] = drv.Context.get_current() is not None
    if failure:
        result["failure"] = failure[0]
        print(failure[0])
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    ok = (not failure and result.get("async_roundtrip_equal") and
          not result.get("context_current_after_close") and
          not result.get("context_current_in_main") and result.get("other_thread_refused") and
          all(r["max_diff_in_uint8_levels"] <= 1.01 for r in result.get("modes", [])))
    print("CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
