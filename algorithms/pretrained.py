"""The "pretrained on all tasks" baseline of Finn, Abbeel & Levine (2017, Sec. 5.1).

One network is trained to regress the targets of tasks drawn from the whole task distribution
(the support and query points of every task of a batch, pooled, MSE loss, Adam), with no
meta-learning. (The authors' released code trains it on each task's K support points only; pooling
the query points too gives it twice the data per step from the same task distribution.) At test time it is fine-tuned by plain gradient descent on the K support points of
each task "using an automatically tuned step size" (ibid.): after training, the step size with the
lowest validation MSE after ``test_inner_steps`` steps is chosen from :data:`FINETUNE_LRS` on the
run's validation tasks (:meth:`Pretrained.finish_training`).

Defined for regression only: for classification its analogue is a classifier pretrained on all
meta-training classes, which needs a head over every class and is not implemented here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from metabench.datasets.sampler import Episode

from .backbones import MLP
from .maml_core import MLP_REGRESSION, adapt_and_predict, mse
from .protocol import EpisodeShape, MetaLearner, StepResult

#: Step sizes tried when tuning the fine-tuning step size (log-spaced, 1e-3 .. 0.2).
FINETUNE_LRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class PretrainedConfig:
    """Hyperparameters of the pretrained baseline (Finn et al. 2017, Sec. 5.1; the paper gives
    no optimiser settings for it, so these are MAML's: Adam 1e-3, 25 tasks per step).

    Attributes:
        lr: Adam learning rate of the pretraining (1e-3).
        meta_batch: tasks whose points are pooled into one pretraining step (25).
        test_inner_steps: fine-tuning steps at test time (10), the count the step size is tuned for.
        test_lr: fine-tuning step size; ``None`` (default) tunes it on validation tasks over
            :data:`FINETUNE_LRS`, falling back to 0.01 (MAML's alpha) without validation tasks.
    """

    MINIMUMS: ClassVar[dict[str, float | int]] = {"lr": 0.0, "meta_batch": 1, "test_inner_steps": 0, "test_lr": 0.0}

    lr: float = 1e-3
    meta_batch: int = 25
    test_inner_steps: int = 10
    test_lr: float | None = None


class Pretrained(MetaLearner):
    """A network pretrained on all tasks, fine-tuned at test time (Finn et al. 2017, Sec. 5.1).

    Inputs ``[M, features]`` (``image_shape = (features,)``), targets ``[M, ways]``; the network
    is the MLP ``features-40-40-ways``.

    Raises:
        ConfigError: for image inputs (classification is not implemented for this baseline).
    """

    title = "Pretrained (all tasks)"
    name = "pretrained"
    Config = PretrainedConfig
    KINDS = ("regression",)
    WHY_NOT = "the pretrained baseline is implemented for regression only (a classification analogue needs a head over every training class): drop it from --learners"

    #: ``paper``: as MAML's sinusoid runs (70,000 steps, Finn et al.'s released code).
    REGRESSION_ITERATIONS: ClassVar[dict[str, int]] = {"quick": 6000, "paper": 70000}

    def __init__(self, config: PretrainedConfig, ways, image_shape, total_iterations, device, seed) -> None:
        super().__init__(config, ways, image_shape, total_iterations, device, seed)
        self._model = MLP((image_shape[0], 40, 40, ways)).to(device)
        self.optimizer = torch.optim.Adam(self._model.parameters(), lr=config.lr)
        self.test_lr = config.test_lr if config.test_lr is not None else 0.01

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways: int, shots: int, queries: int) -> EpisodeShape:
        return EpisodeShape(ways, shots, shots, self.config.meta_batch)

    def meta_train_step(self, episodes: Sequence[Episode]) -> StepResult:
        x = torch.cat([t for e in episodes for t in (e.support_x, e.query_x)])
        y = torch.cat([t for e in episodes for t in (e.support_y, e.query_y)])
        loss = mse(self._model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return StepResult(loss.item(), float("nan"))

    def _predict_steps(self, episode: Episode, steps: Sequence[int], lr: float) -> dict[int, torch.Tensor]:
        params = dict(self._model.named_parameters())
        return adapt_and_predict(MLP_REGRESSION, params, episode.support_x, episode.support_y, episode.query_x, lr, steps)

    def predict_steps(self, episode: Episode, steps: Sequence[int]) -> dict[int, torch.Tensor]:
        """Query outputs after each of ``steps`` fine-tuning steps with the (tuned) step size."""
        return self._predict_steps(episode, steps, self.test_lr)

    def predict(self, episode: Episode) -> torch.Tensor:
        steps = self.config.test_inner_steps
        return self.predict_steps(episode, [steps])[steps]

    def tuned_settings(self) -> dict[str, Any]:
        """``{"test_lr": ...}``, the fine-tuning step size in use."""
        return {"test_lr": self.test_lr}

    def restore_tuned(self, settings) -> None:
        """Use the fine-tuning step size ``settings["test_lr"]`` chosen by :meth:`finish_training`."""
        if "test_lr" in settings:
            self.test_lr = float(settings["test_lr"])

    def finish_training(self, val_episodes: Sequence[Episode]) -> dict[str, Any]:
        """Choose the fine-tuning step size: the one of :data:`FINETUNE_LRS` with the lowest
        mean query MSE after ``test_inner_steps`` steps on ``val_episodes`` (already on the
        learner's device; unless ``test_lr`` is set, or there are no validation episodes).

        Returns:
            ``{"test_lr": chosen, "test_lr_val_mse": {lr: mean MSE}}`` (the MSE map is empty when
            nothing was tuned).
        """
        if self.config.test_lr is not None or not val_episodes:
            return {"test_lr": self.test_lr, "test_lr_val_mse": {}}
        steps = self.config.test_inner_steps
        scores = {}
        for lr in FINETUNE_LRS:
            errors = [mse(self._predict_steps(ep, [steps], lr)[steps], ep.query_y).item() for ep in val_episodes]
            scores[lr] = float(np.mean(errors))
        finite = {lr: v for lr, v in scores.items() if np.isfinite(v)}
        self.test_lr = min(finite, key=finite.get) if finite else 0.01
        return {"test_lr": self.test_lr, "test_lr_val_mse": scores}
