"""Prototypical Networks.

Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.
Each class is represented by the mean of its embedded support examples (Eq. 1); a query is
classified by a softmax over negative squared Euclidean distances to the prototypes (Eq. 2); the
embedding is trained end to end on the query negative log-likelihood (Alg. 1).

Embedding: Conv4 (Sec. 3.1). Batch norm is transductive (support and query are embedded as one
batch with batch statistics, at training and at test time) so that all metabench learners share
the same backbone; Snell et al. used standard batch norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metabench.datasets.sampler import Episode

from .backbones import Conv4, accuracy, cross_entropy, in_layout, resolve_layout
from .protocol import EpisodeShape, MetaLearner, StepResult


@dataclass(frozen=True)
class ProtoNetConfig:
    """Prototypical Networks hyperparameters; defaults are Snell et al. (2017, Sec. 3.1) for Omniglot.

    Attributes:
        lr: Adam learning rate (1e-3).
        lr_halve_every: halve the learning rate every this many updates (2000; one episode each
            with ``meta_batch=1``).
        train_ways: classes per training episode (60: "higher way" training, Sec. 3.1).
        train_queries: query examples per class in training episodes (5).
        meta_batch: episodes per update (1).
        layout: memory layout of the images in meta-training: ``auto``
            (:func:`~metabench.algorithms.backbones.default_layout`: channels-last on CPU),
            ``contiguous`` or ``channels_last``; the same numbers up to float32 rounding.
            Prediction embeds contiguous images, the layout in which every committed run was
            scored, so that re-testing kept weights reproduces their per-episode results exactly.
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"lr": 0.0, "lr_halve_every": 1, "train_ways": 2, "train_queries": 1, "meta_batch": 1}

    lr: float = 1e-3
    lr_halve_every: int = 2000
    train_ways: int = 60
    train_queries: int = 5
    meta_batch: int = 1
    layout: str = "auto"


def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int) -> torch.Tensor:
    """Negative squared Euclidean distances from queries to class prototypes (Eqs. 1-2).

    Args:
        support: embeddings ``[N*K, D]``; support_y: labels ``[N*K]`` in ``0..ways-1``.
        query: embeddings ``[M, D]``.

    Returns:
        logits ``[M, ways]``, ``-||query - c_k||^2``.
    """
    protos = torch.zeros(ways, support.shape[1], device=support.device, dtype=support.dtype)
    protos.index_add_(0, support_y, support)
    counts = torch.bincount(support_y, minlength=ways).clamp_min(1).to(support.dtype)
    protos = protos / counts[:, None]
    return -torch.cdist(query, protos).pow(2)


class ProtoNet(MetaLearner):
    """Prototypical Networks (Snell et al. 2017, Alg. 1) with a Conv4 embedding."""

    title = "Prototypical Networks"
    name = "protonet"
    Config = ProtoNetConfig
    WHY_NOT = "it classifies queries by their distance to class prototypes, and regression tasks have no classes"
    #: ``paper``: Snell et al. (2017) trained to convergence on validation loss and give no count;
    #: 20,000 episodes is ten halvings of the learning rate (1e-3 / 2^10 at the end).
    ITERATIONS: ClassVar[dict[str, int]] = {"quick": 450, "paper": 20000}
    #: A couple of minutes of 60-way training between validations of 1000 episodes (measured
    #: costs: docs/runs.md).
    VALIDATE_EVERY: ClassVar[int] = 500

    def __init__(self, config: ProtoNetConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        channels, height, _ = image_shape
        self._model = Conv4(channels, height).to(device)
        self.layout = resolve_layout(self.name, config.layout, True, device)
        self.optimizer = torch.optim.Adam(self._model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_halve_every, gamma=0.5)

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        return EpisodeShape(max(ways, self.config.train_ways), shots, self.config.train_queries, self.config.meta_batch)

    def _logits(self, ep: Episode, layout: str = "contiguous") -> torch.Tensor:
        n_support = ep.support_x.shape[0]
        z = self._model(in_layout(torch.cat([ep.support_x, ep.query_x]), layout))
        return prototype_logits(z[:n_support], ep.support_y, z[n_support:], ep.ways)

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        self._model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for ep in episodes:
            logits = self._logits(ep, self.layout)
            loss = cross_entropy(logits, ep.query_y)
            (loss / len(episodes)).backward()
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), ep.query_y))
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        return StepResult(sum(losses) / len(losses), sum(accs) / len(accs))

    @torch.no_grad()
    def predict(self, episode: Episode) -> torch.Tensor:
        self._model.eval()
        return self._logits(episode)
