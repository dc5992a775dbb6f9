"""Statistics of per-episode results: means with 95% confidence intervals.

Few-shot papers report the mean accuracy over test episodes with a 95% confidence interval
``1.96 * s / sqrt(n)`` (normal approximation; Vinyals et al. 2016, Snell et al. 2017, Finn et
al. 2017), where ``s`` is the sample standard deviation over the ``n`` episodes.
"""

from __future__ import annotations

import math

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
