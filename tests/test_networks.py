"""The Conv4 networks (metabench.algorithms.backbones.NETWORKS): the strided Omniglot networks of the
MAML and Reptile papers against an independent torch.nn reference, in every functional form and
layout; the learners' ``network`` setting; kept weights re-tested with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from metabench import cli, runner
from metabench.algorithms import build_learner
from metabench.algorithms.backbones import (
    NETWORKS,
    Conv4,
    channels_last,
    conv4_feature_dim,
    conv4_forward,
    conv4_tasks_forward,
)
from metabench.algorithms.maml_core import adapt, conv4_backbone
from metabench.datasets.sampler import Episode, EpisodeIndex
from metabench.errors import ConfigError
from metabench.reevaluate import load_learner

REPO = Path(__file__).resolve().parents[1]

STRIDED = [n for n, (downsample, _) in NETWORKS.items() if downsample == "stride"]


def reference(network: str, ways: int) -> nn.Sequential:
    """The papers' Omniglot network written directly: 4 x [conv 3x3 stride 2, batch norm with batch
    statistics, ReLU], then the mean over the last map (MAML) or its flattening (Reptile), and a
    linear head."""
    layers: list[nn.Module] = []
    for c_in in (1, 64, 64, 64):
        layers += [nn.Conv2d(c_in, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]
    readout: nn.Module = nn.Flatten() if NETWORKS[network][1] == "flatten" else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(*layers, readout, nn.Flatten(), nn.Linear(conv4_feature_dim(28, 64, network), ways)).double()


@pytest.mark.parametrize("network", STRIDED)
def test_strided_networks_match_an_independent_reference(network: str) -> None:
    """28x28 images give maps of 14, 7, 4 and 2 pixels a side and 64 (mean) or 256 (flatten)
    features; the module, conv4_forward in its three batch-norm forms and conv4_tasks_forward in
    both layouts give the reference's logits (float64, to rounding)."""
    torch.manual_seed(0)
    model = Conv4(1, 28, n_outputs=5, network=network).double()
    ref = reference(network, 5)
    ours = [p for n, p in model.named_parameters()]
    with torch.no_grad():
        for p, q in zip(ref.parameters(), ours, strict=True):
            p.copy_(q)
    x = torch.rand(2, 10, 1, 28, 28, dtype=torch.float64)
    expected = torch.stack([ref(x[t]) for t in range(2)])
    assert model.feature_dim == {"mean": 64, "flatten": 256}[NETWORKS[network][1]]
    assert [s for s in (model.features[:k](x[0]).shape[-1] for k in (4, 8, 12, 16))] == [14, 7, 4, 2]
    assert torch.allclose(torch.stack([model(x[t]) for t in range(2)]), expected, rtol=1e-12, atol=1e-12)
    params = {n: p.detach() for n, p in model.named_parameters()}
    stacked = {n: p.unsqueeze(0).expand(2, *p.shape) for n, p in params.items()}
    for norm in ("native", "twice", "tensor_ops"):
        single = torch.stack([conv4_forward(params, x[t], norm, network) for t in range(2)])
        assert torch.allclose(single, expected, rtol=1e-12, atol=1e-12), norm
        for images in (x, channels_last(x)):
            assert torch.allclose(conv4_tasks_forward(stacked, images, norm, network), expected, rtol=1e-12, atol=1e-12), norm
    embedding = Conv4(1, 28, network=network)(x[0].float())
    assert embedding.shape == (10, model.feature_dim)


def test_network_setting_errors_name_the_fix() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"unknown network 'vgg' for maml: use --set maml.network=conv4\|conv4-stride-mean"):
        build_learner("maml", 5, (1, 28, 28), 10, cpu, 0, {"network": "vgg"})
    with pytest.raises(ConfigError, match="unknown network 'resnet' for reptile: use --set reptile.network="):
        build_learner("reptile", 5, (1, 28, 28), 10, cpu, 0, {"network": "resnet"})
    with pytest.raises(ConfigError, match="regression uses the MLP: drop --set fomaml.network"):
        build_learner("fomaml", 1, (1,), 10, cpu, 0, {"network": "conv4-stride-mean"})
    with pytest.raises(ValueError, match="unknown network 'x'"):
        conv4_feature_dim(28, 64, "x")


def test_learners_build_the_network_they_are_given() -> None:
    cpu = torch.device("cpu")
    for name, network in (("maml", "conv4-stride-mean"), ("fomaml", "conv4-stride-mean"), ("reptile", "conv4-stride-flat")):
        learner = build_learner(name, 5, (1, 28, 28), 10, cpu, 0, {"network": network})
        assert learner.model.feature_dim == conv4_feature_dim(28, 64, network)
        assert learner.model.head.in_features == learner.model.feature_dim
        assert isinstance(learner.model.features[2], nn.Identity) and learner.model.features[0].stride == (2, 2)
    assert isinstance(build_learner("maml", 5, (1, 28, 28), 10, cpu, 0).model.features[2], nn.MaxPool2d)


@pytest.mark.slow
def test_strided_learners_train_and_their_kept_weights_retest_identically(tmp_path: Path, data_root: Path) -> None:
    """A smoke run of MAML and Reptile on the papers' Omniglot networks records the network in the
    configuration, and `metabench evaluate` rebuilds the same networks from the kept weights: the
    same per-episode results."""
    out = tmp_path / "strided"
    assert cli.main(["run", "--quiet", "--budget", "smoke", "--learners", "maml,reptile", "--test-episodes", "6",
                     "--set", "maml.network=conv4-stride-mean", "--set", "reptile.network=conv4-stride-flat",
                     "--set", "reptile.test_inner_steps=3", "--data-root", str(data_root), "--out", str(out)]) == 0
    hparams = json.loads((out / "config.json").read_text())["hparams"]
    assert hparams["maml"]["network"] == "conv4-stride-mean" and hparams["reptile"]["network"] == "conv4-stride-flat"
    assert cli.main(["evaluate", "--quiet", str(out), "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(runner.read_csv(out / "episodes.csv"), runner.read_csv(tmp_path / "again" / "episodes.csv"),
                                  check_exact=True)


def test_inner_norm_leaves_batch_norm_to_the_outer_loop() -> None:
    """``inner_norm=false`` (Finn et al.'s released code): the inner rate of the batch-norm
    scales and shifts is 0 and every other parameter's is ``inner_lr``; a meta-training step
    still changes them (the outer loop learns them) and differs from the all-adapted one; the
    regression MLP, which has no batch norm, refuses the setting with the fix."""
    cpu = torch.device("cpu")
    frozen = build_learner("fomaml", 5, (1, 28, 28), 10, cpu, 0,
                           {"network": "conv4-stride-mean", "inner_lr": "0.4", "inner_norm": "false"})
    adapted = build_learner("fomaml", 5, (1, 28, 28), 10, cpu, 0, {"network": "conv4-stride-mean", "inner_lr": "0.4"})
    norm = {f"features.{i}.{p}" for i in (1, 5, 9, 13) for p in ("weight", "bias")}
    assert frozen.inner_lr == {n: 0.0 if n in norm else 0.4 for n, _ in frozen.model.named_parameters()}
    assert adapted.inner_lr == 0.4
    gen = torch.Generator().manual_seed(0)
    index = EpisodeIndex(np.arange(5), np.zeros((5, 1), np.int64), np.ones((5, 1), np.int64))
    episodes = [Episode(torch.rand(5, 1, 28, 28, generator=gen), torch.arange(5),
                        torch.rand(5, 1, 28, 28, generator=gen), torch.arange(5), index) for _ in range(4)]
    before = {n: p.detach().clone() for n, p in frozen.model.named_parameters()}
    frozen.meta_train_step(episodes)
    adapted.meta_train_step(episodes)
    for n in norm:
        assert not torch.equal(dict(frozen.model.named_parameters())[n], before[n]), n
    assert not torch.equal(frozen.model.head.weight, adapted.model.head.weight)
    # Test time adapts with the same rates: predict is the core's inner loop with the learner's
    # per-parameter rates, not with the scalar inner_lr, and predict_steps agrees with it.
    episode = episodes[0]
    params = {n: p.detach().requires_grad_(True) for n, p in frozen.model.named_parameters()}
    backbone = conv4_backbone("conv4-stride-mean")
    steps = frozen.config.test_inner_steps

    def adapted_outputs(rates) -> torch.Tensor:
        fast = adapt(backbone, params, episode.support_x, episode.support_y, steps, rates, create_graph=False)
        return backbone.forward({n: p.detach() for n, p in fast.items()}, episode.query_x, "native")

    with torch.no_grad():
        predicted = frozen.predict(episode)
    assert torch.allclose(predicted, adapted_outputs(frozen.inner_lr), rtol=0, atol=1e-6)
    assert not torch.allclose(predicted, adapted_outputs(0.4), rtol=0, atol=1e-4)
    assert torch.allclose(frozen.predict_steps(episode, [steps])[steps], predicted, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="the regression MLP has none: drop --set maml.inner_norm"):
        build_learner("maml", 1, (1,), 10, cpu, 0, {"inner_norm": "false"})


def test_inner_norm_survives_the_kept_weights() -> None:
    """The committed first-order MAML trained with ``inner_norm=false`` (the diagnosis run) is
    rebuilt from its weights file with batch norm's inner rates at 0 again."""
    learner = load_learner(REPO / "results" / "omniglot-vinyals-5w1s-converge-diagnosis" / "fomaml-inner-norm-off"
                           / "weights" / "fomaml-seed0.safetensors")
    assert learner.config.inner_norm is False
    rates = learner.inner_lr
    assert {n for n, r in rates.items() if r == 0} == {f"features.{i}.{p}" for i in (1, 5, 9, 13) for p in ("weight", "bias")}
    assert {r for r in rates.values() if r != 0} == {0.4}
