"""A numpy transcription of the CUDA kernel in agent/backends/gpu_preprocess.py (test helper).

It computes exactly what KERNEL_SOURCE computes, per output pixel, from the same KernelArgs, in
float32. Tests use it to check the launch geometry (`kernel_args`) against the CPU
Preprocessor without a GPU; tools/gpu/check_cuda_backend.py checks the real kernel on a GPU.
"""

import numpy as np


def run_kernel(args, frame):
    """What preprocess_bgr8 writes for `frame` (HxWx3 uint8), as a flat float32 array."""
    f32 = np.float32
    src = frame.astype(f32)
    out_h, out_w = args.out_h, args.out_w
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    u = xs - args.dst_x
    v = ys - args.dst_y
    inside = (u >= 0) & (v >= 0) & (u < args.dst_w) & (v < args.dst_h)
    bgr = np.empty((out_h, out_w, 3), dtype=f32)
    bgr[...] = np.array([args.pad_b, args.pad_g, args.pad_r], dtype=f32)
    if args.identity:
        uu, vv = u[inside] + args.clamp_x0, v[inside] + args.clamp_y0
        bgr[inside] = src[vv, uu]
    else:
        fx = (u.astype(f32) + f32(0.5)) * f32(args.scale_x) - f32(0.5) + f32(args.origin_x)
        fy = (v.astype(f32) + f32(0.5)) * f32(args.scale_y) - f32(0.5) + f32(args.origin_y)
        flx, fly = np.floor(fx), np.floor(fy)
        ax, ay = (fx - flx)[..., None], (fy - fly)[..., None]
        ix, iy = flx.astype(np.int64), fly.astype(np.int64)
        x0 = np.clip(ix, args.clamp_x0, args.clamp_x1)
        x1 = np.clip(ix + 1, args.clamp_x0, args.clamp_x1)
        y0 = np.clip(iy, args.clamp_y0, args.clamp_y1)
        y1 = np.clip(iy + 1, args.clamp_y0, args.clamp_y1)
        top = (f32(1) - ax) * src[y0, x0] + ax * src[y0, x1]
        bottom = (f32(1) - ax) * src[y1, x0] + ax * src[y1, x1]
        value = (f32(1) - ay) * top + ay * bottom
        value = np.clip(np.floor(value + f32(0.5)), 0, 255).astype(f32)
        bgr[inside] = value[inside]
    order = [2, 1, 0] if args.swap_rb else [0, 1, 2]
    chans = bgr[..., order]
    mean = np.array([args.mean0, args.mean1, args.mean2], dtype=f32)
    inv = np.array([args.inv0, args.inv1, args.inv2], dtype=f32)
    value = (chans - mean) * inv
    if args.nchw:
        value = value.transpose(2, 0, 1)
    return np.ascontiguousarray(value).ravel()
