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

The meta-gradient comes from the core, :mod:`metabench.algorithms.maml_core`: pure functions of
a parameter dict, with several paths (per task, batched over the tasks of the meta-batch, batched
with the inner loop recomputed chunk by chunk) that give the same numbers. Batch norm is
transductive (batch statistics at meta-train and meta-test time), as in the paper's experiments;
see :mod:`metabench.algorithms.backbones`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError

from .backbones import MLP, BatchStatNorm2d, Conv4, accuracy, check_network, resolve_layout
from .maml_core import (
    MLP_REGRESSION,
    STRATEGIES,
    CoreOptions,
    InnerLR,
    adapt,
    adapt_and_predict,
    choose_strategy,
    compiled_query_forward,
    conv4_backbone,
    cpu_chunk,
    meta_gradient,
)
from .protocol import EpisodeShape, MetaLearner, StepResult
from .transductive import forward_in_groups, query_groups


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
        strategy: how the core computes the meta-gradient: ``auto`` (per device and episode
            shape, see :func:`~metabench.algorithms.maml_core.choose_strategy`), ``per_task``,
            ``chunked``, ``batched``, ``recompute`` or ``vmap``. All give the same numbers.
            (Called ``path`` before; configurations and weights that say ``path`` still load.)
        chunk: tasks per chunk of the ``chunked`` and ``recompute`` strategies; 0 chooses it from the
            episode shape (:func:`~metabench.algorithms.maml_core.default_chunk`).
        layout: memory layout of the images in the core: ``auto`` (per device, see
            :func:`~metabench.algorithms.maml_core.choose_layout`), ``contiguous`` or
            ``channels_last``. The same numbers up to float32 rounding.
        compile_query: run the query pass under ``torch.compile`` (one compilation per episode
            shape, seconds to a minute on CPU; Inductor needs a C++ compiler there).
        network: the image network, one of :data:`~metabench.algorithms.backbones.NETWORKS`:
            ``conv4`` (2x2 max-pools, the network all five learners share by default) or
            ``conv4-stride-mean``, the paper's Omniglot network ("For Omniglot, we used strided
            convolutions instead of max-pooling", Sec. 5.2; the released code averages the last
            2x2 map). The Omniglot reproduction (``nox -s reproduce``) uses the latter.
        inner_norm: whether the inner loop adapts the batch-norm scales and shifts (``True``:
            every parameter adapts, as Eq. 1 reads) or leaves them to the outer loop, which
            still meta-learns them (``False``: as Finn et al.'s released code, where they are not
            among the ``weights`` the inner loop steps; :data:`~metabench.algorithms.maml_core.InnerLR`).
            Image networks only.
        query_batch: queries of each class per transductive batch-norm batch at meta-test time
            (:mod:`~metabench.algorithms.transductive`): 0 (the default) normalises all of an
            episode's queries together; 1 scores batches of one query per class, the query sets
            this learner meta-trains on at 1-shot (``train_queries`` = K) and the test batches of
            Finn et al.'s released code there. Image networks only.
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"inner_lr": 0.0, "train_inner_steps": 1, "test_inner_steps": 0, "meta_batch": 1, "meta_lr": 0.0, "train_queries": 1, "chunk": 0, "query_batch": 0}
    #: Former names of hyperparameters, still read from configurations and kept weights.
    RENAMED: ClassVar[dict[str, str]] = {"path": "strategy"}

    inner_lr: float = 0.4
    train_inner_steps: int = 1
    test_inner_steps: int = 3
    meta_batch: int = 32
    meta_lr: float = 1e-3
    first_order: bool = False
    train_queries: int | None = None
    strategy: str = "auto"
    chunk: int = 0
    layout: str = "auto"
    compile_query: bool = False
    network: str = "conv4"
    inner_norm: bool = True
    query_batch: int = 0


#: Finn et al. (2017, Sec. 5.1), sinusoid regression: alpha = 0.01, meta-batch 25, Adam meta
#: learning rate 1e-3 (the released code's default), one inner step in training; the paper
#: evaluates up to 10 steps at test time (Fig. 3).
_SINUSOID = {"inner_lr": 0.01, "meta_batch": 25, "meta_lr": 1e-3, "train_inner_steps": 1, "test_inner_steps": 10}


def inner_rates(model: nn.Module, inner_lr: float, inner_norm: bool) -> InnerLR:
    """The inner learning rate of every parameter of ``model`` (alpha of Finn, Abbeel & Levine
    2017, Eq. 1): ``inner_lr`` for all, or, without ``inner_norm``, 0 for the scales and shifts of
    its batch-norm layers and ``inner_lr`` for the others. The outer loop alone then learns batch
    norm, as in Finn et al.'s released code (cbfinn/maml), whose ``normalize`` calls
    ``tf.contrib.layers.batch_norm`` with variables of its own, outside the ``weights`` dict that
    the inner loop adapts.

    Args:
        model: the network (its batch-norm layers are :class:`BatchStatNorm2d`).
        inner_lr: alpha (>= 0). inner_norm: whether the inner loop adapts batch norm too.

    Returns:
        ``inner_lr`` itself (a float) when ``inner_norm`` is true; otherwise a dict from every
        parameter name of ``model`` to its rate (:data:`~metabench.algorithms.maml_core.InnerLR`).
    """
    if inner_norm:
        return inner_lr
    norm = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, BatchStatNorm2d)
            for p, _ in module.named_parameters(recurse=False)}
    return {n: 0.0 if n in norm else inner_lr for n, _ in model.named_parameters()}


class MAML(MetaLearner):
    """Second-order MAML (Finn et al. 2017, Alg. 2) on a Conv4 with a linear N-way head, or
    (regression, Alg. 2 with the MSE loss, Sec. 5.1) on the MLP 1-40-40-1.

    Each meta-training step takes the meta-gradient of the mean query loss over the meta-batch
    from :func:`~metabench.algorithms.maml_core.meta_gradient` and one Adam step. ``predict``
    adapts a detached copy of the parameters with ``test_inner_steps`` first-order steps (no graph
    is needed at test time).

    Attributes:
        inner_lr: the inner learning rate of every parameter (a float, or a mapping from parameter
            name to rate when ``inner_norm`` is false; :func:`inner_rates`), used in training and
            in ``predict``.

    Raises:
        ConfigError: for an unknown ``strategy``, ``layout`` or ``network``, or ``channels_last``,
            a ``network``, ``inner_norm=false`` or a ``query_batch`` for regression.
    """

    title = "MAML"
    name = "maml"
    Config = MAMLConfig
    KINDS = ("classification", "regression")
    REGRESSION_DEFAULTS: ClassVar[dict[str, Any]] = _SINUSOID
    #: ``paper``: Finn et al.'s released Omniglot runs take 60,000 meta-iterations (the
    #: ``metatrain_iterations`` of the README's commands), the sinusoid runs 70,000. ``quick``:
    #: sized for the quick budget's 15 minutes on 2 CPU cores (docs/results.md).
    ITERATIONS: ClassVar[dict[str, int]] = {"quick": 220, "paper": 60000}
    REGRESSION_ITERATIONS: ClassVar[dict[str, int]] = {"quick": 6000, "paper": 70000}
    #: When training to convergence: a few minutes of training between validations of 1000
    #: episodes, so that validating costs a small part of the time (measured costs: docs/runs.md).
    VALIDATE_EVERY: ClassVar[int] = 1000
    INNER_LOOP: ClassVar[bool] = True
    TEST_SETTINGS: ClassVar[tuple[str, ...]] = ("test_inner_steps", "query_batch")

    def __init__(self, config: MAMLConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        if config.strategy not in ("auto", *STRATEGIES):
            raise ConfigError(f"unknown strategy {config.strategy!r} for {self.name}: "
                              f"use --set {self.name}.strategy=auto|{'|'.join(STRATEGIES)}")
        check_network(self.name, config.network)
        if self.kind == "regression":
            if config.network != "conv4":
                raise ConfigError(f"{self.name}.network chooses an image network; regression uses the MLP: drop --set {self.name}.network")
            if not config.inner_norm:
                raise ConfigError(f"{self.name}.inner_norm chooses how batch norm adapts; the regression MLP has none: "
                                  f"drop --set {self.name}.inner_norm")
            if config.query_batch:
                raise ConfigError(f"{self.name}.query_batch groups the queries of transductive batch norm; the regression "
                                  f"MLP has none: drop --set {self.name}.query_batch")
            self._backbone = MLP_REGRESSION
            self._model = MLP((image_shape[0], 40, 40, ways)).to(device)
        else:
            channels, height, _ = image_shape
            self._backbone = conv4_backbone(config.network)
            self._model = Conv4(channels, height, n_outputs=ways, network=config.network).to(device)
        self.optimizer = torch.optim.Adam(self._model.parameters(), lr=config.meta_lr)
        self.inner_lr = inner_rates(self._model, config.inner_lr, config.inner_norm)
        self._strategies: dict[int, tuple[str, int | None]] = {}  # images per task -> (strategy, chunk) for "auto"
        self.layout = resolve_layout(self.name, config.layout, self._backbone.images, device)
        self._query_forward = compiled_query_forward(self._backbone) if config.compile_query else None

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        q = self.config.train_queries if self.config.train_queries is not None else shots
        return EpisodeShape(ways, shots, q, self.config.meta_batch)

    def core_strategy(self, images_per_task: int) -> tuple[str, int | None]:
        """The core's strategy and chunk (``None``: the strategy's default) for tasks of
        ``images_per_task`` support and query images: ``strategy`` and ``chunk`` as configured,
        or for ``strategy=auto`` :func:`~metabench.algorithms.maml_core.choose_strategy` with
        :func:`~metabench.algorithms.maml_core.cpu_chunk` tasks per chunk on CPU."""
        cfg = self.config
        if cfg.strategy != "auto":
            return cfg.strategy, cfg.chunk or None
        if images_per_task not in self._strategies:
            strategy = choose_strategy(self._backbone, self.device, images_per_task)
            cpu = strategy == "chunked" and self.device.type == "cpu"
            self._strategies[images_per_task] = (strategy, cfg.chunk or (cpu_chunk(images_per_task) if cpu else None))
        return self._strategies[images_per_task]

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        params = dict(self._model.named_parameters())
        strategy, chunk = self.core_strategy(episodes[0].support_x.shape[0] + episodes[0].query_x.shape[0])
        options = CoreOptions(cfg.train_inner_steps, self.inner_lr, cfg.first_order, strategy, self._query_forward,
                              chunk, self.layout)
        result = meta_gradient(
            self._backbone, params,
            torch.stack([e.support_x for e in episodes]), torch.stack([e.support_y for e in episodes]),
            torch.stack([e.query_x for e in episodes]), torch.stack([e.query_y for e in episodes]), options,
        )
        for name, p in params.items():
            p.grad = result.grads[name]
        self.optimizer.step()
        self.iteration += 1
        if self.kind == "regression":
            return StepResult(result.losses.mean().item(), float("nan"))
        accs = [accuracy(out, e.query_y) for out, e in zip(result.outputs, episodes)]
        return StepResult(result.losses.mean().item(), sum(accs) / len(accs))

    def predict(self, episode: Episode) -> torch.Tensor:
        """Query logits ``[ways * queries, ways]`` after ``test_inner_steps`` steps on the support
        set, the queries normalised in batches of ``query_batch`` per class
        (:func:`~metabench.algorithms.transductive.query_groups`; 0: all at once).

        Raises:
            ValueError: for a ``query_batch`` and a query set that is not class-major.
        """
        return self._adapt_predict(episode, self.config.test_inner_steps, query_groups(episode, self.config.query_batch))

    def stream_predict(self, episode: Episode) -> torch.Tensor:
        """Adapt from theta on the task's labelled memory with the meta-training inner loop
        (``train_inner_steps`` steps of size ``inner_lr``; Continual-MAML's fast weights, Caccia
        et al. 2020, with the memory as support set) and predict the incoming batch."""
        return self._adapt_predict(episode, self.config.train_inner_steps)

    def _adapt_predict(self, episode: Episode, steps: int, groups: list[torch.Tensor] | None = None) -> torch.Tensor:
        params = {n: p.detach().requires_grad_(True) for n, p in self._model.named_parameters()}
        with torch.enable_grad():
            fast = adapt(self._backbone, params, episode.support_x, episode.support_y, steps, self.inner_lr,
                         create_graph=False)
        adapted = {n: p.detach() for n, p in fast.items()}
        with torch.no_grad():
            return forward_in_groups(lambda x: self._backbone.forward(adapted, x, "native"), episode.query_x, groups)

    def predict_steps(self, episode: Episode, steps: Sequence[int]) -> dict[int, torch.Tensor]:
        """Query outputs after each of ``steps`` test-time gradient steps with step size
        ``inner_lr`` (see :func:`~metabench.algorithms.maml_core.adapt_and_predict`), the queries
        in batches of ``query_batch`` per class as in :meth:`predict`.

        Raises:
            ValueError: for a ``query_batch`` and a query set that is not class-major.
        """
        params = dict(self._model.named_parameters())
        return adapt_and_predict(self._backbone, params, episode.support_x, episode.support_y,
                                 episode.query_x, self.inner_lr, steps, query_groups(episode, self.config.query_batch))


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
    #: For regression, MAML's sinusoid settings, alpha 0.01 included, so that the two differ only
    #: in the second derivatives (Finn et al. 2017 report first-order MAML for miniImageNet only,
    #: Sec. 5.2; the sinusoid has no published first-order setting).
    REGRESSION_DEFAULTS: ClassVar[dict[str, Any]] = _SINUSOID
    ITERATIONS: ClassVar[dict[str, int]] = {"quick": 300, "paper": 60000}
    REGRESSION_ITERATIONS: ClassVar[dict[str, int]] = {"quick": 6000, "paper": 70000}
    #: Less than half the time per iteration of second-order MAML, so twice the iterations between
    #: validations (measured costs: docs/runs.md).
    VALIDATE_EVERY: ClassVar[int] = 2000
