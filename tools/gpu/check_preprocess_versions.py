"""The real GPU preprocessing kernel against the CPU path of several OpenCV versions.

A GPU machine has one Python and one OpenCV; JetPack ships OpenCV 4.1.1, 4.5.4 and 4.8.0. So
the CPU side is recorded where each OpenCV is installed, and replayed next to the GPU:

    # once per OpenCV (e.g. venvs with opencv-python-headless 4.1.1.26 / 4.5.4.60 / 4.8.0.76):
    python tools/gpu/check_preprocess_versions.py record --frames refs/frames.npz \
        --out refs/cv2-4.1.1.npz
    # on the GPU machine (pycuda built there; nvcc need not be on PATH):
    python3 tools/gpu/check_preprocess_versions.py check refs/cv2-*.npz \
        --frames refs/frames.npz --out result.json

`record` stores the frames, the installed cv2's resized uint8 images (Preprocessor.resize) for
every resize mode and whether its warpAffine is the 4.x fixed-point one. `check` runs
GpuPreprocessor's kernel with that warp mode on each stored frame and compares with the CPU
tensor (Preprocessor.normalize of the stored image: numpy only, the same everywhere); it also
compares live with the OpenCV installed there. Prints the max difference in uint8 levels per
OpenCV version and mode; passes when every one is <= 1.
"""

import argparse
import json
import os
import sys
import threading
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from agent.store.package import InputSpec, ModelPackage  # noqa: E402
from agent.preprocess import Preprocessor  # noqa: E402


def specs():
    base = ModelPackage.load(os.path.join(ROOT, "models", "efficientnet_lite0")).input

    def variant(mode, size=None, color="RGB", layout="NCHW", mean=None, std=None):
        shape = [1, 3, 224, 224] if layout == "NCHW" else [1, 224, 224, 3]
        return InputSpec("input", shape, layout, color, mode, size, mean or base.mean,
                         std or base.std)
    return [
        ("shorter_side_crop 256 (bundled model)", base),
        ("shorter_side_crop 300 (sub-pixel crops)", variant("shorter_side_crop", 300)),
        ("stretch", variant("stretch")),
        ("letterbox", variant("letterbox")),
        ("letterbox BGR NHWC ImageNet", variant("letterbox", color="BGR", layout="NHWC",
                                                mean=[103.53, 116.28, 123.675],
                                                std=[57.375, 57.12, 58.395])),
    ]


def frames():
    import cv2
    sample_dir = os.path.join(ROOT, "models", "samples")
    names = sorted(n for n in os.listdir(sample_dir) if n.lower().endswith((".jpg", ".png")))
    photo = cv2.imread(os.path.join(sample_dir, names[0]), cv2.IMREAD_COLOR)
    out = []
    for h, w in ((720, 1280), (480, 640), (517, 333), (120, 160)):
        out.append(("photo {}x{}".format(w, h),
                    cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)))
        rng = np.random.RandomState(h)
        out.append(("noise {}x{}".format(w, h),
                    rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)))
    return out


def load_frames(path):
    stored = np.load(path)
    count = len([k for k in stored.files if k.startswith("frame") and k[5:].isdigit()])
    return [(str(stored["frame{}_name".format(i)]), stored["frame{}".format(i)])
            for i in range(count)]


def record(path, frames_path):
    """The installed cv2's resized images of the frames in `frames_path` (made if absent)."""
    import cv2
    from agent.backends.tensorrt.gpu_preprocess import opencv_warp_fixed
    if not os.path.exists(frames_path):
        stored = {}
        for fi, (fname, frame) in enumerate(frames()):
            stored["frame{}".format(fi)] = frame
            stored["frame{}_name".format(fi)] = np.array(fname)
        np.savez_compressed(frames_path, **stored)
    data = {"cv2_version": np.array(cv2.__version__),
            "warp_fixed": np.array(int(opencv_warp_fixed()))}
    for fi, (_, frame) in enumerate(load_frames(frames_path)):
        for si, (_, spec) in enumerate(specs()):
            data["resized{}_{}".format(fi, si)] = Preprocessor(spec).resize(frame)
    np.savez_compressed(path, **data)
    print("recorded", path, "cv2", cv2.__version__, "warp_fixed", int(data["warp_fixed"]))


def check_worker(ref_paths, frames_path, result):
    import cv2
    from agent.backends.tensorrt.cuda import CudaContext
    from agent.backends.tensorrt.gpu_preprocess import (GpuPreprocessor, find_nvcc, kernel_args,
                                               opencv_warp_fixed)
    result["nvcc"] = find_nvcc()
    result["path"] = os.environ.get("PATH", "")
    sources = []
    stored = load_frames(frames_path)
    for path in ref_paths:
        ref = np.load(path)
        sources.append(("OpenCV {} (recorded)".format(str(ref["cv2_version"])),
                        bool(int(ref["warp_fixed"])),
                        [(fname, frame, [ref["resized{}_{}".format(i, s)]
                                         for s in range(len(specs()))])
                         for i, (fname, frame) in enumerate(stored)]))
    live = []
    for fname, frame in frames():
        live.append((fname, frame, [Preprocessor(spec).resize(frame) for _, spec in specs()]))
    sources.append(("OpenCV {} (live here)".format(cv2.__version__), opencv_warp_fixed(), live))
    cuda = CudaContext(0).open()
    try:
        result["gpu"] = cuda.device_name()
        rows = []
        for label, spec in specs():
            pre = GpuPreprocessor(cuda, spec)
            cpu = Preprocessor(spec)
            count = int(np.prod(spec.shape))
            out_host = cuda.pinned((count,), np.float32)
            out_dev = cuda.device_alloc(out_host.nbytes)
            si = [lbl for lbl, _ in specs()].index(label)
            for version, fixed, items in sources:
                worst, worst_frame, differing, total = 0.0, "", 0, 0
                for fname, frame, resized in items:
                    frame = np.ascontiguousarray(frame)
                    h, w = frame.shape[:2]
                    staging = pre.host_frame(h, w)
                    np.copyto(staging, frame)
                    cuda.htod_async(pre._device, staging)
                    pre.launch(pre._device, w * 3, out_dev,
                               kernel_args(spec, h, w, warp_fixed=fixed))
                    cuda.dtoh_async(out_host, out_dev)
                    cuda.synchronize()
                    want = cpu.normalize(resized[si]).ravel()
                    diff = np.abs(out_host - want) * min(spec.std)
                    if float(diff.max()) > worst:
                        worst, worst_frame = float(diff.max()), fname
                    differing += int(np.count_nonzero(diff > 1e-3))
                    total += diff.size
                row = {"opencv": version, "mode": label, "warp_fixed": fixed,
                       "max_diff_uint8_levels": round(worst, 4), "worst_frame": worst_frame,
                       "elements_differing": differing, "elements": total}
                rows.append(row)
                print("{opencv:<28} {mode:<42} max {max_diff_uint8_levels:.3f} levels "
                      "({elements_differing}/{elements} differ; worst {worst_frame})".format(**row),
                      flush=True)
        result["rows"] = rows
    finally:
        cuda.close()


def check(ref_paths, frames_path, out):
    import pycuda.driver as drv
    drv.init()
    result = {}
    failure = []

    def run():
        try:
            check_worker(ref_paths, frames_path, result)
        except BaseException:
            failure.append(traceback.format_exc())
    thread = threading.Thread(target=run, name="inference")
    thread.start()
    thread.join()
    if failure:
        result["failure"] = failure[0]
        print(failure[0])
    ok = not failure and result.get("rows") and all(
        r["max_diff_uint8_levels"] <= 1.0 + 1e-3 for r in result["rows"])
    result["passed"] = bool(ok)
    if out:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=2)
    print("nvcc used:", result.get("nvcc"), "| PATH:", result.get("path"))
    print("CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("record")
    rec.add_argument("--out", required=True)
    rec.add_argument("--frames", required=True, help="frames .npz (written if absent)")
    chk = sub.add_parser("check")
    chk.add_argument("refs", nargs="*")
    chk.add_argument("--frames", required=True, help="the frames .npz the refs were made of")
    chk.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.frames)
        return 0
    if args.command == "check":
        return check(args.refs, args.frames, args.out)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
