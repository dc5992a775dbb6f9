"""Peer implementations of MAML that ``metabench time`` measures ours against.

learn2learn (Arnold et al. 2020, ``learn2learn.algorithms.MAML``: ``clone()`` then ``adapt(loss)``)
and higher (Grefenstette et al. 2019, ``higher.innerloop_ctx`` with a differentiable SGD) run the
same computation as our core: the same Conv4 architecture with the same weights, written the way a
user of those libraries writes it (``nn.Conv2d``, ``nn.BatchNorm2d(track_running_stats=False)``,
``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Linear``), the same episodes, inner SGD with the same inner
learning rate, one backward per task, and one Adam meta-step.

Neither is a dependency of metabench; the nox session ``peers`` installs them. learn2learn 0.2.0
imports torchvision at import time (``learn2learn.vision``), and torchvision's PyPI build cannot
load its C operators with the CPU build of torch 2.13, so :func:`import_learn2learn` imports it
with a stub ``torchvision`` in ``sys.modules`` that defines only the names learn2learn touches at
import time (each raises ``ImportError`` if used) and removes the stub afterwards. Nothing of
learn2learn's MAML uses torchvision.

torchmeta is not a peer: all its releases require torch < 1.10.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError

PEERS = ("learn2learn", "higher")
# Our Conv4's parameter names in the order of standard_conv4's parameters().
CONV4_NAMES = [f"features.{i}.{k}" for i in (0, 1, 4, 5, 8, 9, 12, 13) for k in ("weight", "bias")] + ["head.weight", "head.bias"]

# torchvision names learn2learn 0.2.0 touches while being imported (module -> attributes):
# transforms.py and the CIFAR-FS/FC100/Omniglot benchmarks import the modules; cifarfs.py
# subclasses datasets.ImageFolder; full_omniglot.py, describable_textures.py and quickdraw.py
# import Omniglot and default_loader; the miniImageNet/tieredImageNet benchmarks import seven
# transforms.
_TORCHVISION_NAMES = {
    "torchvision": (),
    "torchvision.datasets": ("ImageFolder",),
    "torchvision.datasets.omniglot": ("Omniglot",),
    "torchvision.datasets.folder": ("default_loader",),
    "torchvision.transforms": (
        "Compose", "ToPILImage", "ToTensor", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Normalize",
    ),
}


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("torchvision is not installed (metabench imports learn2learn with a stub)")


def import_learn2learn() -> types.ModuleType:
    """Import learn2learn with a temporary stub for torchvision (see the module docstring).

    Raises:
        ConfigError: if learn2learn is not installed (names the ``peers`` session).
    """
    added = []
    for name, attrs in _TORCHVISION_NAMES.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = []
        for attr in attrs:
            setattr(module, attr, type(attr, (_Unavailable,), {}))
        sys.modules[name] = module
        added.append(name)
    for name in added:
        parent, _, child = name.rpartition(".")
        if parent in added:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        return importlib.import_module("learn2learn")
    except ImportError as exc:
        raise ConfigError(f"learn2learn is not importable ({exc}): install the peers with `nox -s peers`") from None
    finally:
        for name in added:
            sys.modules.pop(name, None)


def import_higher() -> types.ModuleType:
    """Import higher.

    Raises:
        ConfigError: if it is not installed (names the ``peers`` session).
    """
    try:
        return importlib.import_module("higher")
    except ImportError as exc:
        raise ConfigError(f"higher is not importable ({exc}): install the peers with `nox -s peers`") from None


def torch_nn_conv4(ways: int | None, channels: int = 1, hidden: int = 64, features: int | None = None) -> nn.Sequential:
    """The Conv4 of Vinyals et al. (2016) in standard ``torch.nn`` modules, freshly initialised:
    what a learn2learn or higher user writes. Four blocks of 3x3 convolution (``hidden``
    filters, padding 1), ``nn.BatchNorm2d(track_running_stats=False)`` (batch statistics, as
    ours), ReLU and 2x2 max-pool, then a flatten and (``ways`` not ``None``) a linear head from
    ``features`` inputs (``None``: ``hidden``, the embedding size of 28x28 images; 1600 for 84x84).

    Returns:
        An ``nn.Sequential`` on the CPU in float32: ``[M, channels, H, W]`` -> the flattened
        embeddings, ``[M, hidden]`` for 28x28, or ``[M, ways]`` logits with a head.
    """
    layers: list[nn.Module] = []
    for c_in in (channels, hidden, hidden, hidden):
        layers += [nn.Conv2d(c_in, hidden, 3, padding=1), nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU(),
                   nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    if ways is not None:
        layers.append(nn.Linear(hidden if features is None else features, ways))
    return nn.Sequential(*layers)


def standard_conv4(params: dict[str, torch.Tensor], ways: int) -> nn.Sequential:
    """:func:`torch_nn_conv4` holding copies of ``params`` (the parameter dict of a
    :class:`~metabench.algorithms.backbones.Conv4` with a head), for the peers' steps.

    Returns:
        An ``nn.Sequential`` on ``params``' device and dtype; input ``[M, C, H, W]`` ->
        logits ``[M, ways]``.
    """
    first, head = params["features.0.weight"], params["head.weight"]
    model = torch_nn_conv4(ways, first.shape[1], first.shape[0], head.shape[1]).to(head.device, head.dtype)
    with torch.no_grad():
        for p, name in zip(model.parameters(), CONV4_NAMES, strict=True):
            p.copy_(params[name])
    return model


def meta_gradient_step(
    peer: str, model: nn.Module, episodes: Sequence[Episode], steps: int, inner_lr: float, first_order: bool
) -> list[float]:
    """Accumulate the MAML meta-gradient of ``episodes`` into ``model``'s ``.grad`` with a peer
    library, one backward per task of ``loss_query / T``, as its documentation shows.

    Returns:
        The T query losses (nats).

    Raises:
        ConfigError: for an unknown or uninstalled peer.
    """
    tasks = len(episodes)
    losses = []
    if peer == "learn2learn":
        l2l = import_learn2learn()
        maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
        for ep in episodes:
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(ep.support_x), ep.support_y))
            loss = F.cross_entropy(learner(ep.query_x), ep.query_y)
            (loss / tasks).backward()
            losses.append(loss.item())
        return losses
    if peer == "higher":
        if first_order:
            raise ConfigError("the higher peer is timed for second-order MAML only: use --learners maml")
        higher = import_higher()
        inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
        for ep in episodes:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(ep.support_x), ep.support_y))
                loss = F.cross_entropy(fmodel(ep.query_x), ep.query_y)
                (loss / tasks).backward()
            losses.append(loss.item())
        return losses
    raise ConfigError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")


def peer_step(
    peer: str, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, inner_lr: float, first_order: bool
) -> Callable[[Sequence[Episode]], None]:
    """One meta-training step with a peer: zero the gradients, :func:`meta_gradient_step`, Adam."""
    # Import once here, so that timing never includes the import.
    import_learn2learn() if peer == "learn2learn" else import_higher()

    def step(episodes: Sequence[Episode]) -> None:
        optimizer.zero_grad(set_to_none=True)
        meta_gradient_step(peer, model, episodes, steps, inner_lr, first_order)
        optimizer.step()

    return step
