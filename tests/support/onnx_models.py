"""ONNX classifiers on 1x3x224x224 for update tests: NaN weights, or heavy convolutions (slow)."""

import numpy as np


def write_model(path, nan=False, slow=False):
    """A classifier on 1x3x224x224 built with the onnx package: NaN weights, or heavy convs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    nodes, inits = [], []
    x = "input"
    channels = 3
    if slow:
        for i in range(6):
            w = rng.randn(64, channels, 3, 3).astype(np.float32) * 0.05
            inits.append(numpy_helper.from_array(w, "w{}".format(i)))
            nodes.append(helper.make_node("Conv", [x, "w{}".format(i)], ["c{}".format(i)],
                                          pads=[1, 1, 1, 1]))
            x, channels = "c{}".format(i), 64
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"]))
    inits.append(numpy_helper.from_array(np.array([1, channels], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", ["g", "shape"], ["flat"]))
    w = rng.randn(channels, 1000).astype(np.float32)
    if nan:
        w[:] = np.nan
    inits.append(numpy_helper.from_array(w, "fc"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["logits"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
