"""Preprocessing on the GPU: one CUDA kernel turns a uint8 BGR frame into the input tensor.

The kernel reproduces `agent.preprocess.Preprocessor` exactly: the same `plan_resize` geometry,
bilinear sampling with OpenCV's half-pixel convention (src = (dst + 0.5) * scale - 0.5, edge
pixels replicated), the same clamp rectangle OpenCV uses (the crop for an integer crop, the whole
frame for a sub-pixel one), rounding to uint8 as cv2 does, letterbox padding with the rounded
mean, BGR->RGB, (x - mean) / std and HWC->CHW, written straight into a device buffer (the
engine's input). `kernel_args` is pure Python so the geometry is testable without a GPU.
"""

from typing import Any, List, Optional, Tuple

import numpy as np

from ..package import InputSpec
from ..preprocess import plan_resize

KERNEL_NAME = "preprocess_bgr8"

KERNEL_SOURCE = r"""
extern "C" __global__ void preprocess_bgr8(
    const unsigned char* __restrict__ src, int src_pitch,
    float* __restrict__ dst, int out_w, int out_h, int nchw,
    float scale_x, float scale_y, float origin_x, float origin_y,
    int dst_x, int dst_y, int dst_w, int dst_h,
    int clamp_x0, int clamp_y0, int clamp_x1, int clamp_y1,
    int swap_rb, int identity,
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
    } else {
        /* OpenCV INTER_LINEAR: half-pixel centres, replicate outside [clamp0, clamp1]. */
        const float fx = ((float)u + 0.5f) * scale_x - 0.5f + origin_x;
        const float fy = ((float)v + 0.5f) * scale_y - 0.5f + origin_y;
        const float flx = floorf(fx);
        const float fly = floorf(fy);
        const float ax = fx - flx;
        const float ay = fy - fly;
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
            const float top = (1.0f - ax) * r0[x0 * 3 + c] + ax * r0[x1 * 3 + c];
            const float bottom = (1.0f - ax) * r1[x0 * 3 + c] + ax * r1[x1 * 3 + c];
            const float value = (1.0f - ay) * top + ay * bottom;
            /* cv2 writes uint8: round half up and saturate. */
            bgr[c] = fminf(fmaxf(floorf(value + 0.5f), 0.0f), 255.0f);
        }
    }

    const float means[3] = {mean0, mean1, mean2};
    const float invs[3] = {inv0, inv1, inv2};
    const int plane = out_w * out_h;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        const float value = (bgr[swap_rb ? 2 - c : c] - means[c]) * invs[c];
        if (nchw) dst[c * plane + y * out_w + x] = value;
        else dst[(y * out_w + x) * 3 + c] = value;
    }
}
"""


class KernelArgs(object):
    """The scalar arguments of one kernel launch for a frame size (see KERNEL_SOURCE)."""

    FIELDS = ("out_w", "out_h", "nchw", "scale_x", "scale_y", "origin_x", "origin_y",
              "dst_x", "dst_y", "dst_w", "dst_h", "clamp_x0", "clamp_y0", "clamp_x1", "clamp_y1",
              "swap_rb", "identity", "pad_b", "pad_g", "pad_r", "mean0", "mean1", "mean2",
              "inv0", "inv1", "inv2")
    # pycuda `prepare` codes: P pointer, i int32, f float32 (src, src_pitch, dst come first).
    INT_FIELDS = ("out_w", "out_h", "nchw", "dst_x", "dst_y", "dst_w", "dst_h", "clamp_x0",
                  "clamp_y0", "clamp_x1", "clamp_y1", "swap_rb", "identity")

    def __init__(self, **values: Any) -> None:
        for name in self.FIELDS:
            setattr(self, name, values[name])

    def signature(self) -> str:
        return "PiP" + "".join("i" if f in self.INT_FIELDS else "f" for f in self.FIELDS)

    def values(self) -> List[Any]:
        return [int(getattr(self, f)) if f in self.INT_FIELDS else float(getattr(self, f))
                for f in self.FIELDS]

    def __repr__(self) -> str:
        return "KernelArgs({})".format(", ".join("{}={}".format(f, getattr(self, f))
                                                  for f in self.FIELDS))


def kernel_args(spec: InputSpec, frame_h: int, frame_w: int) -> KernelArgs:
    """Kernel arguments that make the GPU do what `Preprocessor` does for this frame size.

    Mirrors the three branches of `Preprocessor.resize`: an identity copy, a crop on whole
    pixels resized with cv2.resize (samples clamp to the crop), and a sub-pixel crop done with
    warpAffine + BORDER_REPLICATE (samples clamp to the frame).
    """
    plan = plan_resize(spec, frame_h, frame_w)
    out_h, out_w = spec.height, spec.width
    identity = (plan.dst_w, plan.dst_h) == (frame_w, frame_h) and \
        plan.src_w == frame_w and plan.src_h == frame_h
    whole = all(float(v).is_integer() for v in (plan.src_x, plan.src_y, plan.src_w, plan.src_h))
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
        pad_b=pad_bgr[0], pad_g=pad_bgr[1], pad_r=pad_bgr[2],
        mean0=mean[0], mean1=mean[1], mean2=mean[2], inv0=inv[0], inv1=inv[1], inv2=inv[2])


class GpuPreprocessor(object):
    """Uploads a frame and runs the preprocessing kernel into a device buffer, on one stream.

    `cuda` is an open `agent.backends.cuda.CudaContext`; all buffers belong to it. A frame
    written into `host_frame(h, w)` (e.g. by the capture code) skips one host copy.
    """

    BLOCK = (32, 8, 1)

    def __init__(self, cuda: Any, spec: InputSpec) -> None:
        self.cuda = cuda
        self.spec = spec
        module = cuda.compile(KERNEL_SOURCE)
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

    def run(self, frame: np.ndarray, dst_ptr: int) -> None:
        """Enqueue upload + kernel for `frame` (HxWx3 uint8 BGR) writing into `dst_ptr`.

        Asynchronous on the context's stream: synchronize (or enqueue more work on the same
        stream) before reading the result.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frame must be HxWx3 uint8 (BGR), got shape {} dtype {}".format(
                frame.shape, frame.dtype))
        frame_h, frame_w = int(frame.shape[0]), int(frame.shape[1])
        self._ensure_buffers(frame_h, frame_w)
        host = self._host
        assert host is not None
        if not _same_memory(frame, host):
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


def _address(buf: Any) -> int:
    return int(buf)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.__array_interface__["data"][0] == \
        b.__array_interface__["data"][0]
