"""The inference stage with frames in flight (backend.workers): order kept, width never
exceeded, a swap waits for the old model's frames, failures counted in the inference thread,
--max-frames exact, a stop drains; and a one-at-a-time backend (TensorRT's CUDA context)
runs only in the inference thread itself."""

import collections
import queue
import threading
import time

import numpy as np

from agent.backends.base import Backend, BackendOptions
from agent.config import load_config
from agent.pipeline.capture import Captured
from agent.pipeline.frames import Frame, FrameSlot
from agent.pipeline.inference import ActiveModel, BackendSlot, InferenceStage
from agent.store.package import ModelPackage
from agent.telemetry import StageStats
from support.paths import MODEL_DIR
from support.waiting import wait_until


class GatedBackend(Backend):
    """A backend whose infer() for the frames in `hold` waits until the test opens their gate;
    it records how many calls ran at once and in which threads."""

    name = "gated"

    def __init__(self, width, hold=(), fail=()):
        super(GatedBackend, self).__init__(ModelPackage.load(MODEL_DIR), BackendOptions())
        self.width = width
        self.hold, self.fail = set(hold), set(fail)
        self.gates = collections.defaultdict(threading.Event)
        self.started = collections.defaultdict(threading.Event)
        self.finished = collections.defaultdict(threading.Event)
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = []
        self.threads = set()
        self.on_start = lambda seq: None

    def parallel(self):
        return self.width

    def _load_impl(self):
        self.output_names = ["logits"]

    def _infer_impl(self, tensor):
        seq = int(round((float(tensor[0, 0, 0, 0]) * 128.0 + 127.0) / 10.0))
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(seq)
            self.threads.add(threading.current_thread().name)
        self.on_start(seq)
        self.started[seq].set()
        try:
            if seq in self.hold and not self.gates[seq].wait(30):
                raise AssertionError("the gate of frame {} never opened".format(seq))
            if seq in self.fail:
                raise RuntimeError("frame {} is bad".format(seq))
            logits = np.zeros((1, 1000), np.float32)
            logits[0, seq] = 10.0
            return {"logits": logits}
        finally:
            with self.lock:
                self.active -= 1
            self.finished[seq].set()

    def _close_impl(self):
        pass


class Rig(object):
    """An InferenceStage on a real BackendSlot and FrameSlot, in a thread named inference."""

    def __init__(self, backend, max_frames=None):
        self.config = load_config(None)
        self.backends = BackendSlot(self.config, on_taken=self._taken)
        self.model = self.backends.start_with(backend.load())
        self.slot = FrameSlot(live=False, depth=64)
        self.out = queue.Queue()
        self.stats = StageStats()
        self.stop = threading.Event()
        self.results = []
        self.taken_hooks = []
        self.stage = InferenceStage(self.slot, self.backends, self.out, self.stats, self.stop,
                                    self._result, max_frames)
        self.thread = threading.Thread(target=self.stage.run, name="inference", daemon=True)

    def _result(self, ref, ok, infer_ms, error):
        self.results.append((ref, ok, error, threading.current_thread().name))

    def _taken(self):
        for hook in self.taken_hooks:
            hook()

    def put(self, *seqs):
        for seq in seqs:
            image = np.full((8, 8, 3), seq * 10, np.uint8)
            frame = Frame(image, seq, time.time(), time.monotonic())
            prep = self.backends.model.preprocessor
            assert self.slot.put(Captured(frame, prep(image), prep), self.stop)

    def start(self):
        self.thread.start()
        return self

    def finish(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the inference thread did not end"
        items = []
        while not self.out.empty():
            items.append(self.out.get_nowait())
        return items


def worker_threads_alive():
    return [t.name for t in threading.enumerate() if t.name.startswith("inference-worker")]


def test_frames_in_flight_leave_in_frame_order_and_never_more_than_the_width():
    backend = GatedBackend(2, hold={0, 2, 4})
    rig = Rig(backend)
    rig.put(0, 1, 2, 3, 4, 5)
    rig.start()
    try:
        assert backend.started[0].wait(10) and backend.finished[1].wait(10)
        # frame 1 is done, frame 0 is not: nothing may leave before frame 0
        assert rig.out.empty()
        assert sorted(backend.calls) == [0, 1]  # two in flight: the third waits for a free worker
        backend.gates[0].set()
        assert backend.started[2].wait(10) and backend.finished[3].wait(10)
        backend.gates[2].set()
        backend.gates[4].set()
        rig.slot.end()
    finally:
        for gate in (0, 2, 4):
            backend.gates[gate].set()
    items = rig.finish()
    assert [i.frame.seq for i in items] == [0, 1, 2, 3, 4, 5]
    assert all(int(np.argmax(i.outputs["logits"])) == i.frame.seq for i in items)
    assert backend.max_active == 2
    assert backend.threads and all(n.startswith("inference-worker") for n in backend.threads)
    assert rig.stop.is_set() and rig.stage.frames_done == 6
    assert worker_threads_alive() == []  # the pool ends with the thread


def test_a_new_model_takes_over_only_after_the_old_models_frames_in_flight():
    old = GatedBackend(2, hold={0, 1})
    new = GatedBackend(2)
    rig = Rig(old)
    at_takeover = []
    rig.taken_hooks.append(lambda: at_takeover.append(old.active))
    rig.put(0, 1)
    rig.start()
    swapped = []
    swapper = threading.Thread(target=lambda: swapped.append(rig.backends.swap(new.load(), 30)))
    try:
        assert old.started[0].wait(10) and old.started[1].wait(10)
        rig.put(2, 3)
        swapper.start()
        wait_until(lambda: rig.backends.pending, 10, "the swap to be handed over")
        assert new.calls == [] and sorted(old.calls) == [0, 1]
        old.gates[0].set()  # frame 1 still in flight: the new model must wait for it
        wait_until(lambda: rig.out.qsize() >= 1, 10, "frame 0 handed on")
        old.gates[1].set()
        swapper.join(30)
        assert swapped == [None]
        wait_until(lambda: rig.stage.frames_done == 4, 30, "four frames")
    finally:
        old.gates[0].set()
        old.gates[1].set()
        rig.stop.set()
    items = rig.finish()
    assert at_takeover == [0], "the new model took over with frames of the old one in flight"
    assert [(i.frame.seq, i.model.backend) for i in items] == \
        [(0, old), (1, old), (2, new), (3, new)]
    assert sorted(old.calls) == [0, 1] and sorted(new.calls) == [2, 3]  # in flight together


def test_a_frame_failing_in_a_worker_is_counted_by_the_inference_thread():
    backend = GatedBackend(2, fail={1})
    rig = Rig(backend)
    rig.put(0, 1, 2, 3)
    rig.slot.end()
    items = rig.start().finish()
    assert [i.frame.seq for i in items] == [0, 2, 3]
    assert rig.stats.errors == 1
    failed = [r for r in rig.results if not r[1]]
    assert failed == [(rig.model.ref, False, "frame 1 is bad", "inference")]


def test_max_frames_is_exact_with_frames_in_flight():
    backend = GatedBackend(2, hold={0, 1, 2})
    rig = Rig(backend, max_frames=3)
    rig.put(*range(10))
    rig.start()
    try:
        assert backend.started[1].wait(10)
        backend.gates[0].set()  # frame 0 done: frame 2 may go in flight beside frame 1
        assert backend.started[2].wait(10)
        backend.gates[1].set()  # frame 1 done: two done, one in flight, none more may start
        wait_until(lambda: rig.out.qsize() >= 2, 10, "frames 0 and 1 handed on")
        backend.gates[2].set()
    finally:
        for gate in (0, 1, 2):
            backend.gates[gate].set()
    items = rig.finish()
    assert [i.frame.seq for i in items] == [0, 1, 2]
    assert sorted(backend.calls) == [0, 1, 2] and rig.stop.is_set()


def test_a_stop_finishes_the_frames_in_flight_and_ends_the_pool():
    backend = GatedBackend(2, hold={0, 1})
    rig = Rig(backend)
    rig.put(0, 1, 2)
    rig.start()
    try:
        assert backend.started[0].wait(10) and backend.started[1].wait(10)
        assert worker_threads_alive()
        rig.stop.set()
    finally:
        backend.gates[0].set()
        backend.gates[1].set()
    items = rig.finish()
    assert [i.frame.seq for i in items] == [0, 1]  # handed on, not lost; 2 never started
    assert sorted(backend.calls) == [0, 1]
    assert worker_threads_alive() == []


def test_a_one_at_a_time_backend_runs_in_the_inference_thread_itself():
    """TensorRT keeps its CUDA context current in the inference thread: a backend whose
    parallel() is 1 must never be called from another thread."""
    backend = GatedBackend(1)
    rig = Rig(backend)
    rig.put(0, 1, 2, 3)
    rig.slot.end()
    items = rig.start().finish()
    assert [i.frame.seq for i in items] == [0, 1, 2, 3]
    assert backend.threads == {"inference"} and backend.max_active == 1
    assert worker_threads_alive() == []


def test_frame_slot_wake_ends_a_waiting_get_and_the_next_one_once():
    slot = FrameSlot(live=False)
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.get(30)))
    waiter.start()
    wait_until(lambda: waiter.is_alive(), 5, "the waiter")
    slot.wake()
    waiter.join(10)
    assert not waiter.is_alive() and got == [None]
    slot.wake()  # no get() waiting: the next one returns at once, the one after waits
    assert slot.get(30) is None
    t0 = time.monotonic()
    assert slot.get(0.05) is None and time.monotonic() - t0 >= 0.04


def test_the_serving_line_names_the_frames_in_flight_and_a_backend_that_ignores_workers():
    two = ActiveModel(GatedBackend(2).load(), load_config(None, ["backend.workers=2"]))
    assert two.in_flight == 2 and two.note is None
    assert two.serving() == "efficientnet_lite0@1 on gated (fp32), 2 frames in flight"
    one = ActiveModel(GatedBackend(1).load(), load_config(None, ["backend.workers=2"]))
    assert one.in_flight == 1 and one.serving() == "efficientnet_lite0@1 on gated (fp32)"
    assert one.note == ("backend.workers is 2 but gated runs one frame at a time (it keeps "
                        "its state per thread)")
    assert ActiveModel(GatedBackend(1).load(), load_config(None)).note is None
