"""Budgets on the learner classes, the converge budget, and early stopping in the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from metabench import config as config_module
from metabench.algorithms import LEARNERS, MetaLearner, StepResult
from metabench.algorithms.protocol import EpisodeShape
from metabench.config import CONVERGE_PATIENCE, CONVERGE_VAL_EPISODES, resolve
from metabench.errors import ConfigError
from metabench.training import train, validation_points


def test_converge_budget_takes_each_learners_paper_count_and_validation_interval() -> None:
    c = resolve({"budget": "converge"})
    assert c.iterations == {"maml": 60000, "fomaml": 60000, "reptile": 100000, "protonet": 20000, "matchingnet": 20000}
    assert c.validate_every == {name: LEARNERS[name].VALIDATE_EVERY for name in c.learners}
    assert (c.patience, c.keep_best, c.val_episodes, c.test_episodes) == (CONVERGE_PATIENCE, True, CONVERGE_VAL_EPISODES, 600)
    quick = resolve({"budget": "quick"})
    assert quick.iterations == {name: LEARNERS[name].ITERATIONS["quick"] for name in quick.learners}
    assert (quick.validate_every, quick.patience, quick.keep_best) == ({}, 0, False)
    flags = resolve({"budget": "converge", "validate_every": 7, "patience": 2, "iterations": {"maml": 50}})
    assert set(flags.validate_every.values()) == {7} and flags.patience == 2 and flags.iterations["maml"] == 50
    assert resolve({"dataset": "sinusoid", "budget": "paper"}).iterations["pretrained"] == 70000


def test_a_learner_without_a_budget_gets_a_one_line_error(monkeypatch) -> None:
    class NoBudget(LEARNERS["protonet"]):
        name = "nobudget"
        title = "No Budget"
        ITERATIONS: ClassVar[dict[str, int]] = {"paper": 10}

    monkeypatch.setitem(LEARNERS, "nobudget", NoBudget)
    assert resolve({"learners": "nobudget", "budget": "paper"}).iterations == {"nobudget": 10}
    with pytest.raises(ConfigError, match=r"No Budget \(nobudget\) has no 'quick' budget for classification: give "
                                          r"--iterations, or add 'quick' to NoBudget.ITERATIONS"):
        resolve({"learners": "nobudget", "budget": "quick"})
    assert resolve({"learners": "nobudget", "budget": "quick", "iterations": 3}).iterations == {"nobudget": 3}
    assert config_module.BUDGETS["smoke"].iterations("nobudget", "classification") == 2


def test_validation_points() -> None:
    assert validation_points(10, 3, 0) == {3, 7, 10}
    assert validation_points(10, 3, 4) == {4, 8, 10}
    assert validation_points(8, 0, 4) == {4, 8}
    assert validation_points(10, 0, 0) == set()


class Counter(MetaLearner):
    """A stand-in learner whose one weight counts its meta-training steps."""

    name = "counter"
    title = "Counter"

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self) -> None:
        super().__init__(self.Config(), 2, (1, 4, 4), 10, torch.device("cpu"), 0)
        self._model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self._model.weight.zero_()

    @property
    def model(self) -> nn.Module:
        return self._model

    def train_shape(self, ways, shots, queries) -> EpisodeShape:
        return EpisodeShape(ways, shots, queries, 1)

    def meta_train_step(self, episodes) -> StepResult:
        with torch.no_grad():
            self._model.weight += 1
        self.iteration += 1
        return StepResult(1.0, 0.5)

    def predict(self, episode):  # pragma: no cover - not called
        raise NotImplementedError


class Scripted:
    """A validation whose score after ``k`` steps is ``scores[k]`` (percent, higher is better)."""

    columns = ("val_accuracy", "val_ci95")
    episodes = 1
    kind = "classification"

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def better(self, score, best):
        return best is None or score > best

    def __call__(self, learner):
        return {"val_accuracy": self.scores[int(learner.model.weight.item())], "val_ci95": 0.0}


class NoEpisodes:
    def episodes(self, start, count):
        return []


def test_early_stopping_keeps_the_best_weights() -> None:
    """Validate every 2 steps; the score peaks at step 4; patience 2 stops at step 8 and the
    learner ends with the weights of step 4."""
    scores = {2: 50.0, 4: 80.0, 6: 79.0, 8: 80.0, 10: 99.0}
    learner = Counter()
    result = train(learner, NoEpisodes(), 1, 10, Scripted(scores), 0, None, validate_every=2, patience=2, keep_best=True)
    assert result.iterations == 8 and result.best_iteration == 4 and result.tested_iteration == 4
    assert result.stop_reason == "early stop: no improvement of the validation score for 2 validations since iteration 4"
    assert learner.model.weight.item() == 4.0
    assert [r["val_accuracy"] for r in result.curve if r["val_accuracy"] == r["val_accuracy"]] == [50.0, 80.0, 79.0, 80.0]
    last = Counter()
    result = train(last, NoEpisodes(), 1, 10, Scripted(scores), 0, None, validate_every=2, patience=0, keep_best=False)
    assert result.iterations == 10 and result.best_iteration == 10 and last.model.weight.item() == 10.0
    assert result.stop_reason == "reached the iteration limit (10)"
