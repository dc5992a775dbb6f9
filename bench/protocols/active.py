"""The active protocol: which few examples should a person label?

Few-shot learning promises that a few labels are enough; this protocol asks **which** few. An
episode draws ``N`` test classes and, per class, an **unlabelled pool** of ``P`` images and ``Q``
query images (disjoint; :class:`~metabench.datasets.sampler.EpisodeSampler` with ``shots = P``,
``queries = Q``). The learner starts from ``start`` labelled examples per class (a 1-shot episode:
the first pool images of each class, which the sampler drew at random) and acquires labels from
the pool in rounds of ``b`` labels until it holds ``B`` labels in all. After every round it adapts
**afresh from its meta-learned state** on all labels so far (meta-parameters never change) and is
scored on the query set. Meta-learning combined with active learning in this way follows
Woodward & Finn (2017, "Active One-shot Learning") and Pezeshkpour, Zhao & Singh (2020, "On the
Utility of Active Instance Selection for Few-Shot Learning"), who found that uncertainty sampling
rarely beats random selection in few-shot episodes; we report what we measure.

**Annotator.** Simulated (:func:`~metabench.protocols.acquisition.annotate`): it returns the true
label, or with probability ``epsilon`` a wrong one, drawn once per pool item and episode, so every
strategy that asks for an item gets the same answer (the comparison stays paired). The seed set is
labelled correctly (the person introduces the classes).

**Strategies** (:mod:`~metabench.protocols.acquisition`): random (the baseline), class-balanced
random (a standard K-shot episode), maximum entropy, smallest margin, least confidence (from the
adapted learner's predictions on the pool) and k-center greedy on the learner's embedding
(Sener & Savarese 2018). Each strategy of an episode has its own random generator, seeded by the
episode and the strategy's name, so strategies do not perturb each other.

**Imbalanced support sets.** Acquired labels need not be balanced; every learner accepts that:
Prototypical Networks average each class's embeddings into its prototype whatever their count
(Snell et al. 2017, Eq. 1); Matching Networks attend over all labelled examples, so a class with
more examples collects more attention mass (Vinyals et al. 2016, Eq. 1, no reweighting); MAML and
first-order MAML take inner-loop steps on the mean cross-entropy over all labelled examples, so a
class weighs by its count; Reptile fine-tunes on minibatches drawn uniformly from the labelled
examples. The seed set guarantees every class at least one example.

**Transductive batch norm.** The learners normalise with the statistics of the batch they are
given. Each round predicts the whole pool and the query set in one batch (the pool's probabilities
drive the uncertainty strategies). For MAML and Reptile that prediction batch is the same in every
round and for every strategy; Prototypical and Matching Networks embed their labelled examples in
the same batch, so theirs grows with the labels. Round 0 therefore differs slightly from the
standard 1-shot episode, whose batch holds the query set (and, for the metric learners, the
support set) only.

Rows (``episodes.csv``): ``episode, strategy, round, labels`` (labels held), ``accuracy`` (query,
percent), ``loss`` (query cross-entropy, nats), ``wrong_labels`` (annotator errors among them),
``min_class_labels`` (labels of the least-labelled class).

Summary per learner x strategy: the accuracy after each number of labels (mean ± 95% CI over
episodes), the area under that curve (**AULC**: the trapezoid mean accuracy over the label
range, percent), the labels at which the mean curve first reaches ``target``, and each strategy
against random **paired** on the same pools (per-episode AULC difference, paired t-test and
Wilcoxon, Holm's adjustment over the learner's strategies).

Defaults: ``P = 10``, ``Q = 10`` (Omniglot has 20 images per class), ``b = N`` (one label per
class per round on average), ``B = 4N`` (up to a 4-shot budget: the range in which Snell et al.
2017 and Finn et al. 2017 report 1- and 5-shot results), ``epsilon = 0``, ``target = 95`` (%),
200 episodes (the 95% interval of a strategy difference is then about ±0.5 points for AULC
differences of per-episode standard deviation 3.5, measured on the quick-trained learners).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from metabench.algorithms import LEARNERS
from metabench.algorithms.backbones import accuracy, channels_last
from metabench.datasets.sampler import Episode, EpisodeSampler, fingerprint
from metabench.errors import ConfigError
from metabench.evaluation import evaluate
from metabench.statistics import holm, mean_ci95, paired_comparison
from metabench.tables import Cell, Table, to_markdown

from . import EvaluationProtocol, Material
from .acquisition import NEEDS, STRATEGIES, PoolView, annotate
from .episodic import timing_columns, where_title


@dataclass(frozen=True)
class ActiveSettings:
    """Settings of the active protocol (defaults justified in the module docstring).

    Attributes:
        pool: P, unlabelled pool images per class.
        queries: Q, query images per class (scored after every round).
        start: labelled examples per class before the first acquisition (the seed set).
        round_size: b, labels acquired per round (0: N, the episode's ways).
        budget: B, labels held after the last round, seed set included (0: 4N).
        strategies: acquisition strategies to compare (names of
            :data:`~metabench.protocols.acquisition.STRATEGIES`); ``random`` is the baseline.
        epsilon: probability that the annotator gives a wrong label, in [0, 1).
        target: accuracy (percent) for "labels needed to reach".
    """

    pool: int = 10
    queries: int = 10
    start: int = 1
    round_size: int = 0
    budget: int = 0
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    epsilon: float = 0.0
    target: float = 95.0


def _generator(key: bytes, what: str) -> torch.Generator:
    """A CPU generator seeded by an episode's key and a name (a strategy, the annotator)."""
    seed = int.from_bytes(hashlib.sha256(key + b"/" + what.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class RoundIndex:
    """Stands in for an :class:`~metabench.datasets.sampler.EpisodeIndex` in a round's episode:
    the episode's classes (``ways``) and a key naming the episode and the labelled pool items,
    which seeds per-episode randomness of a learner (Reptile's minibatch order)."""

    classes: np.ndarray
    labelled: bytes

    def key(self) -> bytes:
        """The bytes identifying the round's labelled set."""
        return self.labelled


@dataclass(frozen=True)
class ActiveScorer:
    """Scores one active-selection episode (picklable, so Reptile's episodes run in worker processes).

    Args:
        ways: N; round_size: b; budget: B; start, strategies, epsilon: see :class:`ActiveSettings`.
    """

    ways: int
    start: int
    round_size: int
    budget: int
    strategies: tuple[str, ...]
    epsilon: float

    def adapt_and_predict(self, learner: Any, ep: Episode, batch: torch.Tensor, labelled: torch.Tensor,
                          labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """Adapt ``learner`` afresh on the labelled pool items and predict pool and query set.

        Args:
            ep: the episode (support = the pool ``[N * P]``, query = the query set ``[N * Q]``).
            batch: the pool and the query set, ``[N * (P + Q), C, H, W]`` (what is predicted).
            labelled: int64 ``[L]`` pool positions labelled so far; labels: int64 ``[N * P]`` the
                annotator's label of every pool item (on the CPU).

        Returns:
            ``(accuracy, loss, pool_probs)``: query accuracy (percent), query cross-entropy (nats)
            and the predicted class probabilities of every pool item, float32 ``[N * P, N]``.
        """
        n_pool = ep.support_x.shape[0]
        key = ep.index.key() + b"/labelled/" + labelled.numpy().astype("<i8").tobytes()
        device = ep.support_x.device
        support = ep.support_x[labelled.to(device)]
        if support.dim() == 4:  # channels-last images run Conv4 several times faster on CPU (backbones docstring)
            support = channels_last(support)
        unknown = torch.zeros(batch.shape[0], dtype=torch.long, device=device)  # predict never sees true labels
        round_ep = Episode(support, labels[labelled].to(device), batch, unknown, RoundIndex(ep.index.classes, key))
        logits = learner.predict(round_ep).float()
        query = logits[n_pool:]
        loss = F.cross_entropy(query, ep.query_y).item()
        return 100.0 * accuracy(query, ep.query_y), loss, F.softmax(logits[:n_pool], dim=1).cpu()

    def __call__(self, learner: Any, ep: Episode) -> list[dict[str, Any]]:
        """All strategies' rounds on one episode: one row per strategy x round (see the module)."""
        ways, n_pool = ep.ways, ep.support_x.shape[0]
        batch = torch.cat([ep.support_x, ep.query_x])
        batch = channels_last(batch) if batch.dim() == 4 else batch
        per_class = n_pool // ways
        truth = ep.support_y.cpu()
        key = ep.index.key()
        labels = annotate(truth, ways, self.epsilon, _generator(key, "annotator"))
        seed_set = torch.tensor([c * per_class + j for c in range(ways) for j in range(self.start)])
        labels[seed_set] = truth[seed_set]
        needs = set().union(*(NEEDS[s] for s in self.strategies))
        embeddings = learner.embed(batch[:n_pool]).float().cpu() if "embeddings" in needs else None
        first = self.adapt_and_predict(learner, ep, batch, seed_set, labels)
        rows = []
        for name in self.strategies:
            generator = _generator(key, f"strategy/{name}")
            labelled, (acc, loss, probs) = seed_set, first
            for step in range(1 + -(-(self.budget - len(seed_set)) // self.round_size)):
                held = truth[labelled]
                rows.append({
                    "strategy": name, "round": step, "labels": int(labelled.numel()), "accuracy": acc, "loss": loss,
                    "wrong_labels": int((labels[labelled] != held).sum()),
                    "min_class_labels": int(torch.bincount(held, minlength=ways).min()),
                })
                count = min(self.round_size, self.budget - labelled.numel())
                if count <= 0:
                    break
                available = torch.ones(n_pool, dtype=torch.bool)
                available[labelled] = False
                view = PoolView(
                    available=available, probs=probs,
                    embeddings=embeddings, labelled_embeddings=embeddings[labelled] if embeddings is not None else None,
                    pool_classes=truth, labelled_classes=held,
                )
                chosen = STRATEGIES[name](view, count, generator)
                labelled = torch.cat([labelled, chosen])
                acc, loss, probs = self.adapt_and_predict(learner, ep, batch, labelled, labels)
        return rows


def aulc(part: pd.DataFrame) -> pd.Series:
    """Per-episode area under the accuracy-vs-labels curve of one learner x strategy.

    Args:
        part: rows ``episode, labels, accuracy`` (percent), the same label counts in every episode.

    Returns:
        Indexed by episode: the trapezoid integral of accuracy over labels divided by the label
        range (a mean accuracy, percent); the accuracy itself for a single label count.
    """
    wide = part.pivot(index="episode", columns="labels", values="accuracy").sort_index(axis=1)
    x = wide.columns.to_numpy(float)
    if x.size < 2:
        return wide.iloc[:, 0]
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return pd.Series(trapezoid(wide.to_numpy(float), x, axis=1) / (x[-1] - x[0]), index=wide.index)


class Active(EvaluationProtocol):
    """Active selection of support labels from an unlabelled pool (see the module docstring)."""

    name = "active"
    title = "Active selection of support labels"
    KINDS: ClassVar[tuple[str, ...]] = ("classification",)
    Settings: ClassVar[type] = ActiveSettings
    DEFAULT_EPISODES: ClassVar[int | None] = 200

    @classmethod
    def check_settings(cls, s: ActiveSettings) -> None:
        for field, low in (("pool", 1), ("queries", 1), ("start", 1), ("round_size", 0), ("budget", 0)):
            value = getattr(s, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"active protocol: {field} must be a whole number >= {low} (got {value!r})")
        if s.start > s.pool:
            raise ConfigError(f"active protocol: the seed set ({s.start} per class) is larger than the pool ({s.pool} per "
                              "class): lower --active-start or raise --pool")
        strategies = (s.strategies,) if isinstance(s.strategies, str) else tuple(s.strategies)
        unknown = [n for n in strategies if n not in STRATEGIES]
        if unknown or not strategies:
            raise ConfigError(f"unknown acquisition strategy {', '.join(map(repr, unknown)) or '(none given)'}: use any of "
                              + ", ".join(STRATEGIES))
        if len(set(strategies)) != len(strategies):
            raise ConfigError("an acquisition strategy is listed twice in --strategies: list each once")
        if not (isinstance(s.epsilon, (int, float)) and 0 <= s.epsilon < 1):
            raise ConfigError(f"--epsilon must be in [0, 1) (the annotator's error rate), got {s.epsilon!r}")
        if not (isinstance(s.target, (int, float)) and 0 < s.target <= 100):
            raise ConfigError(f"active protocol: target must be an accuracy in (0, 100] percent, got {s.target!r}")

    @classmethod
    def make_settings(cls, values: Any) -> ActiveSettings:
        values = dict(values)
        if isinstance(values.get("strategies"), str):
            values["strategies"] = tuple(v.strip() for v in values["strategies"].split(",") if v.strip())
        elif "strategies" in values:
            if not isinstance(values["strategies"], (list, tuple)):
                raise ConfigError(f"strategies must be a list of names, got {values['strategies']!r}")
            values["strategies"] = tuple(values["strategies"])
        return super().make_settings(values)

    def sizes(self, ways: int) -> tuple[int, int]:
        """``(b, B)`` for N-way episodes (0 in the settings: N and 4N)."""
        s = self.settings
        return s.round_size or ways, s.budget or 4 * ways

    def check(self, config: Any, data: Any) -> None:
        s = self.settings
        per_class = data.test.pool.dataset.images.shape[1] if hasattr(data.test, "pool") else None
        if per_class is not None and s.pool + s.queries > per_class:
            raise ConfigError(f"active protocol: pool {s.pool} + queries {s.queries} = {s.pool + s.queries} images per class, "
                              f"but the {config.test_dataset} test classes have {per_class}: lower --pool or --pool-queries")
        _, budget = self.sizes(config.ways)
        if budget < s.start * config.ways:
            raise ConfigError(f"active protocol: the label budget {budget} is below the seed set ({s.start} x {config.ways} "
                              f"classes): raise --label-budget")
        if budget > s.pool * config.ways:
            raise ConfigError(f"active protocol: the label budget {budget} is above the pool ({s.pool} x {config.ways} "
                              f"classes): lower --label-budget or raise --pool")

    def material(self, config: Any, data: Any) -> Material:
        s = self.settings
        pool = data.test.pool
        sampler = EpisodeSampler(pool, config.ways, s.pool, s.queries, config.episode_seed, "active",
                                 description=f"test split of {config.test_dataset}/{config.test_split}")
        ids = [sampler.index(i) for i in range(config.test_episodes)]
        b, budget = self.sizes(config.ways)
        described = json.dumps({**dataclasses.asdict(s), "round_size": b, "budget": budget}, sort_keys=True)
        digest = hashlib.sha256((fingerprint(pool, ids) + described).encode()).hexdigest()
        return Material(sampler, config.test_episodes, digest, f"{config.test_dataset}/{config.test_split}/test")

    def scorer(self, ways: int) -> ActiveScorer:
        """The per-episode scorer for N-way episodes."""
        s = self.settings
        b, budget = self.sizes(ways)
        return ActiveScorer(ways, s.start, b, budget, tuple(s.strategies), float(s.epsilon))

    def score(self, learner: Any, material: Material, desc: str | None, workers: int) -> tuple[list[dict], float]:
        # every episode adapts 1 + strategies x rounds times: worth worker processes for every learner
        return evaluate(learner, material.sampler, material.count, desc, workers=workers,
                        scorer=self.scorer(material.sampler.ways), heavy=True)

    def per_episode(self, episodes: pd.DataFrame) -> pd.DataFrame:
        """Seeds averaged per learner x strategy x episode x labels: rows ``learner, strategy,
        episode, labels, accuracy``."""
        keys = ["learner", "strategy", "episode", "labels"]
        return episodes.groupby(keys, sort=False)["accuracy"].mean().reset_index()

    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        """One row per learner x strategy (strategies in the settings' order).

        Returns:
            Columns ``learner, name, strategy``; ``acc_<L>, ci95_<L>`` (percent) for every label
            count ``L``; ``aulc_pct, aulc_ci95`` (percent); ``labels_to_target`` (NaN: never
            reached); ``vs_random_pp, vs_random_ci95`` (AULC difference to random, percentage
            points), ``p_t, p_wilcoxon, p_t_holm, p_wilcoxon_holm`` (NaN for random itself),
            ``episodes, seeds, epsilon, target``, and the timings of
            :func:`~metabench.protocols.episodic.timing_columns`.
        """
        s = self.settings
        means = self.per_episode(episodes)
        rows = []
        for name in learners:
            mine = means[means["learner"] == name]
            areas = {st: aulc(mine[mine["strategy"] == st]) for st in s.strategies}
            block = []
            for st in s.strategies:
                part = mine[mine["strategy"] == st]
                row = {"learner": name, "name": LEARNERS[name].title, "strategy": st}
                curve = part.groupby("labels")["accuracy"]
                for labels, values in curve:
                    row[f"acc_{labels}"], row[f"ci95_{labels}"] = mean_ci95(values.to_numpy())
                reached = [labels for labels, values in curve if values.mean() >= s.target]
                row["aulc_pct"], row["aulc_ci95"] = mean_ci95(areas[st].to_numpy())
                row["labels_to_target"] = float(min(reached)) if reached else float("nan")
                row.update(vs_random_pp=np.nan, vs_random_ci95=np.nan, p_t=np.nan, p_wilcoxon=np.nan, p_t_holm=np.nan,
                           p_wilcoxon_holm=np.nan)
                if st != "random" and "random" in areas and areas[st].size >= 2:
                    c = paired_comparison(areas[st], areas["random"].loc[areas[st].index], (st, "random"))
                    row.update(vs_random_pp=c.mean_diff, vs_random_ci95=c.ci95, p_t=c.p_t, p_wilcoxon=c.p_wilcoxon)
                row.update(episodes=int(part["episode"].nunique()),
                           seeds=int(episodes[episodes["learner"] == name]["seed"].nunique()),
                           epsilon=float(s.epsilon), target=float(s.target), **timing_columns(timings, name))
                block.append(row)
            tested = [r for r in block if not np.isnan(r["p_t"])]
            if tested:
                for column in ("p_t", "p_wilcoxon"):
                    adjusted, _ = holm([r[column] for r in tested])
                    for r, p in zip(tested, adjusted):
                        r[f"{column}_holm"] = float(p)
            rows += block
        return pd.DataFrame(rows)

    def table(self, summary: pd.DataFrame, caption: str) -> Table:
        """The summary as a :class:`~metabench.tables.Table`: one row per learner x strategy,
        the accuracy after each number of labels, AULC, labels to the target and the paired
        comparison with random (the best AULC of each learner in bold)."""
        target = float(summary["target"].iloc[0]) if len(summary) else self.settings.target
        counts = sorted(int(c[4:]) for c in summary.columns if c.startswith("acc_"))
        header = ["Learner", "Strategy", *(f"{n} labels" for n in counts), "AULC (%)", f"Labels to {target:g}%",
                  "Δ AULC vs random (pp)", "p (Holm)"]
        best = summary.groupby("learner")["aulc_pct"].transform("max")
        rows = []
        for r, top in zip(summary.to_dict("records"), best):
            reach = "—" if np.isnan(r["labels_to_target"]) else f"{r['labels_to_target']:.0f}"
            versus = "—" if np.isnan(r["vs_random_pp"]) else f"{r['vs_random_pp']:+.2f} ± {r['vs_random_ci95']:.2f}"
            p = r.get("p_t_holm", np.nan)
            rows.append([Cell(r["name"]), Cell(r["strategy"]),
                         *(Cell(f"{r[f'acc_{n}']:.2f} ± {r[f'ci95_{n}']:.2f}") for n in counts),
                         Cell(f"{r['aulc_pct']:.2f} ± {r['aulc_ci95']:.2f}", bold=r["aulc_pct"] == top), Cell(reach),
                         Cell(versus), Cell("—" if np.isnan(p) else f"{p:.3g}")])
        return Table(header, rows, "ll" + "r" * (len(counts) + 4), caption, label="tab:metabench-active")

    def caption(self, config: Any, common: str = "") -> str:
        """What the table shows, for ``summary.md`` and the report."""
        s = self.settings
        b, budget = self.sizes(config.ways)
        return (
            f"Query accuracy (%) after each number of labels held, mean over {config.test_episodes} episodes "
            f"({config.ways} test classes, an unlabelled pool of {s.pool} and {s.queries} query images per class)"
            f"{' ' + common if common else ', ± the 95% confidence interval 1.96·s/√n over episodes.'} "
            f"{s.start} label(s) per class to start, then {b} per round up to {budget}; the learner adapts "
            f"afresh from its meta-learned state after every round. Annotator error rate ε = {s.epsilon:g}. AULC: "
            f"area under the accuracy-vs-labels curve divided by its label range (bold: each learner's best). "
            f"Δ AULC: the strategy minus random on the same pools, ± its 95% interval; p: paired t-test, "
            f"Holm-adjusted over the learner's strategies. Every learner and strategy sees identical pools, queries "
            f"and annotator answers."
        )

    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        return (f"# Active selection of support labels: {where_title(config)}, {config.ways}-way\n\n"
                f"{to_markdown(self.table(summary, self.caption(config, common)))}")

    def figure(self, summary: pd.DataFrame):
        """Accuracy against labels held, one panel per learner, one line per strategy with its
        95% confidence band (a :class:`matplotlib.figure.Figure`; call inside
        :func:`metabench.style.styled`)."""
        from metabench import style

        learners = list(dict.fromkeys(summary["learner"]))
        strategies = list(dict.fromkeys(summary["strategy"]))
        colours = style.palette(strategies, known=tuple(STRATEGIES))
        cols = min(3, len(learners))
        rows = -(-len(learners) // cols)
        fig, axes = style.new_figure(rows, cols, sharex=True, sharey=True)
        counts = sorted(int(c[4:]) for c in summary.columns if c.startswith("acc_"))
        for ax, name in zip(axes, learners):
            mine = summary[summary["learner"] == name]
            for r in mine.to_dict("records"):
                y = np.array([r[f"acc_{n}"] for n in counts])
                ci = np.array([r[f"ci95_{n}"] for n in counts])
                ax.plot(counts, y, marker="o", ms=3, color=colours[r["strategy"]], label=r["strategy"])
                ax.fill_between(counts, y - ci, y + ci, color=colours[r["strategy"]], alpha=0.12, linewidth=0)
            ax.set_title(mine["name"].iloc[0])
            ax.set_xticks(counts)
            ax.set_ylim(top=100.5)
        for ax in axes[::cols]:
            ax.set_ylabel("query accuracy (%)")
        for ax in axes[len(learners) - cols:len(learners)]:
            ax.set_xlabel("labels held")
            ax.xaxis.set_tick_params(labelbottom=True)
        handles, labels = axes[0].get_legend_handles_labels()
        spare = axes[len(learners):]
        for ax in spare:
            ax.axis("off")
        if spare:  # the legend in the first empty panel, clear of the curves
            spare[0].legend(handles, labels, title="strategy", loc="center")
        else:
            fig.legend(handles, labels, title="strategy", loc="outside lower center", ncols=min(6, len(labels)))
        return fig

    def report(self, runs: list[Any], out: Any) -> list[str]:
        """The report's section for active runs: per run, its table (Markdown, LaTeX, CSV) and the
        accuracy-vs-labels figure (PNG, PDF). ``out`` writes files and numbers tables and figures
        (:class:`metabench.report.ProtocolOutput`)."""
        md = ["## Active selection of support labels", ""]
        for run in runs:
            config = SimpleNamespace(**run.config)
            own = type(self)(type(self).make_settings(run.config.get("protocol_settings", {})))  # the run's settings
            stem = f"active-{run.label}"
            table = own.table(run.summary, own.caption(config))
            md += [f"### {run.label}: {where_title(config)}, {config.ways}-way", ""]
            md += out.table(stem, table, run.summary)
            md += out.figure(stem, lambda summary=run.summary, own=own: own.figure(summary),
                             f"Query accuracy against labels held ({run.label}), one panel per learner; bands: 95% "
                             f"confidence intervals over the {config.test_episodes} episodes. Random is the baseline; "
                             f"balanced is a standard K-shot episode.")
        return md

    def note(self, rows: pd.DataFrame) -> str:
        last = rows[rows["labels"] == rows["labels"].max()].groupby("strategy", sort=False)["accuracy"].mean()
        return ", ".join(f"{st} {acc:.1f}%" for st, acc in last.items()) + f" at {rows['labels'].max()} labels"
