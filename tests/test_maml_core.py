"""The MAML core: exact meta-gradients (finite differences, float64), every strategy agreeing with the
others (float64 and float32), first order, and the vmap-over-nn.BatchNorm2d trap."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from metabench.algorithms.backbones import MLP, Conv4
from metabench.algorithms.maml_core import (
    CONV4,
    LAYOUTS,
    MLP_REGRESSION,
    STRATEGIES,
    CoreOptions,
    adapt,
    compiled_query_forward,
    conv4_backbone,
    meta_gradient,
)

TASKS = 3


def image_problem(network: str, size: int):
    """A small Conv4 ``network`` (4 filters, ``size`` x ``size`` inputs, batch norm) and 3 three-way
    tasks; alpha = 0.4."""

    def problem(dtype: torch.dtype) -> tuple:
        torch.manual_seed(0)
        model = Conv4(1, size, hidden=4, n_outputs=3, network=network).to(dtype)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        gen = torch.Generator().manual_seed(1)
        sx = torch.rand(TASKS, 6, 1, size, size, generator=gen).to(dtype)
        qx = torch.rand(TASKS, 9, 1, size, size, generator=gen).to(dtype)
        sy = torch.tensor([0, 0, 1, 1, 2, 2]).repeat(TASKS, 1)
        qy = torch.tensor([0, 1, 2] * 3).repeat(TASKS, 1)
        return conv4_backbone(network), params, (sx, sy, qx, qy), 0.4

    return problem


#: The max-pooling Conv4 on 16x16 inputs.
conv4_problem = image_problem("conv4", 16)


def sinusoid_problem(dtype: torch.dtype) -> tuple:
    """The sinusoid MLP (1-40-40-1) and 3 tasks as in Finn et al. (2017, Sec. 5.1): amplitude
    U[0.1, 5], phase U[0, pi], x U[-5, 5], K = 10 support and 10 query points; alpha = 0.01."""
    torch.manual_seed(0)
    model = MLP().to(dtype)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    amp = torch.rand(TASKS, 1, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(TASKS, 1, 1, generator=gen) * math.pi
    xs = torch.rand(TASKS, 20, 1, generator=gen) * 10 - 5
    ys = amp * torch.sin(xs - phase)
    xs, ys = xs.to(dtype), ys.to(dtype)
    return MLP_REGRESSION, params, (xs[:, :10], ys[:, :10], xs[:, 10:], ys[:, 10:]), 0.01


PROBLEMS = {"conv4": conv4_problem, "sinusoid": sinusoid_problem,
            # the strided networks on 20x20 inputs: maps of 10, 5, 3 and 2 pixels a side
            "conv4-stride-mean": image_problem("conv4-stride-mean", 20),
            "conv4-stride-flat": image_problem("conv4-stride-flat", 20)}
IMAGES = ("conv4", "conv4-stride-mean", "conv4-stride-flat")


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference ||a - b|| / ||b|| of two flattened meta-gradients."""
    return ((a - b).norm() / b.norm()).item()


def directional_difference(backbone, params: dict[str, torch.Tensor], batch: tuple, options: CoreOptions,
                           direction: dict[str, torch.Tensor]) -> float:
    """Central finite difference of the mean query loss after adaptation along ``direction``.

    It holds only if no ReLU input or max-pool argmax changes sign or place between theta - eps d
    and theta + eps d; at eps = 1e-6 one of the strided networks meets such a kink (the
    difference quotient is then 72 against a gradient of 0.33), at 1e-7 none does, and float64
    rounding stays near 1e-9 relative."""
    eps = 1e-7

    def loss_at(sign: float) -> float:
        shifted = {n: (p + sign * eps * direction[n]).detach().requires_grad_(True) for n, p in params.items()}
        return meta_gradient(backbone, shifted, *batch, options).losses.mean().item()

    return (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)


# (problem, layout): the image problem in both memory layouts.
CASES = [("conv4", "contiguous"), ("conv4", "channels_last"), ("sinusoid", "contiguous"),
         ("conv4-stride-mean", "channels_last"), ("conv4-stride-flat", "contiguous")]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize(("problem", "layout"), CASES)
def test_meta_gradient_matches_finite_differences(problem: str, layout: str, steps: int, strategy: str) -> None:
    """Second-order MAML's meta-gradient (every strategy, both image layouts) equals central finite
    differences of the mean query loss after adaptation, in float64, along random directions;
    the first-order approximation does not."""
    backbone, params, batch, lr = PROBLEMS[problem](torch.float64)
    grads = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, False, strategy, layout=layout)).grads
    fo_grads = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, True, strategy, layout=layout)).grads
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        numeric = directional_difference(backbone, params, batch, CoreOptions(steps, lr, False, "per_task"), direction)
        analytic = sum((grads[n] * direction[n]).sum() for n in params).item()
        first_order = sum((fo_grads[n] * direction[n]).sum() for n in params).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        assert abs(first_order - numeric) > 1e-4 * abs(numeric)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_strategies_agree_in_float64_and_float32(problem: str, steps: int, first_order: bool) -> None:
    """Every strategy, in every layout the problem takes, gives the contiguous per-task strategy's
    meta-gradient to <= 1e-10 (relative L2) in float64 and <= 1e-5 in float32, and the same
    query losses."""
    layouts = LAYOUTS if problem in IMAGES else ("contiguous",)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        backbone, params, batch, lr = PROBLEMS[problem](dtype)
        ref = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, first_order, "per_task"))
        for strategy in STRATEGIES:
            for layout in layouts:
                if (strategy, layout) == ("per_task", "contiguous"):
                    continue
                got = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, first_order, strategy, layout=layout))
                assert rel_diff(flat(got.grads), flat(ref.grads)) <= tol, (strategy, layout, dtype)
                assert torch.allclose(got.losses, ref.losses, rtol=100 * tol, atol=0), (strategy, layout, dtype)


@pytest.mark.parametrize("strategy", ["chunked", "recompute"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("steps", [0, 1, 5])
def test_chunk_sizes_agree(steps: int, chunk: int, strategy: str) -> None:
    """The chunked and recompute paths give the per-task meta-gradient (float64, <= 1e-10) for
    every chunk size, including one that does not divide the meta-batch (2 of 3 tasks) and 0
    inner steps."""
    backbone, params, batch, lr = conv4_problem(torch.float64)
    ref = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, False, "per_task"))
    got = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, False, strategy, chunk=chunk))
    assert rel_diff(flat(got.grads), flat(ref.grads)) <= 1e-10
    assert torch.allclose(got.losses, ref.losses, rtol=1e-12, atol=0)
    assert [o.shape for o in got.outputs] == [o.shape for o in ref.outputs]


@pytest.mark.parametrize("strategy", ["chunked", "recompute"])
def test_empty_chunks_are_rejected(strategy: str) -> None:
    backbone, params, batch, lr = conv4_problem(torch.float64)
    with pytest.raises(ValueError, match="chunk must be >= 1 task, got 0"):
        meta_gradient(backbone, params, *batch, CoreOptions(1, lr, False, strategy, chunk=0))


def test_bad_layouts_are_rejected() -> None:
    backbone, params, batch, lr = sinusoid_problem(torch.float64)
    with pytest.raises(ValueError, match="backbone mlp does not take images: use layout contiguous"):
        meta_gradient(backbone, params, *batch, CoreOptions(1, lr, False, "per_task", layout="channels_last"))
    with pytest.raises(ValueError, match="unknown layout 'nhwc': use one of contiguous, channels_last"):
        meta_gradient(backbone, params, *batch, CoreOptions(1, lr, False, "per_task", layout="nhwc"))


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "layout"), [
    ("per_task", "contiguous"), ("chunked", "channels_last"), ("batched", "contiguous"), ("recompute", "channels_last"),
])
def test_compiled_query_pass_agrees(strategy: str, layout: str) -> None:
    """The query pass under torch.compile gives the eager meta-gradient (float64 <= 1e-10,
    float32 <= 1e-5, relative L2), for 1 and 5 inner steps, in either layout."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        backbone, params, batch, lr = conv4_problem(dtype)
        compiled = compiled_query_forward(backbone)
        for steps in (1, 5):
            ref = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, False, "per_task"))
            got = meta_gradient(backbone, params, *batch, CoreOptions(steps, lr, False, strategy, query_forward=compiled, layout=layout))
            assert rel_diff(flat(got.grads), flat(ref.grads)) <= tol, (dtype, steps)


@pytest.mark.parametrize("per_parameter", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_first_order_is_query_gradient_at_adapted_parameters(strategy: str, per_parameter: bool) -> None:
    """First-order MAML's meta-gradient is the mean over tasks of grad L_query(theta'_i) with
    theta'_i held fixed (Finn et al. 2017, Sec. 5.2), with one inner rate or per-parameter ones."""
    backbone, params, (sx, sy, qx, qy), lr = conv4_problem(torch.float64)
    lr = norm_frozen_rates(params, lr) if per_parameter else lr
    got = meta_gradient(backbone, params, sx, sy, qx, qy, CoreOptions(2, lr, True, strategy)).grads
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for t in range(TASKS):
        fast = adapt(backbone, params, sx[t], sy[t], 2, lr, create_graph=False)
        fast = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
        loss = F.cross_entropy(backbone.forward(fast, qx[t], "native"), qy[t]) / TASKS
        for n, g in zip(fast, torch.autograd.grad(loss, list(fast.values()))):
            expected[n] += g
    assert rel_diff(flat(got), flat(expected)) <= 1e-12


def test_unknown_strategy_is_rejected() -> None:
    backbone, params, batch, lr = sinusoid_problem(torch.float64)
    with pytest.raises(ValueError, match="unknown strategy 'fast': use one of per_task, chunked, batched, recompute, vmap"):
        meta_gradient(backbone, params, *batch, CoreOptions(1, lr, False, "fast"))
    with pytest.raises(ValueError, match="inner steps must be >= 0, got -1"):
        meta_gradient(backbone, params, *batch, CoreOptions(-1, lr, False, "recompute"))


def test_agreement_check_catches_vmap_over_nn_batchnorm() -> None:
    """A trap found while designing the core: torch.func.vmap over a module with
    ``nn.BatchNorm2d(track_running_stats=False)`` returns wrong second-order meta-gradients
    without an error. The float64 agreement check used above (<= 1e-10) rejects such a strategy."""
    _, params, (sx, sy, qx, qy), lr = conv4_problem(torch.float64)
    layers: list[nn.Module] = []
    for c_in in (1, 4, 4, 4):
        layers += [nn.Conv2d(c_in, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.MaxPool2d(2), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4, 3)).double()
    names = [n for n, _ in module.named_parameters()]
    mapped = dict(zip(names, params.values()))

    def support_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(module, p, (x,)), y)

    fast = {n: p.unsqueeze(0).expand(TASKS, *p.shape) for n, p in mapped.items()}
    grads = torch.func.vmap(torch.func.grad(support_loss))(fast, sx, sy)
    fast = {n: fast[n] - lr * grads[n] for n in names}
    loss = sum(F.cross_entropy(functional_call(module, {n: fast[n][t] for n in names}, (qx[t],)), qy[t]) for t in range(TASKS)) / TASKS
    naive = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(mapped.values()))])
    ref = flat(meta_gradient(CONV4, params, sx, sy, qx, qy, CoreOptions(1, lr, False, "per_task")).grads)
    diff = rel_diff(naive, ref)
    if diff <= 1e-10:
        pytest.skip(f"this torch ({torch.__version__}) no longer has the vmap/BatchNorm2d bug (difference {diff:.1e})")
    assert diff > 1e-6  # measured 1e-2 to 1e-1 on torch 2.13: far outside any rounding


def norm_frozen_rates(params: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
    """Per-parameter inner rates: 0 for the batch-norm scales and shifts (``features.{1,5,9,13}``),
    half of ``lr`` for the head, ``lr`` for the convolutions."""
    norm = {n for n in params if n.split(".")[:2] in (["features", "1"], ["features", "5"], ["features", "9"], ["features", "13"])}
    assert len(norm) == 8, sorted(params)
    return {n: 0.0 if n in norm else lr / 2 if n.startswith("head.") else lr for n in params}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_parameter_inner_rates_are_exact(strategy: str) -> None:
    """With per-parameter inner learning rates (batch norm left to the outer loop, a smaller head
    rate), every strategy's second-order meta-gradient equals central finite differences in
    float64, and its first-order one equals the per-task strategy's."""
    backbone, params, batch, lr = PROBLEMS["conv4-stride-mean"](torch.float64)
    rates = norm_frozen_rates(params, lr)
    chunk = 2 if strategy in ("chunked", "recompute") else None  # 2 does not divide the 3 tasks
    grads = meta_gradient(backbone, params, *batch, CoreOptions(2, rates, False, strategy, chunk=chunk)).grads
    fo_ref = meta_gradient(backbone, params, *batch, CoreOptions(2, rates, True, "per_task")).grads
    fo = meta_gradient(backbone, params, *batch, CoreOptions(2, rates, True, strategy, chunk=chunk)).grads
    assert rel_diff(flat(fo), flat(fo_ref)) <= 1e-10
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        numeric = directional_difference(backbone, params, batch, CoreOptions(2, rates, False, "per_task"), direction)
        analytic = sum((grads[n] * direction[n]).sum() for n in params).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_one_inner_step_applies_each_parameters_own_rate() -> None:
    """One inner step with per-parameter rates is theta_n - alpha_n * dL_support/dtheta_n for every
    parameter n, with the gradient taken independently of the core (one autograd call over all
    parameters)."""
    backbone, params, (sx, sy, _, _), lr = PROBLEMS["conv4-stride-mean"](torch.float64)
    rates = norm_frozen_rates(params, lr)
    fast = adapt(backbone, params, sx[0], sy[0], 1, rates, create_graph=False)
    loss = F.cross_entropy(backbone.forward(params, sx[0], "native"), sy[0])
    for (n, p), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
        assert torch.allclose(fast[n], p - rates[n] * g, rtol=0, atol=1e-12), n


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_zero_inner_rates_are_no_adaptation(strategy: str) -> None:
    """When every inner rate is 0 nothing is adapted: every strategy's meta-gradient, second and
    first order, is the query-loss gradient at theta itself (the result of 0 inner steps)."""
    backbone, params, batch, _ = PROBLEMS["conv4-stride-mean"](torch.float64)
    zeros = dict.fromkeys(params, 0.0)
    no_steps = meta_gradient(backbone, params, *batch, CoreOptions(0, 0.4, False, "per_task")).grads
    for first_order in (False, True):
        got = meta_gradient(backbone, params, *batch, CoreOptions(2, zeros, first_order, strategy)).grads
        assert rel_diff(flat(got), flat(no_steps)) <= 1e-10


def test_zero_inner_rates_leave_parameters_unchanged_but_meta_learned() -> None:
    """A parameter whose inner rate is 0 leaves the inner loop as it entered (the same tensor),
    the others move (but the convolution biases, which the batch norm after them cancels: their
    gradient is 0); the meta-gradient still reaches it (the outer loop learns it), and it
    differs from the all-adapted meta-gradient."""
    backbone, params, (sx, sy, qx, qy), lr = PROBLEMS["conv4-stride-mean"](torch.float64)
    rates = norm_frozen_rates(params, lr)
    fast = adapt(backbone, params, sx[0], sy[0], 3, rates, create_graph=True)
    for n in params:
        if rates[n] == 0:
            assert fast[n] is params[n]
        elif not (n.startswith("features.") and n.endswith(".bias")):
            assert not torch.equal(fast[n], params[n]), n
    frozen = meta_gradient(backbone, params, sx, sy, qx, qy, CoreOptions(1, rates, False, "per_task")).grads
    adapted = meta_gradient(backbone, params, sx, sy, qx, qy, CoreOptions(1, lr, False, "per_task")).grads
    for n in params:
        if rates[n] == 0:
            assert frozen[n].abs().sum() > 0, n
    assert rel_diff(flat(frozen), flat(adapted)) > 1e-3
