"""The protocol every learner follows, so that the runner knows learners only through it.

A learner is built for one N-way setting, meta-trains on batches of episodes
(:meth:`MetaLearner.meta_train_step`), and at test time adapts to an episode's support set and
returns logits for its query set (:meth:`MetaLearner.predict`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError


@dataclass(frozen=True)
class EpisodeShape:
    """The shape of meta-training episodes a learner asks for.

    Attributes:
        ways, shots, queries: N, K and Q of each training episode (``queries`` may be 0 for
            learners such as Reptile that train on the task's examples without a query split).
        meta_batch: episodes per meta-training step.
    """

    ways: int
    shots: int
    queries: int
    meta_batch: int


@dataclass(frozen=True)
class StepResult:
    """What one meta-training step reports.

    Attributes:
        loss: mean training loss of the step's episodes (nats; the query loss after adaptation
            for MAML, the task loss for Reptile).
        accuracy: mean training accuracy of the step's episodes, as a fraction in [0, 1].
    """

    loss: float
    accuracy: float


class MetaLearner(ABC):
    """A few-shot meta-learner (the common protocol).

    Subclasses set ``name`` (command-line name), ``title`` (name in tables) and ``Config`` (a frozen dataclass of hyperparameters whose defaults
    follow the learner's paper) and implement the abstract methods.

    Args:
        config: the learner's hyperparameters (an instance of ``Config``).
        ways: N of the test episodes (sets the head size of classifier-based learners).
        image_shape: ``(channels, height, width)`` of the images.
        total_iterations: meta-training steps the run will take (for schedules).
        device: where parameters and computation live.
        seed: seeds the learner's own random draws (not the episodes, which the runner draws).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]

    def __init__(
        self,
        config: Any,
        ways: int,
        image_shape: tuple[int, int, int],
        total_iterations: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.config = config
        self.ways = ways
        self.image_shape = image_shape
        self.total_iterations = max(1, total_iterations)
        self.device = device
        self.seed = seed
        self.iteration = 0

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The meta-learned network."""

    @abstractmethod
    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        """Training episode shape for a run whose test episodes are N-way K-shot with Q queries."""

    @abstractmethod
    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        """One outer-loop update from a meta-batch of episodes already on ``self.device``.

        Returns:
            The step's mean training loss (nats) and accuracy (fraction), a :class:`StepResult`.
        """

    @abstractmethod
    def predict(self, episode: Episode) -> torch.Tensor:
        """Adapt to ``episode``'s support set and return query logits ``[ways * queries, ways]``.

        The meta-learned parameters are left unchanged.
        """

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The meta-learned parameters (to save or to compare)."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load parameters saved by :meth:`state_dict`."""
        self.model.load_state_dict(state)

    def parameter_count(self) -> int:
        """Number of meta-learned scalars."""
        return sum(p.numel() for p in self.model.parameters())


def check_ranges(config: Any, learner: str) -> None:
    """Check ``config`` against its class's ``MINIMUMS`` (field -> smallest allowed value; a
    float minimum of 0.0 means strictly positive). ``None`` values are allowed where typed so.

    Raises:
        ConfigError: naming the hyperparameter and the fix.
    """
    for name, low in getattr(type(config), "MINIMUMS", {}).items():
        value = getattr(config, name)
        if value is None:
            continue
        bad = value <= low if isinstance(low, float) and low == 0.0 else value < low
        if bad:
            bound = "> 0" if isinstance(low, float) and low == 0.0 else f">= {low}"
            raise ConfigError(f"hyperparameter {learner}.{name} must be {bound} (got {value}): fix --set {learner}.{name}")


def apply_overrides(config: Any, overrides: Mapping[str, Any], learner: str) -> Any:
    """Return ``config`` (a frozen dataclass) with ``overrides`` applied, values coerced to type,
    and its ranges checked (:func:`check_ranges`).

    Raises:
        ConfigError: for an unknown hyperparameter name, a value of the wrong type or out of range.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"hyperparameters of {learner} must be a table of name = value, got {overrides!r}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(
                f"unknown hyperparameter {learner}.{key}: choose one of {', '.join(sorted(fields))}"
            )
        current = getattr(config, key)
        try:
            changes[key] = _coerce(value, current, fields[key].type)
        except (TypeError, ValueError):
            raise ConfigError(
                f"bad value {value!r} for {learner}.{key}: expected {fields[key].type}"
            ) from None
    config = dataclasses.replace(config, **changes)
    check_ranges(config, learner)
    return config


def _coerce(value: Any, current: Any, annotation: Any) -> Any:
    """Coerce a CLI string or TOML value to the type of a dataclass field."""
    text = str(annotation)
    if isinstance(value, str) and value.lower() in ("none", "null") and "None" in text:
        return None
    if "bool" in text:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(value)
    if isinstance(value, bool):
        raise TypeError(value)
    if "int" in text and "float" not in text:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if "float" in text:
        return float(value)
    return value
