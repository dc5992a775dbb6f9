"""The episodic protocol: N-way K-shot test episodes, the standard protocol of image datasets.

Every learner adapts to the same ``--test-episodes`` episodes of the test classes (Vinyals et al.
2016, Sec. 4.1; Finn et al. 2017, Sec. 5.2: 600 episodes for Omniglot and miniImageNet) and is
scored on their query sets. Rows: ``episode, accuracy`` (percent of the query set classified
correctly), ``loss`` (query cross-entropy, nats).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from metabench.algorithms import LEARNERS
from metabench.evaluation import evaluate
from metabench.statistics import accuracy_summary

from . import EvaluationProtocol, Material


def test_material(config: Any, data: Any) -> Material:
    """The run's shared test episodes: episodes ``0..test_episodes-1`` of its test sampler
    (:class:`~metabench.datasets.sampler.EpisodeSampler` or the sinusoid's task sampler)."""
    ids = [data.test.index(i) for i in range(config.test_episodes)]
    return Material(data.test, config.test_episodes, data.fingerprint(ids), f"{config.test_dataset}/{config.test_split}/test")


def timing_columns(timings: pd.DataFrame, name: str) -> dict[str, Any]:
    """``meta_iterations``, ``meta_train_s`` (mean over seeds, seconds) and
    ``test_ms_per_episode`` of learner ``name`` from a run's timings."""
    t = timings[timings["learner"] == name]
    return {
        "meta_iterations": int(t["meta_iterations"].iloc[0]),
        "meta_train_s": float(t["meta_train_seconds"].mean()),
        "test_ms_per_episode": float(1000 * t["test_seconds"].sum() / t["test_episodes"].sum()),
    }


def summarize_accuracy(episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
    """Per-learner summary: mean accuracy with its 95% CI over test episodes, and timings.

    With several seeds, every seed is tested on the same episodes, so the seeds' accuracies are
    first averaged per episode and the CI is taken over the ``n`` episodes (pooling seeds x
    episodes as independent samples would shrink the interval by about sqrt(seeds)); the spread
    across seeds is reported separately as the standard deviation of the per-seed means
    (:func:`metabench.statistics.accuracy_summary`).

    Args:
        episodes: rows ``seed, learner, episode, accuracy, loss`` (accuracy in percent).
        timings: rows ``seed, learner, meta_iterations, meta_train_seconds, test_seconds, test_episodes``.
        learners: the learners in table order.

    Returns:
        One row per learner: ``learner, name, accuracy_pct, ci95_pct, episodes, seeds,
        seed_std_pct`` (NaN for one seed), ``meta_iterations, meta_train_s`` (mean over seeds),
        ``test_ms_per_episode``.
    """
    stats = accuracy_summary(episodes[episodes["learner"].isin(learners)]).set_index("learner")
    rows = []
    for name in learners:
        s = stats.loc[name]
        rows.append({
            "learner": name, "name": LEARNERS[name].title, "accuracy_pct": float(s["accuracy_pct"]),
            "ci95_pct": float(s["ci95_pct"]), "episodes": int(s["episodes"]), "seeds": int(s["seeds"]),
            "seed_std_pct": float(s["seed_std_pct"]), **timing_columns(timings, name),
        })
    return pd.DataFrame(rows)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (accuracy as ``mean ± CI`` in percent)."""
    lines = [
        "| Learner | Accuracy (%) | Meta-iterations | Meta-train time (s) | Test time / episode (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.name} | {r.accuracy_pct:.2f} ± {r.ci95_pct:.2f} | {r.meta_iterations} | "
            f"{r.meta_train_s:.1f} | {r.test_ms_per_episode:.1f} |"
        )
    return "\n".join(lines)


def where_title(config: Any) -> str:
    """``omniglot (vinyals split)``, with ``→ test dataset (split)`` when cross-domain."""
    where = f"{config.dataset} ({config.split} split)"
    if (config.test_dataset, config.test_split) != (config.dataset, config.split):
        where += f" → {config.test_dataset} ({config.test_split} split)"
    return where


def setting_title(config: Any) -> str:
    """``omniglot (vinyals split), 5-way 1-shot``, with ``→ test dataset`` when cross-domain."""
    return f"{where_title(config)}, {config.ways}-way {config.shots}-shot"


class Episodic(EvaluationProtocol):
    """N-way K-shot test episodes (see the module docstring)."""

    name = "episodic"
    title = "Episodic test"
    KINDS: ClassVar[tuple[str, ...]] = ("classification",)

    def material(self, config: Any, data: Any) -> Material:
        return test_material(config, data)

    def score(self, learner: Any, material: Material, desc: str | None, workers: int) -> tuple[list[dict], float]:
        return evaluate(learner, material.sampler, material.count, desc, workers=workers)

    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        return summarize_accuracy(episodes, timings, learners)

    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        return (
            f"# {setting_title(config)}\n\n"
            f"{markdown_table(summary)}\n\n"
            f"Mean accuracy over {config.test_episodes} test episodes ({config.queries} queries per class) {common}"
        )

    def note(self, rows: pd.DataFrame) -> str:
        return f"{rows['accuracy'].mean():.2f}%"
