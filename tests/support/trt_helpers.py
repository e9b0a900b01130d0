"""Helpers for the TensorRT backend tests: install the doubles, make small model packages."""

import contextlib
import os
import shutil
import sys
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from support.paths import TESTS

HERE = TESTS
ROOT = os.path.dirname(HERE)

from support.doubles import pycuda_double  # noqa: E402
from support.doubles import trt_double  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "models", "efficientnet_lite0")
SAMPLES = os.path.join(ROOT, "models", "samples")

NANO = {"name": "NVIDIA Tegra X1", "cc": (5, 3), "memory": 4 << 30}
TX2 = {"name": "NVIDIA Tegra X2", "cc": (6, 2), "memory": 8 << 30}
XAVIER = {"name": "Xavier", "cc": (7, 2), "memory": 16 << 30}
ORIN = {"name": "Orin", "cc": (8, 7), "memory": 32 << 30}

_NAMES = ("tensorrt", "pycuda", "pycuda.driver", "pycuda.compiler", "pycuda.autoinit")


@contextlib.contextmanager
def doubles(generation: str = "10.3", device: Optional[Dict[str, Any]] = None) -> Iterator[Any]:
    """Install the pycuda and TensorRT doubles in sys.modules; restore afterwards."""
    saved = {name: sys.modules.get(name) for name in _NAMES}
    try:
        pycuda_double.install([dict(device or NANO)])
        trt_double.reset_knobs()
        trt = trt_double.install(generation)
        yield trt
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def switch_generation(generation: str, device: Optional[Dict[str, Any]] = None) -> Any:
    """Replace the installed TensorRT double (e.g. a JetPack upgrade), keeping pycuda's."""
    if device is not None:
        pycuda_double.DEVICES[:] = [dict(device)]
    return trt_double.install(generation)


def tiny_onnx(path: str, dynamic_batch: bool = False, opset: int = 13, classes: int = 10,
              size: int = 32, extra: Optional[str] = None, input_type: int = 1,
              dynamic_hw: bool = False) -> str:
    """A small classifier: Conv -> Relu -> GlobalAveragePool -> Reshape -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    batch = "N" if dynamic_batch else 1
    hw = ["H", "W"] if dynamic_hw else [size, size]
    inp = helper.make_tensor_value_info("input", input_type, [batch, 3] + hw)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(np.array([-1, 8], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "fc_b"),
    ]
    nodes = []
    source = "input"
    if input_type != 1:
        nodes.append(helper.make_node("Cast", ["input"], ["input_f"], to=TensorProto.FLOAT))
        source = "input_f"
    nodes += [
        helper.make_node("Conv", [source, "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu0"),
    ]
    last = "relu"
    if extra == "HardSwish":
        nodes.append(helper.make_node("HardSwish", ["relu"], ["hs"], name="hardswish0"))
        last = "hs"
    elif extra == "Pad":
        nodes.append(helper.make_node("Shape", ["relu"], ["shp"], name="shape0"))
        nodes.append(helper.make_node("Slice", ["shp", "s0", "s1"], ["pads_dyn"], name="slice0"))
        nodes.append(helper.make_node("Concat", ["pads_dyn", "pads_dyn"], ["pads"], axis=0,
                                      name="concat0"))
        nodes.append(helper.make_node("Sub", ["pads", "pads"], ["pads0"], name="sub0"))
        nodes.append(helper.make_node("Pad", ["relu", "pads0"], ["padded"], name="pad0"))
        inits += [numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
                  numpy_helper.from_array(np.array([4], dtype=np.int64), "s1")]
        last = "padded"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap0"),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"], name="reshape0"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc0"),
    ]
    outputs = [out]
    if extra == "ArgMax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["top"], axis=1, keepdims=0,
                                      name="argmax0"))
        outputs.append(helper.make_tensor_value_info("top", TensorProto.INT64, [batch]))
    if extra == "NonMaxSuppression":
        inits += [numpy_helper.from_array(np.zeros((1, 4, 4), np.float32), "boxes"),
                  numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "scores")]
        nodes.append(helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"],
                                      name="nms0"))
        outputs.append(helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3]))
    graph = helper.make_graph(nodes, "tiny", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tiny_package(folder: str, dynamic_batch: bool = False, version: str = "1",
                 resize: str = "stretch", name: str = "tiny", **kwargs: Any) -> Any:
    """A model package around tiny_onnx (32x32 RGB input, 10 classes)."""
    from agent.store.package import ModelPackage, sha256_file
    os.makedirs(folder, exist_ok=True)
    path = tiny_onnx(os.path.join(folder, "model.onnx"), dynamic_batch=dynamic_batch, **kwargs)
    with open(os.path.join(folder, "labels.txt"), "w") as handle:
        handle.write("\n".join("class{}".format(i) for i in range(10)) + "\n")
    manifest = ("name: {}\nversion: \"{}\"\nfile: model.onnx\nsha256: {}\nlabels: labels.txt\n"
                "input: {{name: input, shape: [1, 3, 32, 32], layout: NCHW, color: RGB,\n"
                "         resize: {{mode: {}}}, mean: [127.0, 127.0, 127.0],"
                " std: [128.0, 128.0, 128.0]}}\n"
                "output: {{name: logits, activation: softmax}}\n").format(
                    name, version, sha256_file(path), resize)
    with open(os.path.join(folder, "model.yaml"), "w") as handle:
        handle.write(manifest)
    return ModelPackage.load(folder)


def copy_samples(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(SAMPLES)):
        if name.lower().endswith((".jpg", ".png")):
            shutil.copy(os.path.join(SAMPLES, name), folder)
    return folder


def sample_frames() -> List[np.ndarray]:
    import cv2
    out = []
    for name in sorted(os.listdir(SAMPLES)):
        if name.lower().endswith((".jpg", ".png")):
            out.append(cv2.imread(os.path.join(SAMPLES, name), cv2.IMREAD_COLOR))
    return out


def register_kernel_emulator() -> None:
    """Let the pycuda double 'run' the preprocessing kernel via the numpy transcription."""
    from support.gpu_kernel_emulator import run_kernel
    from agent.backends.tensorrt.gpu_preprocess import KERNEL_NAME, KernelArgs

    def launch(args: Any, block: Any, grid: Any) -> None:
        src_ptr, pitch, dst_ptr = int(args[0]), int(args[1]), int(args[2])
        values = dict(zip(KernelArgs.FIELDS, args[3:]))
        kargs = KernelArgs(**values)
        # The frame's size is what the staging buffer holds: infer it from the allocation.
        height = _frame_height(src_ptr, pitch)
        raw = pycuda_double.device_read(src_ptr, height * pitch)
        frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, pitch // 3, 3)
        out = run_kernel(kargs, frame)
        pycuda_double.device_write(dst_ptr, out.astype(np.float32).tobytes())

    pycuda_double.KERNELS[KERNEL_NAME] = launch


def _frame_height(ptr: int, pitch: int) -> int:
    for base, data in pycuda_double._memory.items():
        if base == ptr:
            return len(data) // pitch
    raise AssertionError("kernel source pointer is not the start of a device buffer")
