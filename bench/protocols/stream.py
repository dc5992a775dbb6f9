"""The stream protocol: online fast adaptation and knowledge accumulation when tasks arrive one
after another (OSAKA, Caccia et al. 2020, NeurIPS; online meta-learning, Finn et al. 2019, ICML).

After meta-training, every learner runs the same fingerprinted streams (:mod:`.streams`: ``T``
steps, the task changes with probability ``1 - p`` per step to a new in-distribution task, a new
out-of-distribution task or a returning one). At each step a batch of the current task arrives; the
learner **predicts it first** (scored: online accuracy, or online MSE for sine waves; the batch's
labels are placeholders in what the learner gets), then receives its labels and learns from them.
The learner is not told when the task changes (task-agnostic) unless ``oracle`` adds rows where it
is (mode ``oracle``, reported separately).

**Each learner's rule in a stream** (:meth:`~metabench.algorithms.MetaLearner.stream_predict`):
every learner keeps a **labelled memory** of the current task, its last ``memory`` labelled batches
since the last declared change, and predicts the incoming batch from it alone. With an empty memory
(the stream's first step, or an oracle boundary) it has no example of the task and guesses (uniform
logits; zero outputs for sine waves). Prototypical and Matching Networks use the memory as their
support set (prototypes, attention). MAML, first-order MAML and Reptile adapt from their
meta-learned parameters on the memory with the inner loop they were meta-trained with (MAML:
``train_inner_steps`` gradient steps of size ``inner_lr``; Reptile: ``train_inner_steps`` steps of
its inner optimiser on minibatches), the fast weights of Continual-MAML (Caccia et al. 2020) with
the memory as support set; their longer test-time loops would cost too much per stream step
(Reptile's 50 steps per test episode, say). The sine waves' pretrained baseline fine-tunes as at
test time (``test_inner_steps`` steps on a 1-40-40-1 MLP, cheap). Nothing is carried from one step
to the next but the memory.

**Task-change detection** (:class:`ChangeDetector`): the loss of the prediction on the incoming
batch (cross-entropy in nats, or MSE) is compared with the mean loss of the current segment's
earlier informed predictions; a loss above that mean by more than ``threshold`` declares a change,
which empties the memory and resets the task state. This is the loss-jump rule of Continual-MAML
(OSAKA's ``cl_tbd_thres``, ServiceNow/osaka ``MAML/metalearners/maml.py``), compared here with the
segment's mean rather than with the loss after adapting on the batch, so that it costs no extra
adaptation and applies unchanged to the metric learners. ``threshold`` defaults to 1 (one of
OSAKA's grid of thresholds, 0.25-3; not tuned here).

**Regimes.** ``frozen``: the meta-parameters stay as trained (fast adaptation only).
``continual``: Continual-MAML's outer update (Caccia et al. 2020): at each step where no change was
declared and the memory holds an earlier batch of the task, one meta-update of a **copy** of the
learner with its own ``meta_train_step`` on a meta-batch of one episode (support: the previous
labelled batch, query: the new batch; for Reptile, which meta-trains without a query split, both
as its task), with a fresh optimiser at the learner's initial meta learning rate and schedule over
the stream's ``T`` steps (:func:`continual_copy`; Reptile's outer step size therefore anneals from
``meta_step`` to ``meta_step_final`` over the stream, and with one task per update its first updates
move theta most of the way to the adapted weights).
Each stream starts from the trained meta-parameters again, so streams are independent; the
learner's own parameters (the run's kept weights) are never changed.

**Rows** (``episodes.csv``), one per learner x stream x regime x mode x segment (a visit of a task):
``episode`` (the stream), ``regime``, ``mode``, ``segment``, ``start`` (its first step),
``steps``, ``task``, ``kind`` (``in``, ``out``, ``return``), ``visit`` (1: first visit),
``metric`` (``accuracy`` or ``mse``), ``score`` (the segment's mean online accuracy in percent, or MSE), and per step, ``|``-separated:
``scores`` (online accuracy or MSE), ``ms`` (the learner's compute for the step: prediction,
learning and, when continual, the meta-update; milliseconds) and ``declared`` (offsets within the
segment at which a change was declared, empty if none).

Defaults (``--stream-steps 1000``, 20 streams, ``--stay 0.9``, the ``frozen`` regime): each learner
runs 20,000 steps; the ``continual`` regime's meta-updates add about as much again for the metric
learners and more for MAML (second-order) and Reptile (see docs/protocols.md for measured times);
``memory`` 5 batches (at 1 example per class per step, the 5-shot setting of the papers);
mixing (in, out, return) = (0.5, 0.25, 0.25) with ``digits`` as the out-of-distribution domain of
grey-scale image streams (not when the run tests on digits), else (0.75, 0, 0.25): colour images
have no default other domain, sine waves none at all.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from metabench.algorithms import LEARNERS
from metabench.algorithms.backbones import channels_last
from metabench.datasets import DATASETS, check_split, load_split
from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError
from metabench.evaluation import evaluate, synchronize
from metabench.statistics import holm, mean_ci95, paired_comparison
from metabench.tables import Cell, Table, to_markdown

from . import EvaluationProtocol, Material
from .active import RoundIndex
from .episodic import timing_columns, where_title
from .streams import ARRIVALS, StreamSampler, StreamSpec, stream_fingerprint

REGIMES = ("frozen", "continual")
#: Default mixing (in, out, return) with and without an out-of-distribution domain.
MIXING = {True: (0.5, 0.25, 0.25), False: (0.75, 0.0, 0.25)}
#: Steps since a change for which the recovery curve is reported.
RECOVERY = 20


@dataclass(frozen=True)
class StreamSettings:
    """Settings of the stream protocol (defaults justified in the module docstring).

    Attributes:
        steps: T, steps per stream.
        stay: p, probability that the task stays the same at a step, in [0, 1) (OSAKA: 0.9, 0.98).
        mixing: probabilities of a new in-distribution task, a new out-of-distribution task and a
            returning task at a change (empty: the defaults, :data:`MIXING`).
        ood_dataset: the out-of-distribution dataset (empty: ``digits`` for grey-scale image streams
            that do not test on digits, else none; ``none``: no out-of-distribution tasks).
        ood_split: its split (empty: the dataset's default).
        shots: k, examples per class in each step's batch (0: the run's K).
        memory: labelled batches of the current task a learner keeps.
        threshold: loss jump that declares a task change (nats, or squared units of y).
        regimes: ``frozen`` and/or ``continual`` (default ``frozen``: the continual regime's
            meta-updates cost as much again or more, see the module).
        oracle: also run with the task boundaries given (mode ``oracle``).
        fresh_classes: new tasks never reuse a class the stream has used.
    """

    steps: int = 1000
    stay: float = 0.9
    mixing: tuple[float, ...] = ()
    ood_dataset: str = ""
    ood_split: str = ""
    shots: int = 0
    memory: int = 5
    threshold: float = 1.0
    regimes: tuple[str, ...] = ("frozen",)
    oracle: bool = False
    fresh_classes: bool = False


class ChangeDetector:
    """The loss-jump rule (see the module docstring): a change is declared when a loss exceeds the
    mean of the current segment's earlier losses by more than ``threshold``.

    Args:
        threshold: the jump, in the loss's units (> 0).
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.losses: list[float] = []

    def observe(self, loss: float) -> bool:
        """Feed the loss of one informed prediction; ``True`` declares a change (and starts a new
        segment: the triggering loss belongs to the old task's memory and is not kept)."""
        if self.losses and loss > float(np.mean(self.losses)) + self.threshold:
            self.losses = []
            return True
        self.losses.append(loss)
        return False

    def reset(self) -> None:
        """Start a new segment (an oracle boundary)."""
        self.losses = []


def continual_copy(learner: Any, steps: int) -> Any:
    """A copy of ``learner`` for continual meta-learning on one stream: a new learner of the same
    class and hyperparameters with ``learner``'s parameters (copied) and test-time settings, and a
    fresh optimiser and schedule at the learner's initial meta learning rate (iteration 0 of
    ``steps``), so that ``learner`` itself is never changed.

    Args:
        learner: the trained learner.
        steps: the stream's length T (the horizon of schedules such as Reptile's annealing).

    Returns:
        The new learner, on ``learner``'s device.
    """
    fresh = type(learner)(learner.config, learner.ways, learner.image_shape, steps, learner.device, learner.seed)
    fresh.load_state_dict(learner.state_dict())
    fresh.restore_tuned(learner.tuned_settings())
    return fresh


def _paired(summary: pd.DataFrame, column: str, p_column: str, pairs: list) -> None:
    """Fill ``column``, ``column_ci95`` and ``p_column`` of ``summary``'s rows from paired
    comparisons over streams (mean difference ± 95% CI, paired t-test, Holm over ``pairs``).

    Args:
        pairs: ``(row index, per-stream scores a, per-stream scores b, names)``; pairs with fewer
            than 2 streams are left NaN.
    """
    tested = []
    for i, mine, theirs, names in pairs:
        if mine.size >= 2:
            c = paired_comparison(mine, theirs.loc[mine.index], names)
            summary.loc[i, [column, f"{column}_ci95"]] = [c.mean_diff, c.ci95]
            tested.append((i, c.p_t))
    if tested:
        adjusted, _ = holm([p for _, p in tested])
        for (i, _), p in zip(tested, adjusted):
            summary.loc[i, p_column] = float(p)


def recovery(changes: pd.DataFrame, length: int = RECOVERY) -> np.ndarray:
    """The recovery curve: the score ``d`` steps after a task change, for ``d < length``: averaged
    over each stream's changes (seeds pooled), then over the streams that have a segment that
    long (NaN where none has).

    Args:
        changes: rows of segments that start with a change (``segment > 0``).

    Returns:
        float64 ``[length]``.
    """
    per_stream = []
    for _, part in changes.groupby("episode"):
        curves = [unpack(v)[:length] for v in part["scores"]]
        per_stream.append([np.mean([c[d] for c in curves if c.size > d]) if any(c.size > d for c in curves) else np.nan
                           for d in range(length)])
    if not per_stream:
        return np.full(length, np.nan)
    values = np.array(per_stream)
    counts = (~np.isnan(values)).sum(0)
    return np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)


def lower_is_better(frame: pd.DataFrame) -> bool:
    """Whether a stream run's score is an error (``metric`` ``mse``, sine waves) rather than an
    accuracy (``accuracy``, percent), from its rows or its summary (both carry ``metric``)."""
    return str(frame["metric"].iloc[0]) == "mse"


def _pack(values: Any, fmt: str) -> str:
    return "|".join(format(float(v), fmt) for v in values)


def unpack(text: Any) -> np.ndarray:
    """A ``|``-separated column of a row (``scores``, ``ms``, ``declared``) as float64 ``[n]``."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text) == "":
        return np.empty(0)
    return np.array([float(v) for v in str(text).split("|")])


@dataclass(frozen=True)
class StreamScorer:
    """Runs every regime and mode on one stream (picklable, so streams run in worker processes).

    Args:
        kind: ``classification`` or ``regression``.
        regimes: see :class:`StreamSettings`; modes: ``("detected",)`` or with ``"oracle"``.
        memory, threshold: see :class:`StreamSettings`.
    """

    kind: str
    regimes: tuple[str, ...]
    modes: tuple[str, ...]
    memory: int
    threshold: float

    def __call__(self, learner: Any, stream: Any) -> list[dict[str, Any]]:
        rows = []
        for regime in self.regimes:
            for mode in self.modes:
                rows += self.run(learner, stream, regime, mode)
        return rows

    def _score(self, out: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(online score, loss) of outputs on a labelled batch."""
        out = out.float()
        if self.kind == "regression":
            value = F.mse_loss(out, y).item()
            return value, value
        return 100.0 * (out.argmax(1) == y).float().mean().item(), F.cross_entropy(out, y).item()

    def run(self, learner: Any, stream: Any, regime: str, mode: str) -> list[dict[str, Any]]:
        """One regime x mode on one stream: the rows of its segments (see the module)."""
        idx = stream.index
        steps = idx.steps
        active = continual_copy(learner, steps) if regime == "continual" else learner
        queries_free = active.train_shape(learner.ways, 1, 1).queries == 0  # Reptile meta-trains on one set
        device = stream.y.device
        classes = np.arange(learner.ways)
        digest = hashlib.sha256(idx.key()).digest()[:16]
        memory: list[tuple[torch.Tensor, torch.Tensor]] = []
        detector = ChangeDetector(self.threshold)
        scores, ms, declared = np.empty(steps), np.empty(steps), np.zeros(steps, bool)
        for t in range(steps):
            x, y = stream.batch(t)
            if x.dim() == 4:
                x = channels_last(x)
            key = digest + f"/{t}".encode()  # the same draws in every regime and mode (paired comparisons)
            synchronize(device)
            start = time.perf_counter()
            if mode == "oracle" and idx.change[t]:
                memory = []
                detector.reset()
            if memory:
                sx, sy = torch.cat([m[0] for m in memory]), torch.cat([m[1] for m in memory])
                hidden = torch.zeros_like(y)  # the labels are not revealed before the prediction
                out = active.stream_predict(Episode(sx, sy, x, hidden, RoundIndex(classes, key)))
            else:
                out = torch.zeros((x.shape[0], y.shape[1] if y.dim() == 2 else learner.ways), device=device)
            scores[t], loss = self._score(out, y)
            if mode == "detected" and memory and detector.observe(loss):
                memory = []
                declared[t] = True
            if regime == "continual" and memory:
                px, py = memory[-1]
                if queries_free:
                    px, py = torch.cat([px, x]), torch.cat([py, y])
                active.meta_train_step([Episode(px, py, x, y, RoundIndex(classes, key + b"/meta"))])
            memory = (memory + [(x, y)])[-self.memory:]
            synchronize(device)
            ms[t] = 1000 * (time.perf_counter() - start)
        rows = []
        starts = np.flatnonzero(idx.change)
        ends = np.append(starts[1:], steps)
        fmt = ".6g" if self.kind == "regression" else ".4g"
        for segment, (a, b) in enumerate(zip(starts, ends)):
            rows.append({
                "regime": regime, "mode": mode, "segment": segment, "start": int(a), "steps": int(b - a),
                "task": int(idx.task[a]), "kind": ARRIVALS[int(idx.kind[a])], "visit": int(idx.visit[a]),
                "metric": "mse" if self.kind == "regression" else "accuracy", "score": float(scores[a:b].mean()),
                "scores": _pack(scores[a:b], fmt), "ms": _pack(ms[a:b], ".2f"),
                "declared": "|".join(str(int(o)) for o in np.flatnonzero(declared[a:b])),
            })
        return rows


class StreamProtocol(EvaluationProtocol):
    """Online task streams (see the module docstring)."""

    name = "stream"
    title = "Online task streams"
    KINDS: ClassVar[tuple[str, ...]] = ("classification", "regression")
    UNIT = "stream"
    Settings = StreamSettings
    #: 20 streams of 1000 steps (the issue's minimum; see the module docstring for the time).
    DEFAULT_EPISODES: ClassVar[int | None] = 20

    @classmethod
    def make_settings(cls, values: Any) -> StreamSettings:
        values = dict(values)
        for field, convert in (("mixing", float), ("regimes", str)):
            value = values.get(field)
            if value is None:
                continue
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            try:
                values[field] = tuple(convert(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(f"--{field} takes comma-separated values, got {value!r}") from None
        return super().make_settings(values)

    @classmethod
    def check_settings(cls, s: StreamSettings) -> None:
        for field, low in (("steps", 1), ("shots", 0), ("memory", 1)):
            value = getattr(s, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"stream protocol: {field} must be a whole number >= {low} (got {value!r})")
        if isinstance(s.stay, bool) or not isinstance(s.stay, (int, float)) or not 0 <= s.stay < 1:
            raise ConfigError(f"--stay is the probability that the task stays the same at a step: it must be in [0, 1), got {s.stay!r}")
        if s.mixing:
            if len(s.mixing) != 3 or not all(np.isfinite(m) and m >= 0 for m in s.mixing):
                raise ConfigError(f"--mixing takes three probabilities (new in-distribution, new out-of-distribution, "
                                  f"returning task), got {list(s.mixing)}")
            if abs(sum(s.mixing) - 1) > 1e-9:
                raise ConfigError(f"--mixing probabilities must sum to 1, got {list(s.mixing)} (sum {sum(s.mixing):g})")
            if s.mixing[0] + s.mixing[1] <= 0:
                raise ConfigError("--mixing gives new tasks probability 0: a stream needs a first task, so give "
                                  "in-distribution or out-of-distribution tasks a positive probability")
        if not isinstance(s.threshold, (int, float)) or isinstance(s.threshold, bool) or not s.threshold > 0:
            raise ConfigError(f"--change-threshold must be a positive loss jump, got {s.threshold!r}")
        if not s.regimes or any(r not in REGIMES for r in s.regimes) or len(set(s.regimes)) != len(s.regimes):
            raise ConfigError(f"--regimes takes frozen and/or continual, each once, got {list(s.regimes)}")
        for field in ("oracle", "fresh_classes"):
            if not isinstance(getattr(s, field), bool):
                raise ConfigError(f"stream protocol: {field} must be true or false, got {getattr(s, field)!r}")

    def ood(self, config: Any) -> tuple[str, str] | None:
        """``(dataset, split)`` of the out-of-distribution domain, or ``None``.

        Raises:
            ConfigError: for an unknown ``--ood-dataset``.
        """
        s = self.settings
        info = DATASETS[config.dataset]
        grey = info.kind == "classification" and info.channels == 1 and config.test_dataset != "digits"
        name = s.ood_dataset or ("digits" if grey else "none")
        if name == "none":
            return None
        if name not in DATASETS:
            raise ConfigError(f"unknown --ood-dataset {name!r}: use one of {', '.join(DATASETS)} or none")
        return name, s.ood_split or DATASETS[name].splits[0]

    def mixing(self, config: Any) -> tuple[float, float, float]:
        """The mixing probabilities of this run (the settings', or the defaults)."""
        has_ood = self.ood(config) is not None
        return tuple(self.settings.mixing) if self.settings.mixing else MIXING[has_ood]

    def shots(self, config: Any) -> int:
        """k for this run (0 in the settings: the run's K)."""
        return self.settings.shots or config.shots

    def _pools(self, config: Any, data: Any) -> Any:
        if DATASETS[config.dataset].kind == "regression":
            return None
        where = self.ood(config)
        if where is None:
            return data.test.pool, None
        info = DATASETS[where[0]]
        if info.kind != "classification":
            raise ConfigError(f"--ood-dataset {where[0]} is not an image dataset: use digits or another image dataset, or none")
        check_split(where[0], where[1], "--ood-split")
        channels = data.input_shape[0]
        if info.channels != channels:
            raise ConfigError(f"--ood-dataset {where[0]} has {info.channels} channel(s) but the run's images have "
                              f"{channels}: choose an out-of-distribution dataset with {channels} channel(s)")
        if where == (config.test_dataset, config.test_split):
            raise ConfigError(f"--ood-dataset {where[0]} ({where[1]}) is the run's own test data: choose another dataset "
                              "or --ood-dataset none")
        split = load_split(where[0], where[1], config.data_root, config.image_size, config.download)
        return data.test.pool, split.test

    def spec(self, config: Any) -> StreamSpec:
        """The streams' shape for a run."""
        s = self.settings
        ways = 1 if DATASETS[config.dataset].kind == "regression" else config.ways
        return StreamSpec(s.steps, float(s.stay), self.mixing(config), ways, self.shots(config), s.fresh_classes,
                          config.episode_seed)

    def check(self, config: Any, data: Any) -> None:
        s = self.settings
        regression = DATASETS[config.dataset].kind == "regression"
        mixing = self.mixing(config)
        if regression and (s.ood_dataset not in ("", "none")):
            raise ConfigError("sine-wave streams have no out-of-distribution dataset: drop --ood-dataset")
        if mixing[1] > 0 and self.ood(config) is None:
            raise ConfigError("--mixing gives out-of-distribution tasks a probability but there is no out-of-distribution "
                              "dataset: set the middle probability to 0, or name one with --ood-dataset")
        if regression and s.fresh_classes:
            raise ConfigError("--fresh-classes is for image streams: sine waves have no classes")
        pools = self._pools(config, data)
        if pools is not None:
            if config.ways > len(pools[0]) or (pools[1] is not None and config.ways > len(pools[1])):
                small = min(len(p) for p in pools if p is not None)
                raise ConfigError(f"{config.ways}-way stream tasks need {config.ways} classes per pool but a pool has "
                                  f"{small}: lower --ways")
            sampler = StreamSampler(self.spec(config), pools)
            for i in range(config.test_episodes):
                sampler.index(i)  # raises for --fresh-classes streams that run out of classes

    def material(self, config: Any, data: Any) -> Material:
        sampler = StreamSampler(self.spec(config), self._pools(config, data))
        digest = stream_fingerprint(sampler, config.test_episodes)  # the streams only, not how they are scored
        where = f"{config.test_dataset}/{config.test_split}/test"
        ood = self.ood(config)
        return Material(sampler, config.test_episodes, digest, where + (f" + {ood[0]}/{ood[1]}/test" if ood else ""))

    def scorer(self, kind: str) -> StreamScorer:
        """The per-stream scorer."""
        s = self.settings
        modes = ("detected", "oracle") if s.oracle else ("detected",)
        return StreamScorer(kind, tuple(s.regimes), modes, s.memory, float(s.threshold))

    def score(self, learner: Any, material: Material, desc: str | None, workers: int) -> tuple[list[dict], float]:
        return evaluate(learner, material.sampler, material.count, desc, workers=workers,
                        scorer=self.scorer(learner.kind), heavy=True)

    # ----------------------------------------------------------------------------- summaries

    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        """One row per learner x regime x mode.

        Returns:
            Columns ``learner, name, regime, mode``; ``online, online_ci95`` (mean over streams of
            each stream's mean online score: accuracy in percent or MSE); ``online_in``,
            ``online_out``, ``online_return`` with ``_ci95`` (the same over the steps of new
            in-distribution, new out-of-distribution and returning visits; NaN where no stream
            has one); ``first_visit, later_visits, return_gain`` with ``_ci95`` (tasks that
            return: mean score on their first visit, on their returns, and the paired difference
            later minus first, over streams with a return); ``rec_<d>`` (the score ``d`` steps
            after a task change, :func:`recovery`, for ``d < 20``); ``changes, detected_pct,
            false_per_100`` (task changes, the percent declared at the change's step, declarations
            elsewhere per 100 steps; NaN in oracle mode); ``ms_median, ms_p95`` (per step);
            ``vs_best, vs_best_ci95, p_best_holm`` (online score minus the best learner's in the
            same regime and mode, paired over streams, Holm over the other learners);
            ``vs_frozen, vs_frozen_ci95, p_frozen_holm`` (continual minus frozen, paired over
            streams, Holm over the learners; NaN for frozen rows); ``best, streams, seeds`` and
            the timings.
        """
        lower = lower_is_better(episodes)
        per_stream: dict[tuple[str, str, str], pd.Series] = {}
        rows: list[dict[str, Any]] = []
        for (regime, mode) in dict.fromkeys(zip(episodes["regime"], episodes["mode"])):
            for name in learners:
                mine = episodes[(episodes["learner"] == name) & (episodes["regime"] == regime) & (episodes["mode"] == mode)]
                per_stream[(name, regime, mode)] = self._per_stream(mine)
                rows.append(self._summary_row(mine, per_stream[(name, regime, mode)], name, regime, mode, timings))
        summary = pd.DataFrame(rows)
        for col in ("vs_best", "vs_best_ci95", "p_best_holm", "vs_frozen", "vs_frozen_ci95", "p_frozen_holm"):
            summary[col] = np.nan
        summary["best"] = ""
        for (regime, mode), block in summary.groupby(["regime", "mode"], sort=False):
            means = {n: per_stream[(n, regime, mode)].mean() for n in block["learner"]}
            best = (min if lower else max)(means, key=means.get)
            summary.loc[block.index, "best"] = best
            _paired(summary, "vs_best", "p_best_holm",
                    [(i, per_stream[(n, regime, mode)], per_stream[(best, regime, mode)], (n, best))
                     for i, n in zip(block.index, block["learner"]) if n != best])
        for mode in dict.fromkeys(summary["mode"]):
            continual = summary[(summary["regime"] == "continual") & (summary["mode"] == mode)]
            _paired(summary, "vs_frozen", "p_frozen_holm",
                    [(i, per_stream[(n, "continual", mode)], per_stream[(n, "frozen", mode)], (n, "frozen"))
                     for i, n in zip(continual.index, continual["learner"]) if (n, "frozen", mode) in per_stream])
        return summary

    @staticmethod
    def _per_stream(rows: pd.DataFrame) -> pd.Series:
        """Mean online score per stream (seeds averaged), weighting segments by their steps."""
        weighted = rows.assign(total=rows["score"] * rows["steps"])
        by = weighted.groupby(["episode", "seed"])[["total", "steps"]].sum()
        return (by["total"] / by["steps"]).groupby("episode").mean()

    def _summary_row(self, mine: pd.DataFrame, online: pd.Series, name: str, regime: str, mode: str,
                     timings: pd.DataFrame) -> dict[str, Any]:
        row: dict[str, Any] = {"learner": name, "name": LEARNERS[name].title, "regime": regime, "mode": mode,
                               "metric": str(mine["metric"].iloc[0])}
        row["online"], row["online_ci95"] = mean_ci95(online.to_numpy())
        for kind in ARRIVALS:
            part = mine[mine["kind"] == kind]
            values = self._per_stream(part).to_numpy() if len(part) else np.empty(0)
            row[f"online_{kind}"], row[f"online_{kind}_ci95"] = mean_ci95(values) if values.size else (np.nan, np.nan)
        returning = mine.groupby(["episode", "seed", "task"])["visit"].transform("max") > 1
        tasks = mine[returning]
        first = self._per_stream(tasks[tasks["visit"] == 1]) if len(tasks) else pd.Series(dtype=float)
        later = self._per_stream(tasks[tasks["visit"] > 1]) if len(tasks) else pd.Series(dtype=float)
        for col, values in (("first_visit", first), ("later_visits", later), ("return_gain", (later - first).dropna())):
            row[col], row[f"{col}_ci95"] = mean_ci95(values.to_numpy()) if len(values) else (np.nan, np.nan)
        changes = mine[mine["segment"] > 0]
        for d, value in enumerate(recovery(changes)):
            row[f"rec_{d}"] = value
        row["changes"] = len(changes)
        if mode == "detected":
            offsets = [unpack(d) for d in mine["declared"]]
            # a change is declared at offset 0 of the segment it starts (segment 0 starts the stream
            # with an empty memory, where nothing can be declared); declarations later are false
            hits = sum(1 for o, seg in zip(offsets, mine["segment"]) if seg > 0 and (o == 0).any())
            false = sum(int((o > 0).sum()) for o in offsets)
            row["detected_pct"] = 100.0 * hits / len(changes) if len(changes) else np.nan
            row["false_per_100"] = 100.0 * false / mine["steps"].sum()
        else:
            row["detected_pct"] = row["false_per_100"] = np.nan
        ms = np.concatenate([unpack(m) for m in mine["ms"]])
        row["ms_median"], row["ms_p95"] = float(np.median(ms)), float(np.percentile(ms, 95))
        row.update(streams=int(mine["episode"].nunique()), seeds=int(mine["seed"].nunique()), **timing_columns(timings, name))
        return row

    # ----------------------------------------------------------------------------- tables, figures

    def table(self, summary: pd.DataFrame, caption: str) -> Table:
        """The summary as a :class:`~metabench.tables.Table`: one row per regime x mode x learner."""
        mse = lower_is_better(summary)
        unit = "MSE" if mse else "%"
        def fmt(m: float, c: float) -> str:
            text = f"{m:.3g}" if mse else f"{m:.2f}"
            return text if np.isnan(c) else text + (f" ± {c:.2g}" if mse else f" ± {c:.2f}")

        def cell(r: dict, col: str, bold: bool = False) -> Cell:
            return Cell("—" if np.isnan(r[col]) else fmt(r[col], r[f"{col}_ci95"]), bold=bold)

        def delta(r: dict, col: str, p: str) -> list[Cell]:
            if np.isnan(r[col]):
                return [Cell("—"), Cell("—")]
            return [Cell(f"{r[col]:+.3g} ± {r[col + '_ci95']:.2g}"), Cell("—" if np.isnan(r[p]) else f"{r[p]:.3g}")]

        header = ["Regime", "Learner", f"Online ({unit})", f"New in-dist. ({unit})", f"New out-of-dist. ({unit})",
                  f"Returning ({unit})", "Return − first visit", "Changes detected (%) / false per 100 steps",
                  "ms per step, median / p95", "Δ vs best", "p (Holm)", "Δ continual − frozen", "p (Holm)"]
        rows = []
        for r in summary.to_dict("records"):
            regime = r["regime"] + (" (oracle)" if r["mode"] == "oracle" else "")
            detection = "—" if np.isnan(r["detected_pct"]) else f"{r['detected_pct']:.1f} / {r['false_per_100']:.2f}"
            gain = "—" if np.isnan(r["return_gain"]) else f"{r['return_gain']:+.3g} ± {r['return_gain_ci95']:.2g}"
            rows.append([Cell(regime), Cell(r["name"]), cell(r, "online", bold=r["learner"] == r["best"]),
                         cell(r, "online_in"), cell(r, "online_out"), cell(r, "online_return"), Cell(gain),
                         Cell(detection), Cell(f"{r['ms_median']:.1f} / {r['ms_p95']:.1f}"),
                         *delta(r, "vs_best", "p_best_holm"), *delta(r, "vs_frozen", "p_frozen_holm")])
        return Table(header, rows, "ll" + "r" * (len(header) - 2), caption, label="tab:metabench-stream")

    def caption(self, config: Any, common: str = "") -> str:
        """What the table shows, for ``summary.md`` and the report."""
        s = self.settings
        mixing = self.mixing(config)
        ood = self.ood(config)
        regression = DATASETS[config.dataset].kind == "regression"
        score = ("online MSE of the incoming points before their targets arrive (lower is better: a negative Δ and "
                 "return − first visit are gains)" if regression
                 else "online accuracy: the percent of each incoming batch classified before its labels arrive")
        batch = f"{self.shots(config)} points" if regression else f"{self.shots(config)} example(s) per class"
        return (
            f"{config.test_episodes} streams of {s.steps} steps; at every step a batch of {batch} of the current task arrives, and the task changes with probability 1 − p = {1 - s.stay:.2g} "
            f"(to a new in-distribution task, a new out-of-distribution task"
            f"{f' from {ood[0]}' if ood else ''} or a returning one with probabilities {mixing[0]:g}, {mixing[1]:g}, "
            f"{mixing[2]:g}). Score: {score}; mean over streams"
            f"{' ' + common if common else ', ± the 95% confidence interval 1.96·s/√n over streams.'} Columns by what "
            f"the step's task is; return − first visit: score on returns minus the first visit of the same tasks, paired "
            f"within streams. Learners keep the last {s.memory} labelled batches of the current task and declare a "
            f"change when a prediction's loss exceeds the segment's mean loss by {s.threshold:g}; frozen: meta-parameters "
            f"as trained; continual: a copy is meta-updated on every step without a declared change (Continual-MAML, "
            f"Caccia et al. 2020). ms: the learner's compute per step (prediction, learning, meta-update). Δ vs best: "
            f"paired over streams against the best learner in the same regime, p: paired t-test, Holm over the other "
            f"learners; Δ continual − frozen: paired over streams, Holm over the learners."
        )

    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        return (f"# Online task streams: {self.setting(config)}\n\n"
                f"{to_markdown(self.table(summary, self.caption(config, common)))}")

    def setting(self, config: Any) -> str:
        """``omniglot (vinyals split), 5-way, p = 0.9`` (``K = 10`` for sine waves)."""
        shape = f"K = {config.shots}" if DATASETS[config.dataset].kind == "regression" else f"{config.ways}-way"
        return f"{where_title(config)}, {shape}, p = {self.settings.stay:g}"

    def rolling_figure(self, episodes: pd.DataFrame, stream: int = 0, window: int = 20):
        """Online score along one stream (rolling mean over ``window`` steps), one panel per regime
        (detected mode), one line per learner; task changes marked (dotted), out-of-distribution
        visits shaded orange, returning visits green. Call inside :func:`metabench.style.styled`."""
        from metabench import style

        rows = episodes[(episodes["episode"] == stream) & (episodes["mode"] == "detected")]
        seed = rows["seed"].min()
        rows = rows[rows["seed"] == seed]
        regimes = list(dict.fromkeys(rows["regime"]))
        learners = list(dict.fromkeys(rows["learner"]))
        colours = style.palette(learners)
        fig, axes = style.new_figure(len(regimes), 1, sharex=True, sharey=True)
        for ax, regime in zip(axes, regimes):
            part = rows[rows["regime"] == regime].sort_values("start")
            segments = part[part["learner"] == learners[0]]
            for seg in segments.to_dict("records"):
                if seg["start"] > 0:
                    ax.axvline(seg["start"], color="0.6", lw=0.5, ls=":")
                if seg["kind"] != "in":
                    ax.axvspan(seg["start"], seg["start"] + seg["steps"], color="tab:orange" if seg["kind"] == "out" else "tab:green",
                               alpha=0.12, lw=0)
            for name in learners:
                mine = part[part["learner"] == name].sort_values("start")
                values = np.concatenate([unpack(v) for v in mine["scores"]])
                rolling = pd.Series(values).rolling(window, min_periods=1).mean()
                ax.plot(np.arange(values.size), rolling, lw=1, color=colours[name], label=LEARNERS[name].title)
            ax.set_title(f"{regime} meta-parameters", fontsize="medium")
            ax.set_ylabel("online MSE" if lower_is_better(part) else "online accuracy (%)")
        axes[-1].set_xlabel(f"step of stream {stream} (rolling mean over {window} steps)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)))
        return fig

    def recovery_figure(self, summary: pd.DataFrame):
        """Mean score against steps since a task change, one panel per regime, one line per learner
        (oracle mode dashed). Call inside :func:`metabench.style.styled`."""
        from metabench import style

        regimes = list(dict.fromkeys(summary["regime"]))
        colours = style.palette(list(dict.fromkeys(summary["learner"])))
        fig, axes = style.new_figure(1, len(regimes), sharey=True)
        d = np.arange(RECOVERY)
        for ax, regime in zip(axes, regimes):
            for r in summary[summary["regime"] == regime].to_dict("records"):
                ax.plot(d, [r[f"rec_{k}"] for k in d], marker="o", ms=2.5, lw=1, color=colours[r["learner"]],
                        ls="--" if r["mode"] == "oracle" else "-",
                        label=r["name"] + (" (oracle)" if r["mode"] == "oracle" else ""))
            ax.set_title(f"{regime} meta-parameters", fontsize="medium")
            ax.set_xlabel("steps since the task changed")
        axes[0].set_ylabel("online MSE" if lower_is_better(summary) else "online accuracy (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)))
        return fig

    def returns_figure(self, summary: pd.DataFrame):
        """First visit against returns of the tasks that come back: bars per learner (95%
        intervals over streams), one panel per regime (detected mode). Call inside
        :func:`metabench.style.styled`."""
        from metabench import style

        detected = summary[summary["mode"] == "detected"]
        regimes = list(dict.fromkeys(detected["regime"]))
        fig, axes = style.new_figure(1, len(regimes), sharey=True)
        for ax, regime in zip(axes, regimes):
            part = detected[detected["regime"] == regime]
            x = np.arange(len(part))
            for offset, col, label, colour in ((-0.2, "first_visit", "first visit", "0.65"),
                                               (0.2, "later_visits", "returns", "tab:green")):
                ax.bar(x + offset, part[col], 0.4, yerr=part[f"{col}_ci95"], capsize=2, color=colour, label=label)
            ax.set_xticks(x, ["\n".join(n.rsplit(" ", 1)) for n in part["name"]], fontsize="small")
            ax.set_title(f"{regime} meta-parameters", fontsize="medium")
        axes[0].set_ylabel("online MSE" if lower_is_better(summary) else "online accuracy (%)")
        axes[0].legend(fontsize="small")
        return fig

    def report(self, runs: list[Any], out: Any) -> list[str]:
        """The report's section for stream runs: table (Markdown, LaTeX, CSV) and the rolling,
        recovery and first-visit-against-return figures (PNG, PDF)."""
        md = ["## Online task streams", ""]
        for run in runs:
            config = SimpleNamespace(**run.config)
            own = type(self)(type(self).make_settings(run.config.get("protocol_settings", {})))  # the run's settings
            stem = f"stream-{run.label}"
            md += [f"### {run.label}: {own.setting(config)}", ""]
            md += out.table(stem, own.table(run.summary, own.caption(config)), run.summary)
            md += out.figure(f"{stem}-rolling", lambda e=run.episodes, own=own: own.rolling_figure(e),
                             f"Online score along stream 0 of {run.label} (rolling mean over 20 steps), per regime; "
                             f"dotted: task changes; orange: out-of-distribution visits; green: returning tasks.")
            md += out.figure(f"{stem}-recovery", lambda s=run.summary, own=own: own.recovery_figure(s),
                             f"Recovery after a task change ({run.label}): mean online score d steps after the change, "
                             f"over every change of {config.test_episodes} streams.")
            md += out.figure(f"{stem}-returns", lambda s=run.summary, own=own: own.returns_figure(s),
                             f"Tasks that come back ({run.label}): mean online score on their first visit and on their "
                             f"returns, ± 95% intervals over streams.")
        return md

    def note(self, rows: pd.DataFrame) -> str:
        unit = "" if lower_is_better(rows) else "%"
        parts = []
        for (regime, mode), part in rows.groupby(["regime", "mode"], sort=False):
            online = (part["score"] * part["steps"]).sum() / part["steps"].sum()
            parts.append(f"{regime}{' oracle' if mode == 'oracle' else ''} {online:.3g}{unit}")
        ms = np.concatenate([unpack(m) for m in rows["ms"]])
        return ", ".join(parts) + f" online; {np.median(ms):.1f} ms per step"
