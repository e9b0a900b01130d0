"""A small numpy reference runner for ONNX classifiers, for stacks without ONNX Runtime.

JetPack 4.6's Python stack (3.6, numpy 1.13.3) has no ONNX Runtime and no `onnx` package that
works, yet the TensorRT double must compute real outputs there so the agent's own code runs end
to end. This module reads the ONNX protobuf wire format itself (no `onnx`, no `protobuf`) and
evaluates the op types of the bundled model (Conv with groups/pads/strides/dilations, Clip, Add,
GlobalAveragePool, Reshape, Gemm) plus Relu, in float32 with numpy 1.13 API only.

`load_model(data)` returns objects with the attribute names of `onnx.ModelProto` that the
doubles read (opset_import, graph.node/initializer/input/output, type.tensor_type.shape.dim,
HasField), so a double can use it where `import onnx` fails. `ReferenceSession(data)` runs like
`onnxruntime.InferenceSession(data).run(output_names, feeds)`. tests/unit/backends/test_reference_onnx.py
compares it with ONNX Runtime on the sample photos.
"""

import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# TensorProto.DataType -> numpy dtype (the types a classifier's initializers use).
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16,
          11: np.float64}


class OnnxFormatError(ValueError):
    """The bytes are not an ONNX model this reader understands."""


# ---------------------------------------------------------------------------------------------
# Protobuf wire format
# ---------------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint at byte {}".format(pos))
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint longer than 10 bytes at byte {}".format(pos))


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


def fields(buf: bytes) -> List[Tuple[int, int, Any]]:
    """[(field number, wire type, value)]: int for varints, bytes for the rest."""
    out = []
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxFormatError("field number 0 at byte {}".format(pos))
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise OnnxFormatError("unsupported wire type {} at byte {}".format(wire, pos))
        if pos > end:
            raise OnnxFormatError("field {} runs past the end of its message".format(number))
        out.append((number, wire, value))
    return out


def _ints(wire: int, value: Any) -> List[int]:
    """A repeated int64 field's values (packed or one by one)."""
    if wire == 0:
        return [_signed64(value)]
    out = []
    pos = 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed64(v))
    return out


def _floats(wire: int, value: Any) -> List[float]:
    if wire == 5:
        return [struct.unpack("<f", value)[0]]
    return list(struct.unpack("<{}f".format(len(value) // 4), value))


def _text(value: bytes) -> str:
    return bytes(value).decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Messages, with onnx's attribute names
# ---------------------------------------------------------------------------------------------
class OperatorSetId(object):
    def __init__(self, buf: bytes) -> None:
        self.domain = ""
        self.version = 0
        for number, wire, value in fields(buf):
            if number == 1:
                self.domain = _text(value)
            elif number == 2:
                self.version = value


class Tensor(object):
    """TensorProto: name, dims, data_type and the data as a numpy array (`array()`)."""

    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.dims = []  # type: List[int]
        self.data_type = 0
        self.raw_data = b""
        self._float = []  # type: List[float]
        self._int = []  # type: List[int]
        self._double = b""
        for number, wire, value in fields(buf):
            if number == 1:
                self.dims.extend(_ints(wire, value))
            elif number == 2:
                self.data_type = value
            elif number == 4:
                self._float.extend(_floats(wire, value))
            elif number in (5, 7):  # int32_data, int64_data
                self._int.extend(_ints(wire, value))
            elif number == 8:
                self.name = _text(value)
            elif number == 9:
                self.raw_data = bytes(value)
            elif number == 10:
                self._double += bytes(value)
            elif number == 14:
                raise OnnxFormatError("tensor {}: external data is not supported".format(
                    self.name))

    def array(self) -> np.ndarray:
        if self.data_type not in DTYPES:
            raise OnnxFormatError("tensor {}: data type {} is not supported".format(
                self.name, self.data_type))
        dtype = np.dtype(DTYPES[self.data_type]).newbyteorder("<")
        if self.raw_data:
            flat = np.frombuffer(self.raw_data, dtype=dtype)
        elif self.data_type == 1:
            flat = np.array(self._float, dtype=np.float32)
        elif self.data_type == 11:
            flat = np.frombuffer(self._double, dtype=dtype)
        elif self.data_type == 10:  # float16 bit patterns in int32_data
            flat = np.array(self._int, dtype=np.uint16).view(np.float16)
        else:
            flat = np.array(self._int, dtype=dtype)
        count = int(np.prod(self.dims)) if self.dims else 1
        if flat.size != count:
            raise OnnxFormatError("tensor {}: {} values for dims {}".format(
                self.name, flat.size, self.dims))
        return flat.astype(DTYPES[self.data_type]).reshape(self.dims)


class Attribute(object):
    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.value = None  # type: Any
        ints = []  # type: List[int]
        floats = []  # type: List[float]
        for number, wire, value in fields(buf):
            if number == 1:
                self.name = _text(value)
            elif number == 2:
                self.value = struct.unpack("<f", value)[0]
            elif number == 3:
                self.value = _signed64(value)
            elif number == 4:
                self.value = bytes(value)
            elif number == 5:
                self.value = Tensor(value)
            elif number == 7:
                floats.extend(_floats(wire, value))
            elif number == 8:
                ints.extend(_ints(wire, value))
        if self.value is None:
            self.value = ints or floats


class Node(object):
    def __init__(self, buf: bytes) -> None:
        self.input = []  # type: List[str]
        self.output = []  # type: List[str]
        self.name = ""
        self.op_type = ""
        self.domain = ""
        self.attribute = []  # type: List[Attribute]
        for number, _wire, value in fields(buf):
            if number == 1:
                self.input.append(_text(value))
            elif number == 2:
                self.output.append(_text(value))
            elif number == 3:
                self.name = _text(value)
            elif number == 4:
                self.op_type = _text(value)
            elif number == 5:
                self.attribute.append(Attribute(value))
            elif number == 7:
                self.domain = _text(value)

    def attrs(self) -> Dict[str, Any]:
        return {a.name: a.value for a in self.attribute}


class Dimension(object):
    def __init__(self, buf: bytes) -> None:
        self.dim_value = 0
        self.dim_param = ""
        self._set = set()  # type: Any
        for number, _wire, value in fields(buf):
            if number == 1:
                self.dim_value = _signed64(value)
                self._set.add("dim_value")
            elif number == 2:
                self.dim_param = _text(value)
                self._set.add("dim_param")

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return name in self._set


class _Shape(object):
    def __init__(self, buf: bytes) -> None:
        self.dim = [Dimension(v) for n, _w, v in fields(buf) if n == 1]


class _TensorType(object):
    def __init__(self, buf: bytes) -> None:
        self.elem_type = 0
        self.shape = _Shape(b"")
        for number, _wire, value in fields(buf):
            if number == 1:
                self.elem_type = value
            elif number == 2:
                self.shape = _Shape(value)


class _Type(object):
    def __init__(self, buf: bytes) -> None:
        self.tensor_type = _TensorType(b"")
        for number, _wire, value in fields(buf):
            if number == 1:
                self.tensor_type = _TensorType(value)


class ValueInfo(object):
    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.type = _Type(b"")
        for number, _wire, value in fields(buf):
            if number == 1:
                self.name = _text(value)
            elif number == 2:
                self.type = _Type(value)


class Graph(object):
    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.node = []  # type: List[Node]
        self.initializer = []  # type: List[Tensor]
        self.input = []  # type: List[ValueInfo]
        self.output = []  # type: List[ValueInfo]
        for number, _wire, value in fields(buf):
            if number == 1:
                self.node.append(Node(value))
            elif number == 2:
                self.name = _text(value)
            elif number == 5:
                self.initializer.append(Tensor(value))
            elif number == 11:
                self.input.append(ValueInfo(value))
            elif number == 12:
                self.output.append(ValueInfo(value))


class Model(object):
    def __init__(self, buf: bytes) -> None:
        self.ir_version = 0
        self.opset_import = []  # type: List[OperatorSetId]
        self.graph = None  # type: Optional[Graph]
        for number, _wire, value in fields(buf):
            if number == 1:
                self.ir_version = value
            elif number == 7:
                self.graph = Graph(value)
            elif number == 8:
                self.opset_import.append(OperatorSetId(value))
        if self.graph is None or not self.ir_version:
            raise OnnxFormatError("not an ONNX model: no graph or no ir_version")


def load_model(data: bytes) -> Model:
    """The model in `data` (ONNX bytes); OnnxFormatError when it does not parse."""
    try:
        return Model(memoryview(bytes(data)).tobytes())
    except OnnxFormatError:
        raise
    except (UnicodeDecodeError, struct.error) as exc:
        raise OnnxFormatError("not an ONNX model: {}".format(exc))


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------
def conv(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], attrs: Dict[str, Any]
         ) -> np.ndarray:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b""):
        raise NotImplementedError("Conv auto_pad {!r}".format(auto_pad))
    group = int(attrs.get("group", 1))
    kh, kw = w.shape[2], w.shape[3]
    sh, sw = (list(attrs.get("strides") or [1, 1]) + [1, 1])[:2]
    dh, dw = (list(attrs.get("dilations") or [1, 1]) + [1, 1])[:2]
    pt, pl, pb, pr = (list(attrs.get("pads") or [0, 0, 0, 0]) + [0, 0, 0, 0])[:4]
    n, c, h, wd = x.shape
    m = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode="constant")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, m, oh, ow), dtype=np.float32)
    cg, mg = c // group, m // group
    depthwise = cg == 1 and mg == 1
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                     j * dw:j * dw + sw * (ow - 1) + 1:sw]
            if depthwise:
                out += win * w[:, 0, i, j].reshape(1, m, 1, 1)
                continue
            for g in range(group):
                part = np.tensordot(w[g * mg:(g + 1) * mg, :, i, j],
                                    win[:, g * cg:(g + 1) * cg], axes=([1], [1]))
                out[:, g * mg:(g + 1) * mg] += part.transpose(1, 0, 2, 3)
    if b is not None:
        out += b.reshape(1, m, 1, 1)
    return out


def gemm(a: np.ndarray, b: np.ndarray, c: Optional[np.ndarray], attrs: Dict[str, Any]
         ) -> np.ndarray:
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    y = float(attrs.get("alpha", 1.0)) * np.dot(a, b)
    if c is not None:
        y = y + float(attrs.get("beta", 1.0)) * c
    return y.astype(np.float32)


def reshape(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [int(d) for d in shape]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _opt(values: Dict[str, np.ndarray], inputs: Sequence[str], index: int) -> Any:
    if index < len(inputs) and inputs[index]:
        return values[inputs[index]]
    return None


def run_node(node: Node, values: Dict[str, np.ndarray]) -> List[np.ndarray]:
    ins = node.input
    x = values[ins[0]]
    attrs = node.attrs()
    op = node.op_type
    if op == "Conv":
        return [conv(x, values[ins[1]], _opt(values, ins, 2), attrs)]
    if op == "Clip":
        low, high = _opt(values, ins, 1), _opt(values, ins, 2)
        if low is None and "min" in attrs:  # opset < 11
            low = attrs["min"]
        if high is None and "max" in attrs:
            high = attrs["max"]
        y = x
        if low is not None:
            y = np.maximum(y, np.asarray(low, dtype=x.dtype))
        if high is not None:
            y = np.minimum(y, np.asarray(high, dtype=x.dtype))
        return [y]
    if op == "Relu":
        return [np.maximum(x, 0).astype(x.dtype)]
    if op == "Add":
        return [(x + values[ins[1]]).astype(x.dtype)]
    if op == "GlobalAveragePool":
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]
    if op == "Reshape":
        return [reshape(x, values[ins[1]])]
    if op == "Gemm":
        return [gemm(x, values[ins[1]], _opt(values, ins, 2), attrs)]
    raise NotImplementedError("the reference runner has no {} operator".format(op))


class ReferenceSession(object):
    """`onnxruntime.InferenceSession`'s `run(output_names, feeds)` for the ops above."""

    def __init__(self, data: bytes) -> None:
        self.model = load_model(data)
        graph = self.model.graph
        assert graph is not None
        self.graph = graph
        self.constants = {t.name: t.array() for t in graph.initializer}
        unknown = sorted(set(n.op_type for n in graph.node if n.op_type not in (
            "Conv", "Clip", "Relu", "Add", "GlobalAveragePool", "Reshape", "Gemm")))
        if unknown:
            raise NotImplementedError("the reference runner has no {} operator".format(
                ", ".join(unknown)))
        self.input_names = [v.name for v in graph.input if v.name not in self.constants]
        self.output_names = [v.name for v in graph.output]

    def run(self, output_names: Optional[Sequence[str]], feeds: Dict[str, Any]
            ) -> List[np.ndarray]:
        values = dict(self.constants)
        for name in self.input_names:
            if name not in feeds:
                raise ValueError("missing input {}".format(name))
            values[name] = np.asarray(feeds[name], dtype=np.float32)
        for node in self.graph.node:
            for name, value in zip(node.output, run_node(node, values)):
                values[name] = value
        return [values[name] for name in (output_names or self.output_names)]
