"""The ONNX Runtime backend's session options."""

import numpy as np

from agent.config import load_config
from agent.store.package import ModelPackage
from support.paths import MODEL_DIR
from support.strict import requires


def test_backend_spin_is_off_unless_asked():
    requires("onnxruntime")
    from agent.updates.loader import backend_options
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    assert backend_options(load_config(None)).spin is False
    assert backend_options(load_config(None, ["backend.spin=true"])).spin is True
    for spin in (False, True):
        backend = OnnxRuntimeBackend(ModelPackage.load(MODEL_DIR),
                                     backend_options(load_config(None, [
                                         "backend.spin={}".format(str(spin).lower())]))).load()
        try:
            out = backend.infer(np.zeros((1, 3, 224, 224), np.float32))
            assert out["logits"].shape == (1, 1000)
        finally:
            backend.close()


def test_intra_op_threads_share_the_cores_among_workers():
    from agent.backends.onnxruntime import intra_op_threads
    assert intra_op_threads(None, 1, 8) is None      # ONNX Runtime's own default
    assert intra_op_threads(None, 2, 8) == 4
    assert intra_op_threads(None, 2, 2) == 1
    assert intra_op_threads(None, 4, 2) == 1         # never below one
    assert intra_op_threads(3, 2, 8) == 3            # backend.threads wins


def test_workers_run_real_sessions_at_once_with_the_same_outputs():
    """backend.workers=2: ONNX Runtime's session runs two frames at once (each call on its
    own thread, one intra-op thread each on 2 cores) and gives what one call at a time does;
    bench's raw measurement then runs as many at once."""
    requires("onnxruntime")
    import threading
    from agent.backends.onnxruntime import OnnxRuntimeBackend
    from agent.cli.bench import measure_raw
    from agent.updates.loader import backend_options
    options = backend_options(load_config(None, ["backend.workers=2"]))
    assert options.workers == 2
    backend = OnnxRuntimeBackend(ModelPackage.load(MODEL_DIR), options).load()
    try:
        assert backend.parallel() == 2 and backend.describe()["workers"] == 2
        import os
        assert backend.threads == max(1, (os.cpu_count() or 1) // 2)
        rng = np.random.RandomState(7)
        tensors = [rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32) for _ in range(6)]
        alone = [backend.infer(t)["logits"] for t in tensors]
        together = [None] * len(tensors)
        start = threading.Barrier(3)

        def run(k):
            start.wait(10)
            for i in range(k, len(tensors), 3):
                together[i] = backend.infer(tensors[i])["logits"]

        threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for a, b in zip(alone, together):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        raw = measure_raw(backend, tensors, 30)
        assert raw["workers"] == 2 and raw["frames"] == 30 and raw["infer_ms"]["p50"] > 0
    finally:
        backend.close()
    one = OnnxRuntimeBackend(ModelPackage.load(MODEL_DIR), backend_options(load_config(None)))
    assert one.parallel() == 1 and one.load().threads is None
    one.close()


def test_bench_raw_runs_as_many_calls_at_once_as_the_backend_takes():
    import threading
    from agent.cli.bench import measure_raw

    class Counting(object):
        def __init__(self, width, fail_at=None):
            self.width, self.fail_at = width, fail_at
            self.lock = threading.Lock()
            self.active = self.max_active = self.calls = 0
            self.threads = set()
            self.both = threading.Event()

        def parallel(self):
            return self.width

        def infer(self, tensor):
            with self.lock:
                self.calls += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                self.threads.add(threading.current_thread().name)
                if self.calls == self.fail_at:
                    self.active -= 1
                    raise RuntimeError("call {} failed".format(self.calls))
                if self.active == self.width:
                    self.both.set()
            try:
                if self.width > 1 and self.calls > 20:  # measured calls: wait for company
                    self.both.wait(10)
                return {}
            finally:
                with self.lock:
                    self.active -= 1

    two = Counting(2)
    raw = measure_raw(two, [np.zeros(1)], 41)
    assert raw["workers"] == 2 and raw["frames"] == 41
    assert two.calls == 20 + 41 and two.max_active == 2
    assert two.threads == {threading.current_thread().name, "raw-0", "raw-1"}
    one = Counting(1)
    measure_raw(one, [np.zeros(1)], 10)
    assert one.max_active == 1 and one.threads == {threading.current_thread().name}
    failing = Counting(2, fail_at=25)
    import pytest
    with pytest.raises(RuntimeError, match="call 25 failed"):
        measure_raw(failing, [np.zeros(1)], 20)
