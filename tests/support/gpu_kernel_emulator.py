"""The CUDA kernel of agent/backends/tensorrt/gpu_preprocess.py on a CPU (test helper), two ways.

`run_kernel` is a numpy port: per output pixel it computes what KERNEL_SOURCE computes, from the
same KernelArgs, with the same operations in the same order (float32 where the kernel uses the
__f*_rn intrinsics, float64 + round-half-even where it uses __d*_rn / __double2int_rn, exact
integers in the OpenCV 4.x warpAffine branch), so it is bit-exact with the kernel. It needs only
numpy, so it runs on every CI stack; the pycuda double runs it for launches (trt_helpers).

`compiled_kernel` compiles KERNEL_SOURCE itself as C++ for the CPU (a few CUDA names defined in
a prelude, FMA contraction off as the intrinsics demand) and runs it over the same grid the GPU
would; tests compare it with `run_kernel` so a change to the kernel that the port misses fails.
`KERNEL_SHA256` is the kernel source this port was written for (also checked by the tests, for
machines without a C++ compiler). tools/gpu/check_cuda_backend.py checks the real kernel on a GPU.
"""

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

# sha256 of gpu_preprocess.KERNEL_SOURCE that run_kernel transcribes. When the kernel changes,
# change run_kernel the same way, then this.
KERNEL_SHA256 = "d349de342a47b7fc713a3b137ae1663950dc1dfe71ef5057f9230856433120fa"


def kernel_sha256(source):
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def run_kernel(args, frame):
    """What preprocess_bgr8 writes for `frame` (HxWx3 uint8), as a flat float32 array."""
    f32 = np.float32
    src = frame.astype(f32)
    isrc = frame.astype(np.int64)
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
    elif args.warp_fixed:
        # __double2int_rn: round half to even, which np.rint does on float64.
        m0, m2, m4, m5 = (float(args.warp_m0), float(args.warp_m2), float(args.warp_m4),
                          float(args.warp_m5))
        big_x = (int(np.rint(m2 * 1024.0)) + 16 +
                 np.rint(m0 * u.astype(np.float64) * 1024.0).astype(np.int64)) >> 5
        big_y = (np.rint((m4 * v.astype(np.float64) + m5) * 1024.0).astype(np.int64) + 16) >> 5
        ax, ay = (big_x & 31)[..., None], (big_y & 31)[..., None]
        ix, iy = big_x >> 5, big_y >> 5
        x0 = np.clip(ix, args.clamp_x0, args.clamp_x1)
        x1 = np.clip(ix + 1, args.clamp_x0, args.clamp_x1)
        y0 = np.clip(iy, args.clamp_y0, args.clamp_y1)
        y1 = np.clip(iy + 1, args.clamp_y0, args.clamp_y1)
        total = ((32 - ax) * (32 - ay) * isrc[y0, x0] + ax * (32 - ay) * isrc[y0, x1] +
                 (32 - ax) * ay * isrc[y1, x0] + ax * ay * isrc[y1, x1])
        value = ((total + 512) >> 10).astype(f32)
        bgr[inside] = value[inside]
    else:
        fx = (u.astype(f32) + f32(0.5)) * f32(args.scale_x) - f32(0.5) + f32(args.origin_x)
        fy = (v.astype(f32) + f32(0.5)) * f32(args.scale_y) - f32(0.5) + f32(args.origin_y)
        flx, fly = np.floor(fx), np.floor(fy)
        ax, ay = (fx - flx)[..., None], (fy - fly)[..., None]
        bx, by = f32(1) - ax, f32(1) - ay
        ix, iy = flx.astype(np.int64), fly.astype(np.int64)
        x0 = np.clip(ix, args.clamp_x0, args.clamp_x1)
        x1 = np.clip(ix + 1, args.clamp_x0, args.clamp_x1)
        y0 = np.clip(iy, args.clamp_y0, args.clamp_y1)
        y1 = np.clip(iy + 1, args.clamp_y0, args.clamp_y1)
        top = bx * src[y0, x0] + ax * src[y0, x1]
        bottom = bx * src[y1, x0] + ax * src[y1, x1]
        value = by * top + ay * bottom
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


# --- the kernel source compiled for the CPU -------------------------------------------------
_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <algorithm>
struct emu_dim3 { int x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim;
#define __global__
using std::min;
using std::max;
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline int __double2int_rn(double a) { return (int)std::nearbyint(a); }
"""

_CTYPES = {"int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}


def find_cxx():
    """A C++ compiler on this machine, or None."""
    for name in (os.environ.get("CXX") or "", "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class CompiledKernel(object):
    """KERNEL_SOURCE built as a shared library; call it like run_kernel."""

    def __init__(self, source, name, folder):
        start = source.index(name + "(")
        params = source[start + len(name) + 1:source.index(")", start)]
        decls = [" ".join(p.split()) for p in params.split(",")]
        self.params = []  # (ctype or None for pointers, name)
        for decl in decls:
            match = re.match(r"(.*?)\s*(\w+)$", decl)
            assert match, decl
            kind, pname = match.group(1), match.group(2)
            self.params.append((None if "*" in kind else _CTYPES[kind.split()[-1]], pname))
        driver = ("extern \"C\" void emu_launch(int gx, int gy, int bx, int by, {decls}) {{\n"
                  "  blockDim.x = bx; blockDim.y = by; blockDim.z = 1;\n"
                  "  for (int gj = 0; gj < gy; ++gj) for (int gi = 0; gi < gx; ++gi)\n"
                  "    for (int tj = 0; tj < by; ++tj) for (int ti = 0; ti < bx; ++ti) {{\n"
                  "      blockIdx.x = gi; blockIdx.y = gj; threadIdx.x = ti; threadIdx.y = tj;\n"
                  "      {name}({names});\n"
                  "    }}\n}}\n").format(decls=", ".join(decls), name=name,
                                         names=", ".join(n for _, n in self.params))
        cu = os.path.join(folder, "kernel.cpp")
        with open(cu, "w") as handle:
            handle.write(_PRELUDE + source + driver)
        lib = os.path.join(folder, "kernel.so")
        subprocess.check_call([find_cxx(), "-O1", "-ffp-contract=off", "-fno-fast-math",
                               "-shared", "-fPIC", "-o", lib, cu])
        self._lib = ctypes.CDLL(lib)
        self._fn = self._lib.emu_launch
        self._fn.restype = None

    def __call__(self, args, frame, block=(32, 8)):
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        out = np.zeros(args.out_h * args.out_w * 3, dtype=np.float32)
        values = dict(zip(args.FIELDS, args.values()))
        values["src_pitch"] = frame.shape[1] * 3
        pointers = {"src": frame.ctypes.data, "dst": out.ctypes.data}
        call = []
        for ctype, pname in self.params:
            if ctype is None:
                call.append(ctypes.c_void_p(pointers[pname]))
            else:
                call.append(ctype(values[pname]))
        bx, by = block
        grid = ((args.out_w + bx - 1) // bx, (args.out_h + by - 1) // by)
        self._fn(ctypes.c_int(grid[0]), ctypes.c_int(grid[1]), ctypes.c_int(bx),
                 ctypes.c_int(by), *call)
        return out


def compiled_kernel(source, name, folder=None):
    """KERNEL_SOURCE compiled for this CPU (needs a C++ compiler: see find_cxx)."""
    return CompiledKernel(source, name, folder or tempfile.mkdtemp(prefix="kernel-emu-"))
