"""The `tensorrt` module itself: importing it, the one process-wide logger, its plugins.

`tensorrt` is imported only when used, so `import agent.backends.tensorrt` works without it.
"""

import logging
import threading
from typing import Any, Dict, List

from ...errors import BackendError

log = logging.getLogger(__name__)

TRT_MISSING = ("TensorRT is not installed: on a Jetson it comes with JetPack "
               "(python3-libnvinfer); on x86 `pip install tensorrt`")


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a BackendError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(TRT_MISSING)
    except Exception as exc:  # a broken install (missing libnvinfer symbol, numpy mismatch...)
        raise BackendError("{} (`import tensorrt` failed: {}: {})".format(
            TRT_MISSING, type(exc).__name__, exc))
    if not hasattr(trt, "Builder"):
        # e.g. only the `tensorrt-stubs` package: a namespace package with .pyi files.
        raise BackendError("{} (found only a `tensorrt` package without the library at {})"
                           .format(TRT_MISSING, list(getattr(trt, "__path__", []))))
    return trt


def trt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


_LOGGERS = {}  # type: Dict[int, Any]
_LOGGERS_LOCK = threading.Lock()


def make_logger(trt: Any) -> Any:
    """THE trt.ILogger of this process: forwards to Python logging, remembers recent errors.

    One per process (per `tensorrt` module), because TensorRT before 8.4 keeps only the first
    logger it is given and sends every later message there (NVIDIA/TensorRT#1475): a second
    logger would never see its build's errors. Callers take `mark()` before their work and
    read `recent_errors(since=mark)` after it.
    """
    with _LOGGERS_LOCK:
        held = _LOGGERS.get(id(trt))
        if held is None or held[0] is not trt:
            held = (trt, _new_logger(trt))
            _LOGGERS[id(trt)] = held
    return held[1]


def _new_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors = []  # type: List[str]
            self.count = 0  # errors ever logged
            self._lock = threading.Lock()

        def mark(self) -> int:
            return self.count

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                with self._lock:
                    self.errors.append(str(msg))
                    self.count += 1
                    del self.errors[:-20]
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.INFO:
                log.info("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def recent_errors(self, n: int = 3, since: int = 0) -> str:
            with self._lock:
                fresh = min(len(self.errors), max(0, self.count - since))
                errors = self.errors[len(self.errors) - fresh:] if fresh else []
            return " | ".join(errors[-n:])

    return _Logger()


_PLUGINS_READY = {}  # type: Dict[int, Any]


def init_plugins(trt: Any, logger: Any) -> None:
    """Register TensorRT's bundled plugins once per process, before parsing: the 8.x ONNX
    parser imports NonMaxSuppression (and others) as plugins from that registry."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        return
    with _LOGGERS_LOCK:
        if _PLUGINS_READY.get(id(trt)) is trt:
            return
        _PLUGINS_READY[id(trt)] = trt
    init(logger, "")
