"""Preprocessing on the GPU: one CUDA kernel turns a uint8 BGR frame into the input tensor.

The kernel reproduces `agent.preprocess.Preprocessor` to within one uint8 level on every OpenCV
from 4.1 to 5.x: the same `plan_resize` geometry, the same clamp rectangle OpenCV uses (the crop
for an integer crop, the whole frame for a sub-pixel one), letterbox padding with the rounded
mean, BGR->RGB, (x - mean) / std and HWC->CHW, written straight into a device buffer (the
engine's input). `kernel_args` is pure Python so the geometry is testable without a GPU.

What OpenCV versions differ in (measured with the pip wheels 4.1.1, 4.5.4, 4.8.0, 4.10, 4.11
and 5.1):
- cv2.resize INTER_LINEAR (integer crops, stretch, letterbox) is the same fixed-point code in
  all of them (11-bit weights, SIMD rounding): the kernel's float bilinear with half-pixel
  centres, rounded half up, is within one level of it.
- cv2.warpAffine (sub-pixel crops) differs. OpenCV 4.x rounds every sample position to
  1/32 pixel (AB_BITS=10, INTER_BITS=5: X = (round(M0*x*1024) + round((M1*y +
  M2)*1024) + 16) >> 5) and blends with exact 1/1024 weights, rounding half up; that is up to
  7 levels away from exact bilinear on a noisy frame. OpenCV 5 samples at float positions.
  `opencv_warp_fixed` asks the installed cv2 once (a two-pixel probe) which one it does, and the
  kernel then does the same arithmetic (`warp_fixed`): bit-exact with 4.x.

Float arithmetic in the kernel uses the explicit-rounding intrinsics __fmul_rn and __fadd_rn
(a - b as __fadd_rn(a, -b), which rounds the same; both exist in every CUDA a JetPack has) so
nvcc never fuses it into FMAs: the result is the same as float32 numpy, which is how
tests/support/gpu_kernel_emulator.py runs it on a CPU. Changing KERNEL_SOURCE means changing that port
too (tests check the two agree, and compile this very source for the CPU where a C++ compiler
exists).

The kernel is compiled at run time by pycuda with nvcc, found by `find_nvcc` (PATH, CUDA_HOME,
CUDA_PATH, /usr/local/cuda/bin): a systemd service has no /usr/local/cuda/bin on PATH.
"""

import os
from typing import Any, List, Optional, Tuple

import numpy as np

from ...errors import BackendError
from ...store.package import InputSpec
from ...preprocess import Preprocessor, plan_resize

KERNEL_NAME = "preprocess_bgr8"

KERNEL_SOURCE = r"""
extern "C" __global__ void preprocess_bgr8(
    const unsigned char* __restrict__ src, int src_pitch,
    float* __restrict__ dst, int out_w, int out_h, int nchw,
    float scale_x, float scale_y, float origin_x, float origin_y,
    int dst_x, int dst_y, int dst_w, int dst_h,
    int clamp_x0, int clamp_y0, int clamp_x1, int clamp_y1,
    int swap_rb, int identity, int warp_fixed,
    double warp_m0, double warp_m2, double warp_m4, double warp_m5,
    float pad_b, float pad_g, float pad_r,
    float mean0, float mean1, float mean2,
    float inv0, float inv1, float inv2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;

    float bgr[3];
    const int u = x - dst_x;
    const int v = y - dst_y;
    if (u < 0 || v < 0 || u >= dst_w || v >= dst_h) {
        bgr[0] = pad_b; bgr[1] = pad_g; bgr[2] = pad_r;
    } else if (identity) {
        const unsigned char* p = src + (size_t)(v + clamp_y0) * src_pitch + (size_t)(u + clamp_x0) * 3;
        bgr[0] = p[0]; bgr[1] = p[1]; bgr[2] = p[2];
    } else if (warp_fixed) {
        /* OpenCV 4.x warpAffine, INTER_LINEAR: the position in 1/32 pixel, from the matrix in
           1/1024 (X0 + adelta with round_delta 16, then >> 5); weights (32-a)*(32-b)/1024. */
        const int X = (__double2int_rn(warp_m2 * 1024.0) + 16
                       + __double2int_rn(warp_m0 * (double)u * 1024.0)) >> 5;
        const int Y = (__double2int_rn(__dadd_rn(__dmul_rn(warp_m4, (double)v), warp_m5) * 1024.0)
                       + 16) >> 5;
        const int ax = X & 31;
        const int ay = Y & 31;
        const int x0 = min(max(X >> 5, clamp_x0), clamp_x1);
        const int x1 = min(max((X >> 5) + 1, clamp_x0), clamp_x1);
        const int y0 = min(max(Y >> 5, clamp_y0), clamp_y1);
        const int y1 = min(max((Y >> 5) + 1, clamp_y0), clamp_y1);
        const unsigned char* r0 = src + (size_t)y0 * src_pitch;
        const unsigned char* r1 = src + (size_t)y1 * src_pitch;
        #pragma unroll
        for (int c = 0; c < 3; ++c) {
            const int sum = (32 - ax) * (32 - ay) * r0[x0 * 3 + c] + ax * (32 - ay) * r0[x1 * 3 + c]
                          + (32 - ax) * ay * r1[x0 * 3 + c] + ax * ay * r1[x1 * 3 + c];
            bgr[c] = (float)((sum + 512) >> 10);
        }
    } else {
        /* OpenCV INTER_LINEAR: half-pixel centres, replicate outside [clamp0, clamp1]. */
        const float fx = __fadd_rn(__fadd_rn(__fmul_rn(__fadd_rn((float)u, 0.5f), scale_x), -0.5f),
                                   origin_x);
        const float fy = __fadd_rn(__fadd_rn(__fmul_rn(__fadd_rn((float)v, 0.5f), scale_y), -0.5f),
                                   origin_y);
        const float flx = floorf(fx);
        const float fly = floorf(fy);
        const float ax = __fadd_rn(fx, -flx);
        const float ay = __fadd_rn(fy, -fly);
        const float bx = __fadd_rn(1.0f, -ax);
        const float by = __fadd_rn(1.0f, -ay);
        const int ix = (int)flx;
        const int iy = (int)fly;
        const int x0 = min(max(ix, clamp_x0), clamp_x1);
        const int x1 = min(max(ix + 1, clamp_x0), clamp_x1);
        const int y0 = min(max(iy, clamp_y0), clamp_y1);
        const int y1 = min(max(iy + 1, clamp_y0), clamp_y1);
        const unsigned char* r0 = src + (size_t)y0 * src_pitch;
        const unsigned char* r1 = src + (size_t)y1 * src_pitch;
        #pragma unroll
        for (int c = 0; c < 3; ++c) {
            const float top = __fadd_rn(__fmul_rn(bx, (float)r0[x0 * 3 + c]),
                                        __fmul_rn(ax, (float)r0[x1 * 3 + c]));
            const float bottom = __fadd_rn(__fmul_rn(bx, (float)r1[x0 * 3 + c]),
                                           __fmul_rn(ax, (float)r1[x1 * 3 + c]));
            const float value = __fadd_rn(__fmul_rn(by, top), __fmul_rn(ay, bottom));
            /* cv2 writes uint8: round half up and saturate. */
            bgr[c] = fminf(fmaxf(floorf(__fadd_rn(value, 0.5f)), 0.0f), 255.0f);
        }
    }

    const float means[3] = {mean0, mean1, mean2};
    const float invs[3] = {inv0, inv1, inv2};
    const int plane = out_w * out_h;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        const float value = __fmul_rn(__fadd_rn(bgr[swap_rb ? 2 - c : c], -means[c]), invs[c]);
        if (nchw) dst[c * plane + y * out_w + x] = value;
        else dst[(y * out_w + x) * 3 + c] = value;
    }
}
"""

# Where nvcc is looked for after PATH, CUDA_HOME and CUDA_PATH (JetPack installs it here).
NVCC_DIRS = ("/usr/local/cuda/bin",)

_WARP_FIXED = []  # type: List[bool]  # the probe's answer, once


def find_nvcc(environ: Any = None) -> str:
    """The nvcc that compiles the kernel: PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, NVCC_DIRS.

    A systemd service runs with a minimal PATH (no /usr/local/cuda/bin), so pycuda's default
    (plain "nvcc") would fail there; the path found here is handed to SourceModule.
    """
    env = os.environ if environ is None else environ
    dirs = [d for d in env.get("PATH", "").split(os.pathsep) if d]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            dirs.append(os.path.join(env[var], "bin"))
    dirs.extend(NVCC_DIRS)
    for folder in dirs:
        path = os.path.join(folder, "nvcc")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BackendError("GPU preprocessing needs nvcc (the CUDA compiler) and there is none on "
                       "PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin or {}: install the CUDA "
                       "toolkit (JetPack: sudo apt-get install nvidia-jetpack) or set CUDA_HOME "
                       "to its folder in the service environment, or set backend.preprocess: "
                       "cpu".format(" or ".join(NVCC_DIRS)))


def opencv_warp_fixed(cv2: Any = None) -> bool:
    """Whether this cv2's warpAffine rounds sample positions to 1/32 pixel (OpenCV 4.x).

    Probed once on two pixels (0 and 255) sampled at x = 0.11: exact bilinear gives 28, the
    1/32-pixel fixed-point code samples at 4/32 and gives 32. Anything else (or no cv2) counts
    as exact; the backend's self-check against the CPU path has the last word either way.
    """
    if cv2 is None and _WARP_FIXED:
        return _WARP_FIXED[0]
    answer = False
    try:
        if cv2 is None:
            import cv2 as cv2_module
            probe_cv2 = cv2_module  # type: Any
        else:
            probe_cv2 = cv2
        src = np.zeros((1, 2, 3), dtype=np.uint8)
        src[0, 1] = 255
        matrix = np.array([[1.0, 0.0, 0.11], [0.0, 1.0, 0.0]], dtype=np.float64)
        out = probe_cv2.warpAffine(src, matrix, (1, 1),
                                   flags=probe_cv2.INTER_LINEAR | probe_cv2.WARP_INVERSE_MAP,
                                   borderMode=probe_cv2.BORDER_REPLICATE)
        answer = int(out.reshape(-1)[0]) == 32
    except Exception:  # no usable cv2: nothing to match but exact arithmetic
        answer = False
    if cv2 is None:
        _WARP_FIXED[:] = [answer]
    return answer


class KernelArgs(object):
    """The scalar arguments of one kernel launch for a frame size (see KERNEL_SOURCE)."""

    FIELDS = ("out_w", "out_h", "nchw", "scale_x", "scale_y", "origin_x", "origin_y",
              "dst_x", "dst_y", "dst_w", "dst_h", "clamp_x0", "clamp_y0", "clamp_x1", "clamp_y1",
              "swap_rb", "identity", "warp_fixed", "warp_m0", "warp_m2", "warp_m4", "warp_m5",
              "pad_b", "pad_g", "pad_r", "mean0", "mean1", "mean2", "inv0", "inv1", "inv2")
    # pycuda `prepare` codes: P pointer, i int32, f float32, d float64 (src, src_pitch, dst
    # come first).
    INT_FIELDS = ("out_w", "out_h", "nchw", "dst_x", "dst_y", "dst_w", "dst_h", "clamp_x0",
                  "clamp_y0", "clamp_x1", "clamp_y1", "swap_rb", "identity", "warp_fixed")
    DOUBLE_FIELDS = ("warp_m0", "warp_m2", "warp_m4", "warp_m5")

    def __init__(self, **values: Any) -> None:
        for name in self.FIELDS:
            setattr(self, name, values[name])

    def _code(self, field: str) -> str:
        if field in self.INT_FIELDS:
            return "i"
        return "d" if field in self.DOUBLE_FIELDS else "f"

    def signature(self) -> str:
        return "PiP" + "".join(self._code(f) for f in self.FIELDS)

    def values(self) -> List[Any]:
        return [int(getattr(self, f)) if f in self.INT_FIELDS else float(getattr(self, f))
                for f in self.FIELDS]

    def __repr__(self) -> str:
        return "KernelArgs({})".format(", ".join("{}={}".format(f, getattr(self, f))
                                                  for f in self.FIELDS))


def kernel_args(spec: InputSpec, frame_h: int, frame_w: int,
                warp_fixed: Optional[bool] = None) -> KernelArgs:
    """Kernel arguments that make the GPU do what `Preprocessor` does for this frame size.

    Mirrors the three branches of `Preprocessor.resize`: an identity copy, a crop on whole
    pixels resized with cv2.resize (samples clamp to the crop), and a sub-pixel crop done with
    warpAffine + BORDER_REPLICATE (samples clamp to the frame; positions in 1/32 pixel where
    `warp_fixed`, which defaults to what the installed cv2 does: `opencv_warp_fixed()`).
    """
    plan = plan_resize(spec, frame_h, frame_w)
    out_h, out_w = spec.height, spec.width
    identity = (plan.dst_w, plan.dst_h) == (frame_w, frame_h) and \
        plan.src_w == frame_w and plan.src_h == frame_h
    whole = all(float(v).is_integer() for v in (plan.src_x, plan.src_y, plan.src_w, plan.src_h))
    # The CPU path's warpAffine matrix (WARP_INVERSE_MAP: dst (u, v) samples src M @ (u, v, 1)).
    sx = plan.src_w / plan.dst_w
    sy = plan.src_h / plan.dst_h
    matrix = (sx, plan.src_x + 0.5 * sx - 0.5, sy, plan.src_y + 0.5 * sy - 0.5)
    fixed = False
    if identity:
        clamp = (0, 0, frame_w - 1, frame_h - 1)
        scale_x = scale_y = 1.0
        origin = (0.0, 0.0)
    elif whole:
        x0, y0 = int(plan.src_x), int(plan.src_y)
        clamp = (x0, y0, x0 + int(plan.src_w) - 1, y0 + int(plan.src_h) - 1)
        scale_x = float(plan.src_w) / plan.dst_w
        scale_y = float(plan.src_h) / plan.dst_h
        origin = (float(x0), float(y0))
    else:
        clamp = (0, 0, frame_w - 1, frame_h - 1)
        scale_x = float(plan.src_w) / plan.dst_w
        scale_y = float(plan.src_h) / plan.dst_h
        origin = (float(plan.src_x), float(plan.src_y))
        fixed = opencv_warp_fixed() if warp_fixed is None else bool(warp_fixed)
    mean = [float(m) for m in spec.mean]
    # The CPU path fills letterbox bars with the mean rounded to uint8, in BGR order.
    pad_model = [float(np.clip(np.rint(np.float32(m)), 0, 255)) for m in mean]
    pad_bgr = pad_model[::-1] if spec.color == "RGB" else pad_model
    inv = [float(np.float32(1.0) / np.float32(s)) for s in spec.std]
    return KernelArgs(
        out_w=out_w, out_h=out_h, nchw=1 if spec.layout == "NCHW" else 0,
        scale_x=scale_x, scale_y=scale_y, origin_x=origin[0], origin_y=origin[1],
        dst_x=plan.dst_x, dst_y=plan.dst_y, dst_w=plan.dst_w, dst_h=plan.dst_h,
        clamp_x0=clamp[0], clamp_y0=clamp[1], clamp_x1=clamp[2], clamp_y1=clamp[3],
        swap_rb=1 if spec.color == "RGB" else 0, identity=1 if identity else 0,
        warp_fixed=1 if fixed else 0, warp_m0=matrix[0], warp_m2=matrix[1], warp_m4=matrix[2],
        warp_m5=matrix[3], pad_b=pad_bgr[0], pad_g=pad_bgr[1], pad_r=pad_bgr[2],
        mean0=mean[0], mean1=mean[1], mean2=mean[2], inv0=inv[0], inv1=inv[1], inv2=inv[2])


class GpuPreprocessor(object):
    """Uploads a frame and runs the preprocessing kernel into a device buffer, on one stream.

    `cuda` is an open `agent.backends.tensorrt.cuda.CudaContext`; all buffers belong to it. A
    frame written into `host_frame(h, w)` (e.g. by the capture code) skips one host copy.
    """

    BLOCK = (32, 8, 1)

    def __init__(self, cuda: Any, spec: InputSpec) -> None:
        self.cuda = cuda
        self.spec = spec
        module = cuda.compile(KERNEL_SOURCE, nvcc=find_nvcc())
        self._kernel = module.get_function(KERNEL_NAME)
        self._args = {}  # type: dict
        self._prepared = None  # type: Optional[str]
        self._frame_shape = None  # type: Optional[Tuple[int, int]]
        self._host = None  # type: Optional[np.ndarray]
        self._device = None  # type: Any
        # Dropped first at close (LIFO), while the context is current.
        cuda.own("preprocessing kernel", self._release)

    def _release(self) -> None:
        self._kernel = None
        self._host = None
        self._device = None

    def args_for(self, frame_h: int, frame_w: int) -> KernelArgs:
        key = (frame_h, frame_w)
        args = self._args.get(key)
        if args is None:
            args = self._args[key] = kernel_args(self.spec, frame_h, frame_w)
        return args

    def host_frame(self, frame_h: int, frame_w: int) -> np.ndarray:
        """The pinned staging buffer for frames of this size (fill it to avoid a copy)."""
        self._ensure_buffers(frame_h, frame_w)
        assert self._host is not None
        return self._host

    def _ensure_buffers(self, frame_h: int, frame_w: int) -> None:
        if self._frame_shape == (frame_h, frame_w):
            return
        # A new frame size: new staging buffers (the old ones are freed at close()).
        self._host = self.cuda.pinned((frame_h, frame_w, 3), np.uint8)
        self._device = self.cuda.device_alloc(frame_h * frame_w * 3)
        self._frame_shape = (frame_h, frame_w)

    def run(self, frame: np.ndarray, dst_ptr: int, pinned: bool = False) -> None:
        """Enqueue upload + kernel for `frame` (HxWx3 uint8 BGR) writing into `dst_ptr`.

        Asynchronous on the context's stream: synchronize (or enqueue more work on the same
        stream) before reading the result, and do not change `frame` before that. `pinned`:
        the frame is already page-locked (frame_pool.PinnedFramePool) and is uploaded from
        where it is, without the copy into the staging buffer.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frame must be HxWx3 uint8 (BGR), got shape {} dtype {}".format(
                frame.shape, frame.dtype))
        frame_h, frame_w = int(frame.shape[0]), int(frame.shape[1])
        self._ensure_buffers(frame_h, frame_w)
        host = self._host
        assert host is not None
        if pinned and frame.flags["C_CONTIGUOUS"]:
            host = frame
        elif not _same_memory(frame, host):
            np.copyto(host, frame)
        self.cuda.htod_async(self._device, host)
        self.launch(self._device, frame_w * 3, dst_ptr, self.args_for(frame_h, frame_w))

    def launch(self, src_ptr: Any, src_pitch: int, dst_ptr: Any, args: KernelArgs) -> None:
        """Launch the kernel on a frame already on the device."""
        signature = args.signature()
        if self._prepared != signature:
            self._kernel.prepare(signature)
            self._prepared = signature
        bx, by, _ = self.BLOCK
        grid = ((args.out_w + bx - 1) // bx, (args.out_h + by - 1) // by)
        self._kernel.prepared_async_call(grid, self.BLOCK, self.cuda.stream,
                                         _address(src_ptr), int(src_pitch), _address(dst_ptr),
                                         *args.values())


def checked_gpu_preprocessor(cuda: Any, spec: InputSpec) -> GpuPreprocessor:
    """A GpuPreprocessor that matched the CPU Preprocessor on a test frame, else BackendError.

    The kernel runs once on a random frame; up to one uint8 level of difference (rounding in
    cv2's fixed-point resize) is accepted.
    """
    pre = GpuPreprocessor(cuda, spec)
    rng = np.random.RandomState(7)
    frame = rng.randint(0, 256, size=(120, 160, 3)).astype(np.uint8)
    count = int(np.prod(spec.shape[1:]))
    host = cuda.pinned((count,), np.float32)
    device = cuda.device_alloc(host.nbytes)
    pre.run(frame, int(device))
    cuda.dtoh_async(host, device)
    cuda.synchronize()
    want = Preprocessor(spec)(frame)[0].ravel()
    worst = float(np.max(np.abs(host - want)))
    tolerance = 1.01 / min(spec.std) + 1e-4
    if not np.isfinite(worst) or worst > tolerance:
        raise BackendError("the GPU kernel differs from the CPU preprocessing by {:.4g} (allowed "
                           "{:.4g})".format(worst, tolerance))
    return pre


def _address(buf: Any) -> int:
    return int(buf)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.__array_interface__["data"][0] == \
        b.__array_interface__["data"][0]
