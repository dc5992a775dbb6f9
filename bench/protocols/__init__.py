"""Evaluation protocols: how trained learners are tested, one module per protocol.

A protocol is the seam between a trained learner and the numbers a run reports. It

1. builds the run's **test material** (:meth:`EvaluationProtocol.material`): episodes, pools or
   streams, deterministic in the dataset, split, sizes, seed and index, with a fingerprint that
   proves two runs used identical material;
2. **scores** a learner on it (:meth:`EvaluationProtocol.score`): one row per episode (or per
   episode x round x strategy) with the protocol's own columns, never changing the learner's
   meta-parameters;
3. **summarises** the rows per learner (:meth:`EvaluationProtocol.summarize`) and writes its part
   of ``summary.md`` (:meth:`EvaluationProtocol.markdown`).

Protocols (``--protocol``):

``episodic``     N-way K-shot test episodes, accuracy and loss per episode (:mod:`.episodic`;
                 the standard protocol of image datasets)
``regression``   K-shot sinusoid tasks, query MSE after 0, 1, 5, 10 steps (:mod:`.regression`;
                 the standard protocol of regression datasets)
``active``       active selection of support labels from an unlabelled pool (:mod:`.active`)
``interactive``  a simulated person correcting the model round by round (:mod:`.interactive`)
``stream``       online task streams with task changes and returning tasks (:mod:`.stream`, OSAKA)

Each protocol has a frozen ``Settings`` dataclass (pool sizes, budgets, ...) whose defaults are
stated and justified in its module; :func:`protocol_for` builds the protocol of a
:class:`~metabench.config.RunConfig`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from metabench.errors import ConfigError


@dataclass(frozen=True)
class Material:
    """A protocol's test material for one run, shared by every learner.

    Attributes:
        sampler: builds item ``i`` (an episode, a pool or a stream) with ``sampler.episode(i)``;
            deterministic in ``i``.
        count: number of items (``--test-episodes``).
        fingerprint: sha256 (64 hex digits) identifying the material (the same for every learner).
        pool: which classes it is drawn from, e.g. ``"omniglot/vinyals/test"``.
    """

    sampler: Any
    count: int
    fingerprint: str
    pool: str


@dataclass(frozen=True)
class NoSettings:
    """Settings of a protocol that has none (the episodic and regression protocols)."""


class EvaluationProtocol(ABC):
    """How a run tests its trained learners (see the module docstring).

    Class attributes:
        name: the ``--protocol`` value.
        title: a human-readable name.
        KINDS: dataset kinds it runs on (``"classification"``, ``"regression"``).
        UNIT: what one item of its material is called in tables (``"episode"``, ``"task"``).
        Settings: frozen dataclass of its settings (defaults justified in the module).
        DEFAULT_EPISODES: test items when ``--test-episodes`` is not given (``None``: the budget's).

    Args:
        settings: the protocol's settings (default: ``Settings()``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    KINDS: ClassVar[tuple[str, ...]]
    UNIT: ClassVar[str] = "episode"
    Settings: ClassVar[type] = NoSettings
    DEFAULT_EPISODES: ClassVar[int | None] = None

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @classmethod
    def make_settings(cls, values: Mapping[str, Any]) -> Any:
        """``Settings`` from a mapping of field names to values (missing: the defaults).

        Raises:
            ConfigError: for an unknown key or a value that :meth:`check_settings` rejects.
        """
        fields = {f.name for f in dataclasses.fields(cls.Settings)}
        unknown = sorted(set(values) - fields)
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"protocol {cls.name} has no setting(s) {', '.join(unknown)}: its settings are {valid}")
        settings = cls.Settings(**values)
        cls.check_settings(settings)
        return settings

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Raise ConfigError (one line naming the fix) for settings the protocol cannot run."""

    def check(self, config: Any, data: Any) -> None:
        """Raise ConfigError if this run's data cannot hold the material (checked before training).

        Args:
            config: the run's :class:`~metabench.config.RunConfig`.
            data: its :class:`~metabench.rundata.RunData`.
        """

    @classmethod
    def check_learner(cls, learner_cls: type) -> str | None:
        """Why learner class ``learner_cls`` cannot run this protocol, or ``None`` if it can."""
        return None

    @abstractmethod
    def material(self, config: Any, data: Any) -> Material:
        """The run's test material: deterministic, fingerprinted, identical for every learner."""

    @abstractmethod
    def score(self, learner: Any, material: Material, desc: str | None, workers: int) -> tuple[list[dict], float]:
        """Score ``learner`` on ``material`` without changing its meta-parameters.

        Returns:
            ``(rows, seconds)``: one dict per row (``episode`` first, then the protocol's
            columns) and the wall-clock seconds of the whole evaluation.
        """

    @abstractmethod
    def summarize(self, episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
        """One row per learner from the rows of every learner x seed (``seed, learner`` added to
        each row of :meth:`score`) and the timings (``seed, learner, meta_iterations,
        meta_train_seconds, test_seconds, test_episodes``)."""

    @abstractmethod
    def markdown(self, config: Any, summary: pd.DataFrame, common: str) -> str:
        """``summary.md``: a title, the summary table and a caption ending with ``common`` (the
        run's settings, written by the runner)."""

    @abstractmethod
    def note(self, rows: pd.DataFrame) -> str:
        """A few words on one learner x seed's result for the progress output, e.g. ``"97.60%"``."""


def standard(kind: str) -> str:
    """The protocol a dataset kind is tested with by default: ``episodic`` for classification,
    ``regression`` for regression."""
    return "regression" if kind == "regression" else "episodic"


def registry() -> dict[str, type[EvaluationProtocol]]:
    """The protocols by ``--protocol`` name (imported here, not at module import, to keep the
    package import light and free of cycles)."""
    from . import active, episodic, interactive, regression, stream

    return {cls.name: cls for cls in (episodic.Episodic, regression.Regression, active.Active, interactive.Interactive,
                                      stream.StreamProtocol)}


def protocol_class(name: str, kind: str) -> type[EvaluationProtocol]:
    """The protocol class called ``name`` for a dataset of ``kind``.

    Raises:
        ConfigError: for an unknown protocol, or one that does not run on ``kind``.
    """
    known = registry()
    if name not in known:
        raise ConfigError(f"unknown protocol {name!r}: use one of {', '.join(known)}")
    cls = known[name]
    if kind not in cls.KINDS:
        fits = ", ".join(n for n, c in known.items() if kind in c.KINDS)
        raise ConfigError(f"protocol {name} is not defined for {kind} datasets: use --protocol {fits}")
    return cls


def check_query_batch(protocol: str, configs: Mapping[str, Any]) -> None:
    """Refuse a learner's ``query_batch`` (:mod:`metabench.algorithms.transductive`) outside the
    episodic protocol, whose test episodes are the only class-major query sets.

    Args:
        protocol: the protocol's name.
        configs: learner name -> its hyperparameters (the learner's ``Config``, as built).

    Raises:
        ConfigError: naming the learner and the setting to drop.
    """
    if protocol == "episodic":
        return
    for learner, config in configs.items():
        if getattr(config, "query_batch", 0):
            raise ConfigError(f"{learner}.query_batch groups the query sets of episodic test episodes; the {protocol} "
                              f"protocol predicts other batches: drop --set {learner}.query_batch")


def protocol_for(config: Any) -> EvaluationProtocol:
    """The protocol of a :class:`~metabench.config.RunConfig`, with its settings."""
    from metabench.datasets import DATASETS

    kind = DATASETS[config.dataset].kind
    cls = protocol_class(config.protocol or standard(kind), kind)
    return cls(cls.make_settings(dict(config.protocol_settings)))

