"""Model-Agnostic Meta-Learning (MAML) and its first-order approximation.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML. Algorithm 2 (few-shot classification): for each task of a meta-batch, adapt the
parameters on the support set with ``inner_steps`` gradient steps

    theta'_i = theta - alpha * grad_theta L_support(f_theta)           (Eq. 1)

and meta-update on the query losses of the adapted parameters

    theta <- theta - beta * grad_theta sum_i L_query(f_theta'_i)        (Eq. 2, Adam here)

Second-order MAML differentiates through the inner loop (the Hessian-vector products of Eq. 2);
first-order MAML (Sec. 5.2, "first-order approximation") drops the second derivatives by treating
the inner-loop gradients as constants. Both run through the same code with one flag.

The network is written as a pure function of a parameter dict with
``torch.func.functional_call``, so that the inner loop, the order of differentiation and (later)
batching over tasks are explicit. Batch norm is transductive (batch statistics at meta-train and
meta-test time), as in the paper's experiments; see :mod:`metabench.algorithms.backbones`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from metabench.datasets.sampler import Episode

from .backbones import Conv4, accuracy, cross_entropy
from .protocol import EpisodeShape, MetaLearner, StepResult

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MAMLConfig:
    """MAML hyperparameters; defaults are Finn et al. (2017, Sec. 5.2) for Omniglot 5-way.

    Attributes:
        inner_lr: alpha, the inner-loop (adaptation) learning rate (0.4 for Omniglot).
        train_inner_steps: inner gradient steps during meta-training (1).
        test_inner_steps: inner gradient steps at meta-test time (3).
        meta_batch: tasks per outer-loop update (32 for Omniglot 5-way).
        meta_lr: beta, the Adam meta learning rate (1e-3, Kingma & Ba 2015).
        first_order: drop second derivatives (first-order MAML, Sec. 5.2).
        train_queries: query examples per class in training episodes; ``None`` uses K, as the
            released code does (``num_samples_per_class = 2 * update_batch_size``).
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"inner_lr": 0.0, "train_inner_steps": 1, "test_inner_steps": 0, "meta_batch": 1, "meta_lr": 0.0, "train_queries": 1}

    inner_lr: float = 0.4
    train_inner_steps: int = 1
    test_inner_steps: int = 3
    meta_batch: int = 32
    meta_lr: float = 1e-3
    first_order: bool = False
    train_queries: int | None = None


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    inner_lr: float,
    create_graph: bool,
) -> Params:
    """The MAML inner loop: ``steps`` plain gradient steps on the support loss (Eq. 1).

    Args:
        model: the network whose ``forward`` is evaluated with ``params`` via ``functional_call``.
        params: name -> tensor, the starting parameters (theta), each requiring grad.
        x: support images ``[N*K, C, H, W]``; y: support labels ``[N*K]``.
        steps: number of inner gradient steps (>= 0).
        inner_lr: alpha.
        create_graph: keep the graph of the inner gradients so that the returned parameters are
            twice differentiable in ``params`` (second-order MAML); ``False`` gives the first-order
            approximation, where ``d theta' / d theta`` is the identity.

    Returns:
        The adapted parameters theta' (a new dict; ``params`` is not modified).
    """
    names = list(params)
    for _ in range(steps):
        loss = cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        params = {n: params[n] - inner_lr * g for n, g in zip(names, grads)}
    return params


def meta_loss(
    model: nn.Module,
    params: Params,
    episode: Episode,
    steps: int,
    inner_lr: float,
    first_order: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query loss of one task after adaptation, differentiable in ``params``.

    Returns:
        ``(loss, logits)``: the scalar query cross-entropy (nats) and the query logits
        ``[N*Q, N]``.
    """
    fast = adapt(model, params, episode.support_x, episode.support_y, steps, inner_lr, not first_order)
    logits = functional_call(model, fast, (episode.query_x,))
    return cross_entropy(logits, episode.query_y), logits


class MAML(MetaLearner):
    """Second-order MAML (Finn et al. 2017, Alg. 2) on a Conv4 with a linear N-way head.

    Each meta-training step loops over the tasks of the meta-batch, back-propagates each task's
    query loss divided by the meta-batch size right away (so only one task's graph is alive at a
    time), then takes one Adam step. ``predict`` adapts a detached copy of the parameters with
    ``test_inner_steps`` first-order steps (no graph is needed at test time).
    """

    title = "MAML"
    name = "maml"
    Config = MAMLConfig

    def __init__(self, config: MAMLConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        channels, height, _ = image_shape
        # Second order: the tensor-op batch norm (double backward of the fused kernel is a slow
        # composite: 983 vs 736 ms per meta-batch of 32 on 2 CPU cores); first order: the fused one.
        norm_impl = "native" if config.first_order else "tensor_ops"
        self._model = Conv4(channels, height, n_outputs=ways, norm_impl=norm_impl).to(device)
        self.optimizer = torch.optim.Adam(self._model.parameters(), lr=config.meta_lr)

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        q = self.config.train_queries if self.config.train_queries is not None else shots
        return EpisodeShape(ways, shots, q, self.config.meta_batch)

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        cfg = self.config
        self._model.train()
        self.optimizer.zero_grad(set_to_none=True)
        params = dict(self._model.named_parameters())
        losses, accs = [], []
        for ep in episodes:
            loss, logits = meta_loss(
                self._model, params, ep, cfg.train_inner_steps, cfg.inner_lr, cfg.first_order
            )
            (loss / len(episodes)).backward()
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), ep.query_y))
        self.optimizer.step()
        self.iteration += 1
        return StepResult(sum(losses) / len(losses), sum(accs) / len(accs))

    def predict(self, episode: Episode) -> torch.Tensor:
        params = {n: p.detach().requires_grad_(True) for n, p in self._model.named_parameters()}
        with torch.enable_grad():
            fast = adapt(
                self._model, params, episode.support_x, episode.support_y,
                self.config.test_inner_steps, self.config.inner_lr, create_graph=False,
            )
        with torch.no_grad():
            return functional_call(self._model, {n: p.detach() for n, p in fast.items()}, (episode.query_x,))


@dataclass(frozen=True)
class FOMAMLConfig(MAMLConfig):
    """First-order MAML hyperparameters: MAML's (Finn et al. 2017, Sec. 5.2) with
    ``first_order=True`` and an inner learning rate of 0.1 instead of 0.4.

    Why 0.1: the first-order meta-gradient drops the factor ``(I - alpha * H_support)`` of the
    exact one, which is far from the identity at alpha = 0.4. Measured on Omniglot vinyals
    5-way 1-shot (validation episodes, 2 CPU cores): with alpha = 0.4, 51.3% validation accuracy
    after 120 meta-iterations and 58.9% test accuracy after 250 (second-order MAML: 88.8%); with
    alpha = 0.1, 83.8% after 120. More training queries (15 per class) did not help (57.8%).
    ``--set fomaml.inner_lr=0.4`` restores MAML's value.
    """

    inner_lr: float = 0.1
    first_order: bool = True


class FirstOrderMAML(MAML):
    """First-order MAML (Finn et al. 2017, Sec. 5.2): MAML without second derivatives.

    Same code as :class:`MAML`; the inner-loop gradients are not differentiated, so the
    meta-gradient is the query-loss gradient at the adapted parameters.
    """

    title = "First-order MAML"
    name = "fomaml"
    Config = FOMAMLConfig
