"""The regression protocol: K-shot sinusoid tasks, the standard protocol of regression datasets.

Every learner adapts to the same ``--test-episodes`` tasks (Finn et al. 2017, Sec. 5.1: K = 5,
10 or 20 support points of a sinusoid with random amplitude and phase) and is scored by the query
mean squared error after each number of test-time gradient steps in
:data:`~metabench.evaluation.REGRESSION_STEPS` (0 is the meta-learned initialisation; the paper
reports 1 and 10, Fig. 2-3). Rows: ``episode, mse_<s>`` (squared units of y).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from metabench.algorithms import LEARNERS
from metabench.evaluation import REGRESSION_STEPS
from metabench.statistics import mean_ci95
from metabench.tables import Cell, Table

from .episodic import Episodic, timing_columns


def summarize_regression(episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
    """Per-learner summary of a regression run: the mean query MSE after each number of
    test-time steps with its 95% CI over test tasks, and timings.

    Seeds are averaged per task first, as in :func:`~metabench.protocols.episodic.summarize_accuracy`.

    Args:
        episodes: rows ``seed, learner, episode, mse_<s>`` for ``s`` in
            :data:`~metabench.evaluation.REGRESSION_STEPS` (squared units of y).
        timings: as for :func:`~metabench.protocols.episodic.summarize_accuracy`.
        learners: the learners in table order.

    Returns:
        One row per learner: ``learner, name``, then for every ``s``: ``mse_<s>, ci95_<s>``
        (NaN when a task's MSE is not finite), ``median_<s>`` over the tasks and
        ``diverged_<s>``, the number of tasks whose MSE is not finite (fine-tuning diverged);
        then ``episodes, seeds, seed_std_<last s>`` (NaN for one seed), ``meta_iterations,
        meta_train_s, test_ms_per_episode``.
    """
    rows = []
    last = REGRESSION_STEPS[-1]
    for name in learners:
        mine = episodes[episodes["learner"] == name]
        row = {"learner": name, "name": LEARNERS[name].title}
        for steps in REGRESSION_STEPS:
            per_task = mine.groupby("episode")[f"mse_{steps}"].mean()
            row[f"mse_{steps}"], row[f"ci95_{steps}"] = mean_ci95(per_task)
            row[f"median_{steps}"] = float(per_task.fillna(np.inf).median())  # a diverged task counts as worst
            row[f"diverged_{steps}"] = int((~np.isfinite(per_task)).sum())
        per_seed = mine.groupby("seed")[f"mse_{last}"].mean()
        row.update({
            "episodes": int(mine["episode"].nunique()),
            "seeds": int(per_seed.size),
            f"seed_std_{last}": float(per_seed.std(ddof=1)) if per_seed.size > 1 else float("nan"),
            **timing_columns(timings, name),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def regression_markdown_table(summary: pd.DataFrame) -> str:
    """A regression summary as a Markdown table (query MSE as ``mean ± CI`` after each number of
    test-time gradient steps; "diverged on n of N tasks" where a task's MSE is not finite, since
    a mean with one overflow says nothing about the others)."""
    steps = [f"{s} step{'s' if s != 1 else ''}" for s in REGRESSION_STEPS]
    lines = [
        "| Learner | " + " | ".join(f"MSE, {s}" for s in steps) + " | Meta-iterations | Meta-train time (s) |",
        "|---|" + "---:|" * len(steps) + "---:|---:|",
    ]

    def cell(r: dict, s: int) -> str:
        if r[f"diverged_{s}"]:
            return f"diverged on {r[f'diverged_{s}']} of {r['episodes']} tasks"
        return f"{r[f'mse_{s}']:.3g} ± {r[f'ci95_{s}']:.2g}" if r[f"mse_{s}"] >= 1000 else f"{r[f'mse_{s}']:.3f} ± {r[f'ci95_{s}']:.3f}"

    for r in summary.to_dict("records"):
        cells = " | ".join(cell(r, s) for s in REGRESSION_STEPS)
        lines.append(f"| {r['name']} | {cells} | {r['meta_iterations']} | {r['meta_train_s']:.1f} |")
    return "\n".join(lines)


class Regression(Episodic):
    """K-shot regression tasks scored by query MSE (see the module docstring); the material and
    the scoring are the episodic protocol's (the run's shared test tasks, :func:`evaluate`)."""

    name = "regression"
    title = "Regression test"
    KINDS: ClassVar[tuple[str, ...]] = ("regression",)
    UNIT = "task"

    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        return summarize_regression(episodes, timings, learners)

    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        return (
            f"# {config.dataset} ({config.split}), K = {config.shots}\n\n"
            f"{regression_markdown_table(summary)}\n\n"
            f"Mean query MSE after 0, 1, 5 and 10 test-time gradient steps on the K = {config.shots} support "
            f"points, over {config.test_episodes} test tasks ({config.queries} query points each) {common} A cell "
            f"reads \"diverged\" where fine-tuning overflowed on some tasks (MSE not finite); summary.csv also "
            f"has the median over tasks."
        )

    def table(self, summary: pd.DataFrame, caption: str) -> Table:
        """The summary as a :class:`~metabench.tables.Table` (query MSE ± 95% CI after each number of
        test-time steps, the median after the last; "diverged on n of N" where MSE is not finite)."""
        last = REGRESSION_STEPS[-1]
        header = ["Learner", *(f"MSE, {s} step{'s' if s != 1 else ''}" for s in REGRESSION_STEPS), f"median, {last} steps",
                  "Meta-iterations", "Meta-train time (s)"]
        rows = []
        for r in summary.to_dict("records"):
            cells = [Cell(f"diverged on {r[f'diverged_{s}']} of {r['episodes']}") if r[f"diverged_{s}"]
                     else Cell(f"{r[f'mse_{s}']:.3g} ± {r[f'ci95_{s}']:.2g}") for s in REGRESSION_STEPS]
            rows.append([Cell(r["name"]), *cells, Cell(f"{r[f'median_{last}']:.3g}"), Cell(str(r["meta_iterations"])),
                         Cell(f"{r['meta_train_s']:.1f}")])
        return Table(header, rows, "l" + "r" * (len(header) - 1), caption, label="tab:metabench-regression")

    def figure(self, summary: pd.DataFrame):
        """Query MSE against test-time gradient steps, one line per learner with its 95% interval
        (log scale; learners with a diverged task left out), inside :func:`metabench.style.styled`."""
        from metabench import style

        colours = style.palette(list(summary["learner"]))
        fig, axes = style.new_figure(1, 1)
        ax = axes[0]
        for r in summary.to_dict("records"):
            if any(r[f"diverged_{s}"] for s in REGRESSION_STEPS):
                continue
            y = np.array([r[f"mse_{s}"] for s in REGRESSION_STEPS])
            ci = np.array([r[f"ci95_{s}"] for s in REGRESSION_STEPS])
            ax.errorbar(REGRESSION_STEPS, y, yerr=ci, marker="o", ms=4, capsize=3, color=colours[r["learner"]],
                        label=r["name"])
        ax.set_yscale("log")
        ax.set_xticks(REGRESSION_STEPS)
        ax.set_xlabel("test-time gradient steps")
        ax.set_ylabel("query MSE")
        ax.legend(fontsize="small")
        return fig

    def report(self, runs: list[Any], out: Any) -> list[str]:
        """The report's section for regression runs: per run its table (Markdown, LaTeX, CSV) and
        the MSE-against-steps figure (PNG, PDF)."""
        md = ["## Regression", ""]
        for run in runs:
            c = run.config
            stem = f"regression-{run.label}"
            caption = (f"Mean query MSE (± the 95% confidence interval over {c.get('test_episodes')} test tasks, "
                       f"{c.get('queries')} query points each) after 0, 1, 5 and 10 test-time gradient steps on "
                       f"K = {c.get('shots')} support points, {c.get('dataset')} ({c.get('split')}), budget "
                       f"`{c.get('budget')}`; median over the tasks after {REGRESSION_STEPS[-1]} steps.")
            md += [f"### {run.label}: {c.get('dataset')}, K = {c.get('shots')}", ""]
            md += out.table(stem, self.table(run.summary, caption), run.summary)
            md += out.figure(stem, lambda summary=run.summary: self.figure(summary),
                             f"Query MSE against test-time gradient steps ({run.label}); bars: 95% confidence "
                             f"intervals over the test tasks; log scale; learners with a diverged task are in the table only.")
        return md

    def note(self, rows: pd.DataFrame) -> str:
        last = REGRESSION_STEPS[-1]
        return f"MSE {rows[f'mse_{last}'].mean():.3f} after {last} steps"
