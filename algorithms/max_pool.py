"""2 x 2 max-pooling that keeps only its argmax for the backward pass, twice differentiable.

``F.max_pool2d`` saves its input for the backward pass, although the gradient only needs the
argmax of each window: ATen's backward kernel reads the input's shape and layout, not its values.
In Conv4 that input is the batch-norm output, the largest tensor of a block (a quarter of the
first block's memory for 75 Omniglot images: 15 MiB of the query graph, and 1 MiB per support
image and inner step of the second-order graph, where batch norm also keeps its own input). This
module's pooling saves the argmax only and hands the backward kernel an unwritten tensor of the
input's shape and strides, so the values and gradients are the same as ``F.max_pool2d``'s,
ties and NaNs included.

The first derivative (the backward kernel) is itself a Function whose derivative is the gather
of the incoming gradient at the argmax (max-pooling's gradient is linear in the upstream
gradient and, almost everywhere, constant in the input), so second-order MAML can differentiate
through the inner loop's backward pass.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from .batch_norm import _layout

# 2 x 2 windows, stride 2 (ATen's max_pool2d arguments), shared with norm_pool.
POOL_ARGS = ([2, 2], [2, 2], [0, 0], [1, 1], False)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Channels-last ``t`` ``[N, C, H, W]`` as the view ``[N, H*W, C]`` of its memory."""
    n, c = t.shape[:2]
    return t.permute(0, 2, 3, 1).reshape(n, -1, c)


def _gather_at(gg: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``gg`` ``[N, C, H, W]`` read at the flat in-plane positions ``indices`` ``[N, C, h, w]``
    (``gg[n, c].flatten()[indices[n, c, i, j]]``), in the layout of ``gg``."""
    n, c, h, w = indices.shape
    if _layout(gg) is torch.channels_last:
        picked = _rows(gg).gather(1, _rows(indices))
        return picked.view(n, h, w, c).permute(0, 3, 1, 2)
    return gg.reshape(n, c, -1).gather(2, indices.reshape(n, c, h * w)).view(n, c, h, w)


class _Unpool(Function):
    """``(g, indices) -> grad_input``: max-pooling's backward, differentiable in ``g``."""

    @staticmethod
    def forward(ctx, g, indices, shape, stride):
        like_input = torch.empty_strided(shape, stride, dtype=g.dtype, device=g.device)  # never written or read
        ctx.save_for_backward(indices)
        return torch.ops.aten.max_pool2d_with_indices_backward(g, like_input, *POOL_ARGS, indices)

    @staticmethod
    def backward(ctx, gg):
        (indices,) = ctx.saved_tensors
        return _gather_at(gg, indices), None, None, None


class _MaxPool(Function):
    """2 x 2 max-pooling with stride 2 that saves only the argmax."""

    @staticmethod
    def forward(ctx, x):
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, *POOL_ARGS)
        ctx.save_for_backward(indices)
        ctx.geometry = (tuple(x.shape), tuple(x.stride()))
        return out

    @staticmethod
    def backward(ctx, g):
        (indices,) = ctx.saved_tensors
        return _Unpool.apply(g, indices, *ctx.geometry)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` that keeps only the argmax for its gradients (module docstring).

    Args:
        x: ``[B, C, H, W]``, contiguous or channels-last (the output and the gradients keep the
            layout); odd ``H`` or ``W`` drop the last row or column, as ``F.max_pool2d`` does.

    Returns:
        ``[B, C, H // 2, W // 2]``, equal to ``F.max_pool2d(x, 2)``, with equal first and second
        derivatives.

    Raises:
        ValueError: for input that is not 4-d. RuntimeError: from ATen, for input smaller than
            2 x 2.

    Not usable under ``torch.func`` transforms (an autograd Function without a vmap rule): the
    ``vmap`` path's ``"tensor_ops"`` batch norm uses ``F.max_pool2d``.
    """
    if x.dim() != 4:
        raise ValueError(f"max_pool_2x2 takes images [B, C, H, W], got shape {tuple(x.shape)}: add a batch axis")
    return _MaxPool.apply(x)
