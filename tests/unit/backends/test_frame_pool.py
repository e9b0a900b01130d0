"""Pinned capture for the GPU path (agent/backends/tensorrt/frame_pool.py, the TensorRT
backend's infer_frame, pipeline/capture.py): frames copied by the capture thread into
page-locked buffers allocated in the inference thread's CUDA context, uploaded from there.

Through the strict pycuda double (allocations need a current context; asynchronous copies read
host memory only when the stream runs, so a buffer overwritten too early would show) and the
TensorRT double; the agent runs whole, with its real threads, on the sample photos.
"""

import logging
import os
import threading
import types

import numpy as np
import pytest

from support.waiting import wait_until
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
            if pool is not None:   # stopped: nothing held a buffer, all freed in the context
                stats = pycuda_double.stats()
                assert pool.parked == 0 and stats.host_allocs == stats.host_frees
                assert stats.host_leaks_out_of_thread == stats.host_leaks_dead_context == 0
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


# --------------------------------------------------------------------------------------------
# Freeing: pycuda frees page-locked memory only from the thread that made its context wrapper
# or where that context is current; from any other thread it warns and keeps the memory, and
# after the wrapper is detached it skips it silently (the double enforces both).


def in_thread(name, fn):
    """Run `fn` in a new thread called `name`; return its result (re-raise its error)."""
    box = {}

    def body():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def served_pool(tmp_path, monkeypatch, frames):
    """A GPU-preprocessing backend as the agent runs it: loaded in a manager thread, served
    by an inference thread that has allocated the pool for the frames' size."""
    backend, _ = in_thread("model-manager", lambda: _released(gpu_backend(tmp_path, monkeypatch)))
    pool = backend.frame_pool()
    assert pool.acquire(frames[0].shape) is None                 # capture asks for the size
    in_thread("inference", lambda: (backend.infer_frame(frames[0]), backend.release_thread()))
    return backend, pool


def _released(loaded):
    loaded[0].release_thread()
    return loaded


def test_closing_frees_every_pool_buffer_in_its_context_even_one_a_frame_still_holds(
        tmp_path, monkeypatch):
    """A model swap: the old backend is closed by its own thread while the publish thread still
    holds a frame in a pool buffer. Close waits for that frame to go, then frees every buffer
    where the context is current: nothing is left to pycuda's garbage collection in a thread
    that cannot free it."""
    with doubles("10.3", NANO):
        frames = sample_frames()
        backend, pool = served_pool(tmp_path, monkeypatch, frames)
        held = {"frame": pool.acquire(frames[0].shape)}             # in the publish queue
        assert held["frame"] is not None
        np.copyto(held["frame"], frames[0])
        publisher = threading.Thread(
            target=lambda: (wait_until(lambda: pool.closed, 10, "the pool to close"),
                            held.clear()),                          # the frame is published
            name="publish")
        publisher.start()
        in_thread("close-old-backend", backend.close)
        publisher.join(10)
        stats = pycuda_double.stats()
        assert stats.host_leaks_out_of_thread == 0 and stats.host_leaks_dead_context == 0
        assert stats.host_allocs == stats.host_frees > 0
        assert pool.parked == 0


def test_a_buffer_held_past_the_wait_is_kept_not_leaked_to_a_thread_that_cannot_free_it(
        tmp_path, monkeypatch, caplog):
    with doubles("10.3", NANO):
        frames = sample_frames()
        backend, pool = served_pool(tmp_path, monkeypatch, frames)
        pool.release_wait_s = 0.0
        caplog.set_level(logging.INFO, logger="edge-agent")
        held = pool.acquire(frames[0].shape)
        assert held is not None
        in_thread("close-old-backend", backend.close)
        assert pool.parked == 1 and "1 pinned frame buffer" in caplog.text
        stats = pycuda_double.stats()
        assert stats.host_frees == stats.host_allocs - 1           # all but the held one
        in_thread("publish", lambda: held.fill(0))                 # still valid memory
        del held
        assert stats.host_leaks_out_of_thread == 0 and stats.host_leaks_dead_context == 0


def test_sizes_dropped_from_the_pool_are_freed_in_the_context_thread():
    with doubles("10.3", NANO):
        cuda = CudaContext(0).open()
        try:
            pool = PinnedFramePool(cuda, size=1, max_shapes=1)
            assert pool.acquire((8, 8, 3)) is None
            pool.serve()
            held = pool.acquire((8, 8, 3))                          # a frame still has it
            assert pool.acquire((16, 16, 3)) is None
            pool.serve()                                            # 8x8 dropped from the pool
            frees = pycuda_double.stats().host_frees
            in_thread("publish", lambda: held.fill(1))
            del held                                                # dropped outside the context
            pool.serve()                                            # ... freed here
            assert pycuda_double.stats().host_frees == frees + 1
        finally:
            cuda.close()
        stats = pycuda_double.stats()
        assert stats.host_leaks_out_of_thread == 0 and stats.host_leaks_dead_context == 0
        assert stats.host_allocs == stats.host_frees == 2


def test_a_size_asked_again_while_it_is_allocated_keeps_its_first_buffers():
    """Capture asks for a size, the context's thread allocates it, and capture asks again in
    between (it saw no buffers yet): the next serve() must not replace the buffers frames
    may already hold (they would be dropped to pycuda's garbage collection)."""
    with doubles("10.3", NANO):
        cuda = CudaContext(0).open()
        try:
            pool = PinnedFramePool(cuda, size=2)
            shape = (8, 8, 3)
            assert pool.acquire(shape) is None
            original = cuda.pinned

            def allocating(*args, **kwargs):
                pool.acquire(shape)          # the capture thread, during the allocation
                return original(*args, **kwargs)
            cuda.pinned = allocating
            pool.serve()
            cuda.pinned = original
            held = pool.acquire(shape)
            allocs = pycuda_double.stats().host_allocs
            pool.serve()
            assert pycuda_double.stats().host_allocs == allocs and pool.owns(held)
            in_thread("publish", lambda: held.fill(2))
            del held
        finally:
            cuda.close()
        stats = pycuda_double.stats()
        assert stats.host_leaks_out_of_thread == stats.host_leaks_dead_context == 0
        assert stats.host_allocs == stats.host_frees == 2
