"""The papers' published accuracies, shipped with the package as ``published.csv``.

One row per (learner, variant, dataset, ways, shots) as reported by the paper that introduced the
learner (or, for first-order MAML on Omniglot and Matching Networks on Ravi & Larochelle's
miniImageNet split, the paper that reported it):

- MAML and first-order MAML: Finn, Abbeel & Levine (2017), *Model-Agnostic Meta-Learning for Fast
  Adaptation of Deep Networks*, ICML, Table 1 (Omniglot top, MiniImagenet bottom; "the ± shows 95%
  confidence intervals over tasks"). First-order MAML on Omniglot: Nichol et al. (2018), Table 2.
- Reptile: Nichol, Achiam & Schulman (2018), *On First-Order Meta-Learning Algorithms*,
  arXiv:1803.02999v3, Table 1 (miniImageNet) and Table 2 (Omniglot), with and without
  transduction (batch statistics of the whole test batch at test time).
- Prototypical Networks: Snell, Swersky & Zemel (2017), *Prototypical Networks for Few-shot
  Learning*, NeurIPS, Table 1 (Omniglot, no intervals) and Table 2 (miniImageNet, 95% CI).
- Matching Networks: Vinyals et al. (2016), *Matching Networks for One Shot Learning*, NeurIPS,
  Table 1 (Omniglot) and Table 2 (their own miniImageNet classes); on Ravi & Larochelle's split as
  re-run by Ravi & Larochelle (2017) and reported in Snell et al. (2017), Table 2.

Columns: ``learner`` (metabench's name), ``method`` (the paper's name), ``variant`` (e.g.
``transductive``; empty for the single published variant), ``dataset``, ``split`` (the metabench
split whose test classes follow the paper's protocol: ``vinyals`` for Omniglot papers that test on
423 held-out characters with rotations, ``ravi`` / ``vinyals`` for the two miniImageNet class
splits), ``ways``, ``shots``, ``accuracy_pct``, ``ci95_pct`` (the ± the paper printed: a 95% confidence
interval over test tasks in Finn et al. and Snell et al.; for Nichol et al. as printed, without
checking what it is computed over; empty where none was published), ``transductive`` (``yes`` / ``no`` / ``unknown``),
``key`` (citation key), ``short`` (``Finn et al. 2017``), ``citation`` (authors, year, title,
venue), ``table``, ``verified``
(``yes``: checked against a copy or verbatim quote of the paper's table while writing this file;
``no``: from memory of the paper, shown with a mark) and ``note``.
"""

from __future__ import annotations

import io
from importlib import resources

import pandas as pd

COLUMNS = ("learner", "method", "variant", "dataset", "split", "ways", "shots", "accuracy_pct", "ci95_pct",
           "transductive", "key", "short", "citation", "table", "verified", "note")


def load_published() -> pd.DataFrame:
    """The published accuracies, read from the installed package (``metabench/published.csv``).

    Returns:
        One row per published number with the columns :data:`COLUMNS`: ``ways`` and ``shots`` as
        int, ``accuracy_pct`` and ``ci95_pct`` as float in percent (``ci95_pct`` NaN where no
        interval was published), the others as str (empty string where blank); plus
        ``accuracy_text`` and ``ci95_text``, the numbers as printed in the paper (``98.90``
        keeps its trailing zero).

    Raises:
        FileNotFoundError: if the package was installed without its data file.
    """
    text = resources.files("metabench").joinpath("published.csv").read_text(encoding="utf-8")
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    table["accuracy_text"] = table["accuracy_pct"]
    table["ci95_text"] = table["ci95_pct"]
    table["ways"] = table["ways"].astype(int)
    table["shots"] = table["shots"].astype(int)
    table["accuracy_pct"] = table["accuracy_pct"].astype(float)
    table["ci95_pct"] = pd.to_numeric(table["ci95_pct"].replace("", None), errors="coerce").astype(float)
    return table[[*COLUMNS, "accuracy_text", "ci95_text"]]


def matching(published: pd.DataFrame, dataset: str, split: str, ways: int, shots: int,
             learners: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """The published rows of one setting.

    A published number is shown beside ours when the dataset, the split (the test classes follow
    the same protocol), N-way and K-shot are the same; training budgets, architectures details and
    test-episode counts still differ (see each row's ``note``).

    Args:
        published: the table from :func:`load_published`.
        dataset, split, ways, shots: the setting of a metabench run.
        learners: keep only these learners (``None``: all).

    Returns:
        The matching rows, in the file's order.
    """
    mask = ((published["dataset"] == dataset) & (published["split"] == split)
            & (published["ways"] == ways) & (published["shots"] == shots))
    if learners is not None:
        mask &= published["learner"].isin(list(learners))
    return published[mask]


def label(row: pd.Series | dict) -> str:
    """Display name of a published row: ``Reptile, transductive (Nichol et al. 2018, Table 2)``;
    an unverified number gets a trailing ``*``."""
    variant = f", {row['variant']}" if row["variant"] else ""
    mark = "" if row["verified"] == "yes" else "*"
    return f"{row['method']}{variant} ({row['short']}, {row['table']}){mark}"
