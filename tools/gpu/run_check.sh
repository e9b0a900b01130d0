#!/bin/bash
# Build pycuda from its sdist on the GPU machine (no network there) and run the CUDA check.
# Usage (repo root, on the lent GPU machine): bash tools/gpu/run_check.sh  [wheels folder]
# (ONLY="tools/gpu/check_pinned_pool.py --trt-double tests/support/doubles" runs that check alone)
set -u
WHEELS=${1:-.whl/cudacheck}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/pycuda-src
export PATH=/usr/local/cuda/bin:$PATH
{
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "== nvcc"; nvcc --version | tail -2
  echo "== python"; python3 --version
  python3 -c "import numpy, cv2, yaml; print('numpy', numpy.__version__, 'cv2', cv2.__version__)"
  echo "== libcuda"; ldconfig -p | grep -m3 libcuda
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site
tar xzf "$WHEELS"/pycuda-*.tar.gz -C /tmp/pycuda-src --strip-components=1 || exit 1
LIBDIR=/usr/local/cuda/lib64/stubs
( cd /tmp/pycuda-src && python3 configure.py --cuda-root=/usr/local/cuda --cudadrv-lib-dir=$LIBDIR \
    --cudart-lib-dir=/usr/local/cuda/lib64 >/dev/null &&
  python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/pycuda-wheel . ) > "$OUT/pycuda-build.log" 2>&1
rc=$?
tail -5 "$OUT/pycuda-build.log"
[ $rc -eq 0 ] || { echo "pycuda build failed (rc=$rc)"; exit 1; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/pycuda-wheel/pycuda-*.whl || exit 1
python3 -c "import pycuda.driver as d; d.init(); print('pycuda', __import__('pycuda').VERSION_TEXT, d.Device(0).name())"
# ONLY="script args": run that one check instead of the two below (e.g. check_pinned_pool.py).
if [ -n "${ONLY:-}" ]; then
  PYTHONUNBUFFERED=1 python3 $ONLY 2>&1 | tee "$OUT/only.txt"; exit "${PIPESTATUS[0]}"
fi
PYTHONUNBUFFERED=1 python3 tools/gpu/check_cuda_backend.py --runs ${RUNS:-300} --out "$OUT/check.json" 2>&1 | tee "$OUT/check.txt"
PYTHONUNBUFFERED=1 python3 tools/gpu/check_trt_backend.py --trt-double tests/support/doubles --out "$OUT/trt_backend.json" 2>&1 | tee "$OUT/trt_backend.txt"
