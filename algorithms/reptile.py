"""Reptile.

Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.
Batched Reptile (Alg. 2): for each of ``meta_batch`` tasks, start from theta and take
``inner_steps`` steps of Adam (beta1 = 0) on minibatches of the task's examples, giving phi_i; then

    theta <- theta + epsilon * mean_i (phi_i - theta)

with the outer step size epsilon annealed linearly to 0 over training (App. A). At test time the
network is fine-tuned on the support set in the same way and the query set is classified
transductively (batch statistics of the query batch).

The inner Adam state starts fresh for every task here; the authors' code keeps one Adam state
across tasks. Training tasks contain ``train_shots`` examples per class and no query split.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from metabench.datasets.sampler import Episode

from .backbones import Conv4, accuracy, cross_entropy
from .protocol import EpisodeShape, MetaLearner, StepResult


@dataclass(frozen=True)
class ReptileConfig:
    """Reptile hyperparameters; defaults are Nichol et al. (2018, App. A, Table 3) for Omniglot.

    Attributes:
        inner_lr: inner-loop Adam learning rate (1e-3; Adam with beta1 = 0).
        train_inner_steps: inner iterations per training task (5).
        inner_batch: examples per inner minibatch during training (10).
        train_shots: examples per class in a training task (10).
        meta_batch: tasks per outer update (5).
        meta_step: initial outer step size epsilon (1.0), annealed linearly to ``meta_step_final``.
        meta_step_final: outer step size at the end of training (0).
        test_inner_steps: inner iterations on the support set at test time (50).
        test_inner_batch: minibatch size at test time (5).
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"inner_lr": 0.0, "train_inner_steps": 1, "inner_batch": 1, "train_shots": 1, "meta_batch": 1, "meta_step": 0.0, "meta_step_final": 0, "test_inner_steps": 0, "test_inner_batch": 1}

    inner_lr: float = 1e-3
    train_inner_steps: int = 5
    inner_batch: int = 10
    train_shots: int = 10
    meta_batch: int = 5
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    test_inner_steps: int = 50
    test_inner_batch: int = 5


def minibatches(n: int, batch: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index minibatches for ``steps`` inner iterations over ``n`` examples.

    Cycles through fresh random permutations of ``range(n)`` (sampling without replacement
    within a pass, as in the authors' ``_mini_batches``). Returns ``steps`` int arrays of length
    ``min(batch, n)``.
    """
    batch = min(batch, n)
    out, pool = [], np.empty(0, dtype=np.int64)
    for _ in range(steps):
        if pool.size < batch:
            pool = np.concatenate([pool, rng.permutation(n)])
        out.append(pool[:batch])
        pool = pool[batch:]
    return out


class Reptile(MetaLearner):
    """Batched Reptile (Nichol et al. 2018, Alg. 2) on a Conv4 with a linear N-way head."""

    title = "Reptile"
    name = "reptile"
    Config = ReptileConfig

    def __init__(self, config: ReptileConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        channels, height, _ = image_shape
        self._model = Conv4(channels, height, n_outputs=ways).to(device)
        self._fast = copy.deepcopy(self._model)
        self._rng = np.random.default_rng(seed)

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        return EpisodeShape(ways, self.config.train_shots, 0, self.config.meta_batch)

    def _fine_tune(
        self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        """Copy theta into the fast network and run the inner Adam loop on ``(x, y)``.

        Args:
            x: task examples ``[M, C, H, W]``; y: labels ``[M]``.
            steps: inner iterations; batch: examples per minibatch; rng: draws the minibatches.

        Returns the mean loss (nats) and accuracy (fraction) over the inner minibatches.
        """
        with torch.no_grad():
            for p_fast, p in zip(self._fast.parameters(), self._model.parameters()):
                p_fast.copy_(p)
        opt = torch.optim.Adam(self._fast.parameters(), lr=self.config.inner_lr, betas=(0.0, 0.999))
        losses, accs = [], []
        for idx in minibatches(x.shape[0], batch, steps, rng):
            idx_t = torch.from_numpy(idx).to(x.device)
            logits = self._fast(x[idx_t])
            loss = cross_entropy(logits, y[idx_t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), y[idx_t]))
        return float(np.mean(losses)), float(np.mean(accs))

    def meta_step_size(self) -> float:
        """epsilon at the current iteration: linear from ``meta_step`` to ``meta_step_final``."""
        frac = min(1.0, self.iteration / self.total_iterations)
        return (1 - frac) * self.config.meta_step + frac * self.config.meta_step_final

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        cfg = self.config
        self._fast.train()
        delta = [torch.zeros_like(p) for p in self._model.parameters()]
        losses, accs = [], []
        for ep in episodes:
            loss, acc = self._fine_tune(ep.support_x, ep.support_y, cfg.train_inner_steps, cfg.inner_batch, self._rng)
            losses.append(loss)
            accs.append(acc)
            with torch.no_grad():
                for d, p_fast, p in zip(delta, self._fast.parameters(), self._model.parameters()):
                    d.add_(p_fast - p)
        eps = self.meta_step_size() / len(episodes)
        with torch.no_grad():
            for p, d in zip(self._model.parameters(), delta):
                p.add_(d, alpha=eps)
        self.iteration += 1
        return StepResult(float(np.mean(losses)), float(np.mean(accs)))

    def predict(self, episode: Episode) -> torch.Tensor:
        # The minibatch order depends only on the seed and the episode, not on how often predict
        # ran before, so validation does not perturb training and repeated calls agree.
        digest = hashlib.sha256(episode.index.key()).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
        with torch.enable_grad():
            self._fine_tune(
                episode.support_x, episode.support_y, self.config.test_inner_steps,
                self.config.test_inner_batch, rng,
            )
        with torch.no_grad():
            return self._fast(episode.query_x)
