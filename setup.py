"""edge-agent: managed inference for NVIDIA Jetson and other machines."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version() -> str:
    with open(os.path.join(HERE, "agent", "__init__.py"), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in agent/__init__.py")


def readme() -> str:
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    # UTF-8 whatever the locale: under LANG=C, Python 3.6 would decode with ASCII and fail.
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def model_files():
    out = []
    for root, _dirs, files in os.walk(os.path.join(HERE, "models")):
        rel = os.path.relpath(root, HERE)
        keep = [os.path.join(rel, f) for f in files if not f.endswith(".py")]
        if keep:
            out.append((os.path.join("share", "edge-agent", rel), keep))
    return out


setup(
    name="edge-agent",
    version=version(),
    description="Managed inference daemon for NVIDIA Jetson: TensorRT engines, MQTT, telemetry",
    long_description=readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["agent", "agent.*"]),
    package_data={"agent.view": ["page.html"]},  # the live view's web page
    python_requires=">=3.6",
    install_requires=[
        "numpy<2; python_version<'3.9'",
        "numpy; python_version>='3.9'",
        "pyyaml",
        "paho-mqtt>=1.6,<2; python_version<'3.7'",
        "paho-mqtt>=1.6,<3; python_version>='3.7'",
    ],
    extras_require={
        # ONNX Runtime: the fallback backend (CI, laptops, boards without TensorRT).
        "onnxruntime": ["onnxruntime"],
        # Desktop OpenCV. Never on a Jetson: its system cv2 has GStreamer, pip wheels do not.
        "opencv": ["opencv-python-headless"],
        # Jetson extras: TensorRT and OpenCV come from JetPack, not pip. pycuda compiles against
        # /usr/local/cuda (PATH and CUDA_INC_DIR: tools/jetson/setup.sh sets them). Not
        # jetson-stats: it installs the jtop service and refuses a venv; install it system-wide
        # (sudo -H pip3 install -U jetson-stats) and a --system-site-packages venv sees it.
        "jetson": ["pycuda<=2022.1; python_version<'3.8'", "pycuda; python_version>='3.8'"],
        "nvml": ["nvidia-ml-py"],
        "signing": ["cryptography"],
        # `edge-agent convert` (operator machines, not devices): Keras/SavedModel/TFLite to ONNX.
        "convert": ["tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime"],
        "tests": ["pytest", "pytest-randomly", "vermin", "onnx", "hypothesis", "cryptography", "mypy"],
    },
    data_files=model_files(),
    entry_points={"console_scripts": ["edge-agent=agent.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.6",
        "Programming Language :: Python :: 3.12",
        "Operating System :: POSIX :: Linux",
    ],
)
