"""Pinned capture for the GPU path (agent/backends/tensorrt/frame_pool.py, the TensorRT
backend's infer_frame, pipeline/capture.py): frames copied by the capture thread into
page-locked buffers allocated in the inference thread's CUDA context, uploaded from there.

Through the strict pycuda double (allocations need a current context; asynchronous copies read
host memory only when the stream runs, so a buffer overwritten too early would show) and the
TensorRT double; the agent runs whole, with its real threads, on the sample photos.
"""

import os
import threading
import types

import numpy as np
import pytest

from support.trt_helpers import (NANO, doubles, pycuda_double, register_kernel_emulator,
                                 sample_frames, tiny_package)

from agent.backends.base import BackendOptions
from agent.backends.tensorrt.cuda import CudaContext
from agent.backends.tensorrt.frame_pool import PinnedFramePool
from agent.preprocess import Preprocessor

from test_tensorrt_backend import nvcc_only_at  # noqa: E402 (same folder)


def gpu_backend(tmp_path, monkeypatch):
    from agent.backends.tensorrt import TensorRTBackend
    nvcc_only_at(monkeypatch, str(tmp_path / "cuda" / "bin"))
    register_kernel_emulator()
    package = tiny_package(str(tmp_path / "pkg"))
    opts = BackendOptions(kind="tensorrt", preprocess="gpu", state_dir=str(tmp_path / "var"))
    return TensorRTBackend(package, opts).load(), package


def test_pool_allocates_in_the_context_thread_and_reuses_only_free_buffers():
    with doubles("10.3", NANO):
        cuda = CudaContext(0).open()
        try:
            pool = PinnedFramePool(cuda, size=2)
            shape = (48, 64, 3)
            assert pool.acquire(shape) is None          # first: asks for the size
            allocs = pycuda_double.stats().host_allocs
            pool.serve()                                # the context's thread allocates
            assert pycuda_double.stats().host_allocs == allocs + 2
            first = pool.acquire(shape)                 # the capture thread holds it
            assert first is not None and pool.owns(first)
            second = pool.acquire(shape)
            assert second is not None and second is not first
            misses = pool.misses
            assert pool.acquire(shape) is None and pool.misses == misses + 1  # both held
            second_id = id(second)
            view = second[10:20]                        # a view of the memory holds it too
            del second
            assert pool.acquire(shape) is None
            del view
            assert id(pool.acquire(shape)) == second_id  # nothing refers to it any more
            first_id = id(first)
            frame = types.SimpleNamespace(image=first)  # a Frame in the publish queue
            del first
            got = pool.acquire(shape)
            assert got is not None and id(got) == second_id
            del got
            frame.image = None
            assert {id(pool.acquire(shape))} <= {first_id, second_id}
            assert not pool.owns(np.zeros(shape, np.uint8))
            assert pool.acquire((48, 64)) is None       # not a BGR frame
            pool.close()
            assert pool.acquire(shape) is None
        finally:
            cuda.close()


def test_pool_from_another_thread_does_not_allocate():
    """acquire() in the capture thread never touches CUDA (no context current there)."""
    with doubles("10.3", NANO):
        cuda = CudaContext(0).open()
        try:
            pool = PinnedFramePool(cuda)
            results = []
            thread = threading.Thread(target=lambda: results.append(pool.acquire((8, 8, 3))))
            thread.start()
            thread.join(10)
            assert results == [None]
            pool.serve()
            thread = threading.Thread(target=lambda: results.append(pool.acquire((8, 8, 3))))
            thread.start()
            thread.join(10)
            assert results[1] is not None and pool.owns(results[1])
        finally:
            cuda.close()


def test_backend_uploads_pooled_frames_without_the_staging_copy(tmp_path, monkeypatch):
    with doubles("10.3", NANO):
        backend, package = gpu_backend(tmp_path, monkeypatch)
        try:
            pool = backend.frame_pool()
            assert isinstance(pool, PinnedFramePool)
            pre = Preprocessor(package.input)
            frames = sample_frames()
            shape = frames[0].shape
            assert pool.acquire(shape) is None
            backend.infer_frame(frames[0])             # serves the size capture asked for
            copies = []
            original = np.copyto

            def counting(dst, src, *args, **kwargs):
                copies.append(dst.shape)
                return original(dst, src, *args, **kwargs)
            for frame in frames[1:]:
                if frame.shape != shape:
                    continue
                buf = pool.acquire(shape)
                np.copyto(buf, frame)                   # what the capture thread does
                monkeypatch.setattr(np, "copyto", counting)
                got = backend.infer_frame(buf)["logits"]
                monkeypatch.setattr(np, "copyto", original)
                want = backend.infer(pre(frame))["logits"]
                np.testing.assert_allclose(got, want, atol=0.05)
            assert copies == []                         # uploaded from the pinned frame
        finally:
            backend.close()
        assert pycuda_double.stats().frees_without_context == 0


def test_cpu_preprocessing_backends_have_no_pool(tmp_path):
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    package = tiny_package(str(tmp_path / "pkg"))
    backend = OnnxRuntimeBackend(package, BackendOptions(kind="onnxruntime")).load()
    try:
        assert backend.frame_pool() is None
    finally:
        backend.close()


def test_agent_with_gpu_preprocessing_captures_into_the_pool(broker, tmp_path, monkeypatch):
    """The whole agent (capture, inference, publish threads) on the sample photos: frames go
    through the pool, and every prediction equals the one from the CPU path."""
    from agent.config import load_config
    from agent.daemon import Agent
    from support.paths import ROOT
    nvcc_only_at(monkeypatch, str(tmp_path / "cuda" / "bin"))
    with doubles("10.3", NANO):
        register_kernel_emulator()
        tops = {}
        hits = {}
        for mode in ("cpu", "gpu"):
            config = load_config(os.path.join(ROOT, "config.yaml"), [
                "device.state_dir={}".format(tmp_path / mode), "backend.kind=tensorrt",
                "backend.preprocess=" + mode, "backend.precision=fp32", "source.fps=0",
                "source.loop=true", "mqtt.host=127.0.0.1",
                "mqtt.port={}".format(broker.port)])

            agent = Agent(config, telemetry=False, max_frames=24)
            seen = []
            agent.listeners.append(lambda frame, payload: seen.append(
                (payload["frame"], payload["top"][0]["index"])))
            agent.run()
            tops[mode] = sorted(set(seen))
            pool = agent.backends.model.backend.frame_pool()
            hits[mode] = pool.hits if pool is not None else None
        assert tops["gpu"] == tops["cpu"] and len(tops["gpu"]) >= 3
        assert hits["cpu"] is None and hits["gpu"] > 0


def test_pool_keeps_the_last_sizes_only():
    with doubles("10.3", NANO):
        cuda = CudaContext(0).open()
        try:
            pool = PinnedFramePool(cuda, size=1, max_shapes=2)
            for side in (8, 16, 24):
                assert pool.acquire((side, side, 3)) is None
            pool.serve()
            assert pool.acquire((8, 8, 3)) is None          # the oldest size was dropped
            assert pool.acquire((16, 16, 3)) is not None
            assert pool.acquire((24, 24, 3)) is not None
        finally:
            cuda.close()
