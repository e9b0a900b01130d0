"""Validation gate: a new backend must agree with a reference backend before it serves.

Runs both backends on the same input tensors (`validation_tensors`: real photos when there are
any) and compares the chosen output after the model's activation (softmax by default): top-1
agreement and the largest absolute difference. An FP16 or INT8 engine that drifts too far from
ONNX Runtime is refused with a reason a user can act on. Backend-neutral: anything with
`infer(tensor) -> {name: array}` works.
"""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import AgentError
from ..store.package import ModelPackage
from ..postprocess import activate

# What counts as a photo in a calibration or samples folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ValidationPolicy(object):
    """config `backend.validate`: how many frames, and the top-1 agreement required.

    The config's `backend.validate` section has the same two attributes and serves as well.
    """

    def __init__(self, frames: int = 16, min_top1_agreement: float = 0.98) -> None:
        self.frames = int(frames)
        self.min_top1_agreement = float(min_top1_agreement)


class ValidationResult(object):
    """Outcome of validate_against_reference; `reason` says why it failed (empty when passed)."""

    def __init__(self, passed: bool, frames: int, top1_agreement: float, max_abs_diff: float,
                 output_name: Optional[str], reason: str = "") -> None:
        self.passed = passed
        self.frames = frames
        self.top1_agreement = top1_agreement
        self.max_abs_diff = max_abs_diff
        self.output_name = output_name
        self.reason = reason

    @property
    def ok(self) -> bool:
        """Same as `passed`."""
        return self.passed

    def to_dict(self) -> Dict[str, Any]:
        return {"passed": self.passed, "frames": self.frames,
                "top1_agreement": round(self.top1_agreement, 4),
                "max_abs_diff": float("{:.6g}".format(self.max_abs_diff)),
                "output": self.output_name, "reason": self.reason}

    def __bool__(self) -> bool:
        return self.passed

    __nonzero__ = __bool__

    def __repr__(self) -> str:
        return "ValidationResult({})".format(self.to_dict())


def _activated_rows(scores: np.ndarray, activation: str) -> np.ndarray:
    """One row of activated scores per frame, as the classifier sees each frame's output."""
    rows = np.asarray(scores)
    rows = rows.reshape(rows.shape[0], -1) if rows.ndim > 1 else rows.reshape(1, -1)
    return np.stack([activate(row, activation) for row in rows])


def _pick(outputs: Dict[str, np.ndarray], name: Optional[str], who: str) -> np.ndarray:
    if name is None:
        if not outputs:
            raise ValueError("{} returned no outputs".format(who))
        return next(iter(outputs.values()))
    if name not in outputs:
        raise ValueError("{} has no output {!r} (outputs: {})".format(
            who, name, ", ".join(outputs)))
    return outputs[name]


def validate_against_reference(candidate: Any, reference: Any, tensors: Sequence[np.ndarray],
                               min_top1_agreement: float, max_abs_diff: Optional[float] = None,
                               output_name: Optional[str] = None,
                               activation: str = "softmax") -> ValidationResult:
    """Compare `candidate` with `reference` on `tensors` (each a full input tensor).

    Passes when the share of frames whose top-1 class agrees is >= min_top1_agreement and,
    if max_abs_diff is given, no activated score differs by more than it.
    """
    tensors = list(tensors)
    if not tensors:
        return ValidationResult(True, 0, 1.0, 0.0, output_name,
                                "no validation frames: the check was skipped")
    cand_name = getattr(candidate, "name", type(candidate).__name__)
    ref_name = getattr(reference, "name", type(reference).__name__)
    agree = 0
    frames = 0
    worst = 0.0
    for tensor in tensors:
        try:
            got = _pick(candidate.infer(tensor), output_name, cand_name)
            want = _pick(reference.infer(tensor), output_name, ref_name)
        except ValueError as exc:
            return ValidationResult(False, frames, 0.0, float("inf"), output_name, str(exc))
        if got.shape != want.shape:
            return ValidationResult(False, frames, 0.0, float("inf"), output_name,
                                    "{} output shape {} differs from {} output shape {}".format(
                                        cand_name, got.shape, ref_name, want.shape))
        got2, want2 = _activated_rows(got, activation), _activated_rows(want, activation)
        if not np.all(np.isfinite(got2)):
            return ValidationResult(False, frames, 0.0, float("inf"), output_name,
                                    "{} produced NaN or Inf scores; the engine is numerically "
                                    "broken at this precision (try fp32)".format(cand_name))
        agree += int(np.sum(got2.argmax(axis=1) == want2.argmax(axis=1)))
        frames += got2.shape[0]
        worst = max(worst, float(np.max(np.abs(got2 - want2))))
    agreement = float(agree) / frames if frames else 1.0
    problems = []  # type: List[str]
    if agreement < min_top1_agreement:
        problems.append("top-1 agrees with {} on {}/{} frames ({:.1%}), below the required "
                        "{:.1%}".format(ref_name, agree, frames, agreement, min_top1_agreement))
    if max_abs_diff is not None and worst > max_abs_diff:
        problems.append("scores differ from {} by up to {:.4g}, more than the allowed "
                        "{:.4g}".format(ref_name, worst, max_abs_diff))
    reason = ""
    if problems:
        reason = "{} disagrees with the reference: {}; use a higher precision (fp32) or lower " \
                 "backend.validate.min_top1_agreement".format(cand_name, "; ".join(problems))
    return ValidationResult(not problems, frames, agreement, worst, output_name, reason)


class _Runner(object):
    """Gives the validation gate an `infer` while the backend is still loading."""

    def __init__(self, name: str, infer: Callable[[np.ndarray], Dict[str, np.ndarray]]) -> None:
        self.name = name
        self.infer = infer


def check_against_onnxruntime(name: str, infer: Callable[[np.ndarray], Dict[str, np.ndarray]],
                              package: ModelPackage, options: Any,
                              progress: Callable[[str, Optional[float], str], None],
                              note: Callable[[str], None]) -> Optional[ValidationResult]:
    """Run the gate of `options.validate` on a freshly loaded backend (its `infer`).

    None when the policy asks for no frames or ONNX Runtime is unavailable (a note says so).
    """
    policy = options.validate
    if policy.frames <= 0:
        return None
    try:
        from .onnxruntime import OnnxRuntimeBackend
        reference = OnnxRuntimeBackend(package, options).load()
    except AgentError as exc:
        note("validation skipped: the ONNX Runtime reference is unavailable ({})".format(exc))
        return None
    progress("validating", None, "comparing with ONNX Runtime on {} frames".format(
        policy.frames))
    try:
        tensors = validation_tensors(package, options, policy.frames)
        result = validate_against_reference(
            _Runner(name, infer), reference, tensors, policy.min_top1_agreement,
            output_name=package.output.name, activation=package.output.activation)
    finally:
        reference.close()
    progress("validating", 1.0, "top-1 agreement {:.1%}, max |diff| {:.3g}".format(
        result.top1_agreement, result.max_abs_diff))
    return result


def failed_when_built(recorded: Optional[Dict[str, Any]], policy: Any) -> bool:
    """Whether a gate result recorded with a cached engine fails `policy`."""
    return bool(recorded and policy.frames > 0 and recorded.get("frames") and
                recorded.get("top1_agreement", 1.0) < policy.min_top1_agreement)


def validation_tensors(package: ModelPackage, options: Any, frames: int) -> List[np.ndarray]:
    """`frames` input tensors from real photos when there are any, else smooth synthetic ones.

    Photos come from the calibration folder, the package's samples/ or the models/samples
    folder beside it; each photo is used as is, mirrored, and cropped, for variety.
    """
    import cv2
    from ..preprocess import Preprocessor
    pre = Preprocessor(package.input)
    folders = [options.calibration_dir, os.path.join(package.root, "samples"),
               os.path.join(os.path.dirname(os.path.abspath(package.root)), "samples")]
    images = []  # type: List[np.ndarray]
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
                if image is not None:
                    images.append(image)
            if len(images) >= frames:
                break
        if images:
            break
    out = []  # type: List[np.ndarray]
    variant = 0
    while images and len(out) < frames:
        for image in images:
            if len(out) >= frames:
                break
            out.append(pre(_variant(image, variant)))
        variant += 1
    rng = np.random.RandomState(1234)
    while len(out) < frames:
        out.append(pre(_synthetic_frame(rng)))
    return out


def _variant(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[:2]
    if k % 2:
        image = image[:, ::-1]
    step = k // 2
    if step:
        f = max(0.5, 1.0 - 0.1 * step)
        ch, cw = max(8, int(h * f)), max(8, int(w * f))
        y0 = (h - ch) * (step % 3) // 2
        x0 = (w - cw) * ((step + 1) % 3) // 2
        image = image[y0:y0 + ch, x0:x0 + cw]
    return np.ascontiguousarray(image)


def _synthetic_frame(rng: Any) -> np.ndarray:
    """A smooth random image (blurred noise + gradients): more image-like than white noise."""
    import cv2
    small = rng.randint(0, 256, size=(12, 16, 3)).astype(np.uint8)
    return cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)
