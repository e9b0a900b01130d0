"""`edge-agent check`: the environment doctor. Says what this machine has, what the config
needs, and how to fix what is missing. Exit code 0 only when nothing the config needs fails."""

import argparse
import json
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import Config
from ..redact import redact_text
from . import config_from_args

OK, WARN, FAIL = "ok", "warn", "FAIL"


class Report(object):
    def __init__(self) -> None:
        self.rows = []  # type: List[Dict[str, str]]

    def add(self, name: str, status: str, detail: str) -> None:
        self.rows.append({"check": name, "status": status, "detail": detail})

    @property
    def failed(self) -> bool:
        return any(r["status"] == FAIL for r in self.rows)


def _module(name: str) -> Tuple[Optional[Any], Optional[str]]:
    import importlib
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or a broken native library
        return None, "{}: {}".format(type(exc).__name__, exc)


def check_python(report: Report) -> None:
    v = sys.version_info
    status = OK if v >= (3, 6) else FAIL
    report.add("python", status, "{}.{}.{} at {}".format(v[0], v[1], v[2], sys.executable))


# Where Ubuntu's python3-opencv puts its cv2 (a single .so): ahead of JetPack's in sys.path.
UBUNTU_CV2_DIR = "/usr/lib/python3/dist-packages"


def describe_opencv(cv2: Any, root: str = "/") -> Tuple[str, str, bool]:
    """(status, detail, has GStreamer) for the imported cv2: its version, the file Python
    loaded it from and whether it was built with GStreamer. On a Jetson a cv2 without GStreamer
    is not JetPack's (a pip wheel, or Ubuntu's python3-opencv 3.2 shadowing it): a warning with
    the fix (the `gstreamer` row fails when the configured source needs it)."""
    from ..sources.platform import NO_GSTREAMER_FIX, gstreamer_in_build, is_jetson
    gst = gstreamer_in_build(cv2.getBuildInformation())
    path = getattr(cv2, "__file__", None) or "(no __file__)"
    detail = "{} from {} (GStreamer: {})".format(getattr(cv2, "__version__", "?"), path,
                                                 "yes" if gst else "no")
    if gst or not is_jetson(root):
        return OK, detail, gst
    if os.path.dirname(path) == UBUNTU_CV2_DIR:
        detail += ("; this is Ubuntu's python3-opencv (no GStreamer), which shadows JetPack's "
                   "cv2: sudo apt-get remove python3-opencv")
    else:
        detail += "; not JetPack's cv2: " + NO_GSTREAMER_FIX
    return WARN, detail, gst


def check_modules(report: Report, config: Config) -> None:
    for name, needed, fix in (
            ("numpy", True, "pip install 'numpy<2' (on a Jetson use the system python3-numpy)"),
            ("yaml", True, "pip install pyyaml"),
            ("paho.mqtt.client", True, "pip install 'paho-mqtt>=1.6,<3' (1.6.x on Python 3.6)")):
        mod, err = _module(name)
        report.add(name.split(".")[0], OK if mod else (FAIL if needed else WARN),
                   getattr(mod, "__version__", "present") if mod else "{}; fix: {}".format(
                       err, fix))
    cv2, err = _module("cv2")
    if cv2 is None:
        from ..sources.platform import JETPACK_CV2
        report.add("opencv", FAIL, "{}; fix: on a Jetson use {}; elsewhere pip install "
                   "opencv-python-headless".format(err, JETPACK_CV2))
    else:
        from ..sources.platform import NO_GSTREAMER_FIX, needs_gstreamer
        status, detail, gst = describe_opencv(cv2)
        uri = config.source.uri
        report.add("opencv", status, detail)
        if needs_gstreamer(uri):
            report.add("gstreamer", OK if gst else FAIL,
                       "OpenCV has GStreamer, which source {} needs".format(redact_text(uri))
                       if gst else "source {} needs OpenCV built with GStreamer; {}".format(
                           redact_text(uri), NO_GSTREAMER_FIX))
        elif uri.lower().startswith("v4l2:") and not gst:
            report.add("gstreamer", WARN, "no GStreamer in OpenCV: {} is read through OpenCV's "
                       "V4L2 backend instead of the v4l2src pipeline".format(uri))
    kind = config.backend.kind
    ort, err = _module("onnxruntime")
    report.add("onnxruntime", OK if ort else (FAIL if kind == "onnxruntime" else WARN),
               "{} providers {}".format(ort.__version__, ",".join(ort.get_available_providers()))
               if ort else "{}; fix: pip install onnxruntime".format(err))
    trt, err = _module("tensorrt")
    report.add("tensorrt", OK if trt else (FAIL if kind == "tensorrt" else WARN),
               getattr(trt, "__version__", "present") if trt else
               "not installed ({}); on a Jetson it comes with JetPack (python3-libnvinfer; use "
               "the system Python or a venv with --system-site-packages); ONNX Runtime is used "
               "instead".format(err.split(":")[0] if err else ""))
    if trt is not None:
        cuda, err = _module("pycuda.driver")
        report.add("pycuda", OK if cuda else FAIL,
                   "present" if cuda else "{}; fix: pip install 'pycuda<=2022.1' on Python 3.6 "
                   "(needs nvcc on PATH or CUDA_INC_DIR)".format(err))
    if not ort and not trt:
        report.add("backend", FAIL, "no inference backend: install onnxruntime or TensorRT")


def check_power(report: Report, config: Config) -> None:
    if os.path.exists("/run/jtop.sock"):
        report.add("jtop", OK, "jtop service socket /run/jtop.sock present")
    try:
        from ..power import coverage_label, discover_power
    except ImportError:
        return
    try:
        reader = discover_power(config.telemetry.power)
    except Exception as exc:
        report.add("power", FAIL if config.telemetry.power not in ("auto", "none") else WARN,
                   str(exc))
        return
    try:
        status = OK if reader.source != "none" or config.telemetry.power == "none" else WARN
        report.add("power", status, "source: {}{}".format(
            reader.source, " (measures: {})".format(coverage_label(reader.coverage))
            if reader.source != "none" else
            " (no readable power sensor: energy per inference is not reported)"))
    finally:
        reader.close()


def check_broker(report: Report, config: Config) -> None:
    host, port = config.mqtt.host, config.mqtt.port
    try:
        sock = socket.create_connection((host, port), timeout=2.0)
        sock.close()
        report.add("broker", OK, "{}:{} accepts TCP connections".format(host, port))
    except (OSError, socket.timeout) as exc:
        # The agent runs without a broker (it spools), so this is a warning.
        report.add("broker", WARN, "{}:{} unreachable ({}); the agent keeps running and "
                   "spools messages; fix mqtt.host/mqtt.port or start the broker".format(
                       host, port, exc))


SOURCE_TIMEOUT_S = 30.0  # camera sources give up on their own sooner (open 20 s, stall 5 s)


def check_source(report: Report, config: Config, timeout: float = SOURCE_TIMEOUT_S) -> None:
    """Open the configured source and read one frame, in a thread, so a missing or hung camera
    makes this check fail after `timeout` instead of hanging `check`."""
    import threading
    from ..sources import source_from_config
    cfg = config.source
    shown = redact_text(cfg.uri)
    outcome = []  # type: List[Tuple[str, str]]

    def probe() -> None:
        try:
            source = source_from_config(cfg, config.base_dir)
            source.open()
            try:
                image = source.read()
            finally:
                source.close()
            if image is None:
                outcome.append((FAIL, "{} opened but gave no frame".format(shown)))
            else:
                outcome.append((OK, "{} gives {}x{} frames".format(
                    shown, image.shape[1], image.shape[0])))
        except Exception as exc:
            outcome.append((FAIL, str(exc)))

    thread = threading.Thread(target=probe, name="check-source", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive() or not outcome:
        report.add("source", FAIL, "{} gave no frame within {:.0f} s (camera missing, busy or "
                   "stalled?)".format(shown, timeout))
        return
    report.add("source", outcome[0][0], outcome[0][1])


def check_model(report: Report, config: Config) -> None:
    from ..updates.loader import find_bundled_package
    try:
        package = find_bundled_package(config, config.model.name)
        package.verify()
        report.add("model", OK, "{} at {}".format(package.ref, package.root))
    except Exception as exc:
        report.add("model", FAIL, str(exc))


def check_state_dir(report: Report, config: Config) -> None:
    path = config.resolve(config.device.state_dir)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write("ok")
        os.unlink(probe)
        report.add("state_dir", OK, "{} is writable".format(path))
    except OSError as exc:
        report.add("state_dir", FAIL, "{}: {}; fix device.state_dir or its permissions".format(
            path, exc))


def check_priority(report: Report, config: Config) -> None:
    """Whether helper threads can run at idle priority here (agent/priority.py)."""
    from ..priority import HelperPriority
    priority = HelperPriority(config.backend.helper_priority)
    if priority.active:
        report.add("priority", OK, "helper threads at SCHED_IDLE (inference first); a starved "
                                   "one gets normal priority back")
    elif config.backend.helper_priority == "normal":
        report.add("priority", OK, "helper threads at normal priority "
                                   "(backend.helper_priority: normal)")
    else:
        report.add("priority", WARN, "helper threads at normal priority: {}".format(
            priority.reason))


CHECKS = (check_python, check_modules, check_power, check_broker, check_source, check_model,
          check_state_dir, check_priority)  # type: Tuple[Callable[..., None], ...]


def run_check(config: Config, as_json: bool = False) -> int:
    report = Report()
    for check in CHECKS:
        if check is check_python:
            check(report)
        else:
            check(report, config)
    if as_json:
        json.dump({"ok": not report.failed, "checks": report.rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        width = max(len(r["check"]) for r in report.rows)
        for r in report.rows:
            print("{:<4} {:<{w}}  {}".format(r["status"], r["check"], r["detail"], w=width))
        print("")
        print("result: {}".format("FAIL: fix the lines marked FAIL" if report.failed
                                  else "ok"))
    return 1 if report.failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    return run_check(config_from_args(args), as_json=args.json)
