"""Preflight: what the installed TensorRT generation is known to reject, found before a build.

Reads the ONNX file (opset, inputs, operators) with the `onnx` package, imported only when used.
"""

from typing import Any, List, Optional, Set, Tuple


class PreflightReport(object):
    """Facts read from the ONNX file and the problems found for the installed TensorRT."""

    def __init__(self) -> None:
        self.checked = False
        self.opset = None  # type: Optional[int]
        self.inputs = []  # type: List[Tuple[str, List[Any], str]]
        self.operators = set()  # type: set
        self.float16_model = False
        self.problems = []  # type: List[str]
        self.notes = []  # type: List[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(onnx_path: str, trt_version_str: str, compute_capability: Optional[str] = None,
              max_batch: int = 1) -> PreflightReport:
    """Read the ONNX (opset, inputs, operators) and name what this TensorRT will reject.

    Rules from docs/PLATFORM.md section 2. Skipped (with a note) when `onnx` is not installed.
    """
    report = PreflightReport()
    try:
        import onnx
    except Exception as exc:  # ImportError, or a broken install raising anything else
        report.notes.append("onnx package not installed or unusable ({}: {}): ONNX preflight "
                            "skipped (pip install onnx to get early warnings)".format(
                                type(exc).__name__, exc))
        return report
    try:
        model = onnx.load(onnx_path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        report.problems.append("{} does not parse as ONNX: {}".format(onnx_path, exc))
        return report
    report.checked = True
    constants = _read_model(report, model)
    _check_graph(report, model.graph, constants, trt_version_str, compute_capability)
    _check_inputs(report, trt_version_str, max_batch)
    return report


def _generations(trt_version_str: str) -> Tuple[bool, bool, bool]:
    """(8.2 generation, before 8.0, before 8.5) for a TensorRT version string."""
    parts = (trt_version_str.split(".") + ["0", "0"])[:2]
    try:
        major, minor = int(parts[0]), int(parts[1])
    except ValueError:
        major, minor = 99, 0
    gen82 = (major, minor) < (8, 4)      # the JetPack 4.6 generation (8.0 / 8.2)
    before80 = major < 8                  # no ONNX NonMaxSuppression at all
    before85 = (major, minor) < (8, 5)   # before UINT8 I/O, dynamic Pad
    return gen82, before80, before85


def _read_model(report: PreflightReport, model: Any) -> Set[str]:
    """Fill in opset, operators, FP16-ness and inputs; returns the names of constant tensors."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            report.opset = int(opset.version)
    graph = model.graph
    initializers = set(t.name for t in graph.initializer)
    constants = set(initializers)
    for node in graph.node:
        report.operators.add(node.op_type)
        if node.op_type == "Constant":
            constants.update(node.output)
    float_inits = [t for t in graph.initializer if t.data_type in (1, 10)]
    if float_inits:
        half = sum(1 for t in float_inits if t.data_type == 10)
        report.float16_model = half * 2 > len(float_inits)
    elem_names = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}
    for inp in graph.input:
        if inp.name in initializers:
            continue
        ttype = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in ttype.shape.dim]
        dtype = elem_names.get(ttype.elem_type, "type{}".format(ttype.elem_type))
        report.inputs.append((inp.name, dims, dtype))
    return constants


def _check_graph(report: PreflightReport, graph: Any, constants: Set[str],
                 trt_version_str: str, compute_capability: Optional[str]) -> None:
    """Opset and operators this TensorRT generation rejects."""
    gen82, before80, before85 = _generations(trt_version_str)
    where = "TensorRT {}".format(trt_version_str)
    if gen82 and report.opset is not None and report.opset > 13:
        report.problems.append("opset {} is newer than {} supports (13 at most): export with "
                               "opset 11-13".format(report.opset, where))
    if before85:
        for node in graph.node:
            if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] and \
                    node.input[1] not in constants:
                report.problems.append(
                    "Pad node {!r} takes its pads from a computed tensor; {} needs constant "
                    "pads: fold constants (e.g. `onnxsim`)".format(node.name or node.output[0],
                                                                  where))
                break
    if gen82 and "HardSwish" in report.operators:
        report.problems.append("operator HardSwish is not supported by {}: export it as "
                               "x * HardSigmoid(x) (opset 13) or upgrade TensorRT".format(where))
    if before80 and "NonMaxSuppression" in report.operators:
        report.problems.append("operator NonMaxSuppression is not supported by {}: remove it "
                               "from the graph and do NMS after inference".format(where))
    elif before85 and "NonMaxSuppression" in report.operators:
        report.notes.append("operator NonMaxSuppression is experimental in {} (a plugin, "
                            "EfficientNMS_ONNX_TRT); check its outputs".format(where))
    if compute_capability == "5.3" and "ArgMax" in report.operators:
        report.problems.append("operator ArgMax fails on the Jetson Nano (SM 5.3) with {}: "
                               "remove it and take the argmax after inference".format(where))


def _check_inputs(report: PreflightReport, trt_version_str: str, max_batch: int) -> None:
    """Input types and dynamic dimensions the agent and this TensorRT cannot take."""
    before85 = _generations(trt_version_str)[2]
    where = "TensorRT {}".format(trt_version_str)
    for name, dims, dtype in report.inputs:
        if dtype == "uint8" and before85:
            report.problems.append("input {!r} is uint8, which {} does not accept as a network "
                                   "input: export with a float32 input".format(name, where))
        elif dtype != "float32":
            report.problems.append("input {!r} is {}; the agent feeds float32: export with a "
                                   "float32 input".format(name, dtype))
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
        if [i for i in dynamic if i != 0]:
            report.problems.append(
                "input {!r} has dynamic dimensions {} beyond the batch; the agent makes an "
                "optimization profile for the batch only: export with a static shape (e.g. "
                "`onnxsim --overwrite-input-shape`)".format(name, dims))
        elif dynamic:
            report.notes.append("input {!r} has a dynamic batch: profile min 1, opt/max {}"
                                .format(name, max_batch))
