"""``metabench report``: tables, statistics and figures from run and timing directories.

Inputs: any mix of ``metabench run`` directories (accuracy) and ``metabench time`` directories
(:mod:`metabench.results` tells them apart). Runs are grouped by **setting** (dataset, split,
N-way, K-shot): one column of the accuracy table per setting, one row per learner. Runs of one
setting must have been tested on the same episodes (equal fingerprints in ``run.json``); their
learners are then compared episode by episode (:mod:`metabench.statistics`).

Output folder (written atomically, :mod:`metabench.outdir`)::

    index.md                 one page: every table and figure with its caption
    report.json              inputs, files, skipped figures and why (no timestamps)
    tables/accuracy.{md,tex,csv}     learners x settings, mean ± 95% CI, published rows
    tables/accuracy_long.csv         one row per setting x learner (ours and published), all numbers
    tables/comparisons.{md,tex,csv}  paired comparisons per setting, Holm-adjusted
    tables/timing.{md,tex,csv}       from timing directories
    tables/published.csv             the published numbers that matched a setting
    figures/<name>.{png,pdf}         see FIGURES

Everything is a function of the inputs (no dates, fixed figure metadata), so running the command
twice gives identical files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metabench import __version__
from metabench import published as pub
from metabench.errors import ReportError
from metabench.protocols import registry
from metabench.results import (
    AccuracyRun,
    ProtocolRun,
    Setting,
    TimingRun,
    format_test_settings,
    read_inputs,
)
from metabench.statistics import (
    accuracy_summary,
    pairwise_comparisons,
    pareto_front,
    per_episode_means,
)
from metabench.tables import Cell, Table, latex_escape, to_latex, to_markdown

ALPHA = 0.05

#: Figure names, in the order of the report.
FIGURES = ("accuracy", "episodes", "curves", "pareto", "time_vs_inner_steps", "time_vs_meta_batch",
           "memory_vs_inner_steps", "cpu_vs_gpu", "peers")


@dataclass(frozen=True)
class SettingResult:
    """Everything the report says about one setting.

    Attributes:
        setting: dataset, split, N-way, K-shot.
        runs: the run directories of this setting (same test episodes).
        episodes: their ``episodes.csv`` rows, concatenated.
        per_episode: ``[episodes, learners]`` accuracy (percent), seeds averaged per episode.
        summary: one row per learner: ``learner, name, accuracy_pct, ci95_pct, episodes, seeds,
            seed_std_pct, meta_iterations, meta_train_s, test_ms_per_episode, run``.
        comparisons: :func:`metabench.statistics.pairwise_comparisons` of ``per_episode``.
        curves: ``curves.csv`` rows of the runs, with ``name``.
        fingerprint: SHA-256 hex of the shared test episodes.
        queries: query examples per class in the test episodes.
    """

    setting: Setting
    runs: tuple[AccuracyRun, ...]
    episodes: pd.DataFrame
    per_episode: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    curves: pd.DataFrame
    fingerprint: str
    queries: int

    @property
    def n_episodes(self) -> int:
        """Number of shared test episodes."""
        return len(self.per_episode)


def combine_runs(runs: Sequence[AccuracyRun]) -> list[SettingResult]:
    """Group runs by setting and compute the statistics of each setting.

    Settings are ordered by the first appearance of their dataset and split, then by N-way and
    K-shot. Within a setting the learners keep the order of the runs.

    Raises:
        ReportError: two runs of one setting tested on different episodes (fingerprints
            differ), or one learner in two runs of the same setting.
    """
    groups: dict[Setting, list[AccuracyRun]] = {}
    for run in runs:
        groups.setdefault(run.setting, []).append(run)
    first = {}
    for s in groups:
        first.setdefault((s.dataset, s.split), len(first))
    ordered = sorted(groups, key=lambda s: (first[(s.dataset, s.split)], s.ways, s.shots))
    out = []
    for setting in ordered:
        members = groups[setting]
        base, seen = members[0], {}
        for other in members:
            if other.fingerprint != base.fingerprint:
                raise ReportError(
                    f"{base.path} and {other.path} are both {setting.title} but were tested on different episodes "
                    f"(fingerprints {base.fingerprint[:16]} and {other.fingerprint[:16]}: different --episode-seed, "
                    "--queries or --test-episodes), so their learners cannot be paired: report them separately or "
                    "rerun one with the other's episode settings")
            for name, seed in other.episodes[["learner", "seed"]].drop_duplicates().itertuples(index=False):
                if (name, seed) in seen:
                    raise ReportError(f"learner {name} seed {seed} is in both {seen[name, seed].path} and {other.path} "
                                      f"({setting.title}): report them separately or leave one out")
                for (name_b, _), run_b in seen.items():
                    diff = _learner_differences(run_b.config, other.config, name) if name_b == name else []
                    if diff:
                        raise ReportError(f"learner {name} was trained differently in {run_b.path} and {other.path} "
                                          f"({'; '.join(diff)}), so its seeds cannot be pooled: report them separately")
                seen[name, seed] = other
        episodes = pd.concat([r.episodes for r in members], ignore_index=True)
        try:
            per_episode = per_episode_means(episodes)
        except ValueError as exc:
            raise ReportError(f"{setting.title}: {exc} (runs {', '.join(str(r.path) for r in members)}): "
                              "rerun them with the same --test-episodes") from None
        summary = accuracy_summary(episodes)
        summary = summary.merge(_costs(members), on="learner", how="left")
        comparisons = pairwise_comparisons(per_episode, ALPHA) if per_episode.shape[0] >= 2 else pd.DataFrame()
        curves = pd.concat([r.curves for r in members if len(r.curves)], ignore_index=True) \
            if any(len(r.curves) for r in members) else pd.DataFrame(columns=members[0].curves.columns)
        names = dict(zip(summary["learner"], summary["name"]))
        curves = curves.assign(name=[names.get(x, x) for x in curves["learner"]])
        queries = int(members[0].config.get("queries", 0) or 0)
        out.append(SettingResult(setting, tuple(members), episodes, per_episode, summary, comparisons, curves,
                                 members[0].fingerprint, queries))
    return out


#: Keys of a run's ``config.json`` that decide how a learner was trained (besides its seed): a
#: learner's seeds from several runs are pooled only when they agree. The per-learner tables are
#: compared at the learner's entry.
TRAINING_KEYS = ("budget", "image_size", "patience", "keep_best", "val_episodes", "curve_points")
PER_LEARNER_KEYS = ("iterations", "validate_every", "hparams")


def _learner_differences(a: dict[str, Any], b: dict[str, Any], learner: str) -> list[str]:
    """``key: a -> b`` for each training setting of ``learner`` that differs between two runs'
    configurations (keys a run lacks are not compared)."""
    out = [f"{k}: {a[k]} -> {b[k]}" for k in TRAINING_KEYS if k in a and k in b and a[k] != b[k]]
    for k in PER_LEARNER_KEYS:
        x, y = ((c.get(k) or {}).get(learner) if isinstance(c.get(k) or {}, dict) else None for c in (a, b))
        if (x or None) != (y or None):  # an empty override table is no override
            out.append(f"{k}.{learner}: {x} -> {y}")
    return out


def _costs(members: Sequence[AccuracyRun]) -> pd.DataFrame:
    """Per learner: ``name``, and the runs' ``meta_iterations``, ``meta_train_s`` and
    ``test_ms_per_episode`` averaged over its seeds (a learner's seeds may sit in several runs,
    as in a sweep, each run's summary holding the mean over its own seeds), with ``run``: the
    runs, joined by ``; ``."""
    parts = []
    for r in members:
        seeds = r.episodes.groupby("learner")["seed"].nunique().rename("n_seeds").reset_index()
        parts.append(r.summary.merge(seeds, on="learner").assign(run=str(r.path)))
    frame = pd.concat(parts, ignore_index=True)
    rows = []
    columns = ("meta_iterations", "meta_train_s", "test_ms_per_episode")
    for learner, g in frame.groupby("learner", sort=False):
        if len(g) == 1:
            values = {c: g[c].iloc[0] for c in columns}  # one run: its numbers as they are
        else:
            w = g["n_seeds"] / g["n_seeds"].sum()
            values = {c: float((g[c] * w).sum()) for c in columns}
            if float(values["meta_iterations"]).is_integer():
                values["meta_iterations"] = int(values["meta_iterations"])
        rows.append({"learner": learner, "name": g["name"].iloc[0], **values, "run": "; ".join(g["run"])})
    return pd.DataFrame(rows)


def combine_timings(timings: Sequence[TimingRun]) -> pd.DataFrame:
    """Concatenate the timing directories' rows.

    Raises:
        ReportError: the same cell (implementation, learner, shape, meta-batch, inner steps,
            device name) measured in two of the directories.
    """
    if not timings:
        return pd.DataFrame()
    table = pd.concat([t.table for t in timings], ignore_index=True)
    keys = ["label", "learner", "ways", "shots", "queries", "meta_batch", "inner_steps", "device_name"]
    dup = table[table.duplicated(keys, keep=False)]
    if len(dup) and dup["source"].nunique() > 1:
        r = dup.iloc[0]
        sources = ", ".join(dict.fromkeys(dup["source"]))
        raise ReportError(f"the cell {r.label} {r.learner} {r.ways}-way {r.shots}-shot, meta-batch {r.meta_batch}, "
                          f"{r.inner_steps} inner step(s) on {r.device_name} was timed in several directories ({sources}): "
                          "pass only one of them")
    return table


# ---------------------------------------------------------------------------------------------
# formatting helpers


def fmt_pm(mean: float, ci: float, digits: int = 2) -> str:
    """``mean ± ci`` with ``digits`` decimals; ``mean`` alone when ``ci`` is NaN."""
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value for a table: three decimals, ``< 0.001`` below that."""
    if math.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _num(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _seeds_note(results: Sequence[SettingResult]) -> bool:
    return any((r.summary["seeds"] > 1).any() for r in results)


# ---------------------------------------------------------------------------------------------
# accuracy table


def _best_flags(result: SettingResult) -> tuple[set[str], set[str]]:
    """(best learners, learners not significantly different from the best)."""
    s = result.summary
    rounded = s["accuracy_pct"].round(2)
    best = set(s.loc[rounded == rounded.max(), "learner"])
    top = s.loc[s["accuracy_pct"].idxmax(), "learner"]
    tied = set()
    c = result.comparisons
    if len(c):
        for r in c.itertuples():
            if top in (r.a, r.b) and not r.significant:
                tied.add(r.b if r.a == top else r.a)
    return best, tied - best


def accuracy_tables(results: Sequence[SettingResult], published: pd.DataFrame) -> tuple[Table, pd.DataFrame, pd.DataFrame]:
    """The main table: one row per learner (then the matching published numbers), one column
    per setting.

    Args:
        results: from :func:`combine_runs` (at least one).
        published: :func:`metabench.published.load_published`.

    Returns:
        ``(table, wide, long)``: the :class:`~metabench.tables.Table`; the wide CSV frame (one row
        per learner or published row, ``<setting>_accuracy_pct``, ``_ci95_pct``, ``_seed_std_pct``
        columns); the long CSV frame (one row per setting x learner or published number, every
        number at full precision).
    """
    settings = [r.setting for r in results]
    learners = list(dict.fromkeys(x for r in results for x in r.summary["learner"]))
    names = {}
    for r in results:
        for row in r.summary.itertuples():
            names.setdefault(row.learner, row.name)
    long_rows, wide_rows, rows = [], [], []
    flags = {r.setting: _best_flags(r) for r in results}
    for learner in learners:
        cells = [Cell(names[learner])]
        wide = {"source": "metabench", "learner": learner, "name": names[learner], "citation": ""}
        for r in results:
            hit = r.summary[r.summary["learner"] == learner]
            if hit.empty:
                cells.append(Cell("—"))
                continue
            row = hit.iloc[0]
            best, tied = flags[r.setting]
            text = fmt_pm(row.accuracy_pct, row.ci95_pct)
            if row.seeds > 1:
                text += f" (s {row.seed_std_pct:.2f})"
            if learner in tied:
                text += " †"
            cells.append(Cell(text, bold=learner in best))
            key = r.setting.short
            wide.update({f"{key}_accuracy_pct": row.accuracy_pct, f"{key}_ci95_pct": row.ci95_pct,
                         f"{key}_seed_std_pct": row.seed_std_pct})
            long_rows.append({
                "setting": r.setting.title, "dataset": r.setting.dataset, "split": r.setting.split,
                "ways": r.setting.ways, "shots": r.setting.shots, "source": "metabench", "learner": learner,
                "name": names[learner], "accuracy_pct": row.accuracy_pct, "ci95_pct": row.ci95_pct,
                "episodes": row.episodes, "seeds": row.seeds, "seed_std_pct": row.seed_std_pct,
                "meta_iterations": row.meta_iterations, "meta_train_s": row.meta_train_s,
                "test_ms_per_episode": row.test_ms_per_episode, "best": learner in best,
                "not_significantly_worse_than_best": learner in tied, "fingerprint": r.fingerprint,
                "run": row.run, "key": "", "citation": "", "table": "", "transductive": "", "verified": "",
            })
        rows.append(tuple(cells))
        wide_rows.append(wide)
    matched = matched_published(results, published)
    unverified = bool((matched["verified"] != "yes").any()) if len(matched) else False
    sections = []
    if len(matched):
        sections.append((len(rows), "Published (the papers' own training and code; not run here)"))
        for _, group in matched.groupby(["learner_order", "key", "variant", "table"], sort=True):
            first = group.iloc[0]
            cells = [Cell(pub.label(first))]
            wide = {"source": "published", "learner": first.learner, "name": pub.label(first),
                    "citation": first.citation}
            for s in settings:
                hit = group[group["setting"] == s.title]
                if hit.empty:
                    cells.append(Cell("—"))
                    continue
                p = hit.iloc[0]
                cells.append(Cell(f"{p.accuracy_text} ± {p.ci95_text}" if p.ci95_text else p.accuracy_text))
                wide.update({f"{s.short}_accuracy_pct": p.accuracy_pct, f"{s.short}_ci95_pct": p.ci95_pct})
                long_rows.append({
                    "setting": s.title, "dataset": s.dataset, "split": s.split, "ways": s.ways, "shots": s.shots,
                    "source": "published", "learner": p.learner, "name": pub.label(p), "accuracy_pct": p.accuracy_pct,
                    "ci95_pct": p.ci95_pct, "key": p.key, "citation": p.citation, "table": p.table,
                    "transductive": p.transductive, "verified": p.verified,
                })
            rows.append(tuple(cells))
            wide_rows.append(wide)
    groups = []
    for s in settings:
        title = f"{pub_title(s)}"
        if groups and groups[-1][0] == title:
            groups[-1] = (title, groups[-1][1] + 1)
        else:
            groups.append((title, 1))
    header = ("Learner", *[s.column for s in settings])
    table = Table(header=header, rows=tuple(rows), align="l" + "r" * len(settings),
                  caption=accuracy_caption(results, bool(len(matched)), unverified),
                  caption_tex=accuracy_caption_tex(results, bool(len(matched)), unverified),
                  label="tab:metabench-accuracy",
                  groups=tuple(groups), sections=tuple(sections))
    long = pd.DataFrame(long_rows)
    return table, pd.DataFrame(wide_rows), long


def pub_title(s: Setting) -> str:
    """Column-group title of a setting: ``Omniglot (vinyals)``."""
    return s.group


def matched_published(results: Sequence[SettingResult], published: pd.DataFrame) -> pd.DataFrame:
    """The published rows whose dataset, split, N-way and K-shot match a setting, for the
    learners run in that setting; with ``setting`` (title) and ``learner_order`` columns."""
    learners = list(dict.fromkeys(x for r in results for x in r.summary["learner"]))
    parts = []
    for r in results:
        s = r.setting
        hit = pub.matching(published, s.dataset, s.split, s.ways, s.shots, list(r.summary["learner"]))
        parts.append(hit.assign(setting=s.title))
    if not parts:
        return published.iloc[0:0].assign(setting="", learner_order=0)
    out = pd.concat(parts, ignore_index=True)
    return out.assign(learner_order=[learners.index(x) for x in out["learner"]])


def _n_text(results: Sequence[SettingResult]) -> str:
    ns = sorted({r.n_episodes for r in results})
    return f"n = {ns[0]}" if len(ns) == 1 else "n = " + ", ".join(
        f"{r.n_episodes} ({r.setting.title})" for r in results)


def accuracy_caption(results: Sequence[SettingResult], with_published: bool, unverified: bool = False) -> str:
    """Markdown caption of the accuracy table."""
    text = (f"Test accuracy (%) of each learner: mean ± 95% confidence interval 1.96·s/√n over the n test episodes "
            f"shared by all learners of a setting ({_n_text(results)}; s: standard deviation over episodes).")
    if _seeds_note(results):
        text += (" With several training seeds: the mean over seeds; ± is taken over the episodes of the "
                 "per-episode seed means; (s …) is the standard deviation across seeds of the per-seed mean accuracy.")
    text += (" **Bold**: the highest mean of its column (ties at two decimals all bold). †: not significantly different "
             f"from the best of its column (paired t-test on the shared episodes, Holm-adjusted over all pairs of the "
             f"column, α = {ALPHA}); overlapping intervals are not used as a test.")
    if with_published:
        text += (" Published: the papers' reported accuracy (± as printed there: 95% confidence intervals in Finn "
                 "et al. and Snell et al.) where dataset, split, N-way and K-shot match; they come from full training "
                 "with the authors' code, not from metabench.")
        if unverified:
            text += " *: not verified against the paper."
    return text


def accuracy_caption_tex(results: Sequence[SettingResult], with_published: bool, unverified: bool = False) -> str:
    """LaTeX caption of the accuracy table."""
    ns = sorted({r.n_episodes for r in results})
    n = f"$n = {ns[0]}$" if len(ns) == 1 else "$n$ per column: " + ", ".join(str(r.n_episodes) for r in results)
    text = (r"Test accuracy (\%): mean $\pm$ 95\% confidence interval $1.96\,s/\sqrt{n}$ over the $n$ test episodes "
            rf"shared by all learners of a setting ({n}; $s$: standard deviation over episodes).")
    if _seeds_note(results):
        text += (r" With several training seeds: mean over seeds; $\pm$ over the episodes of the per-episode seed "
                 r"means; ($s$ \ldots) standard deviation across seeds of the per-seed mean accuracy.")
    text += (r" Bold: highest mean of its column. $^{\dagger}$: not significantly different from the best of its column "
             rf"(paired $t$-test on the shared episodes, Holm-adjusted over all pairs, $\alpha = {ALPHA}$).")
    if with_published:
        text += (r" Published: the papers' reported accuracy ($\pm$ as printed there) for the same dataset, split, "
                 r"$N$-way and $K$-shot, from full training with the authors' code.")
        if unverified:
            text += " *: not verified against the paper."
    return text


# ---------------------------------------------------------------------------------------------
# paired comparisons


def comparison_table(result: SettingResult) -> Table | None:
    """The paired comparisons of one setting as a table (``None`` for fewer than 2 learners)."""
    c = result.comparisons
    if not len(c):
        return None
    names = dict(zip(result.summary["learner"], result.summary["name"]))
    rows = []
    for r in c.itertuples():
        rows.append((
            Cell(f"{names[r.a]} − {names[r.b]}"), Cell(fmt_pm(r.mean_diff, r.ci95)),
            Cell(_num(r.t, ".2f")), Cell(fmt_p(r.p_t)), Cell(fmt_p(r.p_t_holm), bold=bool(r.significant)),
            Cell(fmt_p(r.p_wilcoxon_holm)), Cell("yes" if r.significant else "no"),
        ))
    n, k = result.n_episodes, len(names)
    pairs = k * (k - 1) // 2
    step = f"; per-episode accuracy moves in steps of 100/{result.setting.ways * result.queries} %" if result.queries else ""
    caption = (
        f"Paired comparisons on the n = {n} test episodes of {result.setting.title} shared by all learners. "
        f"Δ: mean per-episode accuracy difference (percentage points, first minus second) ± 1.96·s_d/√n. "
        f"t and p: Student's paired t-test ({n - 1} degrees of freedom, two-sided), the test reported because Δ is a "
        f"mean. Holm: p adjusted over the {pairs} pairs (Holm 1979), bold and 'significant' when below {ALPHA}. "
        f"Wilcoxon: signed-rank test p (Holm-adjusted), a check that does not assume normal differences{step}, so it "
        f"sees many ties and zero differences.")
    caption_tex = (
        rf"Paired comparisons on the $n = {n}$ test episodes of {latex_escape(result.setting.title)} shared by all "
        r"learners. $\Delta$: mean per-episode accuracy difference (percentage points, first minus second) $\pm$ "
        rf"$1.96\,s_d/\sqrt{{n}}$. $t$, $p$: Student's paired $t$-test (${n - 1}$ d.f., two-sided). Holm: $p$ adjusted "
        rf"over the {pairs} pairs (Holm 1979), bold when below ${ALPHA}$. Wilcoxon: signed-rank $p$ (Holm-adjusted).")
    return Table(header=("Comparison", "Δ (pp) ± 95% CI", "t", "p (t-test)", "p Holm", "p Wilcoxon, Holm",
                         "significant"),
                 rows=tuple(rows), align="lrrrrrc", caption=caption, caption_tex=caption_tex,
                 label=f"tab:metabench-pairs-{result.setting.short}")


def comparisons_frame(results: Sequence[SettingResult]) -> pd.DataFrame:
    """All settings' paired comparisons in one frame (``setting`` and learner ``name`` columns added)."""
    parts = []
    for r in results:
        if len(r.comparisons):
            names = dict(zip(r.summary["learner"], r.summary["name"]))
            parts.append(r.comparisons.assign(setting=r.setting.title, name_a=[names[x] for x in r.comparisons["a"]],
                                              name_b=[names[x] for x in r.comparisons["b"]], fingerprint=r.fingerprint))
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    first = ["setting", "a", "b", "name_a", "name_b"]
    return frame[first + [c for c in frame.columns if c not in first]]


# ---------------------------------------------------------------------------------------------
# timing table


GROUP_KEYS = ["learner", "ways", "shots", "queries", "meta_batch", "inner_steps", "device_name"]


def timing_table(table: pd.DataFrame) -> Table:
    """The timing rows as a table; within each setting (learner, shape, meta-batch, inner steps,
    device) the fastest median and the smallest peak memory are bold."""
    from metabench.figures import INNER_LOOP

    data = table.reset_index(drop=True)
    fastest = data.groupby(GROUP_KEYS, sort=False)["median_ms"].transform("min") == data["median_ms"]
    mem = data["peak_memory_mib"]
    least = (data.groupby(GROUP_KEYS, sort=False)["peak_memory_mib"].transform("min") == mem) & mem.notna()
    rows = []
    for i, r in data.iterrows():
        steps = str(int(r.inner_steps)) if r.learner in INNER_LOOP else "—"
        rows.append((
            Cell(str(r.label)), Cell(str(r.learner)), Cell(f"{r.ways}-way {r.shots}-shot"), Cell(str(r.meta_batch)),
            Cell(steps), Cell(str(r.device_name)), Cell(f"{r.median_ms:.1f}", bold=bool(fastest[i])),
            Cell(f"{r.iqr_ms:.1f}"), Cell(_num(r.get("time_vs_metabench", math.nan), ".2f")),
            Cell(_num(r.peak_memory_mib, ".1f"), bold=bool(least[i])),
            Cell(_num(r.get("memory_vs_metabench", math.nan), ".2f")),
        ))
    reps = sorted(int(x) for x in data["reps"].unique())
    caption = (
        "Time and memory of one meta-training step (`metabench time`, synthetic Omniglot-shaped episodes). "
        f"Median and interquartile range (IQR) of the step time over {', '.join(map(str, reps))} timed repetitions; "
        "peak memory of one step above its start (CUDA allocator peak, or resident-set growth on CPU); "
        "'/ ours': divided by the metabench row (default strategy) of the same setting. Bold: fastest and smallest "
        "memory of each setting (learner, shape, meta-batch, inner steps, device).")
    caption_tex = (
        r"Time and memory of one meta-training step (synthetic Omniglot-shaped episodes): median and interquartile "
        rf"range of the step time over {', '.join(map(str, reps))} repetitions; peak memory above the step's start; "
        r"ratios divide by the metabench row of the same setting. Bold: fastest and smallest memory per setting.")
    return Table(header=("Implementation", "Learner", "Shape", "Meta-batch", "Inner steps", "Device",
                         "Median (ms)", "IQR (ms)", "Time / ours", "Peak memory (MiB)", "Memory / ours"),
                 rows=tuple(rows), align="lllrrlrrrrr", caption=caption, caption_tex=caption_tex,
                 label="tab:metabench-timing")


# ---------------------------------------------------------------------------------------------
# figure data


def figure_frames(results: Sequence[SettingResult], published: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tidy frames the accuracy figures draw (see :mod:`metabench.figures`)."""
    ours, episodes, curves, points = [], [], [], []
    for r in results:
        title = r.setting.title
        ours.append(r.summary.assign(setting=title))
        names = dict(zip(r.summary["learner"], r.summary["name"]))
        long = r.per_episode.reset_index().melt(id_vars="episode", var_name="learner", value_name="accuracy")
        episodes.append(long.assign(setting=title, name=[names[x] for x in long["learner"]]))
        front = pareto_front(r.summary["meta_train_s"], r.summary["accuracy_pct"])
        points.append(r.summary.assign(setting=title, front=front))
        c = r.curves.dropna(subset=["val_accuracy"]) if len(r.curves) else r.curves
        if len(c):
            seeds = c.groupby("learner")["seed"].nunique()
            if "train_cpu_seconds" not in c:
                c = c.assign(train_cpu_seconds=np.nan)
            agg = c.groupby(["learner", "iteration"], sort=False).agg(
                train_seconds=("train_seconds", "mean"), train_cpu_seconds=("train_cpu_seconds", "mean"),
                val_accuracy=("val_accuracy", "mean"),
                sd=("val_accuracy", "std"), ci=("val_ci95", "mean")).reset_index()
            multi = agg["learner"].map(seeds) > 1
            half = np.where(multi, agg["sd"], agg["ci"])
            agg["low"], agg["high"] = agg["val_accuracy"] - half, agg["val_accuracy"] + half
            curves.append(agg.assign(setting=title, name=[names.get(x, x) for x in agg["learner"]]))
    matched = matched_published(results, published)
    return {
        "ours": pd.concat(ours, ignore_index=True),
        "published": matched[["setting", "learner", "accuracy_pct", "ci95_pct", "transductive"]],
        "episodes": pd.concat(episodes, ignore_index=True),
        "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        "points": pd.concat(points, ignore_index=True),
    }


def curves_band(results: Sequence[SettingResult]) -> str:
    """What the learning curves' band shows."""
    multi = any(r.curves.groupby("learner")["seed"].nunique().gt(1).any() for r in results if len(r.curves))
    return "± 1 sd across seeds" if multi else "95% CI over validation episodes"


@dataclass
class FigureResult:
    """A drawn figure (``files``) or why it was skipped (``skipped``), with its caption."""

    name: str
    caption: str
    files: list[str] = field(default_factory=list)
    skipped: str = ""
    rows: int = 0


def plan_figures(results: Sequence[SettingResult], timing: pd.DataFrame,
                 published: pd.DataFrame) -> list[tuple[FigureResult, Callable[[], Any] | None]]:
    """Decide every figure of :data:`FIGURES`: a drawing function (called inside
    ``style.styled()``) or the reason it is skipped.

    Returns:
        ``[(FigureResult, draw or None)]`` in :data:`FIGURES` order; ``FigureResult.rows`` is the
        number of panel rows (so the PNG is ``style.pixel_size(rows)``).
    """
    from metabench import figures

    out: list[tuple[FigureResult, Callable[[], Any] | None]] = []

    def add(name: str, caption: str, draw: Callable[[], Any] | None, rows: int, reason: str = "") -> None:
        out.append((FigureResult(name, caption, skipped="" if draw else reason, rows=rows if draw else 0), draw))

    no_runs = "no accuracy run directories among the inputs"
    frames = figure_frames(results, published) if results else {}
    n = len(results)
    ns = _n_text(results) if results else ""
    add("accuracy",
        f"Mean test accuracy per learner with 95% confidence intervals (1.96·s/√n, {ns} episodes); hollow markers: "
        "the papers' published numbers for the same setting (squares: transductive batch norm), from full training.",
        (lambda: figures.accuracy_figure(frames["ours"], frames["published"])) if results else None, n, no_runs)
    add("episodes",
        f"Distribution of per-episode test accuracy ({ns} episodes; seeds averaged per episode): violins with median "
        "and quartiles (dashed), black dot the mean. Accuracy per episode is a multiple of 100 / (N·Q) %.",
        (lambda: figures.episodes_figure(frames["episodes"])) if results else None, n, no_runs)
    has_curves = bool(results) and len(frames["curves"]) > 0
    band = curves_band(results) if results else ""
    add("curves",
        "Validation accuracy during meta-training against meta-iterations and against meta-training CPU-hours "
        "(process CPU time of the learner steps; wall-clock seconds for runs that did not record it; validation and "
        f"episode construction excluded); band: {band}; dashed: the papers' published test accuracy.",
        (lambda: figures.curves_figure(frames["curves"], band, frames["published"])) if has_curves else None, n,
        no_runs if not results else "the runs recorded no validation points (--curve-points 0 or no validation split)")
    add("pareto",
        f"Accuracy (± 95% CI, {ns} episodes) against meta-training seconds, log scale; ringed markers and dashed "
        "staircase: the Pareto front (no other learner is both faster and more accurate). Training budgets are the "
        "runs' own, so the front compares these budgets, not the methods at convergence.",
        (lambda: figures.pareto_figure(frames["points"])) if results else None, n, no_runs)

    no_timing = "no timing directories (`metabench time`) among the inputs"
    has_t = len(timing) > 0
    for name, x, y, ylabel, caption in (
        ("time_vs_inner_steps", "inner_steps", "median_ms", "median step time (ms, log)",
         ("Median time of one meta-training step against the number of inner steps (log scale), per "
          "implementation (colour) and learner (marker).")),
        ("time_vs_meta_batch", "meta_batch", "median_ms", "median step time (ms, log)",
         "Median time of one meta-training step against the meta-batch size (log-log)."),
        ("memory_vs_inner_steps", "inner_steps", "peak_memory_mib", "peak memory (MiB, log)",
         "Peak memory of one meta-training step against the number of inner steps (log scale)."),
    ):
        if not has_t:
            add(name, caption, None, 0, no_timing)
            continue
        facets = figures.scaling_facets(timing, x)
        if y == "peak_memory_mib" and timing["peak_memory_mib"].isna().all():
            facets = []
        values = sorted(timing[timing["learner"].isin(figures.INNER_LOOP)][x].unique()) if x == "inner_steps" \
            else sorted(timing[x].unique())
        what = "inner-step count" if x == "inner_steps" else "meta-batch size"
        reason = (f"the timing rows have one {what} per implementation and setting "
                  f"({', '.join(map(str, values)) or 'none'}): time several (e.g. --{x.replace('_', '-')} 1,4,16,32)")
        add(name, caption, (lambda x=x, y=y, ylabel=ylabel, facets=facets:
                            figures.scaling_figure(timing, x, y, ylabel, facets)) if facets else None,
            math.ceil(len(facets) / (1 if len(facets) == 1 else 2)), reason)
    if has_t:
        pairs = figures.device_cells(timing)
        reference = figures.reference_device(timing)
        devices = ", ".join(dict.fromkeys(timing["device_name"]))
        add("cpu_vs_gpu", f"Median step time of the same cells on each device against {reference} (log-log); dotted "
            "diagonals: equal time, 10x and 100x faster.",
            (lambda: figures.devices_figure(pairs, reference)) if len(pairs) else None, 1,
            f"all timing rows are from one device ({devices}): add a timing directory from another device "
            "(e.g. `metabench time --device cuda` on a GPU machine)")
        ratios = figures.peer_ratios(timing)
        add("peers", "Implementations against metabench's default strategy in the same setting: median step time (x) and "
            "peak memory (y) as ratios, log-log; left of 1 is faster than ours, below 1 uses less memory. Absolute "
            "numbers: the timing table.",
            (lambda: figures.peers_figure(ratios)) if len(ratios) else None, 1,
            "no peer implementation in the timing rows: time them with `nox -s peers`")
    else:
        add("cpu_vs_gpu", "", None, 0, no_timing)
        add("peers", "", None, 0, no_timing)
    return out


# ---------------------------------------------------------------------------------------------
# writing


def _markdown_cost(result: SettingResult, front: np.ndarray) -> str:
    s = result.summary
    lines = ["| Learner | Accuracy (%) | Seeds | Meta-iterations | Meta-train (s) | Test (ms / episode) | Pareto front |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for r, f in zip(s.itertuples(), front):
        lines.append(f"| {r.name} | {fmt_pm(r.accuracy_pct, r.ci95_pct)} | {r.seeds} | {r.meta_iterations} | "
                     f"{r.meta_train_s:.1f} | {r.test_ms_per_episode:.1f} | {'yes' if f else ''} |")
    return "\n".join(lines)


def _inputs_markdown(results: Sequence[SettingResult], timings: Sequence[TimingRun]) -> list[str]:
    lines = []
    for r in results:
        for run in r.runs:
            env = run.environment
            hw = env.get("gpu") or f"{env.get('cpu', '?')}, {env.get('torch_threads', '?')} threads"
            budget = run.config.get("budget", "?")
            seeds = ",".join(str(s) for s in run.config.get("seeds", [])) or "?"
            changed = format_test_settings(run.meta.get("test_settings") or {})
            lines.append(f"- `{run.path}`: {run.setting.title}, learners {', '.join(run.learners)}, budget `{budget}`, "
                         f"seeds {seeds}, {len(r.per_episode)} test episodes ({r.queries} queries per class), episode "
                         f"fingerprint `{run.fingerprint[:16]}`, device {env.get('device', '?')} ({hw}), torch "
                         f"{env.get('torch', '?')}, commit `{str(env.get('commit', '?'))[:10]}`"
                         + (f", re-tested with {changed}" if changed else "") + ".")
    for t in timings:
        env = t.environment
        lines.append(f"- `{t.path}`: timing, {len(t.table)} cells, implementations "
                     f"{', '.join(dict.fromkeys(t.table['label']))}, device(s) "
                     f"{', '.join(dict.fromkeys(t.table['device_name']))}, torch {env.get('torch', '?')}.")
    return lines


METHODS = (
    "**Statistics.** Accuracy intervals are normal-approximation 95% confidence intervals 1.96·s/√n over the n test "
    "episodes (as in the papers). Every learner of a setting is tested on the same episodes (equal fingerprints "
    "are required to combine runs), so learners are compared per episode: the mean difference Δ with 1.96·s_d/√n, "
    "Student's paired t-test (`scipy.stats.ttest_rel`), reported because Δ is a mean and with hundreds of episodes "
    "the t-test is valid by the central limit theorem, and the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`) as "
    "a check that does not assume normal differences (per-episode accuracies move in coarse steps, so it sees many "
    "ties and zeros). All pairs of a setting form one family: p-values are adjusted with Holm's step-down procedure "
    "(Holm 1979, Scand. J. Statist. 6:65–70; `statsmodels.stats.multitest.multipletests`), which bounds the "
    "probability of any false 'significant' at α = 0.05 for any dependence between the tests. Several training "
    "seeds are averaged per episode before the interval and the tests (they share the episodes), and their spread "
    "is reported separately as the standard deviation of the per-seed means. The same numbers are in the tables' "
    "CSV files at full precision.")


def render(results: Sequence[SettingResult], timing: pd.DataFrame, timings: Sequence[TimingRun], folder: Path,
           inputs: Sequence[str], others: Sequence[ProtocolRun] = (), sweeps: Sequence[SweepInput] = ()) -> dict[str, Any]:
    """Write every table, figure, ``index.md`` and ``report.json`` into ``folder``; runs of
    evaluation protocols other than the episodic one (``others``) get their protocol's section
    (:meth:`metabench.protocols.EvaluationProtocol.report`); sweeps (``sweeps``) a section on
    their cells, listing those not in the report.

    Returns:
        The ``report.json`` content.
    """
    from metabench import style

    tables = folder / "tables"
    figs = folder / "figures"
    tables.mkdir(parents=True)
    figs.mkdir(parents=True)
    published = pub.load_published()
    md: list[str] = ["# metabench report", "", "Inputs:", "", *_inputs_markdown(results, timings),
                     *(f"- `{r.path}`: {r.protocol} protocol, {r.config.get('test_episodes')} episodes, fingerprint "
                       f"`{str(r.meta.get('fingerprint'))[:16]}`" for r in others), "", *sweep_markdown(sweeps)]
    written: list[str] = []

    def put(name: str, text: str) -> None:
        (tables / name).write_text(text if text.endswith("\n") else text + "\n")
        written.append(f"tables/{name}")

    def csv(name: str, frame: pd.DataFrame) -> None:
        frame.to_csv(tables / name, index=False, float_format="%.10g")
        written.append(f"tables/{name}")

    planned = plan_figures(results, timing, published)
    figures_done: dict[str, FigureResult] = {}
    for result, draw in planned:
        if draw is not None:
            with style.styled():
                fig = draw()
                paths = style.save(fig, figs, result.name)
            result.files = [str(p.relative_to(folder)) for p in paths]
        figures_done[result.name] = result
    counter = itertools.count(1)
    table_no = itertools.count(1)

    def figure_md(name: str) -> list[str]:
        f = figures_done[name]
        if not f.files:
            return []
        return [f"![{name}]({f.files[0]})", "",
                f"*Figure {next(counter)}.* {f.caption} ([PDF]({f.files[1]}))", ""]

    if results:
        table, wide, long = accuracy_tables(results, published)
        put("accuracy.md", to_markdown(table))
        put("accuracy.tex", to_latex(table))
        csv("accuracy.csv", wide)
        csv("accuracy_long.csv", long)
        md += ["## Accuracy", "", to_markdown(table, caption=False), "", f"*Table {next(table_no)}.* {table.caption}", "",
               ("Files: [LaTeX](tables/accuracy.tex), [CSV](tables/accuracy.csv), "
                "[long CSV](tables/accuracy_long.csv)."), ""]
        md += figure_md("accuracy")
        comp = [(r, comparison_table(r)) for r in results]
        comp = [(r, t) for r, t in comp if t is not None]
        if comp:
            put("comparisons.md", "\n\n".join(f"## {r.setting.title}\n\n{to_markdown(t)}" for r, t in comp))
            put("comparisons.tex", "\n".join(to_latex(t) for _, t in comp))
            csv("comparisons.csv", comparisons_frame(results))
            md += ["## Paired comparisons", ""]
            for r, t in comp:
                md += [f"### {r.setting.title}", "", to_markdown(t, caption=False), "",
                       f"*Table {next(table_no)}.* {t.caption}", ""]
            md += ["Files: [LaTeX](tables/comparisons.tex), [CSV](tables/comparisons.csv).", ""]
        md += ["## Per-episode accuracy", ""] + figure_md("episodes")
        md += ["## Learning curves", ""]
        md += figure_md("curves") or [f"Not drawn: {figures_done['curves'].skipped}.", ""]
        md += ["## Accuracy vs compute", ""]
        for r in results:
            front = pareto_front(r.summary["meta_train_s"], r.summary["accuracy_pct"])
            md += [f"{r.setting.title}:", "", _markdown_cost(r, front), ""]
        md += [("Meta-train: seconds in the learners' training steps (mean over seeds); test: milliseconds per "
                "test episode including adaptation."), ""]
        md += figure_md("pareto")
        matched = matched_published(results, published)
        if len(matched):
            cols = ["setting", "learner", "method", "variant", "accuracy_pct", "ci95_pct", "transductive", "key",
                    "table", "verified", "note", "citation"]
            csv("published.csv", matched[cols])
    if len(timing):
        t = timing_table(timing)
        put("timing.md", to_markdown(t))
        put("timing.tex", to_latex(t))
        csv("timing.csv", timing)
        md += ["## Time and memory per meta-step", "", to_markdown(t, caption=False), "", f"*Table {next(table_no)}.* {t.caption}", "",
               "Files: [LaTeX](tables/timing.tex), [CSV](tables/timing.csv).", ""]
        for name in ("time_vs_inner_steps", "time_vs_meta_batch", "memory_vs_inner_steps", "cpu_vs_gpu", "peers"):
            md += figure_md(name)
    if others:
        output = ProtocolOutput(folder, put, csv, counter, table_no, figures_done)
        for name, group in _by_protocol(others).items():
            md += registry()[name]().report(group, output)
    skipped = {n: f.skipped for n, f in figures_done.items() if f.skipped}
    if skipped:
        md += ["## Figures not drawn", ""] + [f"- `{n}`: {why}." for n, why in skipped.items()] + [""]
    if results:
        matched = matched_published(results, published)
        md += ["## Published numbers", ""]
        if len(matched):
            md += ["| Setting | Published as | Accuracy (%) | Transductive | Source | Note |", "|---|---|---:|:---:|---|---|"]
            for p in matched.itertuples():
                acc = f"{p.accuracy_text} ± {p.ci95_text}" if p.ci95_text else p.accuracy_text
                mark = "" if p.verified == "yes" else " (not verified)"
                md.append(f"| {p.setting} | {p.method}{', ' + p.variant if p.variant else ''} | {acc} | "
                          f"{p.transductive} | {p.short}, {p.table}{mark} | {p.note} |")
            md += ["", "References:", ""]
            md += [f"- {c}" for c in dict.fromkeys(matched["citation"])]
        else:
            md.append("No published number matches the settings of these runs "
                      "(published numbers exist for Omniglot `vinyals` and miniImageNet, 5/20-way 1/5-shot).")
        md += ["", "## Methods", "", METHODS, ""]
    (folder / "index.md").write_text("\n".join(md).rstrip() + "\n")
    meta = {
        "metabench": __version__,
        "inputs": [str(p) for p in inputs],
        "settings": [{"setting": r.setting.title, "fingerprint": r.fingerprint, "episodes": r.n_episodes,
                      "learners": list(r.summary["learner"]), "runs": [str(x.path) for x in r.runs]} for r in results],
        "tables": sorted(written),
        "figures": {n: f.files for n, f in figures_done.items() if f.files},
        "figure_rows": {n: f.rows for n, f in figures_done.items() if f.files},
        "skipped_figures": skipped,
    }
    if others:
        meta["protocol_runs"] = [{"run": str(r.path), "protocol": r.protocol, "fingerprint": r.meta.get("fingerprint")}
                                 for r in others]
    if sweeps:
        meta["sweeps"] = [{"sweep": str(sw.path), "name": sw.name, "cells": len(sw.cells),
                           "states": {c.name: c.state for c in sw.cells},
                           "left_out": dict(sw.left_out)} for sw in sweeps]
    (folder / "report.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class ProtocolOutput:
    """What a protocol's report section writes with: tables (Markdown, LaTeX, CSV) and figures
    (PNG, PDF) into the report folder, numbered with the rest of ``index.md``."""

    def __init__(self, folder: Path, put, csv, figure_no, table_no, figures: dict) -> None:
        self.folder, self._put, self._csv = folder, put, csv
        self._figure_no, self._table_no, self._figures = figure_no, table_no, figures

    def table(self, stem: str, table: Any, frame: pd.DataFrame) -> list[str]:
        """Write ``tables/<stem>.{md,tex,csv}`` (the CSV from ``frame``, full precision) and
        return the ``index.md`` lines showing the table."""
        self._put(f"{stem}.md", to_markdown(table))
        self._put(f"{stem}.tex", to_latex(table))
        self._csv(f"{stem}.csv", frame)
        return [to_markdown(table, caption=False), "", f"*Table {next(self._table_no)}.* {table.caption}", "",
                f"Files: [LaTeX](tables/{stem}.tex), [CSV](tables/{stem}.csv).", ""]

    def figure(self, stem: str, draw, caption: str) -> list[str]:
        """Draw ``draw()`` into ``figures/<stem>.{png,pdf}`` and return its ``index.md`` lines."""
        from metabench import style

        with style.styled():
            fig = draw()
            paths = style.save(fig, self.folder / "figures", stem)
        files = [str(p.relative_to(self.folder)) for p in paths]
        rows = fig.axes[0].get_subplotspec().get_gridspec().nrows if fig.axes else 0
        self._figures[stem] = FigureResult(stem, caption, files=files, rows=rows)
        return [f"![{stem}]({files[0]})", "", f"*Figure {next(self._figure_no)}.* {caption} ([PDF]({files[1]}))", ""]


def _by_protocol(runs: Sequence[ProtocolRun]) -> dict[str, list[ProtocolRun]]:
    groups: dict[str, list[ProtocolRun]] = {}
    for r in runs:
        groups.setdefault(r.protocol, []).append(r)
    return groups


@dataclass(frozen=True)
class SweepInput:
    """A sweep directory given to ``metabench report``: its done cells are reported as runs, the
    others listed.

    Attributes:
        path: the sweep directory. name: the sweep's name.
        cells: every cell with its state (:func:`metabench.sweeps.state.statuses`).
        left_out: ``(cell name, why)`` for done cells a report cannot show (regression runs).
    """

    path: Path
    name: str
    cells: tuple[Any, ...]
    left_out: tuple[tuple[str, str], ...]


def expand_sweeps(paths: Sequence[str | Path]) -> tuple[list[str | Path], list[SweepInput], dict[Path, tuple[str, str]]]:
    """Replace each sweep directory among ``paths`` by the run directories of its done cells.

    Returns:
        ``(paths, sweeps, cells)``: the inputs with sweeps expanded (in order), the sweeps, and for
        each expanded run (by resolved path) its cell's name and variant
        (:attr:`metabench.results.Setting.variant`).

    Raises:
        ConfigError: a sweep directory whose ``sweep.json`` or a ``cell.json`` is unreadable.
    """
    from metabench.sweeps import state

    out: list[str | Path] = []
    sweeps: list[SweepInput] = []
    cells_of: dict[Path, tuple[str, str]] = {}
    for raw in paths:
        path = Path(raw)
        if not state.is_sweep(path):
            out.append(raw)
            continue
        cells = state.statuses(path)
        for c in cells:
            if c.state == "done":
                out.append(c.folder / "run")
                cells_of[(c.folder / "run").resolve()] = (c.name, c.variant)
        sweeps.append(SweepInput(path, state.read_sweep(path)["name"], tuple(cells), ()))
    return out, sweeps, cells_of


def sweep_markdown(sweeps: Sequence[SweepInput]) -> list[str]:
    """The ``index.md`` lines on the sweeps: cells done of all, and those missing, failed or left out."""
    from metabench.sweeps import state

    md = []
    for sw in sweeps:
        counts = state.counts(sw.cells)
        done = counts["done"] - len(sw.left_out)
        md += [f"## Sweep `{sw.name}`", "",
               f"`{sw.path}`: {done} of {len(sw.cells)} cells in this report "
               f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)})."
               + (" The tables show the finished cells only: the missing ones are listed below." if done < len(sw.cells) else ""),
               ""]
        missing = [c for c in sw.cells if c.state != "done"]
        for c in missing:
            why = f": {c.error}" if c.state == "failed" else ""
            md.append(f"- missing ({c.state}): `{c.name}`{why}")
        md += [f"- left out: `{name}`: {why}" for name, why in sw.left_out]
        if missing or sw.left_out:
            md.append("")
    return md


def default_out() -> Path:
    """The default output folder: ``report`` in the current directory."""
    return Path("report")


def report(paths: Sequence[str | Path], out: Path | None = None, force: bool = False) -> Path:
    """Read the run and timing directories ``paths`` and write a report folder.

    Args:
        paths: ``metabench run`` and ``metabench time`` directories, in any mix and order.
        out: the folder to create (default :func:`default_out`).
        force: replace ``out`` if it exists and is a metabench report (has ``report.json``).

    Returns:
        The report folder.

    Raises:
        ReportError: unusable inputs (see :mod:`metabench.results`, :func:`combine_runs`), or
            ``out`` exists and is not a report that ``force`` may replace.
        ConfigError: ``out`` cannot be written.
    """
    from metabench.outdir import check_writable, write_atomically

    out = Path(out) if out is not None else default_out()
    if out.exists():
        if not force:
            raise ReportError(f"report folder {out} already exists: choose another --out or pass --force to replace it")
        if not (out / "report.json").is_file():
            raise ReportError(f"{out} exists and is not a metabench report (no report.json): --force only replaces a "
                              "report; choose another --out")
    check_writable(out, "report folder", replace=force)
    target = out.resolve()
    for p in paths:
        if Path(p).resolve() == target or target in Path(p).resolve().parents:
            raise ReportError(f"--out {out} would replace the input {p}: choose another --out")
    expanded, sweeps, cells_of = expand_sweeps(paths)
    runs, timings, others = read_inputs(expanded) if expanded or not sweeps else ([], [], [])
    runs = [dataclasses.replace(r, setting=dataclasses.replace(r.setting, variant=cells_of[r.path.resolve()][1]))
            if r.path.resolve() in cells_of else r for r in runs]
    others = [dataclasses.replace(r, name=cells_of[r.path.resolve()][0]) if r.path.resolve() in cells_of else r
              for r in others]
    labels: dict[str, Path] = {}
    for r in others:  # a protocol run's files are named after it
        if r.label in labels:
            raise ReportError(f"{labels[r.label]} and {r.path} would both be reported as {r.label!r}: report them "
                              "separately, or rename one folder")
        labels[r.label] = r.path
    results = combine_runs(runs)
    timing = combine_timings(timings)
    write_atomically(out, lambda folder: render(results, timing, timings, folder, [str(p) for p in paths], others,
                                                sweeps), "report folder", replace=force)
    return out
