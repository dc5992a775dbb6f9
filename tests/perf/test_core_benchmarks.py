"""pytest-benchmark benchmarks of one meta-training step (the ``perf`` nox session times them and
compares with the last saved run; in the ordinary test run they execute once, untimed, because
``--benchmark-disable`` is in the pytest options).

Synthetic Omniglot-shaped episodes (:func:`metabench.timing.synthetic_episodes`), 5-way 1-shot,
15 queries per class, meta-batch 4, on CPU, so that a perf run takes about a minute on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms import build_learner
from metabench.algorithms.maml_core import CONV4, CoreOptions, meta_gradient
from metabench.timing import Cell, synthetic_episodes

CELL = Cell("metabench", "maml", 5, 1, 15, 4, 1, 0.4, "cpu", 1, 0)


def _stacked(steps: int) -> tuple:
    episodes = synthetic_episodes(CELL)
    return tuple(torch.stack([getattr(e, a) for e in episodes]) for a in ("support_x", "support_y", "query_x", "query_y"))


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize(("strategy", "layout"), [
    ("per_task", "contiguous"), ("per_task", "channels_last"), ("chunked", "channels_last"),
    ("batched", "channels_last"), ("recompute", "channels_last"),
])
def test_maml_meta_gradient(benchmark, strategy: str, layout: str, steps: int) -> None:
    """The second-order MAML meta-gradient of a meta-batch of 4 (core only, no optimizer)."""
    torch.manual_seed(0)
    learner = build_learner("maml", 5, (1, 28, 28), 10, "cpu", 0)
    params = dict(learner.model.named_parameters())
    batch = _stacked(steps)
    result = benchmark(meta_gradient, CONV4, params, *batch, CoreOptions(steps, 0.4, False, strategy, layout=layout))
    assert torch.isfinite(torch.cat([g.flatten() for g in result.grads.values()])).all()


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "protonet", "matchingnet"])
def test_learner_step(benchmark, name: str) -> None:
    """One full meta-training step (meta-gradient and optimizer update) of each learner."""
    torch.manual_seed(0)
    overrides = {"meta_batch": 4}
    if name in ("maml", "fomaml"):
        overrides["train_queries"] = 15
    learner = build_learner(name, 5, (1, 28, 28), 10, "cpu", 0, overrides)
    episodes = synthetic_episodes(CELL)
    before = [p.detach().clone() for p in learner.model.parameters()]
    benchmark(learner.meta_train_step, episodes)
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.model.parameters()))
