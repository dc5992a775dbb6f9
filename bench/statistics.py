"""Statistics of per-episode results: means with 95% confidence intervals, paired comparisons.

Few-shot papers report the mean accuracy over test episodes with a 95% confidence interval
``1.96 * s / sqrt(n)`` (normal approximation; Vinyals et al. 2016, Snell et al. 2017, Finn et
al. 2017), where ``s`` is the sample standard deviation over the ``n`` episodes.

Every learner in a metabench run is tested on the *same* episodes, so two learners can be compared
episode by episode (:func:`paired_comparison`): the mean of the per-episode differences with the
same normal-approximation interval, Student's paired t-test (``scipy.stats.ttest_rel``) and, as a
check that does not assume normal differences, the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``). Comparing all pairs of learners makes several tests at once; their
p-values are adjusted with Holm's step-down procedure (Holm 1979, Scand. J. Statist. 6:65-70;
``statsmodels.stats.multitest.multipletests``), which controls the family-wise error rate without
assuming independence between the tests.

Several training seeds: each learner's seeds are tested on the same episodes, so the seeds are first
averaged per episode (:func:`per_episode_means`) and intervals and tests are taken over the
episodes; the spread across seeds is reported separately (standard deviation of the per-seed mean
accuracies). Pooling seeds x episodes as independent samples would shrink the interval by about
``sqrt(seeds)`` although the episodes are the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal, scipy.stats.norm.ppf(0.975)


def mean_ci95(values: np.ndarray | pd.Series) -> tuple[float, float]:
    """Mean and half-width of its normal-approximation 95% confidence interval.

    Args:
        values: ``[n]`` per-episode values (e.g. accuracy in percent).

    Returns:
        ``(mean, 1.96 * std / sqrt(n))`` with the sample standard deviation (ddof = 1), in the
        units of ``values``; the half-width is ``nan`` for ``n < 2``.

    Raises:
        ValueError: if ``values`` is empty.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if arr.size < 2:
        return float(arr.mean()), math.nan
    return float(arr.mean()), float(Z95 * arr.std(ddof=1) / math.sqrt(arr.size))


@dataclass(frozen=True)
class PairedComparison:
    """Learner ``a`` against learner ``b`` on the same ``n`` episodes.

    Attributes:
        a, b: the two learners; differences are ``a - b``.
        n: number of paired episodes.
        mean_diff: mean per-episode difference ``a - b`` (units of the inputs, e.g. percentage
            points of accuracy).
        ci95: half-width of its 95% confidence interval, ``1.96 * s_d / sqrt(n)`` with ``s_d`` the
            sample standard deviation of the differences (the same normal approximation as the
            accuracy intervals); ``nan`` for ``n < 2``.
        t: Student's paired t statistic ``mean_diff / (s_d / sqrt(n))`` (``n - 1`` degrees of
            freedom); ``0`` when all differences are zero, ``+-inf`` when they are all equal and
            non-zero.
        p_t: two-sided p-value of the paired t-test.
        p_wilcoxon: two-sided p-value of the Wilcoxon signed-rank test (zero differences dropped,
            Wilcoxon's convention): the exact null distribution for at most 50 differences
            without zeros or ties, otherwise the normal approximation with the tie correction of
            the variance and no continuity correction; ``1`` when all differences are zero.
        p_t_holm, p_wilcoxon_holm: the p-values after Holm's adjustment over the family of
            comparisons they were computed in (``nan`` for a comparison made on its own).
    """

    a: str
    b: str
    n: int
    mean_diff: float
    ci95: float
    t: float
    p_t: float
    p_wilcoxon: float
    p_t_holm: float = math.nan
    p_wilcoxon_holm: float = math.nan


def paired_comparison(a: np.ndarray | pd.Series | Sequence[float], b: np.ndarray | pd.Series | Sequence[float],
                      names: tuple[str, str] = ("a", "b")) -> PairedComparison:
    """Compare two learners' per-episode results on the same episodes.

    Args:
        a: ``[n]`` per-episode values of the first learner, e.g. accuracy in percent.
        b: ``[n]`` the second learner's, aligned with ``a`` (element ``i`` of both is episode ``i``).
        names: the learners' names stored in the result.

    Returns:
        The :class:`PairedComparison` (``p_*_holm`` left ``nan``): mean difference ``a - b`` with
        its 95% interval, Student's paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon
        signed-rank test (``scipy.stats.wilcoxon``; Wilcoxon 1945, Biometrics Bull. 1:80-83).
        Degenerate cases are decided without scipy: all differences zero gives ``t = 0`` and
        both p-values ``1``; all differences equal and non-zero gives ``t = +-inf`` and
        ``p_t = 0`` (the t-test's limit; the Wilcoxon p-value is still computed).

    Raises:
        ValueError: if the arrays differ in length, have fewer than 2 elements, or hold NaN.
    """
    from scipy import stats

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError("paired_comparison needs at least 2 paired episodes")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("paired_comparison got NaN values")
    d = x - y
    mean, ci = mean_ci95(d)
    if np.all(d == 0):
        return PairedComparison(names[0], names[1], int(d.size), 0.0, 0.0, 0.0, 1.0, 1.0)
    if np.all(d == d[0]):
        t, p_t = math.copysign(math.inf, d[0]), 0.0
    else:
        res = stats.ttest_rel(x, y)
        t, p_t = float(res.statistic), float(res.pvalue)
    nonzero = np.abs(d[d != 0])
    exact = nonzero.size == d.size and nonzero.size <= 50 and np.unique(nonzero).size == nonzero.size
    p_w = float(stats.wilcoxon(x, y, zero_method="wilcox", method="exact" if exact else "approx").pvalue)
    return PairedComparison(names[0], names[1], int(d.size), mean, ci, t, p_t, p_w)


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment of a family of p-values.

    Sort the ``m`` p-values ascending, multiply the ``i``-th smallest (``i = 1..m``) by
    ``m - i + 1``, make the sequence non-decreasing (running maximum) and cap it at 1; a
    hypothesis is rejected when its adjusted p-value is at most ``alpha``. This controls the
    probability of any false rejection at ``alpha`` for any dependence between the tests (Holm
    1979, Scand. J. Statist. 6:65-70). Computed by ``statsmodels.stats.multitest.multipletests``.

    Args:
        pvalues: ``[m]`` p-values in ``[0, 1]``.
        alpha: family-wise error rate.

    Returns:
        ``(adjusted [m], reject [m] bool)`` in the order given.

    Raises:
        ValueError: if a p-value is NaN or outside ``[0, 1]``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p.copy(), np.zeros(0, dtype=bool)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm needs p-values in [0, 1], got {p.tolist()}")
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return np.asarray(adjusted, dtype=np.float64), np.asarray(reject, dtype=bool)


def pairwise_comparisons(per_episode: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """All pairs of learners compared on shared episodes, Holm-adjusted over the pairs.

    Args:
        per_episode: ``[episodes, learners]`` frame, one column per learner, one row per shared
            test episode (e.g. from :func:`per_episode_means`), values in percent.
        alpha: family-wise error rate of the Holm adjustment.

    Returns:
        One row per pair (``k * (k - 1) / 2`` rows for ``k`` learners), the columns of
        :class:`PairedComparison` plus ``significant`` (Holm-adjusted t-test p-value below
        ``alpha``). Learners are ordered by decreasing mean, so that ``a`` is the one with the
        higher mean and ``mean_diff >= 0``; pairs follow that order. Empty (with the columns)
        for fewer than two learners. Both the t-test and the Wilcoxon p-values are adjusted,
        each over its own family of the same pairs.

    Raises:
        ValueError: if a column holds NaN (a learner missing an episode) or there are fewer
            than 2 episodes.
    """
    columns = [f.name for f in PairedComparison.__dataclass_fields__.values()] + ["significant"]
    order = list(per_episode.mean().sort_values(ascending=False, kind="stable").index)
    pairs = [paired_comparison(per_episode[a].to_numpy(), per_episode[b].to_numpy(), (str(a), str(b)))
             for a, b in itertools.combinations(order, 2)]
    if not pairs:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame([asdict(p) for p in pairs])
    table["p_t_holm"], table["significant"] = holm(table["p_t"], alpha)
    table["p_wilcoxon_holm"], _ = holm(table["p_wilcoxon"], alpha)
    return table[columns]


def per_episode_means(episodes: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Average the seeds of every learner per episode.

    Args:
        episodes: rows ``seed, learner, episode, <value>`` (as in a run's ``episodes.csv``).
        value: the column to average.

    Returns:
        ``[episodes, learners]`` frame indexed by episode, one column per learner (in order of
        first appearance), each cell the mean over that learner's seeds.

    Raises:
        ValueError: if the learners were not all tested on the same episodes.
    """
    order = list(dict.fromkeys(episodes["learner"]))
    wide = episodes.groupby(["episode", "learner"], sort=True)[value].mean().unstack("learner")[order]
    if wide.isna().any().any():
        missing = [str(c) for c in wide.columns if wide[c].isna().any()]
        raise ValueError(f"learners {', '.join(missing)} lack some of the episodes the others were tested on")
    wide.columns.name = None
    return wide


def accuracy_summary(episodes: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per learner with its 95% CI over episodes and the spread across seeds.

    The same numbers as a run's ``summary.csv`` (``metabench.protocols.episodic.summarize_accuracy`` builds on it): seeds are
    averaged per episode, the interval is taken over the ``n`` episodes, and the spread across
    seeds is the sample standard deviation of the per-seed mean accuracies.

    Args:
        episodes: rows ``seed, learner, episode, accuracy`` (accuracy in percent).

    Returns:
        One row per learner (order of first appearance): ``learner, accuracy_pct, ci95_pct,
        episodes, seeds, seed_std_pct`` (``nan`` for one seed).
    """
    wide = per_episode_means(episodes)
    rows = []
    for name in wide.columns:
        mean, ci = mean_ci95(wide[name])
        per_seed = episodes[episodes["learner"] == name].groupby("seed")["accuracy"].mean()
        rows.append({
            "learner": name, "accuracy_pct": mean, "ci95_pct": ci, "episodes": int(wide[name].size),
            "seeds": int(per_seed.size),
            "seed_std_pct": float(per_seed.std(ddof=1)) if per_seed.size > 1 else math.nan,
        })
    return pd.DataFrame(rows)


def pareto_front(cost: Sequence[float] | np.ndarray, value: Sequence[float] | np.ndarray) -> np.ndarray:
    """Which points are Pareto-optimal when lower cost and higher value are better.

    A point is on the front when no other point has lower-or-equal cost and higher-or-equal value
    with at least one of the two strictly better. Equal points are all kept.

    Args:
        cost: ``[m]`` costs (e.g. meta-training seconds).
        value: ``[m]`` values (e.g. mean accuracy in percent).

    Returns:
        ``[m]`` boolean mask of the points on the front.

    Raises:
        ValueError: if the lengths differ or a value is NaN.
    """
    c = np.asarray(cost, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    if c.shape != v.shape:
        raise ValueError(f"pareto_front needs equal lengths, got {c.shape} and {v.shape}")
    if np.isnan(c).any() or np.isnan(v).any():
        raise ValueError("pareto_front got NaN")
    dominated = ((c[None, :] <= c[:, None]) & (v[None, :] >= v[:, None])
                 & ((c[None, :] < c[:, None]) | (v[None, :] > v[:, None]))).any(axis=1)
    return ~dominated
