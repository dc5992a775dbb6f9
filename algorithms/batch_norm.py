"""Transductive batch norm with a hand-derived second derivative, for second-order MAML.

Second-order MAML differentiates the support pass twice: once in the inner loop (with
``create_graph=True``) and once more in the outer loop. PyTorch's fused ``F.batch_norm`` has a
fused backward, but its double backward is a composite of many small operations, and batch norm
written in tensor operations (:func:`metabench.algorithms.backbones.batch_stat_norm`) records a
graph of a dozen full-size nodes per layer. Here the forward and the backward are the fused ATen
kernels (``native_batch_norm`` and ``native_batch_norm_backward``), and the backward is itself an
autograd Function whose derivative is written out below, so each batch-norm layer of the inner
loop costs a few fused passes and keeps three full-size tensors for the outer loop.

Derivation (per channel, over its ``n`` elements ``x``; Ioffe & Szegedy 2015, Alg. 1 for the
forward and Sec. 3 for the first derivative). With ``mu`` the mean, ``r = 1/sqrt(var + eps)``
(biased variance), ``xh = (x - mu) r`` and ``y = gamma xh + beta``, the backward of an upstream
gradient ``g = dL/dy`` is

    dbeta = sum(g),  dgamma = sum(g xh),  dx = gamma r P g,
    P v = v - mean(v) - xh mean(v xh)            (P is symmetric; dxh_j/dx_i = r P_ij),

and ``native_batch_norm_backward`` without a weight computes ``r P v`` in one kernel. The outer
loop sends gradients ``u``, ``a``, ``b`` for ``dx``, ``dgamma``, ``dbeta``; differentiating
``<u, dx> + a dgamma + b dbeta`` (using ``dr/dx_i = -r^2 xh_i / n``) gives

    d/dg     = gamma (r P u) + a xh + b
    d/dgamma = sum(u (r P g))
    d/dx     = (a - gamma r sum(u xh) / n) (r P g) - (gamma r / n) sum(u (r P g)) xh
               - gamma r mean(g xh) (r P u).

The tests check all of it against ``torch.autograd.gradgradcheck`` in float64 and against the
tensor-op batch norm inside the MAML meta-gradient.
"""

from __future__ import annotations

import torch


def _stat_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout of ``x`` (channels-last for 4-d channels-last inputs), for the upstream gradient."""
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1:
        return torch.channels_last
    return torch.contiguous_format


def _channels_last_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance ``[C]`` of channels-last ``x`` ``[B, C, H, W]``, in
    two passes (the mean, then the mean square of the centred values) over its rows
    ``[B*H*W, C]``, a view of its memory; PyTorch's cascade summation keeps them accurate: 6-8e-8
    relative in float32 on 75 x 64 x 28 x 28, against 2-3e-8 for ``torch.var_mean`` and 1e-6 to
    1e-4 for the fused channels-last kernel. ``torch.var_mean`` reduces over a strided axis there,
    which made it ten times slower than this (docs/timing.md, "Memory layout")."""
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    mean = rows.mean(0)
    centred = rows - mean
    return mean, centred.mul_(centred).mean(0)


def normalize(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward pass of transductive batch norm, outside autograd: ``(y, mean, invstd)`` with
    ``y`` like ``x`` ``[B, C, ...]`` and the per-channel batch mean and ``1/sqrt(var + eps)``
    ``[C]`` (biased variance; Ioffe & Szegedy 2015, Alg. 1): ATen's fused kernel, or for
    channels-last ``x`` its inference mode with statistics from tensor operations.

    PyTorch 2.13's fused CPU kernel accumulates channels-last statistics with a large float32
    error (first Conv4 block, 75 Omniglot-like images: relative error 8.7e-5 in the mean and
    5.1e-5 in 1/std, against 3e-8 for the contiguous kernel; second-order MAML amplified it to
    7e-3 in the float32 meta-gradient). So for channels-last ``x`` the statistics come from
    :func:`_channels_last_stats` and the kernel's inference mode normalises with them.

    Raises:
        RuntimeError: from ATen for mismatched shapes.
    """
    if _layout(x) is torch.channels_last:
        mean, var = _channels_last_stats(x)
        y = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
        return y, mean, (var + eps).rsqrt()
    return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)


def _r_p(v: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, eps: float) -> torch.Tensor:
    """``r P v``: the batch-norm input gradient of ``v`` without a weight (one fused kernel)."""
    grad_input, _, _ = torch.ops.aten.native_batch_norm_backward(
        v, x, None, None, None, mean, invstd, True, eps, [True, False, False]
    )
    return grad_input


class _BatchNormBackward(torch.autograd.Function):
    """``(g, x, gamma) -> (dx, dgamma, dbeta)``, the batch-norm backward, differentiable once."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps):
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(g, x, weight)
        ctx.stats = (mean, invstd, eps, dw.detach())
        return dx, dw, db

    @staticmethod
    def backward(ctx, u, a, b):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, a, b)):
            raise RuntimeError(
                "batch_norm_twice has two derivatives, not three: use F.batch_norm or "
                "batch_stat_norm for third-order gradients"
            )
        g, x, weight = ctx.saved_tensors
        mean, invstd, eps, dw = ctx.stats
        shape = _stat_shape(x)
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        r = invstd.view(shape)
        gamma = weight.view(shape)
        xh = (x - mean.view(shape)) * r
        rpg = _r_p(g, x, mean, invstd, eps)
        rpu = _r_p(u, x, mean, invstd, eps)
        grad_weight = (u * rpg).sum(dims)
        grad_g = torch.addcmul(b.view(shape), xh, a.view(shape)).add_(rpu * gamma)
        s_uxh = (u * xh).sum(dims, keepdim=True)
        grad_x = rpg * (a.view(shape) - gamma * r * s_uxh / n)
        grad_x -= xh * (gamma * r * grad_weight.view(shape) / n)
        grad_x -= rpu * (gamma * r * dw.view(shape) / n)
        return grad_g, grad_x, grad_weight, None, None, None


class _BatchNorm(torch.autograd.Function):
    """Batch-statistics batch norm whose backward is :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = normalize(x, weight, bias, eps)
        ctx.save_for_backward(x, weight)
        ctx.stats = (mean, invstd, eps)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        mean, invstd, eps = ctx.stats
        dx, dw, db = _BatchNormBackward.apply(g.contiguous(memory_format=_layout(x)), x, weight, mean, invstd, eps)
        return dx, dw, db, None


def batch_norm_twice(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Transductive batch norm (batch statistics, no running statistics), twice differentiable.

    The same function as ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``
    (Ioffe & Szegedy 2015, Alg. 1), with fused kernels for the forward, the backward and a
    hand-derived second derivative (module docstring), for the support pass of second-order MAML.
    Asking for the graph of a third derivative raises.

    Args:
        x: ``[B, C, H, W]`` (or ``[B, C]``, ``[B, C, L]``), float32 or float64, contiguous or
            (4-d) channels-last; the gradients keep the layout.
        weight, bias: ``[C]`` scale and shift; both required.
        eps: added to the biased variance.

    Returns:
        ``[B, C, ...]``, like ``x``.

    Raises:
        RuntimeError: when a third derivative's graph is requested (``create_graph=True``
            through the second derivative), or from ATen for mismatched shapes.
    """
    return _BatchNorm.apply(x, weight, bias, eps)
