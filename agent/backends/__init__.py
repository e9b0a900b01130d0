"""Inference backends: the registry of them and the fallback chain between them.

A backend is one module with one `Backend` subclass (see base.py) and one line in BACKENDS,
best first. `open_backend` walks the chain for the configured `backend.kind` and says why it
stepped down: TensorRT at the asked precision -> TensorRT fp32 -> ONNX Runtime. Keeping the
previous model when even that fails is the caller's job (it still holds the old backend).
"""

import importlib
import logging
from typing import Any, List, Optional, Tuple

from ..errors import AgentError, BackendError, Cancelled
from ..store.package import ModelPackage
from .base import PRECISIONS, Backend, BackendOptions, Progress

log = logging.getLogger(__name__)

# kind -> (module in this package, Backend subclass), best first. The last one is the
# reference every chain ends with (and the validation gate compares against).
BACKENDS = (
    ("tensorrt", "tensorrt", "TensorRTBackend"),
    ("onnxruntime", "onnxruntime", "OnnxRuntimeBackend"),
)
# backend.kind: "auto" takes the best backend whose library is installed.
KINDS = ("auto",) + tuple(kind for kind, _, _ in BACKENDS)

__all__ = ["BACKENDS", "KINDS", "PRECISIONS", "Backend", "BackendOptions", "open_backend",
           "plan_chain", "Progress"]


def backend_class(kind: str) -> type:
    for name, module, cls in BACKENDS:
        if name == kind:
            return getattr(importlib.import_module("." + module, __name__), cls)
    raise BackendError("backend.kind: {!r} is not one of {}".format(kind, ", ".join(KINDS)))


def plan_chain(options: BackendOptions) -> List[Tuple[str, BackendOptions]]:
    """The (kind, options) attempts for the configured backend, best first.

    From the configured kind (under "auto", the best one whose library imports) down the
    registry; a backend with reduced-precision modes is tried again at fp32 before the next.
    """
    kinds = [kind for kind, _, _ in BACKENDS]
    if options.kind == "auto":
        kinds = [kind for kind in kinds if backend_class(kind).available()] or kinds[-1:]
    else:
        kinds = kinds[kinds.index(options.kind):] if options.kind in kinds else [options.kind]
    chain = []  # type: List[Tuple[str, BackendOptions]]
    for kind in kinds:
        chain.append((kind, options))
        if backend_class(kind).precisions != ("fp32",) and options.precision != "fp32":
            chain.append((kind, options.copy(precision="fp32")))
    return chain


def open_backend(package: ModelPackage, options: BackendOptions,
                 progress: Optional[Progress] = None,
                 cancel: Any = None) -> Tuple[Backend, List[str]]:
    """Load the best backend the chain allows; returns it with the reasons for each step down.
    `cancel.is_set()` stops a TensorRT build where TensorRT can (10+): Cancelled, and no step
    down."""
    reasons = []  # type: List[str]
    last_error = None  # type: Optional[Exception]
    for kind, opts in plan_chain(options):
        try:
            backend = backend_class(kind)(package, opts, progress=progress, cancel=cancel).load()
        except Cancelled:
            raise
        except AgentError as exc:
            last_error = exc
            precision = opts.precision if backend_class(kind).precisions != ("fp32",) else ""
            reasons.append("{} {} failed: {}".format(kind, precision, exc).replace("  ", " "))
            log.warning("backend %s (%s) unavailable for %s: %s", kind, opts.precision,
                        package.ref, exc)
            continue
        return backend, reasons
    raise BackendError("no backend could load model {}: {}".format(
        package.ref, "; ".join(reasons) if reasons else last_error))
