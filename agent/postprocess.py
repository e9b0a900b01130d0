"""Model outputs -> top-k predictions with labels."""

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import BackendError


def activate(scores: np.ndarray, activation: str) -> np.ndarray:
    """Apply the manifest's output activation to a 1-D score vector (float64 for stability)."""
    x = scores.astype(np.float64, copy=False)
    if activation == "softmax":
        x = x - np.max(x)
        e = np.exp(x)
        return e / np.sum(e)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


class Classifier(object):
    """Picks the score output, applies the activation and keeps the top k above min_score."""

    def __init__(self, labels: Sequence[str], activation: str, output_name: Optional[str],
                 top_k: int = 5, min_score: float = 0.0) -> None:
        self.labels = list(labels)
        self.activation = activation
        self.output_name = output_name
        self.top_k = top_k
        self.min_score = min_score

    def _raw(self, outputs: Dict[str, np.ndarray]) -> np.ndarray:
        """The score output as a flat vector; BackendError if missing or not all finite."""
        if self.output_name:
            raw = outputs.get(self.output_name)
            if raw is None:
                raise BackendError("model output {!r} missing from the backend's outputs ({})"
                                   .format(self.output_name, ", ".join(outputs)))
        else:
            raw = next(iter(outputs.values()))
        flat = np.asarray(raw).reshape(-1)
        # One pass: a float64 sum of finite float32 values cannot overflow, so it is finite
        # exactly when every value is (NaN and Inf propagate into it).
        if not math.isfinite(float(np.sum(flat, dtype=np.float64))):
            raise BackendError("model output has NaN or Inf values ({} of {})".format(
                int(np.count_nonzero(~np.isfinite(flat))), flat.shape[0]))
        return flat

    def scores(self, outputs: Dict[str, np.ndarray]) -> np.ndarray:
        return activate(self._raw(outputs), self.activation)

    def __call__(self, outputs: Dict[str, np.ndarray]) -> List[Dict[str, object]]:
        flat = self._raw(outputs)
        if self.activation == "softmax":
            # activate()'s softmax without dividing all 1000 values: rank by exp(x - max),
            # divide only the k kept (the same float64 operations, so the same scores).
            weights = flat.astype(np.float64)
            weights -= np.max(weights)
            np.exp(weights, out=weights)
            total = float(np.sum(weights))
        else:
            weights = activate(flat, self.activation)
            total = 1.0
        top = []
        for i in top_indices(weights, min(self.top_k, weights.shape[0])):
            score = float(weights[i]) / total
            if score < self.min_score:
                break
            label = self.labels[i] if i < len(self.labels) else str(int(i))
            top.append({"index": int(i), "label": label, "score": round(score, 6)})
        return top


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, highest first; equal values keep index order,
    as a stable sort of -values would (also at the cut: the lowest indices win).

    np.partition finds the k-th largest in one linear pass; only the values at or above it
    are sorted. "mergesort" is numpy's stable sort under its pre-1.15 name (the "stable" kind
    needs numpy >= 1.15; JetPack 4.6 has 1.13.3).
    """
    n = values.shape[0]
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if k >= n:
        return np.argsort(-values, kind="mergesort")
    kth = np.partition(values, n - k)[n - k]
    candidates = np.flatnonzero(values >= kth)  # in index order, ties at the cut included
    order = np.argsort(-values[candidates], kind="mergesort")
    return candidates[order[:k]]
