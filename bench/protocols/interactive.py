"""The interactive protocol: a simulated person teaches the model, correcting it round by round.

A person introduces ``N`` new classes with one example each, then hands the model a stream of
``M`` items per round for ``R`` rounds (items of the same ``N`` test classes, in a fixed order per
episode). Every round the model, adapted on all feedback so far, predicts the ``M`` items (the
accuracy the person **sees**) and the held-out query set (``Q`` images per class, never fed
back); the person then corrects the wrong predictions (gives their labels), in the ``confirm``
mode also confirms the right ones, and with probability ``epsilon`` gives a wrong label
(:func:`~metabench.protocols.acquisition.annotate`, drawn once per item and episode, nested in
``epsilon``). The corrected (and confirmed) items join the labelled set, and the model adapts
afresh from its meta-learned state before the next round. This is interactive teaching in the
sense of human-in-the-loop few-shot learning (e.g. Fiebrink & Cook 2010, "The Wekinator"; the
episodic form here follows the few-shot protocol of Vinyals et al. 2016).

**Latency.** The time a person waits between giving feedback and seeing the updated model's
predictions: the wall-clock time of the learner's ``predict`` call on the next round's items and
query set (adaptation on all feedback so far, then one forward). Only that call is timed: not
building the episode, not the annotator, not scoring. With transductive batch norm the metric
learners' adaptation (embedding the labelled set) happens in the same forward as the prediction,
so adaptation and prediction cannot be timed apart for them; for MAML and Reptile the inner loop
dominates the call. Reported as median and 95th percentile over all rounds and episodes, on the
CPU the run used; the protocol spreads streams over the ``--workers`` processes for every learner
(on CPU, with at least 4 streams per process), which share torch's threads (one each on 2 cores).

Rows (``episodes.csv``): ``episode, epsilon, round, labels`` (labels held when predicting),
``seen_accuracy, heldout_accuracy`` (percent), ``corrections`` (wrong predictions this round, the
person's effort), ``cumulative_corrections``, ``wrong_labels`` (annotator errors among the labels
held), ``latency_ms``. Round 0 (the seed set only) is the same for every ``epsilon``.

Defaults: ``M = N`` (one item per class per round on average), ``R = 8`` rounds, ``Q = 5`` held-out
queries per class (with the seed image and 8 stream images, 14 of Omniglot's 20 images per
class), ``epsilon`` in {0, 0.1, 0.2} (as the issue asks), no confirmations (a person corrects
errors only), 200 episodes (streams).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from metabench.algorithms import LEARNERS
from metabench.algorithms.backbones import channels_last
from metabench.datasets.sampler import Episode, EpisodeSampler, fingerprint
from metabench.errors import ConfigError
from metabench.evaluation import evaluate, synchronize
from metabench.statistics import holm, mean_ci95, paired_comparison
from metabench.tables import Cell, Table, to_markdown

from . import EvaluationProtocol, Material
from .acquisition import annotate
from .active import RoundIndex, _generator
from .episodic import timing_columns, where_title


@dataclass(frozen=True)
class InteractiveSettings:
    """Settings of the interactive protocol (defaults justified in the module docstring).

    Attributes:
        items: M, stream items per round (0: N).
        rounds: R, rounds per stream.
        queries: Q, held-out query images per class.
        epsilons: annotator error rates to run, each in [0, 1).
        confirm: the person also confirms right predictions (they join the labelled set).
    """

    items: int = 0
    rounds: int = 8
    queries: int = 5
    epsilons: tuple[float, ...] = (0.0, 0.1, 0.2)
    confirm: bool = False


def stream_per_class(items: int, rounds: int, ways: int) -> int:
    """Stream images to draw per class so that ``items * rounds`` fit (rounded up)."""
    return -(-items * rounds // ways)


@dataclass(frozen=True)
class InteractiveScorer:
    """Scores one interactive stream (picklable, so episodes run in worker processes).

    Args:
        ways: N; items: M; rounds: R; epsilons, confirm: see :class:`InteractiveSettings`.
    """

    ways: int
    items: int
    rounds: int
    epsilons: tuple[float, ...]
    confirm: bool

    def predict(self, learner: Any, ep: Episode, labelled: torch.Tensor, labels: torch.Tensor,
                batch: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Adapt on the labelled items and predict ``batch`` (the round's items, then the
        held-out queries); only the learner's call is timed.

        Args:
            learner: the trained learner; ep: the stream's episode (support: the seed and stream
                images ``[N * (1 + S)]``, query: the held-out images ``[N * Q]``).
            labelled: int64 ``[L]`` support positions fed back so far (CPU); labels: int64
                ``[N * (1 + S)]`` the label the person gives each of them (CPU).
            batch: ``[M + N * Q, C, H, W]`` the round's items, then the held-out queries.
            n_items: M.

        Returns:
            ``(item predictions [M], query logits [N * Q, N], seconds)``.
        """
        device = ep.support_x.device
        support = ep.support_x[labelled.to(device)]
        support = channels_last(support) if support.dim() == 4 else support
        key = ep.index.key() + b"/interactive/" + labelled.numpy().astype("<i8").tobytes()
        round_ep = Episode(support, labels[labelled].to(device), batch,
                           torch.zeros(batch.shape[0], dtype=torch.long, device=device), RoundIndex(ep.index.classes, key))
        synchronize(device)
        start = time.perf_counter()
        logits = learner.predict(round_ep)
        synchronize(device)
        seconds = time.perf_counter() - start
        logits = logits.float().cpu()
        return logits[:n_items].argmax(1), logits[n_items:], seconds

    def __call__(self, learner: Any, ep: Episode) -> list[dict[str, Any]]:
        """Every ``epsilon``'s stream on one episode: one row per epsilon x round (see the module)."""
        ways = ep.ways
        per_class = ep.support_x.shape[0] // ways
        truth = ep.support_y.cpu()
        query_y = ep.query_y.cpu()
        key = ep.index.key()
        seed_set = torch.arange(ways) * per_class
        others = torch.tensor([i for i in range(ways * per_class) if i % per_class])
        stream = others[torch.randperm(others.numel(), generator=_generator(key, "stream"))][: self.items * self.rounds]
        order = stream.view(self.rounds, self.items)
        held_out = ep.query_x
        first = None
        rows = []
        for epsilon in self.epsilons:
            given = annotate(truth, ways, epsilon, _generator(key, "annotator"))
            given[seed_set] = truth[seed_set]  # the person introduces the classes correctly
            labelled, cumulative = seed_set, 0
            for r in range(self.rounds):
                items = order[r]
                if r == 0 and first is not None:
                    predicted, query_logits, seconds = first
                else:
                    batch = torch.cat([ep.support_x[items.to(ep.support_x.device)], held_out])
                    batch = channels_last(batch) if batch.dim() == 4 else batch
                    predicted, query_logits, seconds = self.predict(learner, ep, labelled, given, batch, items.numel())
                    if r == 0:
                        first = (predicted, query_logits, seconds)
                wrong = predicted != truth[items]
                cumulative += int(wrong.sum())
                rows.append({
                    "epsilon": float(epsilon), "round": r, "labels": int(labelled.numel()),
                    "seen_accuracy": 100.0 * int((~wrong).sum()) / items.numel(),
                    "heldout_accuracy": 100.0 * int((query_logits.argmax(1) == query_y).sum()) / query_y.numel(),
                    "corrections": int(wrong.sum()), "cumulative_corrections": cumulative,
                    "wrong_labels": int((given[labelled] != truth[labelled]).sum()), "latency_ms": 1000.0 * seconds,
                })
                feedback = items if self.confirm else items[wrong]
                labelled = torch.cat([labelled, feedback])
        return rows


class Interactive(EvaluationProtocol):
    """A simulated person correcting the model round by round (see the module docstring)."""

    name = "interactive"
    title = "Interactive feedback"
    KINDS: ClassVar[tuple[str, ...]] = ("classification",)
    UNIT = "stream"
    Settings: ClassVar[type] = InteractiveSettings
    DEFAULT_EPISODES: ClassVar[int | None] = 200

    @classmethod
    def make_settings(cls, values: Any) -> InteractiveSettings:
        values = dict(values)
        if isinstance(values.get("epsilons"), str):
            text = values["epsilons"]
            values["epsilons"] = [v for v in text.split(",") if v.strip()]
        elif isinstance(values.get("epsilons"), (int, float)):
            values["epsilons"] = [values["epsilons"]]
        if "epsilons" in values:
            try:
                values["epsilons"] = tuple(float(v) for v in values["epsilons"])
            except (TypeError, ValueError):
                raise ConfigError(f"--epsilons takes comma-separated numbers in [0, 1), got {values['epsilons']!r}") from None
        return super().make_settings(values)

    @classmethod
    def check_settings(cls, s: InteractiveSettings) -> None:
        for field, low in (("items", 0), ("rounds", 1), ("queries", 1)):
            value = getattr(s, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"interactive protocol: {field} must be a whole number >= {low} (got {value!r})")
        if not s.epsilons or any(not 0 <= e < 1 for e in s.epsilons):
            raise ConfigError(f"--epsilons must be annotator error rates in [0, 1), got {list(s.epsilons)}")
        if len(set(s.epsilons)) != len(s.epsilons):
            raise ConfigError("an error rate is listed twice in --epsilons: list each once")
        if not isinstance(s.confirm, bool):
            raise ConfigError(f"interactive protocol: confirm must be true or false, got {s.confirm!r}")

    def items(self, ways: int) -> int:
        """M for N-way streams (0 in the settings: N)."""
        return self.settings.items or ways

    def check(self, config: Any, data: Any) -> None:
        s = self.settings
        per_class = data.test.pool.dataset.images.shape[1]
        need = 1 + stream_per_class(self.items(config.ways), s.rounds, config.ways) + s.queries
        if need > per_class:
            raise ConfigError(f"interactive protocol: 1 seed + {need - 1 - s.queries} stream + {s.queries} query images per "
                              f"class = {need}, but the {config.test_dataset} test classes have {per_class}: lower "
                              "--rounds, --items or --heldout-queries")

    def material(self, config: Any, data: Any) -> Material:
        s = self.settings
        pool = data.test.pool
        per_class = 1 + stream_per_class(self.items(config.ways), s.rounds, config.ways)
        sampler = EpisodeSampler(pool, config.ways, per_class, s.queries, config.episode_seed, "interactive",
                                 description=f"test split of {config.test_dataset}/{config.test_split}")
        ids = [sampler.index(i) for i in range(config.test_episodes)]
        described = json.dumps({**dataclasses.asdict(s), "items": self.items(config.ways)}, sort_keys=True)
        digest = hashlib.sha256((fingerprint(pool, ids) + described).encode()).hexdigest()
        return Material(sampler, config.test_episodes, digest, f"{config.test_dataset}/{config.test_split}/test")

    def scorer(self, ways: int) -> InteractiveScorer:
        """The per-stream scorer for N-way streams."""
        s = self.settings
        return InteractiveScorer(ways, self.items(ways), s.rounds, tuple(float(e) for e in s.epsilons), bool(s.confirm))

    def score(self, learner: Any, material: Material, desc: str | None, workers: int) -> tuple[list[dict], float]:
        return evaluate(learner, material.sampler, material.count, desc, workers=workers,
                        scorer=self.scorer(material.sampler.ways), heavy=True)

    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        """One row per learner x epsilon.

        Returns:
            Columns ``learner, name, epsilon``; ``seen_<r>, heldout_<r>, corrections_<r>``
            (mean over streams of the seen and held-out accuracy, percent, and the cumulative
            corrections after round ``r``); ``seen_pct, seen_ci95`` (per-stream mean seen accuracy
            over the rounds), ``heldout_last_pct, heldout_last_ci95``, ``corrections_total,
            corrections_ci95``; ``latency_median_ms, latency_p95_ms`` over rounds and streams;
            ``vs_best_pp, vs_best_ci95, p_t, p_t_holm`` (mean seen accuracy against the best
            learner at that epsilon on the same streams, Holm over the other learners; NaN for the
            best); ``streams, seeds`` and the timings.
        """
        means = episodes.groupby(["learner", "epsilon", "episode", "round"], sort=False)[
            ["seen_accuracy", "heldout_accuracy", "cumulative_corrections", "latency_ms"]].mean().reset_index()
        rows = []
        for epsilon in dict.fromkeys(means["epsilon"]):
            at = means[means["epsilon"] == epsilon]
            per_stream = {n: at[at["learner"] == n].groupby("episode")["seen_accuracy"].mean() for n in learners}
            best = max(learners, key=lambda n: per_stream[n].mean())
            block = []
            for name in learners:
                mine = at[at["learner"] == name]
                row: dict[str, Any] = {"learner": name, "name": LEARNERS[name].title, "epsilon": float(epsilon)}
                by_round = mine.groupby("round")
                for r, part in by_round:
                    row[f"seen_{r}"] = float(part["seen_accuracy"].mean())
                    row[f"heldout_{r}"] = float(part["heldout_accuracy"].mean())
                    row[f"corrections_{r}"] = float(part["cumulative_corrections"].mean())
                last = mine[mine["round"] == mine["round"].max()]
                row["seen_pct"], row["seen_ci95"] = mean_ci95(per_stream[name].to_numpy())
                row["heldout_last_pct"], row["heldout_last_ci95"] = mean_ci95(last["heldout_accuracy"].to_numpy())
                row["corrections_total"], row["corrections_ci95"] = mean_ci95(last["cumulative_corrections"].to_numpy())
                latency = episodes[(episodes["learner"] == name) & (episodes["epsilon"] == epsilon)]["latency_ms"]
                row["latency_median_ms"] = float(np.median(latency))
                row["latency_p95_ms"] = float(np.percentile(latency, 95))
                row.update(vs_best_pp=np.nan, vs_best_ci95=np.nan, p_t=np.nan, p_t_holm=np.nan)
                if name != best and per_stream[name].size >= 2:
                    c = paired_comparison(per_stream[name], per_stream[best].loc[per_stream[name].index], (name, best))
                    row.update(vs_best_pp=c.mean_diff, vs_best_ci95=c.ci95, p_t=c.p_t)
                row.update(streams=int(mine["episode"].nunique()),
                           seeds=int(episodes[episodes["learner"] == name]["seed"].nunique()), best=best,
                           **timing_columns(timings, name))
                block.append(row)
            tested = [r for r in block if not np.isnan(r["p_t"])]
            if tested:
                adjusted, _ = holm([r["p_t"] for r in tested])
                for r, p in zip(tested, adjusted):
                    r["p_t_holm"] = float(p)
            rows += block
        return pd.DataFrame(rows)

    def table(self, summary: pd.DataFrame, caption: str) -> Table:
        """The summary as a :class:`~metabench.tables.Table`: one row per epsilon x learner."""
        rounds = sorted(int(c[5:]) for c in summary.columns if c.startswith("seen_") and c[5:].isdigit())
        header = ["ε", "Learner", "Seen accuracy (%)", f"Held-out after round {rounds[-1]} (%)", "Corrections",
                  "Latency median / p95 (ms)", "Δ seen vs best (pp)", "p (Holm)"]
        rows = []
        for r in summary.to_dict("records"):
            versus = "best" if np.isnan(r["vs_best_pp"]) else f"{r['vs_best_pp']:+.2f} ± {r['vs_best_ci95']:.2f}"
            p = "—" if np.isnan(r["p_t_holm"]) else f"{r['p_t_holm']:.3g}"
            rows.append([Cell(f"{r['epsilon']:g}"), Cell(r["name"]),
                         Cell(f"{r['seen_pct']:.2f} ± {r['seen_ci95']:.2f}", bold=np.isnan(r["vs_best_pp"])),
                         Cell(f"{r['heldout_last_pct']:.2f} ± {r['heldout_last_ci95']:.2f}"),
                         Cell(f"{r['corrections_total']:.2f} ± {r['corrections_ci95']:.2f}"),
                         Cell(f"{r['latency_median_ms']:.0f} / {r['latency_p95_ms']:.0f}"), Cell(versus), Cell(p)])
        return Table(header, rows, "ll" + "r" * 6, caption, label="tab:metabench-interactive")

    def caption(self, config: Any, common: str = "") -> str:
        """What the table shows, for ``summary.md`` and the report."""
        s = self.settings
        m = self.items(config.ways)
        return (
            f"A simulated person introduces {config.ways} test classes with one image each, then shows {m} items per "
            f"round for {s.rounds} rounds and corrects the wrong predictions{' and confirms the right ones' if s.confirm else ''}; "
            f"ε: the probability that a label the person gives is wrong. Mean over {config.test_episodes} streams"
            f"{' ' + common if common else ', ± the 95% confidence interval 1.96·s/√n over streams.'} Seen accuracy: "
            f"the items' accuracy before their feedback, averaged over the rounds; held-out: {s.queries} query images "
            f"per class never fed back, at the last round (after adapting on all earlier feedback); corrections: the person's total effort "
            f"over the {s.rounds * m} items. Latency: wall-clock time of the learner's call from feedback to new "
            f"predictions (adaptation and one forward of the next items and held-out queries; median and 95th "
            f"percentile over rounds and streams; worker processes share torch's threads). Δ: mean seen accuracy minus the "
            f"best learner's at that ε on the same streams, ± its 95% interval; p: paired t-test, Holm-adjusted over "
            f"the other learners."
        )

    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        return (f"# Interactive feedback: {where_title(config)}, {config.ways}-way\n\n"
                f"{to_markdown(self.table(summary, self.caption(config, common)))}")

    def figure(self, summary: pd.DataFrame):
        """Seen accuracy (top) and cumulative corrections (bottom) against the round, one column
        per epsilon, one line per learner (call inside :func:`metabench.style.styled`)."""
        from metabench import style

        epsilons = list(dict.fromkeys(summary["epsilon"]))
        learners = list(dict.fromkeys(summary["learner"]))
        colours = style.palette(learners)
        rounds = sorted(int(c[5:]) for c in summary.columns if c.startswith("seen_") and c[5:].isdigit())
        fig, axes = style.new_figure(2, len(epsilons), sharex=True, sharey="row")
        for j, epsilon in enumerate(epsilons):
            at = summary[summary["epsilon"] == epsilon]
            for r in at.to_dict("records"):
                axes[j].plot(rounds, [r[f"seen_{k}"] for k in rounds], marker="o", ms=3, color=colours[r["learner"]],
                             label=r["name"])
                axes[len(epsilons) + j].plot(rounds, [r[f"corrections_{k}"] for k in rounds], marker="o", ms=3,
                                             color=colours[r["learner"]])
            axes[j].set_title(f"ε = {epsilon:g}")
            axes[len(epsilons) + j].set_xlabel("round")
        axes[0].set_ylabel("seen accuracy (%)")
        axes[len(epsilons)].set_ylabel("corrections so far")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)))
        return fig

    def latency_figure(self, episodes: pd.DataFrame):
        """Latency per learner (box: quartiles, whiskers: 5th to 95th percentile, over all rounds and
        streams of every epsilon; log scale), call inside :func:`metabench.style.styled`."""
        from metabench import style

        learners = list(dict.fromkeys(episodes["learner"]))
        first = episodes["epsilon"].iloc[0]
        episodes = episodes[(episodes["round"] > 0) | (episodes["epsilon"] == first)]  # round 0 is measured once
        colours = style.palette(learners)
        fig, axes = style.new_figure(1, 1)
        ax = axes[0]
        data = [episodes.loc[episodes["learner"] == n, "latency_ms"].to_numpy() for n in learners]
        parts = ax.boxplot(data, whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6)
        for patch, name in zip(parts["boxes"], learners):
            patch.set_facecolor(colours[name])
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(learners) + 1), ["\n".join(LEARNERS[n].title.rsplit(" ", 1)) for n in learners])
        ax.set_yscale("log")
        ax.set_ylabel("feedback to new predictions (ms)")
        return fig

    def report(self, runs: list[Any], out: Any) -> list[str]:
        """The report's section for interactive runs: table (Markdown, LaTeX, CSV) and figure."""
        md = ["## Interactive feedback", ""]
        for run in runs:
            config = SimpleNamespace(**run.config)
            own = type(self)(type(self).make_settings(run.config.get("protocol_settings", {})))  # the run's settings
            stem = f"interactive-{run.label}"
            md += [f"### {run.label}: {where_title(config)}, {config.ways}-way", ""]
            md += out.table(stem, own.table(run.summary, own.caption(config)), run.summary)
            md += out.figure(stem, lambda summary=run.summary, own=own: own.figure(summary),
                             f"Accuracy the person sees (top) and the corrections made so far (bottom) against the "
                             f"round ({run.label}), per annotator error rate ε; means over "
                             f"{config.test_episodes} streams.")
            md += out.figure(f"{stem}-latency", lambda episodes=run.episodes, own=own: own.latency_figure(episodes),
                             f"Latency from the person's feedback to the updated model's predictions ({run.label}): "
                             f"the learner's call (adaptation and one forward), over every round and stream; box: "
                             f"quartiles, whiskers: 5th to 95th percentile; round 0, shared by the error rates, counted "
                             f"once; run with {run.config.get('workers')} worker processes sharing torch's threads.")
        return md

    def note(self, rows: pd.DataFrame) -> str:
        per = rows.groupby("epsilon")
        return ", ".join(f"ε {e:g}: seen {p['seen_accuracy'].mean():.1f}%, {p.groupby('episode')['corrections'].sum().mean():.1f} "
                         f"corrections" for e, p in per) + f", latency median {rows['latency_ms'].median():.0f} ms"
