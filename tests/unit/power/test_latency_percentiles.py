"""Telemetry's latency percentiles (agent/telemetry/stats.py `percentiles`) are numpy's default
(linear) percentiles, rounded to 3 decimals, without calling numpy per message."""

import random

import numpy as np
import pytest

from agent.telemetry.stats import StageStats, percentiles


def numpy_percentiles(values, points):
    res = np.percentile(np.asarray(values, dtype=np.float64), points)
    return {"p{}".format(int(p)): round(float(v), 3) for p, v in zip(points, res)}


@pytest.mark.parametrize("values", [[4.0], [0.2, 0.3], [1.0, 1.0, 1.0], [3.0, 1.0, 2.0],
                                    [0.125 * i for i in range(7)], list(range(100))])
def test_fixed_windows_match_numpy(values):
    assert percentiles(values) == numpy_percentiles(values, (50, 95, 99))


def test_random_windows_match_numpy_at_any_point():
    rng = random.Random(3)
    points = (0, 12.5, 33, 50, 90, 95, 99, 100)
    for _ in range(2000):
        values = [rng.random() * 10 ** rng.randint(-3, 3) for _ in range(rng.randint(1, 300))]
        assert percentiles(values, points) == numpy_percentiles(values, points)


def test_an_empty_window_has_no_percentiles():
    assert percentiles([]) is None
    assert StageStats.summarize({"infer": [], "capture": [2.0]}) == {
        "infer": None, "capture": {"p50": 2.0, "p95": 2.0, "p99": 2.0}}
