"""Model outputs -> top-k predictions with labels."""

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

    def scores(self, outputs: Dict[str, np.ndarray]) -> np.ndarray:
        if self.output_name:
            raw = outputs.get(self.output_name)
            if raw is None:
                raise BackendError("model output {!r} missing from the backend's outputs ({})"
                                   .format(self.output_name, ", ".join(outputs)))
        else:
            raw = next(iter(outputs.values()))
        flat = np.asarray(raw).reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise BackendError("model output has NaN or Inf values ({} of {})".format(
                int(np.count_nonzero(~np.isfinite(flat))), flat.shape[0]))
        return activate(flat, self.activation)

    def __call__(self, outputs: Dict[str, np.ndarray]) -> List[Dict[str, object]]:
        probs = self.scores(outputs)
        k = min(self.top_k, probs.shape[0])
        # Highest first; equal scores keep index order. "mergesort" is numpy's stable sort under
        # its pre-1.15 name (the "stable" kind needs numpy >= 1.15; JetPack 4.6 has 1.13.3).
        idx = np.argsort(-probs, kind="mergesort")[:k]
        top = []
        for i in idx:
            score = float(probs[i])
            if score < self.min_score:
                break
            label = self.labels[i] if i < len(self.labels) else str(int(i))
            top.append({"index": int(i), "label": label, "score": round(score, 6)})
        return top
