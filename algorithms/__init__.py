"""The meta-learners and their backbones, all on one protocol (:class:`MetaLearner`).

``LEARNERS`` maps each learner's name to its class; :func:`build_learner` builds one with
hyperparameter overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from metabench.errors import ConfigError

from .backbones import BatchStatNorm2d, Conv4
from .maml import MAML, FirstOrderMAML
from .matchingnet import MatchingNet
from .pretrained import Pretrained
from .protocol import EpisodeShape, MetaLearner, StepResult, apply_overrides, problem_kind
from .protonet import ProtoNet
from .reptile import Reptile

LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls for cls in (MAML, FirstOrderMAML, Reptile, ProtoNet, MatchingNet, Pretrained)
}
#: The meta-learners the suite benchmarks, in table order: what ``metabench run`` trains by default
#: and ``metabench time`` and ``metabench gate`` time (``pretrained`` is a baseline, not one of them).
META_LEARNERS: tuple[str, ...] = ("maml", "fomaml", "reptile", "protonet", "matchingnet")


def learner_config(name: str, overrides: Mapping[str, Any] | None = None, kind: str = "classification") -> Any:
    """The hyperparameters of learner ``name``: paper defaults for the problem ``kind``
    (``REGRESSION_DEFAULTS`` applied for ``"regression"``) with ``overrides`` applied.

    Raises:
        ConfigError: for an unknown learner or hyperparameter.
    """
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
    config = LEARNERS[name].Config()
    if kind == "regression":
        config = dataclasses.replace(config, **LEARNERS[name].REGRESSION_DEFAULTS)
    return apply_overrides(config, overrides or {}, name)


def build_learner(
    name: str,
    ways: int,
    image_shape: tuple[int, ...],
    total_iterations: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> MetaLearner:
    """Build learner ``name`` for ``ways``-way episodes of ``image_shape`` images, or for
    regression tasks with ``image_shape = (features,)`` and ``ways`` outputs (the regression
    defaults of its hyperparameters apply then).

    The network's initial weights are drawn from torch's global generator, seeded here with
    ``seed`` so that a learner's initialisation depends only on the seed.

    Raises:
        ConfigError: for an unknown learner or hyperparameter, or a problem kind the learner
            does not support.
    """
    config = learner_config(name, overrides, problem_kind(image_shape))
    torch.manual_seed(seed)
    return LEARNERS[name](config, ways, image_shape, total_iterations, torch.device(device), seed)


__all__ = [
    "LEARNERS",
    "MAML",
    "BatchStatNorm2d",
    "Conv4",
    "EpisodeShape",
    "FirstOrderMAML",
    "MatchingNet",
    "MetaLearner",
    "Pretrained",
    "ProtoNet",
    "Reptile",
    "StepResult",
    "build_learner",
    "learner_config",
]
