"""Mean and 95% confidence interval, against hand-computed values."""

import math

import pytest

from metabench.statistics import mean_ci95


def test_mean_ci95_hand_computed() -> None:
    # values 1..5: mean 3, sample std sqrt(2.5), CI = 1.959964 * sqrt(2.5) / sqrt(5)
    mean, ci = mean_ci95([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert ci == pytest.approx(1.959963984540054 * math.sqrt(2.5) / math.sqrt(5), rel=1e-12)
    assert ci == pytest.approx(1.385904, abs=1e-6)


def test_mean_ci95_degenerate() -> None:
    assert mean_ci95([100.0, 100.0]) == (100.0, 0.0)
    mean, ci = mean_ci95([42.0])
    assert mean == 42.0 and math.isnan(ci)
    with pytest.raises(ValueError):
        mean_ci95([])
