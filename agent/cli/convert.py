"""`edge-agent convert`: a Keras file, TensorFlow SavedModel or TFLite file converted to ONNX.

Uses tf2onnx (the `convert` extra: tensorflow-cpu and tf2onnx, pinned in constraints/convert.txt)
with a static batch and opset 13, the newest TensorRT 8.2 takes; then runs the source framework
and ONNX Runtime on the same random input and reports the max abs difference, so a conversion
that changed the numbers is refused here. Runs on the operator's machine, never on a device.
"""

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Tuple

from ..errors import AgentError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _import_tf() -> Tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf2onnx
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise AgentError("`convert` needs TensorFlow and tf2onnx ({}: {}): pip install "
                         "'edge-agent[convert]' (a separate virtual environment is best: "
                         "TensorFlow is ~1.7 GB installed)".format(type(exc).__name__, exc))
    return tf, tf2onnx


def _static(tf: Any, shape: Any, batch: int, what: str) -> List[int]:
    dims = list(shape)
    dims[0] = batch
    if any(d is None for d in dims):
        raise AgentError("{}: input shape {} has dynamic dimensions besides the batch; "
                         "TensorRT 8.2 and the agent need a static input: rebuild the model "
                         "with a fixed input size".format(what, list(shape)))
    return [int(d) for d in dims]


def _from_keras(tf: Any, tf2onnx: Any, path: str, out: str, opset: int,
                batch: int) -> Callable[[Dict[str, Any]], Any]:
    import keras
    model = keras.models.load_model(path, compile=False)
    if len(model.inputs) != 1:
        raise AgentError("{}: the model has {} inputs; image classifiers take one".format(
            path, len(model.inputs)))
    inp = model.inputs[0]
    name = getattr(inp, "name", "input").split(":")[0] or "input"
    spec = (tf.TensorSpec(_static(tf, inp.shape, batch, path), tf.float32, name=name),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=out)
    return lambda feeds: model(next(iter(feeds.values())), training=False)


def _from_saved_model(tf: Any, tf2onnx: Any, path: str, out: str, opset: int,
                      batch: int) -> Callable[[Dict[str, Any]], Any]:
    loaded = tf.saved_model.load(path)
    if "serving_default" not in loaded.signatures:
        raise AgentError("{}: the SavedModel has no serving_default signature (it has: {}); "
                         "export it with one".format(path, ", ".join(loaded.signatures) or
                                                     "none"))
    fn = loaded.signatures["serving_default"]
    named = sorted(fn.structured_input_signature[1].items())
    if len(named) != 1:
        raise AgentError("{}: serving_default takes {} inputs; image classifiers take "
                         "one".format(path, len(named)))
    key, spec = named[0]
    static = tf.TensorSpec(_static(tf, spec.shape, batch, path), spec.dtype, name=key)

    @tf.function(input_signature=[static])
    def serve(x: Any) -> Any:
        return fn(**{key: x})
    tf2onnx.convert.from_function(serve, input_signature=[static], opset=opset,
                                  output_path=out)
    return lambda feeds: serve(next(iter(feeds.values())))


def _from_tflite(tf: Any, tf2onnx: Any, path: str, out: str, opset: int,
                 batch: int) -> Callable[[Dict[str, Any]], Any]:
    tf2onnx.convert.from_tflite(path, opset=opset, output_path=out)
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()

    def run(feeds: Dict[str, Any]) -> Any:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                               next(iter(feeds.values())))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return run


def _fix_batch(path: str, batch: int) -> None:
    """Write the static batch into the graph's inputs and outputs (tf2onnx leaves a TFLite
    model's batch dynamic, which the TensorRT 8.2 build must then guess a profile for)."""
    import onnx
    model = onnx.load(path)
    changed = False
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
            changed = True
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, path)


def _compare(source: Callable[[Dict[str, Any]], Any], out: str, batch: int) -> float:
    """Max abs difference between the source framework and ONNX Runtime on random input."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.RandomState(0).uniform(0.0, 1.0, shape).astype(np.float32)
    got = session.run(None, {inp.name: x})[0]
    want = source({inp.name: x})
    if isinstance(want, dict):
        want = list(want.values())[0]
    want = np.asarray(want)
    if want.shape != got.shape:
        raise AgentError("ONNX output shape {} differs from the source's {}".format(
            got.shape, want.shape))
    return float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))


def cmd_convert(args: argparse.Namespace) -> int:
    src = args.model
    if not os.path.exists(src):
        raise AgentError("{}: no such file or directory".format(src))
    if os.path.isdir(src):
        if not os.path.isfile(os.path.join(src, "saved_model.pb")):
            raise AgentError("{}: a directory without saved_model.pb is not a SavedModel".format(
                src))
        convert, kind = _from_saved_model, "SavedModel"
    elif src.lower().endswith(".tflite"):
        convert, kind = _from_tflite, "TFLite"
    elif src.lower().endswith(KERAS_SUFFIXES):
        convert, kind = _from_keras, "Keras"
    else:
        raise AgentError("{}: give a Keras file ({}), a SavedModel directory or a .tflite "
                         "file".format(src, ", ".join(KERAS_SUFFIXES)))
    if args.batch < 1:
        raise AgentError("--batch: {} must be 1 or more".format(args.batch))
    tf, tf2onnx = _import_tf()
    print("converting {} ({}) with tf2onnx {} (TensorFlow {}), opset {}, batch {}".format(
        src, kind, tf2onnx.__version__, tf.__version__, args.opset, args.batch))
    sys.stdout.flush()
    try:
        source = convert(tf, tf2onnx, src, args.out, args.opset, args.batch)
    except AgentError:
        raise
    except Exception as exc:  # TensorFlow and tf2onnx raise many types
        raise AgentError("{}: conversion failed: {}: {}".format(
            src, type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc) else ""))
    _fix_batch(args.out, args.batch)
    diff = _compare(source, args.out, args.batch)
    print("wrote {}; max abs difference vs {} on random input: {:.3g}".format(
        args.out, kind, diff))
    if diff > args.tolerance:
        print("refused: the difference is over --tolerance {}".format(args.tolerance))
        return 1
    print("next: edge-agent package {} --labels labels.txt --name NAME --version V "
          "--preset ...".format(args.out))
    return 0
