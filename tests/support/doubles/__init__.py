"""Strict doubles of the libraries a Jetson has (TensorRT, pycuda, NVML, jtop)."""
