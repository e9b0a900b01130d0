"""The environment fingerprint published on the retained `info` topic and shown by `check`."""

import os
import platform
import socket
import sys
from typing import Any, Dict, Optional

from . import __version__


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def board_model(root: str = "/") -> Optional[str]:
    """`/proc/device-tree/model` on Jetson and other device-tree boards."""
    return _read(os.path.join(root, "proc/device-tree/model"))


def l4t_release(root: str = "/") -> Optional[str]:
    """L4T release from /etc/nv_tegra_release, e.g. 'R32.7.1' (JetPack 4.6.1)."""
    text = _read(os.path.join(root, "etc/nv_tegra_release"))
    if not text:
        return None
    first = text.splitlines()[0]
    # "# R32 (release), REVISION: 7.1, GCID: ..."
    parts = [p.strip() for p in first.lstrip("# ").split(",")]
    major = parts[0].split(" ")[0] if parts else ""
    revision = ""
    for p in parts:
        if p.upper().startswith("REVISION:"):
            revision = p.split(":", 1)[1].strip()
    return "{}.{}".format(major, revision) if major and revision else first


def _version(module: str) -> Optional[str]:
    import importlib
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return getattr(mod, "__version__", None) or getattr(mod, "VERSION", None) or "unknown"


def gpu_info() -> Dict[str, Any]:
    """Name and compute capability of GPU 0 through NVML when available (discrete GPUs)."""
    try:
        import pynvml
    except Exception:
        return {}
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            return {"name": name, "compute_capability": "{}.{}".format(major, minor)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return {}


def fingerprint(root: str = "/") -> Dict[str, Any]:
    info = {
        "agent": __version__,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "board": board_model(root),
        "l4t": l4t_release(root),
        "versions": {
            "tensorrt": _version("tensorrt"),
            "onnxruntime": _version("onnxruntime"),
            "opencv": _version("cv2"),
            "numpy": _version("numpy"),
            "paho_mqtt": _version("paho.mqtt"),
        },
        "gpu": gpu_info() or None,
    }
    cuda = _read(os.path.join(root, "usr/local/cuda/version.txt"))
    if cuda:
        info["versions"]["cuda"] = cuda.split()[-1]
    nvp = _read(os.path.join(root, "etc/nvpmodel.conf"))
    if nvp is not None:
        info["nvpmodel_conf"] = True
    return info


if __name__ == "__main__":  # pragma: no cover
    import json
    json.dump(fingerprint(), sys.stdout, indent=2)
