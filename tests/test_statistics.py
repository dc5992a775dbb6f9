"""Statistics against hand-computed values and independent formulas (not the code under test).

Closed forms used for Student's t distribution: with 1 degree of freedom it is the Cauchy
distribution, two-sided p = 1 - (2/pi) atan|t|; with 2 degrees of freedom, p = 1 - |t| / sqrt(2 + t^2).
"""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from metabench.statistics import (
    Z95,
    accuracy_summary,
    holm,
    mean_ci95,
    paired_comparison,
    pairwise_comparisons,
    pareto_front,
    per_episode_means,
)


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


def test_paired_comparison_three_episodes_by_hand() -> None:
    # d = a - b = [1, 2, -1]: mean 2/3, s_d = sqrt(7/3), t = (2/3) / sqrt(7/9) = 2 / sqrt(7), 2 d.f.
    r = paired_comparison([1, 2, 3], [0, 0, 4], names=("x", "y"))
    assert (r.a, r.b, r.n) == ("x", "y", 3)
    assert r.mean_diff == pytest.approx(2 / 3, rel=1e-12)
    assert r.ci95 == pytest.approx(Z95 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-12)
    t = 2 / math.sqrt(7)
    assert r.t == pytest.approx(t, rel=1e-12)
    assert r.p_t == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)  # = 1 - 2/sqrt(18) = 0.52860
    assert r.p_t == pytest.approx(0.528595, abs=1e-6)
    # Wilcoxon, normal approximation (ties |1|, |1| -> ranks 1.5, 1.5; |2| -> 3): W+ = 4.5,
    # mean n(n+1)/4 = 3, variance n(n+1)(2n+1)/24 - sum(t^3 - t)/48 = 3.5 - 6/48 = 3.375
    z = (4.5 - 3) / math.sqrt(3.375)
    assert r.p_wilcoxon == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-10)
    assert math.isnan(r.p_t_holm) and math.isnan(r.p_wilcoxon_holm)


def test_paired_comparison_two_episodes_cauchy() -> None:
    # d = [2, -1]: mean 0.5, s_d = sqrt(4.5), t = 0.5 / (sqrt(4.5) / sqrt(2)) = 1/3, 1 d.f. (Cauchy)
    r = paired_comparison([3, 1], [1, 2])
    assert r.t == pytest.approx(1 / 3, rel=1e-12)
    assert r.p_t == pytest.approx(1 - 2 / math.pi * math.atan(1 / 3), rel=1e-10)


def test_wilcoxon_exact_without_ties() -> None:
    # d = [1, 2, 3]: all 8 sign patterns equally likely; W+ = 6 only for all positive -> p = 2/8
    assert paired_comparison([2, 4, 6], [1, 2, 3]).p_wilcoxon == pytest.approx(0.25, rel=1e-12)


def test_paired_comparison_large_sample_matches_textbook_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 76, 600) * 100 / 75
    b = np.clip(a - rng.normal(1.0, 6.0, 600), 0, 100)
    r = paired_comparison(a, b)
    d = a - b
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / (len(d) - 1))
    assert r.mean_diff == pytest.approx(d.mean(), rel=1e-12)
    assert r.ci95 == pytest.approx(1.959963984540054 * sd / math.sqrt(600), rel=1e-10)
    assert r.t == pytest.approx(d.mean() / (sd / math.sqrt(600)), rel=1e-10)
    assert r.p_t == pytest.approx(_t_two_sided(r.t, 599), rel=1e-6)


def _t_two_sided(t: float, dof: int, steps: int = 20000) -> float:
    """Two-sided p of Student's t: 1 - 2 * integral_0^|t| of the density (Simpson's rule)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    f = [c * (1 + (k * abs(t) / steps) ** 2 / dof) ** (-(dof + 1) / 2) for k in range(steps + 1)]
    h = abs(t) / steps
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 1 - 2 * area


def test_t_reference_formula_agrees_with_closed_forms() -> None:
    assert _t_two_sided(1 / 3, 1) == pytest.approx(1 - 2 / math.pi * math.atan(1 / 3), rel=1e-9)
    t = 2 / math.sqrt(7)
    assert _t_two_sided(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)


def test_paired_comparison_degenerate_cases() -> None:
    same = paired_comparison([50.0, 60.0, 70.0], [50.0, 60.0, 70.0])
    assert (same.mean_diff, same.ci95, same.t, same.p_t, same.p_wilcoxon) == (0.0, 0.0, 0.0, 1.0, 1.0)
    shifted = paired_comparison([52.0, 62.0, 72.0], [50.0, 60.0, 70.0])
    assert shifted.mean_diff == 2.0 and shifted.ci95 == 0.0
    assert shifted.t == math.inf and shifted.p_t == 0.0
    assert paired_comparison([48.0, 58.0], [50.0, 60.0]).t == -math.inf


@pytest.mark.parametrize("a, b", [([1, 2], [1, 2, 3]), ([1], [2]), ([1, math.nan], [1, 2]), ([[1, 2]], [[1, 2]])])
def test_paired_comparison_rejects_bad_input(a, b) -> None:
    with pytest.raises(ValueError):
        paired_comparison(a, b)


def test_holm_hand_computed() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert reject.tolist() == [True, False, False, True]
    # capped at 1, and monotone after sorting
    adjusted, reject = holm([0.5, 0.6])
    assert adjusted.tolist() == [1.0, 1.0] and not reject.any()
    # the boundary: Holm rejects when p_(i) <= alpha / (m - i + 1), i.e. adjusted p <= alpha
    adjusted, reject = holm([0.025, 0.9], alpha=0.05)
    assert adjusted.tolist() == pytest.approx([0.05, 0.9]) and reject.tolist() == [True, False]


def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm (1979) step-down, written out: p_(i) * (m - i + 1), running maximum, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_holm_matches_definition_on_random_families() -> None:
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 10, 45):
        p = rng.uniform(0, 0.2, m).tolist()
        adjusted, reject = holm(p, alpha=0.05)
        expected = _holm_by_definition(p)
        assert adjusted.tolist() == pytest.approx(expected, rel=1e-12)
        assert reject.tolist() == [x < 0.05 for x in expected]


def test_holm_rejects_invalid_pvalues() -> None:
    for bad in ([0.1, math.nan], [-0.1], [1.5]):
        with pytest.raises(ValueError):
            holm(bad)
    adjusted, reject = holm([])
    assert adjusted.size == 0 and reject.size == 0


def test_pairwise_comparisons_orders_pairs_and_adjusts() -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(40, 76, 200) * 100 / 75
    wide = pd.DataFrame({
        "low": np.clip(base - 10 + rng.normal(0, 3, 200), 0, 100),
        "high": base,
        "mid": np.clip(base - 1 + rng.normal(0, 3, 200), 0, 100),
    })
    table = pairwise_comparisons(wide)
    assert list(zip(table["a"], table["b"])) == [("high", "mid"), ("high", "low"), ("mid", "low")]
    assert (table["mean_diff"] > 0).all()
    for r in table.itertuples():
        direct = paired_comparison(wide[r.a], wide[r.b])
        assert r.t == pytest.approx(direct.t) and r.p_t == pytest.approx(direct.p_t)
    assert table["p_t_holm"].tolist() == pytest.approx(_holm_by_definition(table["p_t"].tolist()))
    assert table["p_wilcoxon_holm"].tolist() == pytest.approx(_holm_by_definition(table["p_wilcoxon"].tolist()))
    assert table["significant"].tolist() == [p < 0.05 for p in table["p_t_holm"]]
    assert pairwise_comparisons(wide[["low"]]).empty


def test_per_episode_means_and_summary_with_seeds() -> None:
    rows = []
    acc = {("a", 0): [80, 90, 100], ("a", 1): [70, 90, 90], ("b", 0): [60, 60, 60], ("b", 1): [60, 60, 90]}
    for (learner, seed), values in acc.items():
        rows += [{"seed": seed, "learner": learner, "episode": e, "accuracy": v} for e, v in enumerate(values)]
    episodes = pd.DataFrame(rows)
    wide = per_episode_means(episodes)
    assert list(wide.columns) == ["a", "b"]
    assert wide["a"].tolist() == [75, 90, 95] and wide["b"].tolist() == [60, 60, 75]
    s = accuracy_summary(episodes).set_index("learner")
    # per-episode means [75, 90, 95]: mean 86.667, sd sqrt(((-35/3)^2 + (10/3)^2 + (25/3)^2) / 2)
    sd = math.sqrt(((-35 / 3) ** 2 + (10 / 3) ** 2 + (25 / 3) ** 2) / 2)
    assert s.loc["a", "accuracy_pct"] == pytest.approx(260 / 3)
    assert s.loc["a", "ci95_pct"] == pytest.approx(Z95 * sd / math.sqrt(3))
    # per-seed means 90 and 83.333: sample sd |90 - 83.333| / sqrt(2)
    assert s.loc["a", "seed_std_pct"] == pytest.approx((90 - 250 / 3) / math.sqrt(2))
    assert (s.loc["a", "episodes"], s.loc["a", "seeds"]) == (3, 2)
    with pytest.raises(ValueError, match="lack some of the episodes"):
        per_episode_means(episodes[~((episodes["learner"] == "b") & (episodes["episode"] == 2))])


def test_pareto_front_by_hand() -> None:
    cost = [10, 20, 30, 40, 20]
    value = [80, 90, 85, 95, 90]
    # (30, 85) is dominated by (20, 90); the two (20, 90) are equal and both kept
    assert pareto_front(cost, value).tolist() == [True, True, False, True, True]
    assert pareto_front([1], [1]).tolist() == [True]
    assert pareto_front([5, 5], [1, 2]).tolist() == [False, True]  # same cost, higher value wins
    for p, q in itertools.permutations([(1, 1), (2, 2), (3, 3)], 2):
        assert pareto_front([p[0], q[0]], [p[1], q[1]]).all()  # costlier but better: both optimal
    with pytest.raises(ValueError):
        pareto_front([1, 2], [1])
    with pytest.raises(ValueError):
        pareto_front([1, math.nan], [1, 2])
