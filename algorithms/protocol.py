"""The protocol every learner follows, so that the runner knows learners only through it.

A learner is built for one N-way setting, meta-trains on batches of episodes
(:meth:`MetaLearner.meta_train_step`), and at test time adapts to an episode's support set and
returns logits for its query set (:meth:`MetaLearner.predict`).

Two kinds of problem: ``classification`` (N-way K-shot image episodes, inputs ``[C, H, W]``) and
``regression`` (K-shot regression tasks such as sinusoids, inputs ``[features]``); a learner says
which it supports in ``KINDS``. For regression, :meth:`MetaLearner.predict_steps` gives the query
predictions after each of several numbers of test-time gradient steps (Finn et al. 2017, Fig. 3).
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

from .backbones import Conv4


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
        loss: mean training loss of the step's episodes (nats for classification, squared units
            of y for regression; the query loss after adaptation for MAML, the task loss for
            Reptile).
        accuracy: mean training accuracy of the step's episodes, as a fraction in [0, 1]; NaN
            for regression.
    """

    loss: float
    accuracy: float


class MetaLearner(ABC):
    """A few-shot meta-learner (the common protocol).

    Subclasses set ``name`` (command-line name), ``title`` (name in tables), ``Config`` (a
    frozen dataclass of hyperparameters whose defaults follow the learner's paper), ``KINDS``
    (the problem kinds it supports, with ``WHY_NOT`` saying why for the others), optionally
    ``REGRESSION_DEFAULTS`` (hyperparameters that differ for regression, with their source), its
    training budgets (``ITERATIONS`` and ``REGRESSION_ITERATIONS``: meta-iterations per budget
    preset, ``paper`` being the paper's count; ``BUDGET_SETTINGS``: hyperparameters a preset sets on
    image datasets, under the user's ``--set``, where a short training is served better than by
    the paper's values, measured on validation episodes; ``VALIDATE_EVERY``: iterations between
    validations when training to convergence), hyperparameters added after weights were first
    kept (``LEGACY_SETTINGS``: the value that reproduces weights whose recorded
    ``hyperparameters`` lack the field, i.e. how they were trained and tested), whether its test episodes are worth spreading over worker
    processes on CPU (``TEST_IN_WORKERS``: only where one episode's adaptation takes long enough
    to repay the processes' start-up), whether its meta-training step has an inner loop of
    gradient steps (``INNER_LOOP``: then ``metabench time --inner-steps`` applies), which of its
    hyperparameters act at meta-test time only (``TEST_SETTINGS``: those ``metabench evaluate
    --set`` may change on kept weights), and implement the abstract methods. A new learner is its file
    plus one line in :data:`metabench.algorithms.LEARNERS`.

    Learners that keep state besides the network and ``self.optimizer`` /
    ``self.scheduler`` (a random generator, say) extend :meth:`training_state` and
    :meth:`load_training_state`, so that a resumed training continues bit for bit.

    Args:
        config: the learner's hyperparameters (an instance of ``Config``).
        ways: N of the test episodes (sets the head size of classifier-based learners); for
            regression, the number of outputs (1 for sinusoids).
        image_shape: ``(channels, height, width)`` of the images, or ``(features,)`` for
            regression: the rank decides :attr:`kind`.
        total_iterations: meta-training steps the run will take (for schedules).
        device: where parameters and computation live.
        seed: seeds the learner's own random draws (not the episodes, which the runner draws).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]
    KINDS: ClassVar[tuple[str, ...]] = ("classification",)
    WHY_NOT: ClassVar[str] = ""
    REGRESSION_DEFAULTS: ClassVar[dict[str, Any]] = {}
    ITERATIONS: ClassVar[dict[str, int]] = {}
    REGRESSION_ITERATIONS: ClassVar[dict[str, int]] = {}
    BUDGET_SETTINGS: ClassVar[dict[str, dict[str, Any]]] = {}
    LEGACY_SETTINGS: ClassVar[dict[str, Any]] = {}
    VALIDATE_EVERY: ClassVar[int] = 1000
    TEST_IN_WORKERS: ClassVar[bool] = False
    INNER_LOOP: ClassVar[bool] = False
    TEST_SETTINGS: ClassVar[tuple[str, ...]] = ()

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
        self.kind = problem_kind(image_shape)
        if self.kind not in self.KINDS:
            raise ConfigError(f"{self.title} does not do {self.kind}: {self.WHY_NOT}")

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

    def predict_steps(self, episode: Episode, steps: Sequence[int]) -> dict[int, torch.Tensor]:
        """Query predictions after each number of test-time gradient steps in ``steps``, for
        learners that adapt by gradient descent (regression tasks report the MSE after 1, 5 and
        10 steps, as in Finn et al. 2017, Sec. 5.1 and Fig. 3).

        Returns:
            ``{s: outputs [Q, outputs]}`` for every ``s`` in ``steps``.

        Raises:
            NotImplementedError: for learners that do not adapt by gradient steps.
        """
        raise NotImplementedError(f"{self.title} does not adapt by gradient steps")

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The learner's embedding of images under its meta-learned parameters, without
        adaptation: the Conv4 features (the input of the linear head for MAML, first-order
        MAML and Reptile; the metric space of Prototypical and Matching Networks).

        Used by acquisition strategies that work in embedding space (k-center greedy, Sener &
        Savarese 2018). Batch norm normalises with the statistics of ``x`` (transductive, see
        :mod:`~metabench.algorithms.backbones`), so embed the whole pool in one call.

        Args:
            x: float32 ``[B, C, H, W]`` images on the learner's device.

        Returns:
            float32 ``[B, D]``.

        Raises:
            NotImplementedError: for a learner whose network is not a Conv4 (regression MLPs).
        """
        encoder = getattr(self.model, "encoder", self.model)
        if not isinstance(encoder, Conv4):
            raise NotImplementedError(f"{self.title} has no image embedding (its network is a {type(encoder).__name__})")
        return encoder.features(x).flatten(1)

    def stream_predict(self, episode: Episode) -> torch.Tensor:
        """Outputs for a stream's incoming batch before its labels are known (the stream
        protocol, :mod:`metabench.protocols.stream`), adapting on the current task's labelled
        memory at the cost of one step of an online stream.

        Args:
            episode: support set: the current task's labelled examples in memory (``[S, ...]``,
                at least one batch); query set: the incoming batch ``[B, ...]``, whose
                ``query_y`` are placeholders (the labels are not revealed yet).

        Returns:
            ``[B, ways]`` logits (``[B, outputs]`` for regression). The default is
            :meth:`predict`: the learner's own test-time rule with the memory as support set
            (the metric learners' prototypes or attention; the pretrained regression baseline's
            fine-tuning, cheap on its MLP). MAML and Reptile override it with the inner loop they
            were meta-trained with, from the meta-learned parameters (their test-time loops, up to
            50 steps, cost too much per stream step). The meta-parameters are never changed.
        """
        return self.predict(episode)

    def finish_training(self, val_episodes: Sequence[Episode]) -> dict[str, Any]:
        """Called once after meta-training with validation episodes (on the learner's device;
        possibly none); learners that choose a
        test-time setting on validation data (the pretrained baseline's fine-tuning step size)
        do it here.

        Returns:
            The settings chosen (empty for most learners), stored with the run's results.
        """
        return {}

    def restore_tuned(self, settings: Mapping[str, Any]) -> None:
        """Apply settings that :meth:`finish_training` chose (as it returned them) to a learner
        rebuilt from kept weights, so that it predicts as the trained one did; most learners
        have none."""

    def tuned_settings(self) -> dict[str, Any]:
        """The test-time settings :meth:`finish_training` chose or :meth:`restore_tuned` applied,
        in the form :meth:`restore_tuned` takes (empty for most learners)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What meta-training learned and prediction uses (to keep, to compare, to restore the
        best validation's): the network's parameters and buffers under their module names, plus
        any other meta-learned state a learner adds under its own prefix."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` returned.

        Raises:
            RuntimeError: if the tensors do not fit the network (another N for a fixed head, say).
        """
        self.model.load_state_dict(state)

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resumed meta-training needs to continue exactly where this one is.

        Returns:
            ``(tensors, meta)``: the network's ``model.*`` tensors, the optimizer's
            ``optimizer.*`` tensors (Adam's moments and step counts) and ``iteration``, the
            optimizer's hyperparameter groups and the scheduler's state in ``meta`` (plain JSON
            values). Saved by :mod:`metabench.checkpoint` without pickling.
        """
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {"iteration": self.iteration}
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            tensors.update(optimizer_tensors(optimizer, "optimizer"))
            meta["optimizer_groups"] = optimizer.state_dict()["param_groups"]
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            meta["scheduler"] = scheduler.state_dict()
        return tensors, meta

    def load_training_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`training_state` returned (tensors already on any device).

        Raises:
            KeyError, RuntimeError: if the state is of another learner or network.
        """
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self.iteration = int(meta["iteration"])
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            load_optimizer_tensors(optimizer, tensors, "optimizer", meta["optimizer_groups"])
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.load_state_dict(dict(meta["scheduler"]))

    def parameter_count(self) -> int:
        """Number of meta-learned scalars."""
        return sum(p.numel() for p in self.model.parameters())


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat tensors ``{prefix}.{index}.{slot}`` (Adam's
    ``exp_avg``, ``exp_avg_sq`` and ``step``, say), the form :mod:`metabench.checkpoint` saves.

    Raises:
        TypeError: if a slot is not a tensor (an optimizer this suite does not use).
    """
    tensors = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {slot} is not a tensor")
            tensors[f"{prefix}.{index}.{slot}"] = value
    return tensors


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], prefix: str,
                           groups: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Load the state :func:`optimizer_tensors` flattened (other keys of ``tensors`` are ignored),
    with hyperparameter ``groups`` as saved (JSON: Adam's ``betas`` come back as a list) or, if
    ``None``, the optimizer's own. The tensors are copied, so later steps do not change them.

    Raises:
        KeyError, ValueError: if the state is of another network.
    """
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, slot = key[len(prefix) + 1:].split(".", 1)
            slots.setdefault(int(index), {})[slot] = value.clone()
    if groups is None:
        groups = optimizer.state_dict()["param_groups"]
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g) for g in groups]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def problem_kind(image_shape: tuple[int, ...]) -> str:
    """``"regression"`` for vector inputs ``(features,)``, ``"classification"`` for images
    ``(channels, height, width)``: the one place the input rank decides the problem kind."""
    return "regression" if len(image_shape) == 1 else "classification"


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
    and its ranges checked (:func:`check_ranges`). A key the config class lists in its
    ``RENAMED`` table (former name -> name) is read under its new name, so that configurations
    and weights written before a rename still load.

    Raises:
        ConfigError: for an unknown hyperparameter name, a value of the wrong type or out of range.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"hyperparameters of {learner} must be a table of name = value ([hparams.{learner}] in a TOML file), got {overrides!r}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    renamed = getattr(config, "RENAMED", {})
    changes = {}
    for key, value in overrides.items():
        key = renamed.get(key, key)
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
