"""The classifier: softmax, top-k with labels and min_score, refused non-finite outputs, and
top-k ordering (highest score first, equal scores in index order) on every numpy the agent
supports (1.13.3 on JetPack 4.6 has no argsort kind="stable")."""

import numpy as np
import pytest

from agent.postprocess import Classifier, activate


def top(scores, k, activation="none"):
    clf = Classifier([str(i) for i in range(len(scores))], activation, "logits", top_k=k,
                     min_score=0.0)
    return [t["index"] for t in clf({"logits": np.asarray([scores], np.float32)})]


def test_equal_scores_keep_index_order():
    assert top([0.5, 0.9, 0.5, 0.9, 0.1], 3) == [1, 3, 0]
    assert top([0.5, 0.9, 0.5, 0.9, 0.1], 5) == [1, 3, 0, 2, 4]


def test_ties_at_the_cut_take_the_lowest_indices():
    assert top([0.0] * 1000, 5) == [0, 1, 2, 3, 4]
    scores = [0.25] * 1000
    scores[500] = 0.75
    assert top(scores, 4, "softmax") == [500, 0, 1, 2]


def test_top_k_with_this_numpy_version():
    """Fails on numpy < 1.15 when the code asks for kind="stable" (the JetPack 4.6 stack)."""
    assert top([1.0, 3.0, 2.0, -1.0], 3, "softmax") == [1, 2, 0]


def test_softmax_topk_labels_and_min_score():
    logits = np.array([[1.0, 3.0, 2.0, -1.0]], np.float32)
    clf = Classifier(["a", "b", "c", "d"], "softmax", "logits", top_k=3, min_score=0.05)
    top = clf({"logits": logits})
    assert [t["label"] for t in top] == ["b", "c", "a"]
    assert abs(sum(activate(logits[0], "softmax")) - 1.0) < 1e-9
    clf = Classifier(["a", "b", "c", "d"], "softmax", "logits", top_k=3, min_score=0.5)
    assert [t["label"] for t in clf({"logits": logits})] == ["b"]


def test_non_finite_outputs_are_an_error():
    from agent.errors import BackendError
    clf = Classifier(["a", "b"], "softmax", None)
    with pytest.raises(BackendError):
        clf({"x": np.array([np.nan, 1.0])})


def test_top_k_is_a_stable_full_sort_on_random_scores_with_ties():
    """Top-k picks and orders exactly as a stable sort of all scores would, ties at the cut
    included (scores drawn from a few values, so ties are everywhere)."""
    rng = np.random.RandomState(7)
    for trial in range(300):
        n = int(rng.randint(1, 40))
        values = rng.randint(0, 4, n).astype(np.float32) if trial % 2 else \
            rng.rand(n).astype(np.float32)  # >= 0: min_score 0 keeps them all
        for k in (1, 3, n - 1, n, n + 2):
            want = sorted(range(n), key=lambda i: (-values[i], i))[:max(k, 0)]
            assert top(values, k) == want, (values, k)


def test_softmax_scores_are_the_activation_of_the_outputs():
    logits = np.random.RandomState(5).randn(1, 1000).astype(np.float32) * 4
    clf = Classifier([str(i) for i in range(1000)], "softmax", "logits", top_k=5)
    probs = activate(logits[0], "softmax")
    top = clf({"logits": logits})
    assert [t["index"] for t in top] == list(np.argsort(-probs, kind="mergesort")[:5])
    assert [t["score"] for t in top] == [round(float(probs[t["index"]]), 6) for t in top]


def test_huge_finite_outputs_are_not_taken_for_inf():
    """float64 outputs whose sum overflows are still finite: ranked, not refused."""
    clf = Classifier(["a", "b", "c"], "none", None, top_k=2)
    assert [t["label"] for t in clf({"x": np.array([1e308, 1.7e308, -5.0])})] == ["b", "a"]
    from agent.errors import BackendError
    with pytest.raises(BackendError):
        clf({"x": np.array([1e308, np.inf, -5.0])})
