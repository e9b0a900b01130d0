"""ONNX Runtime backend: the reference implementation and the fallback where TensorRT is absent."""

import os
from typing import Dict, Optional

import numpy as np

from ..errors import BackendError
from .base import Backend


class OnnxRuntimeBackend(Backend):
    """Runs the package's ONNX file with ONNX Runtime (CUDA provider when present, else CPU)."""

    name = "onnxruntime"

    def _load_impl(self) -> None:
        try:
            import onnxruntime as ort
        except Exception as exc:  # ImportError, or a broken install raising anything else
            raise BackendError("ONNX Runtime cannot be imported ({}: {}): pip install onnxruntime "
                               "(on a Jetson, use NVIDIA's onnxruntime-gpu wheel for your JetPack)"
                               .format(type(exc).__name__, exc))
        path = self.package.onnx_path
        if not os.path.isfile(path):
            raise BackendError("model {}: {} does not exist".format(self.package.ref, path))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = intra_op_threads(self.options.threads, self.parallel(),
                                        os.cpu_count() or 1)
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not self.options.spin:
            # By default idle workers sleep instead of busy-waiting for the next inference.
            # Measured on 2 cores at 30 fps (telemetry): spinning cut the capture-to-publish
            # p50 from 12-16 ms to 12-13 ms but held the agent at ~141 % CPU instead of ~63 %,
            # and takes cores from the capture and publish threads when saturated.
            for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
                try:
                    opts.add_session_config_entry(key, "0")
                except Exception:  # very old ONNX Runtime without session config entries
                    pass
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in available] or available
        try:
            self._session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            raise BackendError("model {}: ONNX Runtime cannot load {}: {}".format(
                self.package.ref, path, str(exc).strip().splitlines()[0] if str(exc) else exc))
        inputs = self._session.get_inputs()
        first = inputs[0] if inputs else None
        self._adopt_io("ONNX model", [i.name for i in inputs], first.shape if first else [],
                       first is not None and first.type == "tensor(float)",
                       first.type if first else "", [o.name for o in self._session.get_outputs()],
                       check_batch=True)
        self.providers = self._session.get_providers()
        self.precision = "fp32"

    def parallel(self) -> int:
        # InferenceSession.run may be called from several threads at once; with one intra-op
        # thread each call runs on its caller's thread. On the 2-core VM (bundled model, CPU):
        # two such callers gave 332 inferences/s against 213 for one call on two intra-op
        # threads, at 199 % against 170 % CPU.
        return max(1, int(self.options.workers))

    def _infer_impl(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        outputs = self._session.run(None, {self.input_name: tensor})
        return dict(zip(self.output_names, outputs))

    def _close_impl(self) -> None:
        self._session = None

    def describe(self):
        info = super(OnnxRuntimeBackend, self).describe()
        info["providers"] = list(getattr(self, "providers", []))
        info["workers"] = self.parallel()
        return info


def intra_op_threads(threads: Optional[int], workers: int, cpus: int) -> Optional[int]:
    """ONNX Runtime's intra-op threads: `backend.threads` when set; else with one worker None
    (ONNX Runtime's own default: one per core), with several the cores shared among them."""
    if threads:
        return int(threads)
    if workers > 1:
        return max(1, cpus // workers)
    return None
