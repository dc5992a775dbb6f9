"""Reptile.

Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.
Batched Reptile (Alg. 2): for each of ``meta_batch`` tasks, start from theta and take
``inner_steps`` steps of Adam (beta1 = 0) on minibatches of the task's examples, giving phi_i; then

    theta <- theta + epsilon * mean_i (phi_i - theta)

with the outer step size epsilon annealed linearly to 0 over training (App. A). At test time the
network is fine-tuned on the support set in the same way and the query set is classified
transductively (batch statistics of the query batch).

The inner optimiser's state (Adam's moment estimates and step count) is shared, as in the
authors' code (github.com/openai/supervised-reptile, ``supervised_reptile/reptile.py``: a training
task restores only the trainable variables afterwards, so Adam's slots carry over from task to
task, and ``evaluate`` fine-tunes from the whole current state and restores it afterwards). So
meta-training carries one inner state from task to task, and every prediction starts from a copy
of it, which is part of the kept weights (:meth:`Reptile.state_dict`). ``inner_state=fresh``
starts every task, in training and at test, with a new optimiser: this suite's Reptile until
December 2026, and how every Reptile kept before then was trained and tested
(``LEGACY_SETTINGS``). Training tasks contain ``train_shots`` examples per class and no query
split.

Regression (sinusoids): the settings of the authors' sine-wave demonstration (Nichol & Schulman,
OpenAI blog "Reptile: A Scalable Meta-Learning Algorithm", 2018, and its script
``reptile-sinewaves-demo.py``): plain SGD with step 0.02 on minibatches of 10 of a task's 50
points (one epoch, i.e. 5 steps), one task per outer update, outer step size 0.1 annealed
linearly to 0; the network is fine-tuned at test time by full-batch SGD on the K support points.
The demonstration draws its 50 points on a fixed grid; here they are drawn uniformly like all
sinusoid inputs (Finn et al. 2017, Sec. 5.1).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError

from .backbones import MLP, Conv4, accuracy, check_network, cross_entropy, in_layout, resolve_layout
from .maml_core import mse
from .protocol import (
    EpisodeShape,
    MetaLearner,
    StepResult,
    load_optimizer_tensors,
    optimizer_tensors,
)
from .transductive import forward_in_groups, query_groups


@dataclass(frozen=True)
class ReptileConfig:
    """Reptile hyperparameters; defaults are Nichol et al. (2018, App. A, Table 3) for Omniglot.

    Attributes:
        inner_lr: inner-loop learning rate (1e-3 for Adam with beta1 = 0).
        inner_optimizer: ``"adam"`` (beta1 = 0, the paper's) or ``"sgd"`` (plain gradient steps,
            the sine-wave demonstration's).
        train_inner_steps: inner iterations per training task (5).
        inner_batch: examples per inner minibatch during training (10).
        train_shots: examples per class in a training task (10).
        meta_batch: tasks per outer update (5).
        meta_step: initial outer step size epsilon (1.0), annealed linearly to ``meta_step_final``.
        meta_step_final: outer step size at the end of training (0).
        test_inner_steps: inner iterations on the support set at test time (50).
        test_inner_batch: minibatch size at test time (5; for regression 100, i.e. full batch).
        layout: memory layout of the images and the adapted network in meta-training's inner
            loop: ``auto`` (:func:`~metabench.algorithms.backbones.default_layout`: channels-last
            on CPU), ``contiguous`` or ``channels_last``; the same numbers up to float32
            rounding. Prediction (tests, validation, protocols) always adapts a contiguous copy
            on contiguous images, the layout in which every committed run was scored, so that
            re-testing kept weights reproduces their per-episode results exactly.
        inner_state: ``shared`` (the authors' code: one inner optimiser state carried through
            meta-training, and each prediction fine-tunes from a copy of it) or ``fresh`` (a new
            inner optimiser for every task; see the module docstring). The same for SGD, which
            keeps no state.
        network: the image network, one of :data:`~metabench.algorithms.backbones.NETWORKS`:
            ``conv4`` (2x2 max-pools, the network all five learners share by default) or
            ``conv4-stride-flat``, the authors' Omniglot network (``OmniglotModel`` of their
            released code: convolutions with stride 2, the last 2x2 map flattened). The Omniglot
            reproduction (``nox -s reproduce``) uses the latter.
        query_batch: queries of each class per transductive batch-norm batch at meta-test time
            (:mod:`~metabench.algorithms.transductive`): 0 (the default) predicts all of an
            episode's queries in one batch; 1 predicts batches of one query per class, as the
            authors' transductive evaluation (``_test_predictions`` on a test set of one image per
            class). Image networks only.
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"inner_lr": 0.0, "train_inner_steps": 1, "inner_batch": 1, "train_shots": 1, "meta_batch": 1, "meta_step": 0.0, "meta_step_final": 0, "test_inner_steps": 0, "test_inner_batch": 1, "query_batch": 0}

    inner_lr: float = 1e-3
    inner_optimizer: str = "adam"
    train_inner_steps: int = 5
    inner_batch: int = 10
    train_shots: int = 10
    meta_batch: int = 5
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    test_inner_steps: int = 50
    test_inner_batch: int = 5
    layout: str = "auto"
    inner_state: str = "shared"
    network: str = "conv4"
    query_batch: int = 0


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
    """Batched Reptile (Nichol et al. 2018, Alg. 2) on a Conv4 with a linear N-way head, or
    (regression) on the MLP 1-40-40-1 with the MSE loss.

    Raises:
        ConfigError: for an unknown ``inner_optimizer``, ``layout`` or ``network``, or
            ``layout=channels_last`` or a ``network`` for regression.
    """

    title = "Reptile"
    name = "reptile"
    Config = ReptileConfig
    KINDS = ("classification", "regression")
    REGRESSION_DEFAULTS: ClassVar[dict[str, Any]] = {
        "inner_optimizer": "sgd", "inner_lr": 0.02, "train_inner_steps": 5, "inner_batch": 10,
        "train_shots": 50, "meta_batch": 1, "meta_step": 0.1, "meta_step_final": 0.0,
        "test_inner_steps": 10, "test_inner_batch": 100,
    }
    #: ``paper``: 100,000 outer iterations for Omniglot (Nichol et al. 2018, App. A, Table 3); the
    #: sine-wave demonstration's 30,000 for regression.
    ITERATIONS: ClassVar[dict[str, int]] = {"quick": 1000, "paper": 100000}
    #: ``quick``: 10 test-time steps instead of the paper's 50. After the quick budget's short
    #: training they scored 91.0% on validation episodes against 91.3% for 50, at a fifth of the
    #: test time (results/omniglot-vinyals-5w1s-quick-sizing/SIZING.md).
    BUDGET_SETTINGS: ClassVar[dict[str, dict[str, Any]]] = {"quick": {"test_inner_steps": 10}}
    REGRESSION_ITERATIONS: ClassVar[dict[str, int]] = {"quick": 15000, "paper": 30000}
    #: Kept weights from before ``inner_state`` existed were trained and tested with fresh state.
    LEGACY_SETTINGS: ClassVar[dict[str, Any]] = {"inner_state": "fresh"}
    #: A validation of 1000 episodes is slow (50 fine-tuning steps per episode), so many
    #: iterations between validations keep it near a quarter of the time (measured costs:
    #: docs/runs.md).
    VALIDATE_EVERY: ClassVar[int] = 5000
    #: 50 fine-tuning steps per test episode: long enough for worker processes to repay their
    #: start-up, unlike the other learners' few steps or single pass (docs/timing.md,
    #: "Measurements behind the defaults").
    TEST_IN_WORKERS: ClassVar[bool] = True
    INNER_LOOP: ClassVar[bool] = True
    TEST_SETTINGS: ClassVar[tuple[str, ...]] = ("test_inner_steps", "test_inner_batch", "query_batch")

    def __init__(self, config: ReptileConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        if config.inner_state not in ("fresh", "shared"):
            raise ConfigError(f"unknown inner state {config.inner_state!r} for reptile: use --set reptile.inner_state=fresh|shared")
        if config.inner_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"unknown inner optimizer {config.inner_optimizer!r} for reptile: use --set reptile.inner_optimizer=adam|sgd")
        check_network(self.name, config.network)
        if self.kind == "regression":
            if config.network != "conv4":
                raise ConfigError("reptile.network chooses an image network; regression uses the MLP: drop --set reptile.network")
            if config.query_batch:
                raise ConfigError("reptile.query_batch groups the queries of transductive batch norm; the regression MLP has "
                                  "none: drop --set reptile.query_batch")
            self._model = MLP((image_shape[0], 40, 40, ways)).to(device)
            self._loss = mse
        else:
            channels, height, _ = image_shape
            self._model = Conv4(channels, height, n_outputs=ways, network=config.network).to(device)
            self._loss = cross_entropy
        self.layout = resolve_layout(self.name, config.layout, self.kind == "classification", device)
        # The network each task adapts: one for meta-training, in ``layout``; one for prediction,
        # contiguous (see ReptileConfig.layout).
        self._fast = copy.deepcopy(self._model)
        self._train_fast = copy.deepcopy(self._model)
        if self.layout == "channels_last":
            self._train_fast.to(memory_format=torch.channels_last)
        if config.inner_state == "shared":
            # The one inner optimiser of meta-training (the authors' code); the protocol saves it
            # with the training state as ``optimizer``.
            self.optimizer = self._inner_optimizer(self._train_fast)
        self._rng = np.random.default_rng(seed)

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        return EpisodeShape(ways, self.config.train_shots, 0, self.config.meta_batch)

    def _inner_optimizer(self, fast: nn.Module) -> torch.optim.Optimizer:
        """A new inner optimiser over ``fast``'s parameters: Adam with beta1 = 0 (Nichol et al.
        2018, Sec. 6) or plain SGD, at the inner learning rate."""
        if self.config.inner_optimizer == "sgd":
            return torch.optim.SGD(fast.parameters(), lr=self.config.inner_lr)
        return torch.optim.Adam(fast.parameters(), lr=self.config.inner_lr, betas=(0.0, 0.999))

    def _prediction_optimizer(self) -> torch.optim.Optimizer | None:
        """The inner optimiser a prediction adapts ``_fast`` with: a copy of meta-training's
        (``shared``; later steps leave the original alone), or ``None`` for a new one (``fresh``)."""
        if self.config.inner_state == "fresh":
            return None
        opt = self._inner_optimizer(self._fast)
        load_optimizer_tensors(opt, optimizer_tensors(self.optimizer, "inner"), "inner")
        return opt

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's tensors and, with ``inner_state=shared``, the inner optimiser's state
        that predictions start from, as ``inner_optimizer.<parameter index>.<slot>`` (Adam's
        ``exp_avg``, ``exp_avg_sq`` and ``step``; none before the first step or for SGD)."""
        state = self.model.state_dict()
        if self.config.inner_state == "shared":
            state.update(optimizer_tensors(self.optimizer, "inner_optimizer"))
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` returned.

        Raises:
            RuntimeError: if the tensors do not fit the network.
            ConfigError: if they carry an inner optimiser state and ``inner_state`` is ``fresh``.
        """
        inner = {k: v for k, v in state.items() if k.startswith("inner_optimizer.")}
        if inner and self.config.inner_state == "fresh":
            raise ConfigError("these Reptile weights carry a shared inner optimiser state: load them with "
                              "--set reptile.inner_state=shared")
        self.model.load_state_dict({k: v for k, v in state.items() if k not in inner})
        if self.config.inner_state == "shared":
            load_optimizer_tensors(self.optimizer, inner, "inner_optimizer")

    def _fine_tune(
        self, fast: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, rng: np.random.Generator,
        query_x: torch.Tensor | None = None, record: Sequence[int] = (), layout: str = "contiguous",
        opt: torch.optim.Optimizer | None = None, groups: list[torch.Tensor] | None = None,
    ) -> tuple[float, float, dict[int, torch.Tensor]]:
        """Copy theta into ``fast`` (a copy of the network) and run the inner loop (Adam with
        beta1 = 0, or SGD) on ``(x, y)``.

        Args:
            fast: the network to adapt (``_train_fast`` or ``_fast``).
            x: task examples ``[M, C, H, W]`` or ``[M, features]``; y: labels ``[M]`` or targets
                ``[M, outputs]``.
            steps: inner iterations; batch: examples per minibatch; rng: draws the minibatches.
            query_x, record: if given, the fast network's outputs on ``query_x`` after each
                number of steps in ``record`` (0 = before any step) are returned.
            layout: the layout each minibatch is copied into (one of ``LAYOUTS``).
            opt: the inner optimiser over ``fast``'s parameters to step (its state carries on);
                ``None``: a new one.
            groups: the transductive batches ``query_x`` is predicted in
                (:func:`~metabench.algorithms.transductive.query_groups`; ``None``: one batch).

        Returns the mean loss (nats or squared units) and accuracy (fraction; NaN for
        regression) over the inner minibatches, and ``{step: query outputs}``.
        """
        with torch.no_grad():
            for p_fast, p in zip(fast.parameters(), self._model.parameters()):
                p_fast.copy_(p)
        opt = self._inner_optimizer(fast) if opt is None else opt
        losses, accs, outputs = [], [], {}
        for step, idx in enumerate(minibatches(x.shape[0], batch, steps, rng)):
            if step in record:
                with torch.no_grad():
                    outputs[step] = forward_in_groups(fast, query_x, groups)
            idx_t = torch.from_numpy(idx).to(x.device)
            out = fast(in_layout(x[idx_t], layout))
            loss = self._loss(out, y[idx_t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            accs.append(accuracy(out.detach(), y[idx_t]) if self.kind == "classification" else float("nan"))
        if steps in record:
            with torch.no_grad():
                outputs[steps] = forward_in_groups(fast, query_x, groups)
        return float(np.mean(losses)) if losses else float("nan"), float(np.mean(accs)) if accs else float("nan"), outputs

    def meta_step_size(self) -> float:
        """epsilon at the current iteration: linear from ``meta_step`` to ``meta_step_final``."""
        frac = min(1.0, self.iteration / self.total_iterations)
        return (1 - frac) * self.config.meta_step + frac * self.config.meta_step_final

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        cfg = self.config
        fast = self._train_fast
        fast.train()
        delta = [torch.zeros_like(p) for p in self._model.parameters()]
        losses, accs = [], []
        for ep in episodes:
            loss, acc, _ = self._fine_tune(fast, ep.support_x, ep.support_y, cfg.train_inner_steps, cfg.inner_batch,
                                           self._rng, layout=self.layout,
                                           opt=self.optimizer if cfg.inner_state == "shared" else None)
            losses.append(loss)
            accs.append(acc)
            with torch.no_grad():
                for d, p_fast, p in zip(delta, fast.parameters(), self._model.parameters()):
                    d.add_(p_fast - p)
        eps = self.meta_step_size() / len(episodes)
        with torch.no_grad():
            for p, d in zip(self._model.parameters(), delta):
                p.add_(d, alpha=eps)
        self.iteration += 1
        return StepResult(float(np.mean(losses)), float(np.mean(accs)))

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The protocol's state plus the generator that draws the training minibatches."""
        tensors, meta = super().training_state()
        meta["minibatch_rng"] = self._rng.bit_generator.state
        return tensors, meta

    def load_training_state(self, tensors, meta) -> None:
        """Restore :meth:`training_state`, the minibatch generator included."""
        super().load_training_state(tensors, meta)
        self._rng.bit_generator.state = meta["minibatch_rng"]

    def _episode_rng(self, episode: Episode) -> np.random.Generator:
        # The minibatch order depends only on the seed and the episode, not on how often predict
        # ran before, so validation does not perturb training and repeated calls agree.
        digest = hashlib.sha256(episode.index.key()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    def stream_predict(self, episode: Episode) -> torch.Tensor:
        """Adapt from theta on the task's labelled memory with the meta-training inner loop
        (``train_inner_steps`` steps of the inner optimiser on minibatches of ``inner_batch``,
        Nichol et al. 2018, Alg. 2; minibatches drawn from the episode's key) and predict the
        incoming batch."""
        cfg = self.config
        steps = cfg.train_inner_steps
        with torch.enable_grad():
            _, _, outputs = self._fine_tune(self._fast, episode.support_x, episode.support_y, steps, cfg.inner_batch,
                                            self._episode_rng(episode), episode.query_x, [steps],
                                            opt=self._prediction_optimizer())
        return outputs[steps]

    def predict(self, episode: Episode) -> torch.Tensor:
        steps = self.config.test_inner_steps
        return self.predict_steps(episode, [steps])[steps]

    def predict_steps(self, episode: Episode, steps: Sequence[int]) -> dict[int, torch.Tensor]:
        """Query outputs after each number of test-time inner iterations in ``steps``
        (minibatches of ``test_inner_batch`` support examples; full batch for regression), the
        queries predicted in batches of ``query_batch`` per class (0: all at once).

        Raises:
            ValueError: for a ``query_batch`` and a query set that is not class-major.
        """
        groups = query_groups(episode, self.config.query_batch)
        with torch.enable_grad():
            _, _, outputs = self._fine_tune(
                self._fast, episode.support_x, episode.support_y, max(steps), self.config.test_inner_batch,
                self._episode_rng(episode), episode.query_x, steps, opt=self._prediction_optimizer(), groups=groups,
            )
        return outputs
