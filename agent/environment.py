"""The device's environment: board, L4T, CUDA, GPU, power mode and library versions.

`fingerprint()` is what the retained `info` topic publishes and `check` shows. (The engine
cache has its own fingerprint, of what one engine depends on: backends/tensorrt/engine_cache.py.)
"""

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
    """Name and compute capability of GPU 0: NVML on discrete GPUs, else CUDA through pycuda.

    A Jetson has no NVML, so there the CUDA driver answers (the same source the TensorRT
    backend uses for the engine-cache key). Nothing is made current: no context is created.
    """
    return _gpu_info_nvml() or _gpu_info_cuda()


def _gpu_info_nvml() -> Dict[str, Any]:
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
            return {"name": name, "compute_capability": "{}.{}".format(major, minor),
                    "source": "nvml"}
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return {}


def _gpu_info_cuda() -> Dict[str, Any]:
    try:
        import pycuda.driver as cuda
    except Exception:
        return {}
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return {}
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return {"name": str(device.name()),
                "compute_capability": "{}.{}".format(major, minor), "source": "cuda"}
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
    info["versions"]["cuda"] = cuda_version(root)
    info["nvpmodel"] = nvpmodel_mode(root)
    return info


def cuda_version(root: str = "/") -> Optional[str]:
    """CUDA toolkit version: version.json (CUDA 11+) or version.txt (CUDA 10, JetPack 4)."""
    text = _read(os.path.join(root, "usr/local/cuda/version.json"))
    if text:
        try:
            import json
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    text = _read(os.path.join(root, "usr/local/cuda/version.txt"))
    return text.split()[-1] if text else None


def nvpmodel_mode(root: str = "/") -> Optional[Dict[str, Any]]:
    """The Jetson power mode nvpmodel last set ("pmode:0000" in its status file), with its
    name from /etc/nvpmodel.conf when both are readable."""
    status = _read(os.path.join(root, "var/lib/nvpmodel/status"))
    if not status or ":" not in status:
        return None
    try:
        mode = int(status.split(":", 1)[1].strip())
    except ValueError:
        return None
    out = {"id": mode}  # type: Dict[str, Any]
    conf = _read(os.path.join(root, "etc/nvpmodel.conf")) or ""
    for line in conf.splitlines():
        line = line.strip()
        # e.g. "< POWER_MODEL ID=0 NAME=MAXN >"
        if line.startswith("< POWER_MODEL") and "ID={}".format(mode) in line.split():
            for part in line.split():
                if part.startswith("NAME="):
                    out["name"] = part[5:]
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    json.dump(fingerprint(), sys.stdout, indent=2)
