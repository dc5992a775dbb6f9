"""Channels-last images for Conv4 (metabench.algorithms.backbones): the copy helper, the layout
test, and the forwards keeping the layout and the values."""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms.backbones import (
    Conv4,
    channels_last,
    conv4_forward,
    conv4_tasks_forward,
    is_channels_last,
)


@pytest.mark.parametrize("shape", [(4, 1, 6, 6), (4, 3, 6, 6), (2, 4, 1, 6, 6), (2, 4, 3, 5, 7)])
def test_channels_last_copies_values_into_the_channels_last_layout(shape: tuple[int, ...]) -> None:
    """Values and shape are kept; in memory each image is [H, W, C] (channel stride 1, pixel
    stride C), also for one channel, where ``.contiguous(memory_format=...)`` keeps the strides."""
    x = torch.randn(shape)
    y = channels_last(x)
    assert y.shape == x.shape and torch.equal(y, x)
    c, _, w = shape[-3:]
    assert y.stride()[-3:] == (1, w * c, c)
    assert is_channels_last(y) and not is_channels_last(x)
    if c == 1 and len(shape) == 4:
        assert not is_channels_last(x.contiguous(memory_format=torch.channels_last))


def test_channels_last_needs_images() -> None:
    with pytest.raises(ValueError, match=r"channels_last needs images \[..., C, H, W\], got shape \(3, 4\)"):
        channels_last(torch.zeros(3, 4))


def test_one_channel_images_make_the_convolutions_channels_last() -> None:
    """Omniglot's one-channel images laid out by channels_last give channels-last feature maps
    (so the whole network runs channels-last); plain contiguous ones do not."""
    w = torch.randn(8, 1, 3, 3)
    x = torch.rand(5, 1, 12, 12)
    assert torch.nn.functional.conv2d(channels_last(x), w, padding=1).is_contiguous(memory_format=torch.channels_last)
    assert not torch.nn.functional.conv2d(x, w, padding=1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", [1, 3])
def test_forwards_give_the_same_values_in_both_layouts(channels: int) -> None:
    """conv4_forward and conv4_tasks_forward (grouped convolutions) give the same logits for
    channels-last and contiguous images (float64, to rounding)."""
    torch.manual_seed(0)
    params = {n: p.detach() for n, p in Conv4(channels, 16, hidden=6, n_outputs=3).double().named_parameters()}
    x = torch.rand(2, 5, channels, 16, 16, dtype=torch.float64)
    stacked = {n: p.unsqueeze(0).expand(2, *p.shape) for n, p in params.items()}
    for norm in ("native", "twice", "tensor_ops"):
        ref = torch.stack([conv4_forward(params, x[t], norm) for t in range(2)])
        assert torch.allclose(torch.stack([conv4_forward(params, channels_last(x)[t], norm) for t in range(2)]), ref, rtol=1e-12, atol=1e-12)
        assert torch.allclose(conv4_tasks_forward(stacked, channels_last(x), norm), ref, rtol=1e-12, atol=1e-12)
        assert torch.allclose(conv4_tasks_forward(stacked, x, norm), ref, rtol=1e-12, atol=1e-12)
