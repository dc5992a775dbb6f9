"""Backbones shared by the learners: Conv4 for images and the MLP for sinusoid regression.

Conv4 is the four-block convolutional network of Vinyals et al. (2016, Sec. 4.1) used by
Snell et al. (2017, Sec. 3.1), and by Finn et al. (2017, Sec. 5.2) and Nichol et al. (2018, App. A)
on miniImageNet: 4 x [conv 3x3 with 64 filters, batch norm, ReLU, 2x2 max-pool]. It is the
network every learner here uses by default (``network="conv4"``), so that learners are compared
on one network.

For Omniglot the MAML and Reptile papers downsample with the convolutions instead: "For Omniglot,
we used strided convolutions instead of max-pooling" (Finn et al. 2017, Sec. 5.2), and Reptile's
released ``OmniglotModel`` (github.com/openai/supervised-reptile, ``supervised_reptile/models.py``)
is 4 x [conv 3x3 with stride 2, batch norm, ReLU]. The two read out the last 2 x 2 map
differently: MAML's released code (github.com/cbfinn/maml, ``maml.py``, ``forward_conv``) averages
it, "so the dimensionality of the last hidden layer is 64" (Sec. 5.2); Reptile's flattens it
(256 features). :data:`NETWORKS` names the three: ``conv4``, ``conv4-stride-mean`` (MAML's
Omniglot network) and ``conv4-stride-flat`` (Reptile's). Padding is 1 on each side, so 28 x 28
images give 14, 7, 4 and 2 pixels a side, as TensorFlow's ``'SAME'`` padding in both released
codes (which pads one pixel at the bottom and right only: the same sizes, windows one pixel
apart).

Batch norm is **transductive**: it always normalises with the statistics of the batch it is
given, at meta-training and at meta-test time, and keeps no running statistics (Finn et al. 2017,
Sec. 5.2 and their released code; Nichol et al. 2018, Sec. 6 call this the transductive setting).
The module :class:`BatchStatNorm2d` has two implementations of the same function: ``"native"``
calls ``F.batch_norm(training=True)`` without running statistics (one fused kernel, faster than
the tensor-op form: docs/timing.md, "Measurements behind the defaults"; second-order gradients
equal to 1e-14 relative in float64), and
``"tensor_ops"`` writes mean and variance with tensor operations. Use ``"tensor_ops"`` under
``torch.func.vmap``: vmap over ``nn.BatchNorm2d(track_running_stats=False)`` silently returns
wrong second-order meta-gradients on torch 2.13 (tests/test_maml_core.py::test_agreement_check_catches_vmap_over_nn_batchnorm shows it). The functional forms
(:func:`conv4_forward`) have a third, ``"twice"``, and compute each block's batch norm and
max-pool together (``BLOCKS``): fused once-differentiable kernels for ``"native"``, a
hand-derived second derivative for ``"twice"``.

Each block applies the max-pool before the ReLU. ReLU is monotone, so ``relu(maxpool(x)) ==
maxpool(relu(x))`` exactly, with the same gradients (the max of a window is positive in both or in
neither); the ReLU then touches a quarter of the elements. The papers' order is conv, BN, ReLU,
pool; the function is the same.

Besides the modules, the MAML core (:mod:`metabench.algorithms.maml_core`) uses pure functions of
a parameter dict keyed by the modules' parameter names: :func:`conv4_forward` for one task and
:func:`conv4_tasks_forward` for a batch of tasks with one parameter set each (grouped
convolutions), and :func:`mlp_forward` / :func:`mlp_tasks_forward` likewise.

**Memory layout.** Every operation of Conv4 keeps the layout of its input, so images given
channels-last (:func:`channels_last`: ``[M, H, W, C]`` in memory, viewed as ``[M, C, H, W]``) make
the whole forward and backward run channels-last. On CPU that is what oneDNN's convolutions and
PyTorch's max-pool and batch norm are vectorised for (the measurements: docs/timing.md, "Memory
layout"). The values are the same; float32 results differ from the contiguous ones by rounding only (other summation orders).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from metabench.errors import ConfigError

from .batch_norm import batch_norm_twice
from .max_pool import max_pool_2x2
from .norm_pool import batch_norm_max_pool


class BatchStatNorm2d(nn.Module):
    """Batch normalisation with batch statistics only (Ioffe & Szegedy 2015, Alg. 1).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with ``mean`` and biased ``var`` taken
    per channel over the batch and spatial axes of ``x``, at training and at test time.

    Args:
        channels: number of channels C.
        eps: added to the variance for numerical stability.
        impl: ``"native"`` (fused ``F.batch_norm``) or ``"tensor_ops"`` (safe under ``vmap``).

    Shapes:
        input ``[B, C, H, W]`` -> output ``[B, C, H, W]``.

    Raises:
        ValueError: for an unknown ``impl``.
    """

    IMPLS = ("native", "tensor_ops")

    def __init__(self, channels: int, eps: float = 1e-5, impl: str = "native") -> None:
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"unknown batch-norm impl {impl!r}: use native or tensor_ops")
        self.eps = eps
        self.impl = impl
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ``[B, C, H, W]`` with its own per-channel statistics."""
        if self.impl == "native":
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        return batch_stat_norm(x, self.weight, self.bias, (0, 2, 3), self.eps)


def batch_stat_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-5
) -> torch.Tensor:
    """Batch normalisation with batch statistics, in differentiable tensor operations.

    ``(x - mean) * weight / sqrt(var + eps) + bias``, mean and biased variance over ``dims``
    (Ioffe & Szegedy 2015, Alg. 1). Written with one ``addcmul`` so that its graph, and the graph
    of its gradient that second-order MAML differentiates again, has few full-size nodes (measured
    14% faster than ``(x - mean) * scale + bias`` for five inner steps of second-order MAML).

    Args:
        x: input, e.g. ``[B, C, H, W]``.
        weight, bias: scale and shift, already shaped to broadcast against ``x``
            (e.g. ``[1, C, 1, 1]``) or ``[C]`` for the 4-d case.
        dims: the axes the statistics are taken over (all but the channel axis or axes).
        eps: added to the variance.

    Returns:
        A tensor of ``x``'s shape.
    """
    if weight.dim() == 1:
        weight, bias = weight.view(1, -1, 1, 1), bias.view(1, -1, 1, 1)
    centred = x - x.mean(dim=dims, keepdim=True)
    var = (centred * centred).mean(dim=dims, keepdim=True)
    return torch.addcmul(bias, centred, weight * torch.rsqrt(var + eps))


#: Conv4 networks by name -> (how each block halves the image, how the last map is read out):
#: ``max_pool`` (2x2 max-pool after batch norm) or ``stride`` (the convolution has stride 2);
#: ``flatten`` (every pixel of the last map is a feature) or ``mean`` (its average per channel).
#: Sources: the module docstring.
NETWORKS: dict[str, tuple[str, str]] = {
    "conv4": ("max_pool", "flatten"),
    "conv4-stride-mean": ("stride", "mean"),
    "conv4-stride-flat": ("stride", "flatten"),
}


def check_network(learner: str, network: str) -> tuple[str, str]:
    """``(downsample, readout)`` of the Conv4 ``network`` (one of :data:`NETWORKS`).

    Raises:
        ConfigError: for an unknown name, naming the ``--set`` that fixes it.
    """
    if network not in NETWORKS:
        raise ConfigError(f"unknown network {network!r} for {learner}: use --set {learner}.network={'|'.join(NETWORKS)}")
    return NETWORKS[network]


def conv4_feature_dim(image_size: int, hidden: int = 64, network: str = "conv4") -> int:
    """Length of the Conv4 embedding for square ``image_size`` inputs (28 -> 64 for ``conv4`` and
    ``conv4-stride-mean``, 256 for ``conv4-stride-flat``).

    Raises:
        ValueError: for an image too small for four 2x2 max-pools (below 16 pixels), or an
            unknown ``network``.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: use one of {', '.join(NETWORKS)}")
    downsample, readout = NETWORKS[network]
    side = image_size
    for _ in range(4):
        side = side // 2 if downsample == "max_pool" else (side + 1) // 2
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for four 2x2 max-pools (need >= 16)")
    return hidden if readout == "mean" else hidden * side * side


class Conv4(nn.Module):
    """Conv4 backbone, optionally with a linear classification head.

    Parameter names (used by the functional forms): ``features.{0,4,8,12}.weight/bias``
    (convolutions), ``features.{1,5,9,13}.weight/bias`` (batch norm), ``head.weight/bias``.

    Args:
        in_channels: image channels (1 for Omniglot).
        image_size: side of the square input images, in pixels (28 for Omniglot).
        hidden: filters per convolution (64 in all the cited papers for Omniglot).
        n_outputs: if given, a linear head maps the embedding to ``n_outputs`` logits (MAML,
            Reptile); if ``None`` the module returns the embedding (Prototypical and Matching
            Networks).
        norm_impl: :class:`BatchStatNorm2d` implementation, ``"native"`` or ``"tensor_ops"``.
        network: one of :data:`NETWORKS`: ``conv4`` (2x2 max-pools), or the strided Omniglot
            networks of the MAML (``conv4-stride-mean``) and Reptile (``conv4-stride-flat``)
            papers. A strided block keeps the parameter names: its max-pool slot is an identity.

    Shapes:
        input float32 ``[B, in_channels, image_size, image_size]`` -> ``[B, n_outputs]`` or
        ``[B, conv4_feature_dim(image_size, hidden, network)]``.

    Raises:
        ValueError: if ``image_size`` is below 16, or for an unknown ``network``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        n_outputs: int | None = None,
        norm_impl: str = "native",
        network: str = "conv4",
    ) -> None:
        super().__init__()
        self.feature_dim = conv4_feature_dim(image_size, hidden, network)
        downsample, self.readout = NETWORKS[network]
        stride = 2 if downsample == "stride" else 1
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1, stride=stride),
                BatchStatNorm2d(hidden, impl=norm_impl),
                nn.MaxPool2d(2) if downsample == "max_pool" else nn.Identity(),
                nn.ReLU(),
            ]
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(self.feature_dim, n_outputs) if n_outputs is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` and, if the module has a head, classify it (see class docstring)."""
        z = _read_out(self.features(x), self.readout)
        return self.head(z) if self.head is not None else z


def _read_out(x: torch.Tensor, readout: str) -> torch.Tensor:
    """The embedding ``[B, D]`` of the last feature map ``x`` ``[B, C, H, W]`` (:data:`NETWORKS`)."""
    return x.mean(dim=(2, 3)) if readout == "mean" else x.flatten(1)


CONV_LAYERS = (0, 4, 8, 12)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A copy of images ``x`` ``[..., C, H, W]`` laid out channels-last for every leading index:
    in memory ``[..., H, W, C]``, with the shape unchanged.

    Unlike ``x.contiguous(memory_format=torch.channels_last)`` it also lays out one-channel
    images (Omniglot) so that convolutions see them as channels-last (for ``C = 1`` both layouts
    are "contiguous" and PyTorch keeps the strides it has), and it takes any number of leading
    dimensions (``[T, M, C, H, W]`` episodes of a meta-batch).

    Raises:
        ValueError: for fewer than 3 dimensions.
    """
    if x.dim() < 3:
        raise ValueError(f"channels_last needs images [..., C, H, W], got shape {tuple(x.shape)}")
    out = torch.empty((*x.shape[:-3], *x.shape[-2:], x.shape[-3]), dtype=x.dtype, device=x.device)
    return out.movedim(-1, -3).copy_(x)


#: Memory layouts of image batches: PyTorch's default (``contiguous``, ``[..., C, H, W]`` in
#: memory) or :func:`channels_last` (``[..., H, W, C]`` in memory, the same shape).
LAYOUTS = ("contiguous", "channels_last")


def default_layout(images: bool, device: torch.device) -> str:
    """The default image layout: ``channels_last`` for image inputs on CPU, where oneDNN's
    convolutions and PyTorch's max-pool and batch norm are vectorised for it (each learner's
    meta-training step measured faster on 2 cores: docs/timing.md, "Measurements behind the
    defaults"), else ``contiguous`` (feature vectors; CUDA, not measured yet)."""
    return "channels_last" if images and device.type == "cpu" else "contiguous"


def resolve_layout(learner: str, setting: str, images: bool, device: torch.device) -> str:
    """The layout a learner's ``layout`` setting (``auto`` or one of :data:`LAYOUTS`) asks for.

    Raises:
        ConfigError: for an unknown setting, or ``channels_last`` without image inputs.
    """
    if setting not in ("auto", *LAYOUTS):
        raise ConfigError(f"unknown layout {setting!r} for {learner}: use --set {learner}.layout=auto|{'|'.join(LAYOUTS)}")
    if setting == "channels_last" and not images:
        raise ConfigError(f"{learner}.layout=channels_last needs image inputs: use --set {learner}.layout=auto")
    return default_layout(images, device) if setting == "auto" else setting


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Images ``x`` ``[..., C, H, W]`` in ``layout`` (one of :data:`LAYOUTS`): a channels-last
    copy (:func:`channels_last`) or ``x`` itself."""
    return channels_last(x) if layout == "channels_last" else x


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether images ``x`` ``[..., C, H, W]`` are laid out channels-last (as by
    :func:`channels_last`): the channel stride is 1 and a pixel's stride is C."""
    return x.dim() >= 3 and x.stride(-3) == 1 and x.stride(-1) == x.shape[-3] and x.shape[-1] * x.shape[-2] > 1


def _group_tasks(x: torch.Tensor) -> torch.Tensor:
    """``[T, M, C, H, W]`` -> ``[M, T*C, H, W]`` (task t's channels at ``t*C .. t*C+C-1``), in
    the layout of ``x``: channels-last input gives a channels-last result (``[M, H, W, T*C]``
    in memory), so that the grouped convolutions stay channels-last."""
    tasks, m, c, h, w = x.shape
    if not is_channels_last(x):
        return x.transpose(0, 1).reshape(m, tasks * c, h, w)
    out = torch.empty((m, h, w, tasks, c), dtype=x.dtype, device=x.device).permute(0, 3, 4, 1, 2)
    return out.copy_(x.transpose(0, 1)).reshape(m, tasks * c, h, w)


def conv4_forward(params: dict[str, torch.Tensor], x: torch.Tensor, norm: str = "native",
                  network: str = "conv4") -> torch.Tensor:
    """Conv4 (:class:`Conv4`) as a pure function of its parameter dict, for one task.

    Args:
        params: name -> tensor, the parameters of a :class:`Conv4` (with or without a head).
        x: images ``[M, C, H, W]``, contiguous or channels-last (:func:`channels_last`); every
            layer keeps that layout.
        norm: how each block's batch norm and max-pool are computed (the same function):
            ``"native"`` (:func:`~metabench.algorithms.norm_pool.batch_norm_max_pool`: fused
            kernels and one fused backward; differentiable once), ``"twice"``
            (:func:`~metabench.algorithms.batch_norm.batch_norm_twice` and
            :func:`~metabench.algorithms.max_pool.max_pool_2x2`: fused, with a fast second
            derivative, for the second-order inner loop) or ``"tensor_ops"``
            (:func:`batch_stat_norm` and ``F.max_pool2d``, safe under ``vmap``). Strided networks
            have no max-pool and use the batch norm of the same form (:data:`NORMS`).
        network: one of :data:`NETWORKS`, as the :class:`Conv4` the parameters come from.

    Returns:
        Logits ``[M, n_outputs]``, or the embedding ``[M, D]`` if ``params`` has no head.

    Raises:
        KeyError: if ``params`` lacks a Conv4 parameter. ValueError: for an unknown ``norm``.
    """
    downsample, readout = NETWORKS[network]
    block, stride = _block(norm, downsample), 2 if downsample == "stride" else 1
    for i in CONV_LAYERS:
        x = F.conv2d(x, params[f"features.{i}.weight"], params[f"features.{i}.bias"], stride=stride, padding=1)
        w, b = params[f"features.{i + 1}.weight"], params[f"features.{i + 1}.bias"]
        x = F.relu(block(x, w, b))
    z = _read_out(x, readout)
    return F.linear(z, params["head.weight"], params["head.bias"]) if "head.weight" in params else z


def _native_block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return batch_norm_max_pool(x, w, b)


def _twice_block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return max_pool_2x2(batch_norm_twice(x, w, b))


def _tensor_ops_block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(batch_stat_norm(x, w, b, (0, 2, 3)), 2)


# Batch norm then 2 x 2 max-pool, per form (conv4_forward's ``norm``).
BLOCKS = {"native": _native_block, "tensor_ops": _tensor_ops_block, "twice": _twice_block}


def _native_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, None, None, w, b, training=True)


def _tensor_ops_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return batch_stat_norm(x, w, b, (0, 2, 3))


# Batch norm alone, per form, for the strided networks' blocks: the fused kernel, the fused
# kernels with a hand-derived second derivative, tensor operations (safe under vmap).
NORMS = {"native": _native_norm, "tensor_ops": _tensor_ops_norm, "twice": batch_norm_twice}


def _block(name: str, downsample: str = "max_pool"):
    forms = BLOCKS if downsample == "max_pool" else NORMS
    try:
        return forms[name]
    except KeyError:
        raise ValueError(f"unknown batch-norm form {name!r}: use one of {', '.join(forms)}") from None


def conv4_tasks_forward(params: dict[str, torch.Tensor], x: torch.Tensor, norm: str = "tensor_ops",
                        network: str = "conv4") -> torch.Tensor:
    """Conv4 for a batch of T tasks, each with its own parameters, in one pass.

    The T parameter sets are stacked on a leading axis; each convolution runs as one grouped
    convolution with ``groups=T`` (task t's images meet only task t's filters), batch norm takes
    statistics per task and channel (the channels of the grouped tensor), and the head is a
    batched matrix product. Mathematically identical to calling :func:`conv4_forward` per task
    with the same ``norm``.

    Args:
        params: name -> ``[T, *shape]``, the Conv4 parameters of each task (with a head).
        x: images ``[T, M, C, H, W]`` (M images per task); channels-last images
            (:func:`channels_last`) run the grouped convolutions channels-last.
        norm: as in :func:`conv4_forward`.
        network: one of :data:`NETWORKS`, as in :func:`conv4_forward`.

    Returns:
        Logits ``[T, M, n_outputs]``.

    Raises:
        ValueError: for an unknown ``norm``.
    """
    tasks, m = x.shape[:2]
    downsample, readout = NETWORKS[network]
    block, stride = _block(norm, downsample), 2 if downsample == "stride" else 1
    h = _group_tasks(x)
    for i in CONV_LAYERS:
        w = params[f"features.{i}.weight"]
        h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"features.{i}.bias"].reshape(-1), stride=stride,
                     padding=1, groups=tasks)
        # Channels of the grouped tensor are (task, channel) pairs, so per-channel batch norm of
        # [M, T*C, H, W] takes statistics per task and channel, as each task's own forward does.
        gamma, beta = params[f"features.{i + 1}.weight"], params[f"features.{i + 1}.bias"]
        h = F.relu(block(h, gamma.reshape(-1), beta.reshape(-1)))
    # [M, T*C, H, W] -> [T, M, C*H*W] (flatten) or [T, M, C] (mean), task t's channels together.
    z = _read_out(h, readout).reshape(m, tasks, -1).transpose(0, 1)
    return torch.baddbmm(params["head.bias"].unsqueeze(1), z, params["head.weight"].transpose(1, 2))


class MLP(nn.Module):
    """The sinusoid-regression network of Finn et al. (2017, Sec. 5.1): 1-40-40-1 with ReLU.

    Args:
        sizes: layer widths, input first (``(1, 40, 40, 1)``).

    Shapes:
        input ``[M, sizes[0]]`` -> output ``[M, sizes[-1]]``. Parameter names
        ``layers.{0,2,4}.weight/bias``.
    """

    def __init__(self, sizes: tuple[int, ...] = (1, 40, 40, 1)) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            mods.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` ``[M, in]`` to ``[M, out]``."""
        return self.layers(x)


def _linear_names(params: dict[str, torch.Tensor]) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n in params if n.startswith("layers.")}, key=lambda n: int(n.split(".")[1]))


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor, norm: str = "native") -> torch.Tensor:
    """:class:`MLP` as a pure function of its parameter dict: ``x`` ``[M, in]`` -> ``[M, out]``.
    ``norm`` is accepted for signature compatibility with :func:`conv4_forward` and ignored."""
    layers = _linear_names(params)
    for k, name in enumerate(layers):
        x = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
        if k < len(layers) - 1:
            x = F.relu(x)
    return x


def mlp_tasks_forward(params: dict[str, torch.Tensor], x: torch.Tensor, norm: str = "native") -> torch.Tensor:
    """:class:`MLP` for T tasks with stacked parameters ``[T, *shape]``: ``x`` ``[T, M, in]`` ->
    ``[T, M, out]`` (batched matrix products)."""
    layers = _linear_names(params)
    for k, name in enumerate(layers):
        x = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"].transpose(1, 2))
        if k < len(layers) - 1:
            x = F.relu(x)
    return x


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction (0..1) of rows of ``logits`` ``[M, N]`` whose argmax equals ``labels`` ``[M]``."""
    return (logits.argmax(dim=1) == labels).double().mean().item()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``logits`` ``[M, N]`` against integer ``labels`` ``[M]``."""
    return F.cross_entropy(logits, labels)
