"""TensorRT: engines built on the device from ONNX, cached by fingerprint, run through pycuda.

`import agent.backends.tensorrt` works without TensorRT, pycuda or onnx installed: each is
imported when first used. The modules, in the order a load goes through them:
  backend.py         TensorRTBackend: load (cache or build, validate), infer, close
  runtime.py         importing `tensorrt`, the one process-wide logger, plugins, progress
  engine_cache.py    engines stored with their fingerprint (the cache key)
  build.py           ONNX -> serialized engine, one step per function
  preflight.py       what the installed TensorRT rejects, found before a long build
  calibrator.py      INT8 calibration images and the entropy calibrator
  io.py              the tensor-API and binding-API I/O adapters
  buffers.py         pinned host and device buffers, shapes, execute-and-fetch
  cuda.py            the pycuda context owned by one thread
  gpu_preprocess.py  the preprocessing kernel
  profile.py         per-layer times (`models profile`)
"""

from .backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
