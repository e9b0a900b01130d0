"""GPU check of TensorRTBackend's CUDA path with REAL pycuda and the TensorRT TEST DOUBLE.

No TensorRT can be had on the GPU machine, so the engine there is the TensorRT double named with
`--trt-double tests/support/doubles` (it runs the ONNX model with ONNX Runtime on the CPU, reading and
writing real device memory through real pycuda). What this checks for real: the backend's
context in a worker thread, pinned and device buffers, one stream, async copies, the GPU
preprocessing kernel writing straight into the engine's input buffer (`infer_frame`), and
close() leaving no context current.

    python3 tools/gpu/check_trt_backend.py [--trt-double tests/support/doubles] [--out result.json]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trt_choice  # noqa: E402


def worker(result, state_dir, trt_double_dir):
    import cv2
    import pycuda.driver as drv
    result["tensorrt"] = trt_choice.install(trt_double_dir)
    from agent.backends.base import BackendOptions
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    from agent.backends.tensorrt import TensorRTBackend
    from agent.store.package import ModelPackage
    from agent.preprocess import Preprocessor

    package = ModelPackage.load(os.path.join(ROOT, "models", "efficientnet_lite0"))
    opts = BackendOptions(kind="tensorrt", precision="fp32", preprocess="gpu",
                          state_dir=state_dir)
    backend = TensorRTBackend(package, opts).load()
    try:
        result["describe"] = {k: v for k, v in backend.describe().items()
                              if k in ("precision", "io_api", "preprocess", "gpu",
                                       "compute_capability", "tensorrt", "validation")}
        result["context_current_while_loaded"] = drv.Context.get_current() is not None
        reference = OnnxRuntimeBackend(package, opts).load()
        pre = Preprocessor(package.input)
        cuda = backend._cuda
        count = int(np.prod(package.input.shape))
        scratch_host = cuda.pinned((count,), np.float32)
        scratch_dev = cuda.device_alloc(scratch_host.nbytes)
        rows = []
        samples = os.path.join(ROOT, "models", "samples")
        for name in sorted(os.listdir(samples)):
            if not name.endswith(".jpg"):
                continue
            frame = cv2.resize(cv2.imread(os.path.join(samples, name)), (1280, 720))
            gpu = backend.infer_frame(frame)["logits"][0]
            cpu = backend.infer(pre(frame))["logits"][0]
            ort = reference.infer(pre(frame))["logits"][0]
            # The kernel's own tensor, fetched back: infer_frame must equal infer() on it.
            backend._gpu_pre.run(frame, int(scratch_dev))
            cuda.dtoh_async(scratch_host, scratch_dev)
            cuda.synchronize()
            kernel_tensor = scratch_host.reshape(package.input.shape).copy()
            same = backend.infer(kernel_tensor)["logits"][0]
            rows.append({"frame": name, "infer_frame_equals_infer_of_kernel_tensor":
                         bool(np.array_equal(gpu, same)),
                         "max_abs_input_diff_gpu_vs_cpu_pre": float(np.max(np.abs(
                             kernel_tensor - pre(frame)))),
                         "top1_gpu_pre": int(gpu.argmax()),
                         "top1_cpu_pre": int(cpu.argmax()), "top1_onnxruntime": int(ort.argmax()),
                         "max_abs_logit_diff_gpu_vs_cpu_pre": float(np.max(np.abs(gpu - cpu))),
                         "max_abs_logit_diff_cpu_pre_vs_ort": float(np.max(np.abs(cpu - ort)))})
            print(json.dumps(rows[-1]), flush=True)
        reference.close()
        result["frames"] = rows
    finally:
        backend.close()
    result["context_current_after_close"] = drv.Context.get_current() is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    trt_choice.add_argument(parser)
    args = parser.parse_args()
    import pycuda.driver as drv
    drv.init()
    result = {}
    failure = []
    state_dir = tempfile.mkdtemp(prefix="edge-agent-state-")

    def run():
        try:
            worker(result, state_dir, args.trt_double)
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
    frames = result.get("frames", [])
    ok = (not failure and frames and result["describe"].get("preprocess") == "gpu" and
          all(r["infer_frame_equals_infer_of_kernel_tensor"] and
              r["top1_cpu_pre"] == r["top1_onnxruntime"] and
              r["max_abs_input_diff_gpu_vs_cpu_pre"] <= 1.01 / 128 for r in frames) and
          not result.get("context_current_after_close") and
          not result.get("context_current_in_main"))
    print("CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
