"""Validation gate: a new backend must agree with a reference backend before it serves.

Runs both backends on the same input tensors and compares the chosen output after the model's
activation (softmax by default): top-1 agreement and the largest absolute difference. An FP16 or
INT8 engine that drifts too far from ONNX Runtime is refused with a reason a user can act on.
Backend-neutral: anything with `infer(tensor) -> {name: array}` works.
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np


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


def activate(scores: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """Apply the manifest's output activation over the last axis (float64 for stability)."""
    x = np.asarray(scores, dtype=np.float64)
    if activation == "softmax":
        x = x - x.max(axis=-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


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
            got = activate(_pick(candidate.infer(tensor), output_name, cand_name), activation)
            want = activate(_pick(reference.infer(tensor), output_name, ref_name), activation)
        except ValueError as exc:
            return ValidationResult(False, frames, 0.0, float("inf"), output_name, str(exc))
        if got.shape != want.shape:
            return ValidationResult(False, frames, 0.0, float("inf"), output_name,
                                    "{} output shape {} differs from {} output shape {}".format(
                                        cand_name, got.shape, ref_name, want.shape))
        got2 = got.reshape(got.shape[0], -1) if got.ndim > 1 else got.reshape(1, -1)
        want2 = want.reshape(want.shape[0], -1) if want.ndim > 1 else want.reshape(1, -1)
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
