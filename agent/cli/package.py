"""`edge-agent package`: an ONNX file and its labels made into a checked model package.

Reads the graph's input and output (names, shapes, types) with the `onnx` package, writes a
complete model.yaml that the agent's own loader accepts, copies the files, runs the ONNX check
a device runs at install and the TensorRT 8.2 preflight (the Jetson Nano's generation), then
runs the model once with ONNX Runtime on sample images and prints the top-5, so a wrong
normalisation shows here and not on the fleet. Runs on the operator's machine.
"""

import argparse
import glob
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..errors import AgentError, ModelError
from ..store.layout import check_component
from ..store.package import MANIFEST_NAME, ModelPackage, load_labels, sha256_file
from .keys import SIGNATURE_FILE

# name -> (what it is for, mean, std, color, resize mode, crop ratio for shorter_side_crop)
PRESETS = {
    "imagenet": ("torchvision/timm ImageNet models: (x/255 - mean)/std",
                 [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "RGB",
                 "shorter_side_crop", 0.875),
    "lite": ("EfficientNet-Lite, MobileNet from TF-Slim: (x - 127)/128",
             [127.0, 127.0, 127.0], [128.0, 128.0, 128.0], "RGB", "shorter_side_crop", 0.875),
    "tf": ("Keras preprocess_input mode 'tf' (MobileNetV2, Inception, Xception): x/127.5 - 1",
           [127.5, 127.5, 127.5], [127.5, 127.5, 127.5], "RGB", "stretch", None),
    "caffe": ("Keras preprocess_input mode 'caffe' (ResNet50, VGG): BGR minus the mean",
              [103.939, 116.779, 123.68], [1.0, 1.0, 1.0], "BGR", "stretch", None),
    "unit": ("inputs in [0, 1]: x/255", [0.0, 0.0, 0.0], [255.0, 255.0, 255.0], "RGB",
             "stretch", None),
    "raw": ("pixels 0..255 as they are (Keras EfficientNet, MobileNetV3, ConvNeXt rescale "
            "inside the model)", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "RGB", "stretch", None),
}
# Ops after which the output already holds probabilities (activation: none).
_PROBABILITY_OPS = ("Softmax", "Sigmoid")
_PASS_THROUGH_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
               11: "float64"}
TOOLKIT_TRT = "8.2"      # the oldest TensorRT the fleet runs (JetPack 4.6)
TOOLKIT_SM = "5.3"       # Jetson Nano


class GraphFacts(object):
    """What the ONNX graph says: its single input, its outputs and what produces them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opset = None  # type: Optional[int]
        self.input_name = ""
        self.input_dims = []  # type: List[Any]   ints, or names/"?" for dynamic dimensions
        self.input_type = ""
        self.outputs = []  # type: List[Tuple[str, List[Any], str]]
        self.producers = {}  # type: Dict[str, Any]

    def output(self, name: Optional[str]) -> Tuple[str, List[Any], str]:
        if name is None:
            return self.outputs[0]
        for out in self.outputs:
            if out[0] == name:
                return out
        raise ModelError("{}: --output {!r} is not an output of the graph (outputs: {})".format(
            self.path, name, ", ".join(o[0] for o in self.outputs)))

    def final_op(self, name: str) -> Optional[str]:
        """The op that computes output `name`, looking through reshapes and identities."""
        node = self.producers.get(name)
        while node is not None and node.op_type in _PASS_THROUGH_OPS and node.input:
            node = self.producers.get(node.input[0])
        return node.op_type if node is not None else None


def _dims(value_info: Any) -> List[Any]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in shape.dim]


def read_graph(path: str) -> GraphFacts:
    """The graph's facts; ModelError when the file is missing or not ONNX."""
    from ..store.onnx_check import scan_onnx_container
    if not os.path.isfile(path):
        raise ModelError("{}: no such file; give the .onnx file to package".format(path))
    try:
        import onnx
    except Exception as exc:  # ImportError, or a broken install
        raise ModelError("`package` reads the graph with the onnx package, which does not "
                         "import ({}: {}): pip install onnx".format(type(exc).__name__, exc))
    scan_onnx_container(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise ModelError("{}: does not parse as ONNX: {}; export the model again".format(
            path, exc))
    facts = GraphFacts(path)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            facts.opset = int(opset.version)
    graph = model.graph
    initializers = set(t.name for t in graph.initializer)
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError("{}: the graph has {} inputs ({}); the agent runs image classifiers "
                         "with exactly one".format(path, len(inputs),
                                                   ", ".join(i.name for i in inputs) or "none"))
    if not graph.output:
        raise ModelError("{}: the graph has no outputs; export the model again".format(path))
    facts.input_name = inputs[0].name
    facts.input_dims = _dims(inputs[0])
    facts.input_type = _ELEM_TYPES.get(inputs[0].type.tensor_type.elem_type, "other")
    facts.outputs = [(o.name, _dims(o), _ELEM_TYPES.get(o.type.tensor_type.elem_type, "other"))
                     for o in graph.output]
    for node in graph.node:
        for out in node.output:
            facts.producers[out] = node
    return facts


def _input_shape(facts: GraphFacts, layout: Optional[str], size: Optional[List[int]],
                 say: Any) -> Tuple[List[int], str]:
    """The manifest's input.shape and layout: the graph's, with a dynamic batch fixed to 1."""
    dims = list(facts.input_dims)
    if len(dims) != 4:
        raise ModelError("{}: input {!r} has shape {}; the agent feeds images as 4-D tensors "
                         "(NCHW or NHWC)".format(facts.path, facts.input_name, dims))
    if facts.input_type != "float32":
        raise ModelError("{}: input {!r} is {}; the agent feeds float32 tensors: export with a "
                         "float32 input".format(facts.path, facts.input_name, facts.input_type))
    if layout is None:
        layout = "NCHW" if dims[1] == 3 else "NHWC" if dims[3] == 3 else None
        if layout is None:
            raise ModelError("{}: input {!r} has shape {}: no dimension 1 or 3 of size 3 (the "
                             "colour channels); give --layout NCHW or NHWC".format(
                                 facts.path, facts.input_name, dims))
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    dynamic = [i for i in spatial if not isinstance(dims[i], int)]
    if dynamic and not size:
        raise ModelError("{}: input {!r} has dynamic height/width {}; give --size H W (the "
                         "size the model was trained at)".format(facts.path, facts.input_name,
                                                                 dims))
    if size:
        for i, value in zip(spatial, size):
            if isinstance(dims[i], int) and dims[i] != value:
                raise ModelError("{}: --size {} {} differs from the graph's fixed input shape "
                                 "{}".format(facts.path, size[0], size[1], dims))
            dims[i] = value
    if not isinstance(dims[0], int):
        say("input {!r}: dynamic batch {!r} fixed to 1 in the manifest (the graph keeps it "
            "dynamic)".format(facts.input_name, dims[0]))
        dims[0] = 1
    channel = 1 if layout == "NCHW" else 3
    if dims[channel] != 3:
        raise ModelError("{}: input {!r} has shape {} with layout {}: {} channels; the agent "
                         "feeds 3-channel images".format(facts.path, facts.input_name, dims,
                                                          layout, dims[channel]))
    return [int(d) for d in dims], layout


def _triple(option: str, values: Optional[List[float]]) -> Optional[List[float]]:
    if values is not None and len(values) != 3:
        raise AgentError("{}: {} value{} given; give three numbers, one per channel in the "
                         "input's colour order, e.g. {} 123.675 116.28 103.53".format(
                             option, len(values), "" if len(values) == 1 else "s", option))
    return values


def build_manifest(args: argparse.Namespace, facts: GraphFacts, labels: List[str],
                   say: Any) -> Dict[str, Any]:
    """model.yaml's content from the graph, the labels and the options."""
    mean = _triple("--mean", args.mean)
    std = _triple("--std", args.std)
    if args.preset is None and (mean is None or std is None):
        raise AgentError("the graph does not say how pixels are normalised: give --preset ({}) "
                         "or both --mean and --std".format(", ".join(sorted(PRESETS))))
    _, p_mean, p_std, p_color, p_mode, p_ratio = PRESETS[args.preset] if args.preset else \
        ("", None, None, "RGB", "stretch", None)
    shape, layout = _input_shape(facts, args.layout, args.size, say)
    side = min(shape[2:] if layout == "NCHW" else shape[1:3])
    mode = args.resize or p_mode
    resize = {"mode": mode, "size": None}  # type: Dict[str, Any]
    if mode == "shorter_side_crop":
        resize["size"] = args.resize_size or int(round(side / (p_ratio or 0.875)))
    out_name, out_dims, _ = facts.output(args.output)
    if len(facts.outputs) > 1 and args.output is None:
        say("the graph has {} outputs; using the first, {!r} (--output to choose)".format(
            len(facts.outputs), out_name))
    classes = 1
    for d in out_dims[1:]:
        classes = classes * d if isinstance(d, int) and classes else 0
    if classes and len(labels) != classes:
        raise ModelError("{}: has {} labels but output {!r} has {} classes (shape {}); give "
                         "one label per class, in output order".format(
                             args.labels, len(labels), out_name, classes, out_dims))
    activation = args.activation
    if activation is None:
        op = facts.final_op(out_name)
        activation = "none" if op in _PROBABILITY_OPS else "softmax"
        say("output {!r} comes from {}: activation {}".format(
            out_name, "a " + op + " node" if op else "the graph input", activation) +
            ("" if activation == "none" else " (--activation to change)"))
    return {"name": args.name, "version": args.version, "task": "classification",
            "file": "model.onnx", "sha256": None, "labels": "labels.txt",
            "labels_sha256": None,  # both set by write_package, from the copied files
            "input": {"name": facts.input_name, "shape": shape, "layout": layout,
                      "color": args.color or p_color, "resize": resize,
                      "mean": [float(v) for v in (mean or p_mean)],
                      "std": [float(v) for v in (std or p_std)]},
            "output": {"name": out_name, "activation": activation}}


def write_package(out: str, onnx_path: str, labels_path: str, manifest: Dict[str, Any],
                  force: bool) -> ModelPackage:
    """Copy the files into `out`, add both sha256s, write model.yaml; the loaded package."""
    import yaml
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not force:
        raise AgentError("{} exists and is not empty; give another --out, or --force to "
                         "replace the package there".format(out))
    os.makedirs(out, exist_ok=True)
    for src, name in ((onnx_path, manifest["file"]), (labels_path, manifest["labels"])):
        if os.path.abspath(src) != os.path.abspath(os.path.join(out, name)):
            try:
                shutil.copyfile(src, os.path.join(out, name))
            except (OSError, shutil.Error) as exc:
                raise AgentError("cannot copy {} into {}: {}; give a regular file".format(
                    src, out, exc))
    manifest["sha256"] = sha256_file(os.path.join(out, manifest["file"]))
    manifest["labels_sha256"] = sha256_file(os.path.join(out, manifest["labels"]))
    if os.path.exists(os.path.join(out, SIGNATURE_FILE)):  # signed another manifest
        os.unlink(os.path.join(out, SIGNATURE_FILE))
    header = ("# Written by `edge-agent package` from {}; sha256 and labels_sha256 must match "
              "the files:\n# package again rather than editing by hand.\n").format(
                  os.path.basename(onnx_path))
    with open(os.path.join(out, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        try:  # keys in reading order (PyYAML >= 5.1); older ones sort them
            text = yaml.safe_dump(manifest, default_flow_style=None, sort_keys=False)
        except TypeError:
            text = yaml.safe_dump(manifest, default_flow_style=None)
        handle.write(header + text)
    package = ModelPackage.load(out)
    package.verify()
    return package


def device_checks(package: ModelPackage, say: Any) -> List[str]:
    """The ONNX check of an install, then what TensorRT 8.2 on a Jetson Nano would refuse."""
    from ..store.onnx_check import check_onnx
    from ..backends.tensorrt.preflight import preflight
    check_onnx(package)
    report = preflight(package.onnx_path, TOOLKIT_TRT, TOOLKIT_SM)
    say("install check: passed (the ONNX check a device runs at model/install)")
    if report.problems:
        say("TensorRT {} (JetPack 4.6, Jetson Nano) would refuse this model:".format(
            TOOLKIT_TRT))
        for problem in report.problems:
            say("  - " + problem)
    else:
        say("TensorRT {} preflight (JetPack 4.6, Jetson Nano): nothing known to be refused "
            "(opset {}, {} operator types)".format(TOOLKIT_TRT, report.opset,
                                                   len(report.operators)))
    for note in report.notes:
        say("  note: " + note)
    return report.problems


def bundled_samples() -> Optional[str]:
    """The bundled sample photos: models/samples of this checkout, or where setup.py
    installed them (PREFIX/share/edge-agent/models/samples); None when neither is there."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for root in (checkout, os.path.join(sys.prefix, "share", "edge-agent")):
        here = os.path.join(root, "models", "samples")
        if os.path.isdir(here):
            return here
    return None


def sample_run(package: ModelPackage, sample: str, top_k: int, say: Any) -> List[Any]:
    """Run the package with ONNX Runtime, preprocessed as the agent does; print the top-k."""
    try:
        import cv2
    except Exception as exc:  # ImportError, or a broken install
        raise AgentError("the test run reads the sample images with OpenCV, which does not "
                         "import ({}: {}): pip install 'edge-agent[opencv,onnxruntime]'".format(
                             type(exc).__name__, exc))
    import numpy as np
    from ..backends.base import BackendOptions
    from ..backends.onnxruntime import OnnxRuntimeBackend
    from ..postprocess import Classifier
    from ..preprocess import Preprocessor
    paths = sorted(p for p in glob.glob(os.path.join(sample, "*")) if os.path.isfile(p)) \
        if os.path.isdir(sample) else [sample]
    paths = [p for p in paths if os.path.splitext(p)[1].lower() in
             (".jpg", ".jpeg", ".png", ".bmp", ".webp")] if os.path.isdir(sample) else paths
    if not paths:
        raise AgentError("--sample {}: no images there (.jpg, .png, .bmp, .webp)".format(sample))
    backend = OnnxRuntimeBackend(package, BackendOptions(kind="onnxruntime", precision="fp32"))
    backend.load()
    preprocess = Preprocessor(package.input)
    classifier = Classifier(package.labels, package.output.activation, package.output.name,
                            top_k=top_k)
    results = []
    try:
        for path in paths:
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is None:
                raise AgentError("--sample: {} is not an image OpenCV can read".format(path))
            tensor = preprocess(frame)
            if package.input.shape[0] > 1:
                tensor = np.repeat(tensor, package.input.shape[0], axis=0)
            outputs = backend.infer(tensor)
            scores = np.asarray(outputs[classifier.output_name or backend.output_names[0]])
            if scores.size // package.input.shape[0] != len(package.labels):
                raise ModelError("the model gave {} scores but labels.txt has {} labels; give "
                                 "one label per class".format(scores.size, len(package.labels)))
            top = classifier({k: np.asarray(v)[:1] for k, v in outputs.items()})
            results.append((path, top))
            say("{}: {}".format(os.path.basename(path), ", ".join(
                "{} {:.3f}".format(t["label"], t["score"]) for t in top)))
    finally:
        backend.close()
    return results


def cmd_package(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line)
        sys.stdout.flush()
    for option, value in (("--name", args.name), ("--version", args.version)):
        try:
            check_component(option[2:], value)
        except AgentError as exc:
            raise AgentError("{}: {}".format(option, str(exc).split(": ", 1)[-1]))
    facts = read_graph(args.onnx)
    labels = load_labels(args.labels)
    if not labels:
        raise ModelError("{}: no labels; write one class name per line".format(args.labels))
    manifest = build_manifest(args, facts, labels, say)
    out = args.out or "{}-{}".format(args.name, args.version)
    package = write_package(out, args.onnx, args.labels, manifest, args.force)
    say("wrote {}: {}@{}, sha256 {}".format(os.path.join(out, MANIFEST_NAME), package.name,
                                            package.version, package.sha256))
    problems = device_checks(package, say)
    sample = args.sample or bundled_samples()
    if sample:
        say("top-{} with ONNX Runtime on {} (check that these make sense):".format(
            args.top_k, sample))
        sample_run(package, sample, args.top_k, say)
    else:
        say("no sample images (models/samples is not here): give --sample FILE|DIR to see the "
            "top-{} before the fleet does".format(args.top_k))
    if args.sign:
        from .keys import sign_package
        sign_package(out, args.sign)
        say("signed: {}".format(os.path.join(out, SIGNATURE_FILE)))
    if problems and args.strict:
        say("--strict: refused because TensorRT {} would refuse the model".format(TOOLKIT_TRT))
        return 1
    return 0

