"""The backend interface: one lifecycle for TensorRT and ONNX Runtime.

Public methods check state and then call the `*_impl` hooks a backend overrides, so every
backend reports misuse the same way. A backend is created, loaded and used by ONE thread (the
inference thread); with TensorRT that thread also owns the CUDA context.
"""

from typing import Any, Dict, Optional

import numpy as np

from ..errors import BackendError
from ..store.package import ModelPackage


class BackendOptions(object):
    """What the config's `backend` section asks of a backend (see config.yaml)."""

    def __init__(self, kind: str = "auto", precision: str = "fp16", workspace_mb: int = 256,
                 max_batch: int = 1, dla_core: Optional[int] = None,
                 calibration_dir: Optional[str] = None, preprocess: str = "auto",
                 state_dir: str = "./var", threads: Optional[int] = None,
                 validate: Any = None, spin: bool = False) -> None:
        self.kind = kind
        self.precision = precision
        self.workspace_mb = workspace_mb
        self.max_batch = max_batch
        self.dla_core = dla_core
        self.calibration_dir = calibration_dir
        self.preprocess = preprocess
        self.state_dir = state_dir
        self.threads = threads
        self.validate = validate  # backend.validate: {frames, min_top1_agreement}
        # CPU backends: worker threads busy-wait between inferences (a little less latency)
        # or sleep (far less CPU and power; more CPU for the other threads when saturated).
        self.spin = spin

    def copy(self, **changes: Any) -> "BackendOptions":
        values = dict(self.__dict__)
        values.update(changes)
        return BackendOptions(**values)


class Backend(object):
    """Runs one model. Subclasses implement _load_impl, _infer_impl and _close_impl."""

    name = "base"

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        self.package = package
        self.options = options
        self.precision = "fp32"
        self.loaded = False
        self.closed = False
        # Filled by _load_impl: the resolved input/output tensor names.
        self.input_name = package.input.name
        self.output_names = []  # type: list

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

    # GPU preprocessing: a backend that can take the raw frame overrides these two.
    def accepts_frames(self) -> bool:
        """True when infer_frame() does preprocessing on the device itself."""
        return False

    def infer_frame(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        raise BackendError("{}: this backend does not preprocess frames itself".format(self.name))

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
