"""The ONNX check of an install: the file is an ONNX model whose input fits the manifest."""

import logging
import os
from typing import Any, Optional

from ..errors import ModelError
from .package import ModelPackage

log = logging.getLogger(__name__)


def _varint(handle: Any) -> Optional[int]:
    shift = 0
    value = 0
    while True:
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            return None


def scan_onnx_container(path: str) -> None:
    """Walk the top-level protobuf fields of an ONNX file without loading it.

    Catches a file that is not ONNX at all or is truncated, where the `onnx` package is not
    installed. A ModelProto must have ir_version (field 1) and a graph (field 7).
    """
    size = os.path.getsize(path)
    seen = set()
    with open(path, "rb") as handle:
        while handle.tell() < size:
            tag = _varint(handle)
            if tag is None or tag >> 3 == 0:
                raise ModelError("{}: is not an ONNX model (bad protobuf tag at byte {}); the "
                                 "file is corrupt or not ONNX".format(path, handle.tell()))
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(handle) is None:
                    raise ModelError("{}: is not an ONNX model (truncated field {}); the file "
                                     "is corrupt or not ONNX".format(path, field))
            elif wire in (1, 5):
                handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(handle)
                if length is None or handle.tell() + length > size:
                    raise ModelError("{}: is not an ONNX model (field {} runs past the end of "
                                     "the file); the file is truncated or corrupt".format(
                                         path, field))
                handle.seek(length, os.SEEK_CUR)
            else:
                raise ModelError("{}: is not an ONNX model (protobuf wire type {} at byte {}); "
                                 "the file is corrupt or not ONNX".format(
                                     path, wire, handle.tell()))
            seen.add((field, wire))
        if handle.tell() != size:
            raise ModelError("{}: is not an ONNX model (its last field runs past the end); the "
                             "file is truncated".format(path))
    if (1, 0) not in seen or (7, 2) not in seen:
        raise ModelError("{}: is not an ONNX model (no ir_version or no graph); export the "
                         "model to ONNX again".format(path))


def check_onnx(package: ModelPackage) -> None:
    """The package's ONNX file parses and its single input has the manifest's shape.

    Uses the `onnx` package when installed, else only the container walk; ONNX Runtime or
    TensorRT load it for real later, in the backend.
    """
    path = package.onnx_path
    scan_onnx_container(path)
    try:
        import onnx
    except Exception as exc:  # ImportError, or a broken install (e.g. SystemError from numpy)
        log.info("onnx package not installed or unusable (%s: %s): %s checked as a protobuf "
                 "container only", type(exc).__name__, exc, path)
        return
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise ModelError("model {}: {} does not parse as ONNX: {}; the file is corrupt or not "
                         "ONNX".format(package.ref, path, exc))
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ModelError("model {}: {} keeps weights in external data files; the store installs "
                         "single-file models: export it with the weights inside the .onnx "
                         "file".format(package.ref, path))
    initializers = set(t.name for t in graph.initializer)
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError("model {}: the ONNX graph has {} inputs ({}); image classifiers take "
                         "exactly one".format(package.ref, len(inputs),
                                              ", ".join(i.name for i in inputs) or "none"))
    if not graph.node or not graph.output:
        raise ModelError("model {}: the ONNX graph has no nodes or no outputs; export the model "
                         "again".format(package.ref))
    tensor_type = inputs[0].type.tensor_type
    want = list(package.input.shape)
    if tensor_type.HasField("shape"):
        have = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or "?"
                for d in tensor_type.shape.dim]
        if len(have) != len(want) or any(isinstance(h, int) and h != w
                                          for h, w in zip(have, want)):
            raise ModelError("model {}: the ONNX input {!r} has shape {} but the manifest's "
                             "input.shape is {}; fix input.shape in the manifest".format(
                                 package.ref, inputs[0].name, have, want))
    wanted = package.output.name
    outputs = [o.name for o in graph.output]
    if wanted and wanted not in outputs:
        raise ModelError("model {}: output {!r} named in the manifest is not an output of the "
                         "ONNX graph (outputs: {}); fix output.name".format(
                             package.ref, wanted, ", ".join(outputs)))
