"""The meta-learners and their backbones, all on one protocol (:class:`MetaLearner`).

``LEARNERS`` maps each learner's name to its class; :func:`build_learner` builds one with
hyperparameter overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from metabench.errors import ConfigError

from .backbones import BatchStatNorm2d, Conv4
from .maml import MAML, FirstOrderMAML
from .matchingnet import MatchingNet
from .protocol import EpisodeShape, MetaLearner, StepResult, apply_overrides
from .protonet import ProtoNet
from .reptile import Reptile

LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls for cls in (MAML, FirstOrderMAML, Reptile, ProtoNet, MatchingNet)
}


def learner_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The hyperparameters of learner ``name``: paper defaults with ``overrides`` applied.

    Raises:
        ConfigError: for an unknown learner or hyperparameter.
    """
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
    return apply_overrides(LEARNERS[name].Config(), overrides or {}, name)


def build_learner(
    name: str,
    ways: int,
    image_shape: tuple[int, int, int],
    total_iterations: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> MetaLearner:
    """Build learner ``name`` for ``ways``-way episodes of ``image_shape`` images.

    The network's initial weights are drawn from torch's global generator, seeded here with
    ``seed`` so that a learner's initialisation depends only on the seed.

    Raises:
        ConfigError: for an unknown learner or hyperparameter.
    """
    config = learner_config(name, overrides)
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
    "ProtoNet",
    "Reptile",
    "StepResult",
    "build_learner",
    "learner_config",
]
