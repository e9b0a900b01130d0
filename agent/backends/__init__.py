"""Inference backends and the choice between them.

`open_backend` walks the degradation chain and says why it stepped down:
TensorRT at the asked precision -> TensorRT fp32 -> ONNX Runtime. Keeping the previous model
when even that fails is the caller's job (it still holds the old backend).
"""

import logging
from typing import Callable, List, Optional, Tuple

from ..errors import AgentError, BackendError
from ..store.package import ModelPackage
from .base import Backend, BackendOptions

log = logging.getLogger(__name__)

KINDS = ("auto", "tensorrt", "onnxruntime")

# progress(phase, fraction or None, detail)
Progress = Callable[[str, Optional[float], str], None]


def tensorrt_available() -> bool:
    try:
        import tensorrt
    except Exception:
        return False
    # Type stubs (tensorrt-stubs) also import as `tensorrt`, but without a Builder.
    return hasattr(tensorrt, "Builder")


def _make(kind: str, package: ModelPackage, options: BackendOptions,
          progress: Optional[Progress]) -> Backend:
    if kind == "tensorrt":
        from .tensorrt import TensorRTBackend
        return TensorRTBackend(package, options, progress=progress).load()
    from .onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend(package, options).load()


def plan_chain(options: BackendOptions) -> List[Tuple[str, BackendOptions]]:
    """The (kind, options) attempts for the configured backend, best first."""
    kind = options.kind
    if kind == "onnxruntime":
        return [("onnxruntime", options)]
    if kind == "auto" and not tensorrt_available():
        return [("onnxruntime", options)]
    chain = [("tensorrt", options)]
    if options.precision != "fp32":
        chain.append(("tensorrt", options.copy(precision="fp32")))
    chain.append(("onnxruntime", options))
    return chain


def open_backend(package: ModelPackage, options: BackendOptions,
                 progress: Optional[Progress] = None) -> Tuple[Backend, List[str]]:
    """Load the best backend the chain allows; returns it with the reasons for each step down."""
    reasons = []  # type: List[str]
    last_error = None  # type: Optional[Exception]
    for kind, opts in plan_chain(options):
        try:
            backend = _make(kind, package, opts, progress)
        except AgentError as exc:
            last_error = exc
            reasons.append("{} {} failed: {}".format(kind, opts.precision if kind == "tensorrt"
                                                     else "", exc).replace("  ", " "))
            log.warning("backend %s (%s) unavailable for %s: %s", kind, opts.precision,
                        package.ref, exc)
            continue
        return backend, reasons
    raise BackendError("no backend could load model {}: {}".format(
        package.ref, "; ".join(reasons) if reasons else last_error))
