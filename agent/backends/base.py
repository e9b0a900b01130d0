"""The backend interface: one lifecycle for every backend, with its options and precisions.

Public methods check state and then call the `*_impl` hooks a backend overrides, so every
backend reports misuse the same way. A backend is created, loaded and used by ONE thread (the
inference thread); with TensorRT that thread also owns the CUDA context.
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import BackendError
from ..store.package import ModelPackage
from .validation import ValidationPolicy

log = logging.getLogger(__name__)

# backend.precision (config.yaml) and `models build --precision`: what a backend is asked to
# run at. TensorRT honours it (or says why not); ONNX Runtime always runs fp32.
PRECISIONS = ("fp32", "fp16", "int8")


# progress(phase, fraction or None, detail); may be called from a helper thread while building.
Progress = Callable[[str, Optional[float], str], None]


def report_progress(progress: Optional[Progress], phase: str, fraction: Optional[float],
                    detail: str) -> None:
    """Tell a progress sink; a broken sink is logged and never breaks a load or a build."""
    if progress is None:
        return
    try:
        progress(phase, fraction, detail)
    except Exception:
        log.exception("progress callback failed")


def check_precision(precision: str) -> None:
    """BackendError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise BackendError("backend.precision: {!r} is not one of {}".format(
            precision, ", ".join(PRECISIONS)))


class BackendOptions(object):
    """What the config's `backend` section asks of a backend (see config.yaml), with the
    config's paths resolved; the fallback chain copies it with another precision."""

    def __init__(self, kind: str = "auto", precision: str = "fp16", workspace_mb: int = 256,
                 max_batch: int = 1, dla_core: Optional[int] = None,
                 calibration_dir: Optional[str] = None, preprocess: str = "auto",
                 state_dir: str = "./var", threads: Optional[int] = None,
                 validate: Any = None, spin: bool = False, workers: int = 1) -> None:
        self.kind = kind
        self.precision = precision
        self.workspace_mb = workspace_mb
        self.max_batch = max_batch
        self.dla_core = dla_core
        self.calibration_dir = calibration_dir
        self.preprocess = preprocess
        self.state_dir = state_dir
        self.threads = threads
        # backend.validate: a ValidationPolicy, or the config section with the same attributes.
        self.validate = validate if validate is not None else ValidationPolicy()
        # CPU backends: worker threads busy-wait between inferences (a little less latency)
        # or sleep (far less CPU and power; more CPU for the other threads when saturated).
        self.spin = spin
        # Frames in flight at once (backend.workers), for a backend whose infer() may run in
        # several threads at a time (parallel()); any other runs one frame at a time.
        self.workers = workers

    def copy(self, **changes: Any) -> "BackendOptions":
        values = dict(self.__dict__)
        values.update(changes)
        return BackendOptions(**values)


class Backend(object):
    """Runs one model. Subclasses implement _load_impl, _infer_impl and _close_impl."""

    name = "base"
    # The precisions it can run at: anything but fp32 gets an fp32 retry in the fallback chain.
    precisions = ("fp32",)  # type: Sequence[str]

    def __init__(self, package: ModelPackage, options: BackendOptions,
                 progress: Optional[Progress] = None, cancel: Any = None) -> None:
        self.package = package
        self.options = options
        self.progress = progress  # (phase, fraction or None, detail) during a long load
        self.cancel = cancel  # is_set() True: stop a long load (a TensorRT build) if it can
        self.precision = "fp32"
        self.loaded = False
        self.closed = False
        # Filled by _load_impl: the resolved input/output tensor names.
        self.input_name = package.input.name
        self.output_names = []  # type: list

    @classmethod
    def available(cls) -> bool:
        """Whether its library is installed: `backend.kind: auto` skips it when not."""
        return True

    def load(self) -> "Backend":
        if self.closed:
            raise BackendError("{}: load() after close()".format(self.name))
        if not self.loaded:
            self._load_impl()
            self.loaded = True
        return self

    def infer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one input tensor; returns {output name: array}. The arrays belong to the caller."""
        if not self.loaded or self.closed:
            raise BackendError("{}: infer() on a backend that is not loaded".format(self.name))
        return self._infer_impl(tensor)

    def close(self) -> None:
        if self.loaded and not self.closed:
            try:
                self._close_impl()
            finally:
                self.closed = True

    def describe(self) -> Dict[str, Any]:
        """What the status topic says about the model in use."""
        info = self.package.describe()
        info.update({"backend": self.name, "precision": self.precision})
        return info

    def release_thread(self) -> None:
        """Hand the backend to another thread (call in the thread that used it last).

        Backends with per-thread state (TensorRT's CUDA context) let it go here; the next
        thread that calls infer() or close() takes it. A no-op for the others.
        """

    def parallel(self) -> int:
        """How many infer() calls may run at once, each in its own thread (backend.workers
        where the library allows it); 1 for a backend with per-thread state."""
        return 1

    # GPU preprocessing: a backend that can take the raw frame overrides these two.
    def accepts_frames(self) -> bool:
        """True when infer_frame() does preprocessing on the device itself."""
        return False

    def infer_frame(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        raise BackendError("{}: this backend does not preprocess frames itself".format(self.name))

    def frame_pool(self) -> Any:
        """Page-locked buffers for the capture thread to write frames into (a backend that
        uploads frames to a device), else None."""
        return None

    def _adopt_io(self, what: str, inputs: Sequence[Any], input_shape: Sequence[Any],
                  input_is_float: bool, input_type: str, output_names: List[str],
                  check_batch: bool) -> None:
        """Check the model's inputs and outputs against the manifest, then take their names.

        `what` names the model form in messages ("ONNX model", "engine"); `inputs` are the model's
        input names. Unknown dimensions (negative, None or symbolic) match anything; the batch
        dimension is compared only when `check_batch`.
        """
        ref = self.package.ref
        if len(inputs) != 1:
            raise BackendError("model {}: the {} has {} inputs; image classification models "
                               "take exactly one".format(ref, what, len(inputs)))
        want = list(self.package.input.shape)
        have = list(input_shape)
        first = 0 if check_batch else 1
        if len(have) != len(want) or any(isinstance(h, int) and h >= 0 and h != w
                                          for h, w in zip(have[first:], want[first:])):
            raise BackendError("model {}: the {} input {!r} has shape {} but the manifest says "
                               "{}; fix input.shape in model.yaml".format(
                                   ref, what, inputs[0], have, want))
        if not input_is_float:
            raise BackendError("model {}: {} input {!r} is {}; the agent feeds float32 "
                               "(re-export the model with a float input)".format(
                                   ref, what, inputs[0], input_type))
        wanted = self.package.output.name
        if wanted and wanted not in output_names:
            raise BackendError("model {}: output {!r} named in the manifest is not in the {} "
                               "(outputs: {})".format(ref, wanted, what, ", ".join(output_names)))
        self.input_name = inputs[0]
        self.output_names = list(output_names)

    def _report(self, phase: str, fraction: Optional[float], detail: str) -> None:
        report_progress(self.progress, phase, fraction, detail)

    def _load_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()
