"""The twice-differentiable fused batch norm (metabench.algorithms.batch_norm) against autograd's
numerical derivatives and against PyTorch's own batch norm."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from metabench.algorithms.batch_norm import batch_norm_twice


def inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    w = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64).requires_grad_(True)
    return x, w, b


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (5, 2), (3, 2, 4)])
def test_first_and_second_derivatives_match_numerical(shape: tuple[int, ...]) -> None:
    """gradcheck and gradgradcheck (central differences, float64) pass for 4-d, 2-d and 3-d input."""
    x, w, b = inputs(shape)
    assert torch.autograd.gradcheck(batch_norm_twice, (x, w, b))
    assert torch.autograd.gradgradcheck(batch_norm_twice, (x, w, b))


def test_equals_pytorch_batch_norm_to_second_order() -> None:
    """Outputs, gradients and a Hessian-vector product equal F.batch_norm's (training mode, no
    running statistics) to float64 rounding."""
    x, w, b = inputs((5, 4, 6, 6), seed=1)
    g = torch.randn(5, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def second(fn) -> tuple[torch.Tensor, ...]:
        y = fn(x, w, b)
        first = torch.autograd.grad((y * g).sum(), (x, w, b), create_graph=True)
        probe = sum((t * t.detach().sin()).sum() for t in first)
        return (y.detach(), *[t.detach() for t in first], *torch.autograd.grad(probe, (x, w), allow_unused=True))

    ours = second(batch_norm_twice)
    ref = second(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-5))
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-12)


def test_third_derivative_raises() -> None:
    x, w, b = inputs((3, 2, 3, 3))
    (gx,) = torch.autograd.grad(batch_norm_twice(x, w, b).pow(3).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="batch_norm_twice has two derivatives, not three"):
        torch.autograd.grad(gx.pow(2).sum(), (x,), create_graph=True)
    (ggx,) = torch.autograd.grad(gx.pow(2).sum(), (x,))  # the second derivative itself works
    assert torch.isfinite(ggx).all() and ggx.abs().sum() > 0


def test_channels_last_input_gives_the_same_derivatives_in_its_layout() -> None:
    """A channels-last input passes gradcheck and gradgradcheck, gives the contiguous input's
    values and gradients to float64 rounding, and its input gradient stays channels-last."""
    x, w, b = inputs((3, 4, 5, 5), seed=3)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(batch_norm_twice, (xc, w, b))
    assert torch.autograd.gradgradcheck(batch_norm_twice, (xc, w, b))
    g = torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = [torch.autograd.grad((batch_norm_twice(t, w, b) * g).sum(), (t, w, b)) for t in (x, xc)]
    for a, r in zip(grads[1], grads[0]):
        assert torch.allclose(a, r, rtol=1e-12, atol=1e-14)
    assert grads[1][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_float32_statistics_are_accurate_in_both_layouts(layout: torch.memory_format) -> None:
    """In float32, batch_norm_twice and Conv4's native block (batch norm then max-pool)
    normalise with statistics as accurate channels-last as contiguous: PyTorch's fused
    channels-last CPU kernel alone is off by ~1e-4 relative for a channel whose mean is several
    times its spread (Omniglot's blank background), which second-order MAML amplifies."""
    from metabench.algorithms.norm_pool import batch_norm_max_pool

    gen = torch.Generator().manual_seed(5)
    x64 = torch.randn(75, 8, 28, 28, generator=gen, dtype=torch.float64) * 0.3 + 1.0
    w, b = torch.rand(8, generator=gen, dtype=torch.float64) + 0.5, torch.randn(8, generator=gen, dtype=torch.float64)
    ref = F.batch_norm(x64, None, None, w, b, training=True, eps=1e-5)
    x = x64.float().contiguous(memory_format=layout)
    for fn, want in ((batch_norm_twice, ref), (batch_norm_max_pool, F.max_pool2d(ref, 2))):
        y = fn(x, w.float(), b.float()).double()
        assert ((y - want).norm() / want.norm()).item() < 1e-6, fn
