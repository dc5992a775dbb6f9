"""Transductive batch norm followed by 2 x 2 max-pooling, with one fused backward pass.

For passes that are differentiated once (the query pass of MAML, first-order inner loops). In
Conv4's first block the two layers touch the largest tensors of the network (75 Omniglot images:
64 x 28 x 28 per image, 15 MiB per tensor); done separately, the backward pass materialises
the pooling gradient at full size (three quarters zeros) and reads it twice in the batch-norm
backward. Here the backward never builds it.

Derivation (per channel over its ``n`` elements; Ioffe & Szegedy 2015, Alg. 1 and Sec. 3). With
mean ``mu``, ``r = 1/sqrt(var + eps)``, ``xh = (x - mu) r`` and ``y = gamma xh + beta``, the
gradient ``g`` of ``y`` is the pooled gradient ``gp`` scattered to the argmax of each window
(zero elsewhere), so with ``s = sum(gp)`` and ``t = sum(gp * xh[argmax])``:

    dbeta = s,  dgamma = t,
    dx = gamma r (g - s/n - xh t/n) = (x - mu) r w + b + scatter(gamma r gp),
    with w = -gamma r t / n and b = -gamma r s / n per channel.

The dense part is one fused pass (``native_batch_norm`` in inference mode with weight ``w`` and
bias ``b``); the scatter touches a quarter of the elements. Values equal those of
``F.max_pool2d(F.batch_norm(x, None, None, gamma, beta, training=True), 2)`` (ties in the pool
go to the same element), and gradients agree to rounding.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from .batch_norm import _layout, normalize
from .max_pool import POOL_ARGS, _gather_at, _rows


def _scatter_add(dx: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """``dx[n, c].flatten()[indices[n, c, i, j]] += values[n, c, i, j]`` in place, for ``dx`` in
    either layout (``indices`` and ``values`` in the same layout as ``dx``)."""
    n, c, h, w = indices.shape
    if _layout(dx) is torch.channels_last:
        dx.permute(0, 2, 3, 1).view(n, -1, c).scatter_add_(1, _rows(indices), _rows(values))
    else:
        dx.view(n, c, -1).scatter_add_(2, indices.reshape(n, c, h * w), values.reshape(n, c, h * w))


class _NormPool(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = normalize(x, weight, bias, eps)
        out, indices = torch.ops.aten.max_pool2d_with_indices(y, *POOL_ARGS)
        del y
        ctx.save_for_backward(x, weight, indices)
        ctx.stats = (mean, invstd, eps)
        return out

    @staticmethod
    def backward(ctx, gp):
        if torch.is_grad_enabled():
            # create_graph=True: a second derivative would silently miss this block's terms.
            raise RuntimeError(
                "batch_norm_max_pool is differentiable once: use batch_norm_twice and max_pool_2x2 "
                "(Conv4's norm='twice') for second-order gradients"
            )
        x, weight, indices = ctx.saved_tensors
        mean, invstd, eps = ctx.stats
        gp = gp.contiguous(memory_format=_layout(indices))
        n = x.numel() // x.shape[1]
        dims = [0, 2, 3]
        s = gp.sum(dims)
        xh_at = (_gather_at(x, indices) - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        t = (gp * xh_at).sum(dims)
        gamma_r = weight * invstd
        var = invstd.pow(-2) - eps  # the variance whose (var + eps)^-1/2 is invstd
        dx = torch.native_batch_norm(x, -gamma_r * t / n, -gamma_r * s / n, mean, var, False, 0.0, eps)[0]
        _scatter_add(dx, indices, gp * gamma_r.view(1, -1, 1, 1))
        return dx, t, s, None


def batch_norm_max_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``F.max_pool2d(F.batch_norm(x, None, None, weight, bias, training=True, eps=eps), 2)``
    (transductive batch norm, then 2 x 2 max-pooling), with a fused backward (module docstring).

    Args:
        x: ``[B, C, H, W]``, float32 or float64, contiguous or channels-last (the output and the
            input gradient keep the layout).
        weight, bias: ``[C]`` scale and shift, both required.
        eps: added to the biased variance.

    Returns:
        ``[B, C, H // 2, W // 2]``.

    Raises:
        RuntimeError: when its gradient is taken with ``create_graph=True`` (a second derivative
            would miss this block's terms; use ``batch_norm_twice`` and ``max_pool_2x2`` there),
            or from ATen for mismatched shapes. ValueError: for input that is not 4-d.
    """
    if x.dim() != 4:
        raise ValueError(f"batch_norm_max_pool takes images [B, C, H, W], got shape {tuple(x.shape)}: add a batch axis")
    return _NormPool.apply(x, weight, bias, eps)
