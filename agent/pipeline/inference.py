"""The inference stage: the serving model (BackendSlot) and the thread that feeds it frames.

`BackendSlot` owns the active model. Another thread hands it a prepared backend with
`swap()`; the inference thread takes it between two frames (`take_pending`), so no frame is
lost, and the old backend is closed afterwards in a thread of its own. `InferenceStage` feeds
the backend and nothing else: postprocessing and publishing happen in the publish thread,
so the accelerator (or the CPU cores ONNX Runtime uses) waits for Python as little as
possible. Its `beats` count the passes of its loop: the systemd watchdog's progress.
"""

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from ..backends.base import Backend
from ..config import Config
from ..errors import AgentError
from ..postprocess import Classifier
from ..preprocess import Preprocessor
from .frames import Frame, FrameSlot
from ..telemetry import StageStats

log = logging.getLogger("edge-agent")


class ActiveModel(object):
    """What the inference thread runs: a loaded backend and the pieces derived from its package."""

    def __init__(self, backend: Backend, config: Config) -> None:
        self.backend = backend
        self.package = backend.package
        self.preprocessor = None if backend.accepts_frames() else Preprocessor(self.package.input)
        self.classifier = Classifier(self.package.labels, self.package.output.activation,
                                     self.package.output.name, top_k=config.predictions.top_k,
                                     min_score=config.predictions.min_score)
        self.ref = self.package.ref
        self.in_flight = backend.parallel()
        self.note = None  # type: Optional[str]
        asked = config.backend.workers
        if asked > 1 and self.in_flight == 1:
            self.note = ("backend.workers is {} but {} runs one frame at a time (it keeps its "
                         "state per thread)".format(asked, backend.name))

    def describe(self) -> Dict[str, Any]:
        return self.backend.describe()

    def serving(self) -> str:
        """`ref on backend (precision)`, and the frames in flight when more than one."""
        text = "{} on {} ({})".format(self.ref, self.backend.name, self.backend.precision)
        if self.in_flight > 1:
            text += ", {} frames in flight".format(self.in_flight)
        return text

    def log_serving(self, verb: str) -> None:
        """Log `verb` + what serves now, and the note when backend.workers does not apply."""
        log.info("%s %s", verb, self.serving())
        if self.note:
            log.info("%s", self.note)


class BackendSlot(object):
    """The active model (`model`, None until one loads) and the hand-over of the next one.

    Only the inference thread replaces `model` (after `start_with` at start); `on_taken` is
    called in that thread when it has taken a new model.
    """

    def __init__(self, config: Config, on_taken: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.on_taken = on_taken
        self.model = None  # type: Optional[ActiveModel]
        self._pending = None  # type: Optional[Tuple[ActiveModel, threading.Event, list]]
        self._lock = threading.Lock()

    def start_with(self, backend: Backend) -> ActiveModel:
        """The first model, before the inference thread runs."""
        self.model = ActiveModel(backend, self.config)
        return self.model

    def describe(self) -> Optional[Dict[str, Any]]:
        model = self.model
        return model.describe() if model is not None else None

    def preprocessor(self) -> Optional[Preprocessor]:
        model = self.model
        return model.preprocessor if model is not None else None

    def frame_pool(self) -> Any:
        """The serving backend's pinned frame pool (GPU preprocessing), else None."""
        model = self.model
        return model.backend.frame_pool() if model is not None else None

    def swap(self, backend: Backend, timeout: float = 30.0) -> None:
        """Hand a loaded backend to the inference thread and wait until it runs it.

        Raises AgentError if the inference thread did not take it in time; the caller then
        still owns `backend` and must close it.
        """
        active = ActiveModel(backend, self.config)
        done = threading.Event()
        result = []  # type: list
        with self._lock:
            self._pending = (active, done, result)
        if not done.wait(timeout) or not result:
            with self._lock:
                if self._pending is not None and self._pending[0] is active:
                    self._pending = None
                    raise AgentError("the inference thread did not take the new model within "
                                     "{:.0f} s".format(timeout))
            done.wait(timeout)
        old = result[0] if result else None
        active.log_serving("now serving")
        if old is not None:
            threading.Thread(target=old.backend.close, name="close-old-backend",
                             daemon=True).start()

    @property
    def pending(self) -> bool:
        """Whether a new model waits to be taken."""
        return self._pending is not None

    def take_pending(self) -> None:
        """Inference thread: run the handed-over model from the next frame on."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        active, done, result = pending
        if self.model is not None:
            self.model.backend.release_thread()  # closed by another thread after the swap
        result.append(self.model)
        self.model = active
        self.on_taken()
        done.set()

    def release(self) -> None:
        """Inference thread, at its end: the main thread closes the backend at shutdown."""
        if self.model is not None:
            self.model.backend.release_thread()

    def close(self) -> None:
        if self.model is not None:
            self.model.backend.close()


class Inferred(object):
    """One frame's outputs, from the inference thread to the publish thread."""

    __slots__ = ("frame", "outputs", "model", "infer_ms", "preprocess_ms")

    def __init__(self, frame: Frame, outputs: Dict[str, Any], model: ActiveModel,
                 infer_ms: float, preprocess_ms: float) -> None:
        self.frame = frame
        self.outputs = outputs
        self.model = model
        self.infer_ms = infer_ms
        self.preprocess_ms = preprocess_ms


class Failed(object):
    """A frame the backend failed on: counted and logged by the inference thread."""

    __slots__ = ("frame", "model", "error")

    def __init__(self, frame: Frame, model: ActiveModel, error: Exception) -> None:
        self.frame = frame
        self.model = model
        self.error = error


class InferenceStage(object):
    """The inference thread (`run`): FrameSlot -> backend -> `out` queue of Inferred.

    With a backend whose `parallel()` is N > 1 (ONNX Runtime with backend.workers), up to N
    frames are in flight at once, each inferred in a worker thread of a pool this thread
    owns; their results still leave in frame order, and a new model takes over only once the
    old one's frames in flight are done. `result(ref, False, None, error)` is told of every
    frame that failed (probation counts them); `max_frames` (--max-frames) sets `stop` after
    that many frames.
    """

    def __init__(self, slot: FrameSlot, backends: BackendSlot, out: queue.Queue,
                 stats: StageStats, stop: threading.Event,
                 result: Callable[[str, bool, Optional[float], str], None] =
                 lambda ref, ok, infer_ms, error: None,
                 max_frames: Optional[int] = None) -> None:
        self.slot = slot
        self.backends = backends
        self.out = out
        self.stats = stats
        self.stop = stop
        self.result = result
        self.max_frames = max_frames
        self.beats = 0  # passes of the loop, frame or not: the watchdog's progress
        self.frames_done = 0
        self.done = threading.Event()
        self._errors_logged = 0
        self._inflight = deque()  # type: Deque[Future]  # oldest first
        self._pool = None  # type: Optional[ThreadPoolExecutor]
        self._pool_size = 0

    def run(self) -> None:
        try:
            self._loop()
        finally:
            try:
                self._drain()  # frames in flight at a stop are finished and handed on
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self.backends.release()
                self.done.set()

    def _loop(self) -> None:
        inflight = self._inflight
        while not self.stop.is_set():
            if inflight and self.backends.pending:
                self._drain()  # the old model's frames first: then it may be closed
            self.backends.take_pending()
            self.beats += 1
            model = self.backends.model
            width = model.in_flight if model is not None else 1
            if inflight and (inflight[0].done() or len(inflight) >= width
                             or not self._room() or self.slot.ended):
                self._finish(inflight.popleft().result())
                continue
            item = self.slot.get(0.2)  # woken early when a frame in flight finishes
            if item is None:
                if not inflight and self.slot.ended:
                    if not self.stop.is_set():
                        log.info("all frames processed")
                        self.stop.set()
                    break
                continue
            if model is None:
                continue
            if width == 1:
                self._finish(self._infer(model, item))
            else:
                future = self._workers(width).submit(self._infer, model, item)
                future.add_done_callback(lambda _f: self.slot.wake())
                inflight.append(future)

    def _room(self) -> bool:
        """Whether one more frame may go in flight under --max-frames."""
        return self.max_frames is None or \
            self.frames_done + len(self._inflight) < self.max_frames

    def _workers(self, width: int) -> ThreadPoolExecutor:
        """The pool for `width` frames in flight (made in this thread, so its threads share
        its scheduling priority; remade when a new model asks for another width, which it
        takes only once the old one's frames are drained)."""
        if self._pool is None or self._pool_size != width:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=width,
                                            thread_name_prefix="inference-worker")
            self._pool_size = width
        return self._pool

    def _drain(self) -> None:
        while self._inflight:
            self._finish(self._inflight.popleft().result())

    def _finish(self, done: Any) -> None:
        """Inference thread: hand an Inferred on, or count and log a Failed frame."""
        if isinstance(done, Failed):
            self.stats.record_error()
            if self._errors_logged < 5:
                log.error("inference failed on frame %s with %s: %s", done.frame.seq,
                          done.model.ref, done.error)
                self._errors_logged += 1
            self.result(done.model.ref, False, None, str(done.error))
            return
        self.out.put(done)
        self.frames_done += 1
        if self.max_frames is not None and self.frames_done >= self.max_frames \
                and not self.stop.is_set():
            log.info("processed %d frames (--max-frames)", self.frames_done)
            self.stop.set()

    def _infer(self, model: ActiveModel, item: Any) -> Any:
        """The Inferred outputs of `model` for a Captured item, or Failed. Runs in the
        inference thread, or in a worker of its pool: it touches nothing shared."""
        frame = item.frame
        preprocess_ms = item.preprocess_ms
        t0 = time.monotonic()
        try:
            if model.preprocessor is None:
                outputs = model.backend.infer_frame(frame.image)
            else:
                tensor = item.tensor
                if tensor is None or item.prep is not model.preprocessor:
                    # made for the model before a swap (or not at all): make it again
                    tensor = model.preprocessor(frame.image)
                    preprocess_ms += (time.monotonic() - t0) * 1000.0
                    t0 = time.monotonic()
                outputs = model.backend.infer(tensor)
        except Exception as exc:  # a failing model must not stop the loop
            return Failed(frame, model, exc)
        return Inferred(frame, outputs, model, (time.monotonic() - t0) * 1000.0, preprocess_ms)
