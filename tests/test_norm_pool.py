"""Conv4's pooling forms (metabench.algorithms.max_pool, metabench.algorithms.norm_pool) against
PyTorch's own max-pool and batch norm, and against autograd's numerical derivatives."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from metabench.algorithms.backbones import channels_last
from metabench.algorithms.max_pool import max_pool_2x2
from metabench.algorithms.norm_pool import batch_norm_max_pool

SHAPES = [(3, 4, 6, 6), (2, 5, 7, 7), (4, 3, 3, 3), (2, 1, 4, 4)]


def image(shape: tuple[int, ...], layout: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 1
    return (channels_last(x) if layout == "channels_last" else x).requires_grad_(True)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal strides where they matter (dimensions longer than 1)."""
    return a.shape == b.shape and all(s == t for s, t, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES)
def test_max_pool_equals_pytorch_to_second_order(shape: tuple[int, ...], layout: str) -> None:
    """max_pool_2x2 gives F.max_pool2d's output, gradient and gradient-of-gradient exactly, in
    the input's layout (odd sizes drop the last row and column)."""
    x = image(shape, layout)
    ref, got = F.max_pool2d(x, 2), max_pool_2x2(x)
    assert torch.equal(got, ref) and same_layout(got, ref)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    (ref_dx,), (got_dx,) = (torch.autograd.grad(y, x, g, create_graph=True) for y in (ref, got))
    assert torch.equal(got_dx, ref_dx) and same_layout(got_dx, x)
    u = image(shape, layout, seed=2).detach()
    (ref_dg,), (got_dg,) = (torch.autograd.grad(dx, g, u) for dx in (ref_dx, got_dx))
    assert torch.equal(got_dg, ref_dg)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool_passes_gradcheck_and_gradgradcheck(layout: str) -> None:
    x = image((2, 3, 6, 5), layout)
    assert torch.autograd.gradcheck(max_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(max_pool_2x2, (x,))


def test_max_pool_keeps_only_the_argmax() -> None:
    """The graph saves the argmax (int64), not the input: the point of the module."""
    x = image((2, 3, 8, 8), "contiguous")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        max_pool_2x2(x)
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.int64, (2, 3, 4, 4))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES)
def test_norm_pool_equals_batch_norm_then_max_pool(shape: tuple[int, ...], layout: str, dtype: torch.dtype) -> None:
    """batch_norm_max_pool equals F.max_pool2d(F.batch_norm(...)) in value and in its gradients
    (input, scale, shift) to rounding: float64 1e-13, float32 1e-5 (the reference's own
    channels-last statistics carry ~1e-6), with a scale of mixed signs."""
    x = image(shape, layout, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    w = (torch.rand(shape[1], generator=gen, dtype=dtype) - 0.3).requires_grad_(True)
    b = torch.randn(shape[1], generator=gen, dtype=dtype).requires_grad_(True)
    ref = F.max_pool2d(F.batch_norm(x, None, None, w, b, training=True, eps=1e-5), 2)
    got = batch_norm_max_pool(x, w, b)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert rel(got, ref) < tol and same_layout(got, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    got_grads = torch.autograd.grad(got, (x, w, b), g)
    for a, r in zip(got_grads, torch.autograd.grad(ref, (x, w, b), g)):
        assert rel(a, r) < tol
    assert same_layout(got_grads[0], x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_norm_pool_passes_gradcheck_and_refuses_a_second_derivative(layout: str) -> None:
    """A first derivative that would silently drop second-order terms is an error instead."""
    x = image((3, 2, 4, 6), layout)
    w = torch.tensor([0.7, -1.2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.1, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(batch_norm_max_pool, (x, w, b))
    y = batch_norm_max_pool(x, w, b)
    with pytest.raises(RuntimeError, match="batch_norm_max_pool is differentiable once: use batch_norm_twice"):
        torch.autograd.grad((y * y).sum(), x, create_graph=True)


def test_pooling_forms_reject_input_that_is_not_4d() -> None:
    """3-d input would pool across channels silently in ATen: a one-line error instead."""
    x = torch.randn(3, 4, 6)
    with pytest.raises(ValueError, match=r"max_pool_2x2 takes images \[B, C, H, W\], got shape \(3, 4, 6\): add a batch axis"):
        max_pool_2x2(x)
    with pytest.raises(ValueError, match=r"batch_norm_max_pool takes images \[B, C, H, W\], got shape \(3, 4, 6\)"):
        batch_norm_max_pool(x, torch.ones(4), torch.zeros(4))
