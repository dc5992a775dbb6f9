"""Learners: protocol behaviour, MAML's meta-gradient, and learning on a tiny budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metabench.algorithms import LEARNERS, build_learner, learner_config
from metabench.algorithms.backbones import BatchStatNorm2d, Conv4
from metabench.algorithms.maml import meta_loss
from metabench.algorithms.matchingnet import matching_log_probs
from metabench.algorithms.protonet import prototype_logits
from metabench.algorithms.reptile import minibatches
from metabench.datasets.sampler import EpisodeSampler
from metabench.errors import ConfigError
from metabench.evaluation import evaluate


@pytest.mark.parametrize("impl", BatchStatNorm2d.IMPLS)
def test_batch_stat_norm_uses_batch_statistics(impl: str) -> None:
    norm = BatchStatNorm2d(3, impl=impl)
    with torch.no_grad():
        norm.weight.fill_(1.0)
    x = torch.randn(8, 3, 5, 5) * 4 + 2
    y = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    # same in eval mode: transductive batch norm keeps no running statistics
    norm.eval()
    assert torch.allclose(norm(x), y)
    assert torch.allclose(y, torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5), atol=1e-5)


def test_batch_norm_impls_agree_to_second_order() -> None:
    """The fused and the tensor-op batch norm give the same outputs, gradients and
    second derivatives (float64)."""
    torch.manual_seed(0)
    a = Conv4(1, 16, hidden=4, n_outputs=3, norm_impl="tensor_ops").double()
    b = Conv4(1, 16, hidden=4, n_outputs=3, norm_impl="native").double()
    b.load_state_dict(a.state_dict())
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, rtol=0, atol=1e-12)
    def second_order(model: Conv4, y: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(y.pow(2).sum(), list(model.parameters()), create_graph=True)
        return list(torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(model.parameters())))
    ha, hb = torch.cat([h.flatten() for h in second_order(a, ya)]), torch.cat([h.flatten() for h in second_order(b, yb)])
    # relative to the scale of the second derivatives (conv biases before a batch norm have an
    # exactly zero gradient, which both compute only up to roundoff)
    assert (ha - hb).abs().max() <= 1e-10 * ha.abs().max()
    with pytest.raises(ValueError, match="unknown batch-norm impl"):
        BatchStatNorm2d(3, impl="cudnn")


def test_conv4_shapes() -> None:
    x = torch.rand(7, 1, 28, 28)
    assert Conv4(1, 28)(x).shape == (7, 64)
    assert Conv4(1, 28, n_outputs=5)(x).shape == (7, 5)
    assert Conv4(3, 84)(torch.rand(2, 3, 84, 84)).shape == (2, 64 * 5 * 5)
    with pytest.raises(ValueError, match="too small"):
        Conv4(1, 8)


def test_prototype_logits_hand_computed() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])  # prototypes (1, 0) and (0, 4)
    query = torch.tensor([[1.0, 1.0]])
    logits = prototype_logits(support, labels, query, ways=2)
    assert torch.allclose(logits, torch.tensor([[-1.0, -10.0]]))


def test_matching_log_probs_hand_computed() -> None:
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    cos = torch.tensor([1.0, 0.0, 2**-0.5])
    attention = cos.softmax(0)
    expected = torch.stack([attention[0], attention[1] + attention[2]]).log()
    assert torch.allclose(matching_log_probs(support, labels, query, 2)[0], expected, atol=1e-6)


def test_reptile_minibatches_cycle_without_replacement() -> None:
    batches = minibatches(50, 10, 5, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    batches = minibatches(5, 10, 3, np.random.default_rng(0))
    assert all(sorted(b.tolist()) == list(range(5)) for b in batches)


def _tiny_episode(dtype: torch.dtype) -> tuple[Conv4, dict, object]:
    torch.manual_seed(0)
    model = Conv4(1, 16, hidden=4, n_outputs=3).to(dtype)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    ep = type("E", (), {})()
    ep.support_x = torch.rand(6, 1, 16, 16, dtype=dtype)
    ep.support_y = torch.tensor([0, 0, 1, 1, 2, 2])
    ep.query_x = torch.rand(9, 1, 16, 16, dtype=dtype)
    ep.query_y = torch.tensor([0, 1, 2] * 3)
    return model, params, ep


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_finite_differences(steps: int) -> None:
    """Second-order MAML's meta-gradient equals central finite differences of the query loss
    after adaptation (float64, with batch norm); first-order MAML's does not."""
    model, params, ep = _tiny_episode(torch.float64)
    loss, _ = meta_loss(model, params, ep, steps, 0.4, first_order=False)
    grads = torch.autograd.grad(loss, list(params.values()))
    fo_loss, _ = meta_loss(model, params, ep, steps, 0.4, first_order=True)
    fo_grads = torch.autograd.grad(fo_loss, list(params.values()))
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for trial in range(3):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        def at(sign: float) -> float:
            shifted = {n: (p + sign * eps * direction[n]).detach().requires_grad_(True) for n, p in params.items()}
            return meta_loss(model, shifted, ep, steps, 0.4, first_order=False)[0].item()
        numeric = (at(1.0) - at(-1.0)) / (2 * eps)
        analytic = sum((g * direction[n]).sum() for g, n in zip(grads, params)).item()
        first_order = sum((g * direction[n]).sum() for g, n in zip(fo_grads, params)).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        assert abs(first_order - numeric) > 1e-4 * abs(numeric)


def test_predict_leaves_meta_parameters_unchanged(omniglot_vinyals) -> None:
    ep = EpisodeSampler(omniglot_vinyals.test, 5, 1, 3, seed=0).episode(0)
    for name in LEARNERS:
        learner = build_learner(name, 5, (1, 28, 28), total_iterations=10, seed=0,
                                overrides={"test_inner_steps": 2} if name in ("maml", "fomaml", "reptile") else None)
        before = {k: v.clone() for k, v in learner.state_dict().items()}
        logits = learner.predict(ep)
        assert logits.shape == (15, 5) and torch.isfinite(logits).all()
        assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items()), name


def test_hyperparameter_overrides_and_errors() -> None:
    cfg = learner_config("maml", {"inner_lr": "0.1", "first_order": "true", "train_queries": "none"})
    assert cfg.inner_lr == 0.1 and cfg.first_order is True and cfg.train_queries is None
    assert learner_config("fomaml").first_order is True and learner_config("maml").first_order is False
    with pytest.raises(ConfigError, match="unknown hyperparameter maml.inner_rate"):
        learner_config("maml", {"inner_rate": 1})
    with pytest.raises(ConfigError, match="bad value"):
        learner_config("maml", {"test_inner_steps": "three"})
    with pytest.raises(ConfigError, match="unknown learner 'mamll'"):
        learner_config("mamll")


# Tiny budgets that take a few seconds each on 2 CPU cores and are enough to learn measurably.
TINY = {"maml": 15, "fomaml": 15, "reptile": 15, "protonet": 8, "matchingnet": 30}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEARNERS))
def test_learner_improves_over_chance_on_tiny_budget(name: str, omniglot_vinyals) -> None:
    """Meta-training on real Omniglot raises accuracy on the same 30 test episodes, well above
    5-way chance (20%)."""
    split = omniglot_vinyals
    overrides = {"test_inner_steps": 10} if name == "reptile" else None
    learner = build_learner(name, 5, (1, 28, 28), TINY[name], seed=0, overrides=overrides)
    test = EpisodeSampler(split.test, 5, 1, 5, seed=0)
    before = np.array([r["accuracy"] for r in evaluate(learner, test, 30)[0]])
    shape = learner.train_shape(5, 1, 5)
    sampler = EpisodeSampler(split.train, shape.ways, shape.shots, shape.queries, seed=0, stream="train")
    for i in range(TINY[name]):
        learner.meta_train_step(sampler.episodes(i * shape.meta_batch, shape.meta_batch))
    after = np.array([r["accuracy"] for r in evaluate(learner, test, 30)[0]])
    gain = after - before
    # paired improvement on identical episodes, more than twice its standard error
    assert gain.mean() > 2 * gain.std(ddof=1) / np.sqrt(gain.size), (name, before.mean(), after.mean())
    assert after.mean() > 40.0, (name, after.mean())
