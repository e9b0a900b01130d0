"""Model packages: a directory with model.yaml, the ONNX file and labels.

The manifest is the contract between whoever ships a model and the agent: it says how frames
are turned into the input tensor and how the output is read. Every problem is reported with
the manifest path and key so the model's author can fix it.
"""

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ModelError

MANIFEST_NAME = "model.yaml"
RESIZE_MODES = ("shorter_side_crop", "stretch", "letterbox")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
ACTIVATIONS = ("softmax", "sigmoid", "none")
TASKS = ("classification",)
# Input size limits: a 4096x4096 RGB float32 tensor is already 200 MB, more than a Nano can
# spare; bigger manifests are mistakes (or attacks) that would fail in OpenCV or the backend.
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE  # height x width x batch
MAX_RESIZE_SIDE = 8192


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


class InputSpec(object):
    """How a frame becomes the model's input tensor."""

    def __init__(self, name: str, shape: Sequence[int], layout: str, color: str,
                 resize_mode: str, resize_size: Optional[int],
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.name = name
        self.shape = [int(d) for d in shape]
        self.layout = layout
        self.color = color
        self.resize_mode = resize_mode
        self.resize_size = resize_size
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    @property
    def height(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "layout": self.layout,
                "color": self.color,
                "resize": {"mode": self.resize_mode, "size": self.resize_size},
                "mean": list(self.mean), "std": list(self.std)}


class OutputSpec(object):
    """Which output holds the scores and how to turn them into probabilities."""

    def __init__(self, name: Optional[str], activation: str) -> None:
        self.name = name
        self.activation = activation

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "activation": self.activation}


class ModelPackage(object):
    """A validated model package on disk."""

    def __init__(self, root: str, name: str, version: str, task: str, file: str,
                 sha256: Optional[str], labels_file: Optional[str], input_spec: InputSpec,
                 output_spec: OutputSpec, raw: Dict[str, Any]) -> None:
        self.root = root
        self.name = name
        self.version = version
        self.task = task
        self.file = file
        self.sha256 = sha256
        self.labels_file = labels_file
        self.input = input_spec
        self.output = output_spec
        self.raw = raw
        self._labels = None  # type: Optional[List[str]]

    @property
    def onnx_path(self) -> str:
        return os.path.join(self.root, self.file)

    @property
    def ref(self) -> str:
        """`name@version`, the form used in prediction messages."""
        return "{}@{}".format(self.name, self.version)

    @property
    def labels(self) -> List[str]:
        if self._labels is None:
            self._labels = load_labels(os.path.join(self.root, self.labels_file)) \
                if self.labels_file else []
        return self._labels

    def verify(self) -> str:
        """Check the ONNX file exists and matches the manifest's sha256; return the hash."""
        path = self.onnx_path
        if not os.path.isfile(path):
            raise ModelError("model {}: file {} does not exist; reinstall the model package or fix "
                             "'file' in {}".format(self.ref, path, self.manifest_path))
        actual = sha256_file(path)
        if self.sha256 and actual != self.sha256.lower():
            raise ModelError("model {}: {} has sha256 {} but the manifest says {}; the file is "
                             "corrupt or the manifest is stale".format(
                                 self.ref, path, actual, self.sha256))
        return actual

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, MANIFEST_NAME)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def load(cls, root: str) -> "ModelPackage":
        """Read and validate `root/model.yaml`."""
        import yaml  # local: keeps `import agent.store.package` cheap
        path = os.path.join(root, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise ModelError("model package {}: no {} there; a package is a directory with "
                             "model.yaml, the .onnx file and labels".format(root, MANIFEST_NAME))
        try:
            with open(path, "r", encoding="utf-8") as handle:
                raw = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError("model package {}: cannot read {}: {}".format(root, path, exc))
        return cls.from_dict(root, raw, path)

    @classmethod
    def from_dict(cls, root: str, raw: Any, where: str = "manifest") -> "ModelPackage":
        check = _Checker(where)
        if not isinstance(raw, dict):
            raise ModelError("{}: must be a mapping with name, version, file, input, output".format(
                where))
        name = check.string(raw, "name")
        if not safe_component(name):
            raise ModelError("{}: name: {!r} may only use letters, digits, '_', '-' and '.'".format(
                where, name))
        version = str(check.required(raw, "version"))
        if not safe_component(version):
            raise ModelError("{}: version: {!r} may only use letters, digits, '_', '-' and "
                             "'.'".format(where, version))
        task = check.choice(raw, "task", TASKS, default="classification")
        file = check.string(raw, "file", default="model.onnx")
        if not _safe_relpath(file):
            raise ModelError("{}: file: {!r} must be a plain file name inside the package".format(
                where, file))
        sha = raw.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or
                                any(c not in "0123456789abcdefABCDEF" for c in sha)):
            raise ModelError("{}: sha256: {!r} is not 64 hex digits".format(where, sha))
        labels = raw.get("labels")
        if labels is not None and (not isinstance(labels, str) or not _safe_relpath(labels)):
            raise ModelError("{}: labels: {!r} must be a plain file name inside the "
                             "package".format(where, labels))

        inp = check.mapping(raw, "input")
        ic = _Checker(where + ": input")
        shape = ic.required(inp, "shape")
        if (not isinstance(shape, list) or len(shape) != 4 or
                not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ModelError("{}: input.shape: {!r} must be four positive integers, e.g. "
                             "[1, 3, 224, 224]".format(where, shape))
        layout = ic.choice(inp, "layout", LAYOUTS, default="NCHW")
        _check_pixel_budget(where, shape, layout)
        channels = shape[1] if layout == "NCHW" else shape[3]
        if channels != 3:
            raise ModelError("{}: input.shape: {!r} has {} channels for layout {}; only 3-channel "
                             "images are supported".format(where, shape, channels, layout))
        color = ic.choice(inp, "color", COLORS, default="RGB")
        resize = inp.get("resize") or {}
        if not isinstance(resize, dict):
            raise ModelError("{}: input.resize: must be a mapping like {{mode: stretch}}".format(
                where))
        mode = _Checker(where + ": input.resize").choice(resize, "mode", RESIZE_MODES,
                                                         default="stretch")
        size = resize.get("size")
        if mode == "shorter_side_crop":
            min_side = min(shape[2:] if layout == "NCHW" else shape[1:3])
            if not isinstance(size, int) or isinstance(size, bool) or size < min_side:
                raise ModelError("{}: input.resize.size: {!r} must be an integer >= the input's "
                                 "side ({}) for mode shorter_side_crop".format(
                                     where, size, min_side))
            if size > MAX_RESIZE_SIDE:
                raise ModelError("{}: input.resize.size: {} is over the limit of {} pixels; "
                                 "frames are resized to it before the crop".format(
                                     where, size, MAX_RESIZE_SIDE))
        mean = _triple(where, "input.mean", inp.get("mean", [0.0, 0.0, 0.0]))
        std = _triple(where, "input.std", inp.get("std", [1.0, 1.0, 1.0]))
        if any(s == 0 for s in std):
            raise ModelError("{}: input.std: {!r} must not contain 0".format(where, std))
        input_spec = InputSpec(ic.string(inp, "name", default="input"), shape, layout, color,
                               mode, size, mean, std)

        out = raw.get("output") or {}
        if not isinstance(out, dict):
            raise ModelError("{}: output: must be a mapping like {{activation: softmax}}".format(
                where))
        oc = _Checker(where + ": output")
        output_spec = OutputSpec(out.get("name"), oc.choice(out, "activation", ACTIVATIONS,
                                                            default="softmax"))
        return cls(root, name, version, task, file, sha, labels, input_spec, output_spec, raw)


def _check_pixel_budget(where: str, shape: List[int], layout: str) -> None:
    """Refuse input shapes no frame buffer here could hold, before OpenCV or the backend
    fails to allocate them (it raises, or the OOM killer ends the agent)."""
    batch, (height, width) = shape[0], (shape[2:4] if layout == "NCHW" else shape[1:3])
    if height > MAX_INPUT_SIDE or width > MAX_INPUT_SIDE or \
            batch * height * width > MAX_INPUT_PIXELS:
        raise ModelError("{}: input.shape: {!r} asks for {} pixels per inference (batch x "
                         "height x width), over the limit of {} (each side at most {}); use "
                         "the model's real input size".format(
                             where, shape, batch * height * width, MAX_INPUT_PIXELS,
                             MAX_INPUT_SIDE))


def load_untrusted_yaml(text: str) -> Any:
    """Parse a YAML (or JSON) document from outside the device, e.g. a manifest_url.

    Anchors and aliases are refused while composing, before anything is expanded: a few
    hundred bytes of nested aliases ("billion laughs") would otherwise build gigabytes of
    objects. Raises yaml.YAMLError. Works with PyYAML 3.12 and later.
    """
    import yaml
    from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, AliasEvent) or (
                    isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.anchor):
                raise yaml.composer.ComposerError(
                    None, None, "YAML anchors and aliases (&name, *name) are not allowed in a "
                    "manifest; write the values out", event.start_mark)
            return yaml.SafeLoader.compose_node(self, parent, index)

    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_labels(path: str) -> List[str]:
    """One class name per line (UTF-8); blank trailing lines ignored."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelError("labels file {}: {}".format(path, exc))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte order mark is no part of the first label
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError("labels file {}: not UTF-8 text (byte 0x{:02x} on line {}); save it "
                         "as UTF-8, one class name per line".format(
                             path, data[exc.start], data[:exc.start].count(b"\n") + 1))
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def safe_component(value: str) -> bool:
    """One path component of letters, digits, '_', '-' and '.', not '.' or '..'."""
    return bool(value) and value not in (".", "..") and all(
        c.isalnum() or c in "_-." for c in value)


def _safe_relpath(value: str) -> bool:
    return safe_component(value)


def _triple(where: str, key: str, value: Any) -> List[float]:
    if (not isinstance(value, list) or len(value) != 3 or
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ModelError("{}: {}: {!r} must be three numbers (one per channel)".format(
            where, key, value))
    return [float(v) for v in value]


class _Checker(object):
    """Small helpers that turn a missing or wrong manifest field into a ModelError."""

    _MISSING = object()

    def __init__(self, where: str) -> None:
        self.where = where

    def required(self, raw: Dict[str, Any], key: str) -> Any:
        if key not in raw or raw[key] is None:
            raise ModelError("{}: {}: missing".format(self.where, key))
        return raw[key]

    def string(self, raw: Dict[str, Any], key: str, default: Any = _MISSING) -> str:
        value = raw.get(key, default)
        if value is self._MISSING:
            raise ModelError("{}: {}: missing".format(self.where, key))
        if not isinstance(value, str) or not value:
            raise ModelError("{}: {}: {!r} must be a non-empty string".format(
                self.where, key, value))
        return value

    def choice(self, raw: Dict[str, Any], key: str, allowed: Sequence[str],
               default: Any = _MISSING) -> str:
        value = raw.get(key, default)
        if value is self._MISSING:
            raise ModelError("{}: {}: missing".format(self.where, key))
        if value not in allowed:
            raise ModelError("{}: {}: {!r} is not one of {}".format(
                self.where, key, value, ", ".join(allowed)))
        return value

    def mapping(self, raw: Dict[str, Any], key: str) -> Dict[str, Any]:
        value = raw.get(key)
        if not isinstance(value, dict):
            raise ModelError("{}: {}: missing or not a mapping".format(self.where, key))
        return value
