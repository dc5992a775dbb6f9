"""Transductive query batches at meta-test time (metabench.algorithms.transductive) and the
``query_batch`` setting of MAML, first-order MAML and Reptile, with ``metabench evaluate --set``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metabench.algorithms import build_learner
from metabench.algorithms.transductive import forward_in_groups, merge_groups, query_groups
from metabench.config import resolve
from metabench.datasets.sampler import Episode, EpisodeIndex
from metabench.errors import ConfigError
from metabench.reevaluate import check_test_settings, evaluate_run, load_learner
from metabench.report import report

REPO = Path(__file__).resolve().parents[1]
TRANSDUCTIVE = ["maml", "fomaml", "reptile"]


def _episode(ways: int = 5, shots: int = 1, queries: int = 4, seed: int = 0) -> Episode:
    """A random class-major episode of 1 x 28 x 28 images (labels 0..ways-1)."""
    g = torch.Generator().manual_seed(seed)
    index = EpisodeIndex(np.arange(ways), np.zeros((ways, shots), dtype=np.int64),
                         np.arange(1, queries + 1).repeat(ways).reshape(queries, ways).T.copy())
    return Episode(torch.rand(ways * shots, 1, 28, 28, generator=g), torch.arange(ways).repeat_interleave(shots),
                   torch.rand(ways * queries, 1, 28, 28, generator=g), torch.arange(ways).repeat_interleave(queries),
                   index)


def test_query_groups_take_every_class_in_each_batch() -> None:
    ep = _episode(ways=3, queries=4)
    groups = query_groups(ep, 1)
    assert [g.tolist() for g in groups] == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    # 3 per class: a batch of 3 per class, then the remaining query of each class
    assert [g.tolist() for g in query_groups(ep, 3)] == [[0, 1, 2, 4, 5, 6, 8, 9, 10], [3, 7, 11]]
    for per_class in (1, 2, 3):  # every query row once, each batch balanced over the classes
        rows = torch.cat(query_groups(ep, per_class))
        assert sorted(rows.tolist()) == list(range(12))
        assert all(torch.bincount(ep.query_y[g], minlength=3).unique().numel() == 1 for g in query_groups(ep, per_class))
    assert query_groups(ep, 0) is None and query_groups(ep, 4) is None and query_groups(ep, 9) is None
    with pytest.raises(ValueError, match="query_batch must be >= 0"):
        query_groups(ep, -1)
    with pytest.raises(ValueError, match="drop --set <learner>.query_batch"):
        query_groups(dataclasses.replace(ep, query_x=ep.query_x[:7]), 1)
    with pytest.raises(ValueError, match="in class-major order"):  # the right size, another order
        query_groups(dataclasses.replace(ep, query_y=ep.query_y.flip(0)), 1)


def test_forward_in_groups_computes_each_batch_on_its_own() -> None:
    ep = _episode(ways=3, queries=4)
    x = torch.randn(12, 2)

    def centre(batch: torch.Tensor) -> torch.Tensor:  # depends on the batch, as batch norm does
        return batch - batch.mean(dim=0)

    groups = query_groups(ep, 2)
    out = forward_in_groups(centre, x, groups)
    for rows in groups:
        assert torch.equal(out[rows], centre(x[rows]))
    assert torch.equal(forward_in_groups(centre, x, None), centre(x))
    assert torch.equal(merge_groups([x[rows] for rows in groups], groups), x)


@pytest.mark.parametrize("name", TRANSDUCTIVE)
def test_query_batch_predicts_each_batch_as_its_own_query_set(name: str) -> None:
    """With ``query_batch`` = 1, ``predict`` equals predicting each sub-episode of one query per
    class with the default learner (the same weights, the same adaptation); the outputs are not
    those of one batch of all queries, which transductive batch norm makes depend on the batch."""
    overrides = {"test_inner_steps": 2} if name == "reptile" else {}
    whole = build_learner(name, 5, (1, 28, 28), 10, "cpu", 0, overrides)
    grouped = build_learner(name, 5, (1, 28, 28), 10, "cpu", 0, {**overrides, "query_batch": 1})
    grouped.load_state_dict(whole.state_dict())
    ep = _episode(queries=3)
    expected = torch.empty(15, 5)
    for q in range(3):
        rows = torch.arange(5) * 3 + q
        sub = dataclasses.replace(ep, query_x=ep.query_x[rows], query_y=ep.query_y[rows],
                                  index=dataclasses.replace(ep.index, query=ep.index.query[:, q:q + 1]))
        expected[rows] = whole.predict(sub)
    out = grouped.predict(ep)
    # Reptile draws its fine-tuning minibatches from the episode's key, which a sub-episode
    # changes: each minibatch (all 5 support images, test_inner_batch 5) comes in another order,
    # the same sums rounded otherwise (2e-6 apart at most, measured).
    assert torch.allclose(out, expected, rtol=0, atol=1e-5 if name == "reptile" else 1e-6)
    assert not torch.allclose(out, whole.predict(ep), rtol=0, atol=1e-2)  # other batch statistics
    steps = grouped.config.test_inner_steps
    assert torch.equal(grouped.predict_steps(ep, [0, steps])[steps], out)


@pytest.mark.parametrize("name", TRANSDUCTIVE)
def test_query_batch_is_refused_for_regression(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"drop --set {name}.query_batch"):
        build_learner(name, 1, (1,), 10, "cpu", 0, {"query_batch": 1})


def test_evaluate_set_takes_test_time_settings_only() -> None:
    check_test_settings("fomaml", {"query_batch": "1", "test_inner_steps": "10"})
    check_test_settings("reptile", {"test_inner_batch": "25"})
    with pytest.raises(ConfigError, match=r"fomaml.inner_lr, network shapes what fomaml learned.*\(test_inner_steps, query_batch\)"):
        check_test_settings("fomaml", {"network": "conv4", "inner_lr": "0.1"})
    with pytest.raises(ConfigError, match=r"protonet.query_batch shapes what protonet learned.*\(none\)"):
        check_test_settings("protonet", {"query_batch": "1"})
    with pytest.raises(ConfigError, match="query_batch"):
        check_test_settings("maml", {"query_batch": "-1"})
    with pytest.raises(ConfigError, match="unknown learner 'mamll'"):
        check_test_settings("mamll", {})


def test_evaluate_records_changed_test_settings(data_root: Path, tmp_path: Path) -> None:
    """``metabench evaluate --set fomaml.query_batch=1`` on kept weights: the setting reaches the
    rebuilt learner and is recorded beside the results; one for a learner the run did not keep is
    refused."""
    source = REPO / "results" / "omniglot-vinyals-5w1s-converge-diagnosis" / "fomaml-inner-norm-off"
    assert load_learner(source / "weights" / "fomaml-seed0.safetensors", test_settings={"query_batch": "1"}).config.query_batch == 1
    out = evaluate_run(source, tmp_path / "grouped", progress=False, test_episodes=2, data_root=str(data_root),
                       download=False, device="cpu", workers=1, test_settings={"fomaml": {"query_batch": "1"}})
    plain = evaluate_run(source, tmp_path / "plain", progress=False, test_episodes=2, data_root=str(data_root),
                         download=False, device="cpu", workers=1)
    losses = [pd.read_csv(d / "episodes.csv")["loss"].to_numpy() for d in (out, plain)]
    assert not np.allclose(*losses, rtol=1e-3)  # the setting changed the predictions
    assert json.loads((out / "config.json").read_text())["test_settings"] == {"fomaml": {"query_batch": "1"}}
    assert json.loads((out / "config.json").read_text())["hparams"]["fomaml"]["query_batch"] == "1"
    assert json.loads((out / "run.json").read_text())["test_settings"] == {"fomaml": {"query_batch": "1"}}
    assert "Test-time settings changed: fomaml query_batch = 1." in (out / "summary.md").read_text()
    assert "re-tested with fomaml query_batch = 1." in (report([out], tmp_path / "report") / "index.md").read_text()
    with pytest.raises(ConfigError, match="--set names maml, which this evaluation does not re-test"):
        evaluate_run(source, tmp_path / "other", progress=False, test_episodes=2, data_root=str(data_root),
                     download=False, device="cpu", workers=1, test_settings={"maml": {"query_batch": "1"}})
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="the active protocol predicts other batches: drop --set fomaml.query_batch"):
        evaluate_run(source, tmp_path / "active", progress=False, test_episodes=2, data_root=str(data_root),
                     download=False, device="cpu", workers=1, protocol="active",
                     test_settings={"fomaml": {"query_batch": "1"}})
    assert not (tmp_path / "active").exists()


def test_runs_refuse_query_batch_outside_the_episodic_protocol() -> None:
    with pytest.raises(ConfigError, match="the stream protocol predicts other batches: drop --set maml.query_batch"):
        resolve({"budget": "smoke", "protocol": "stream", "hparams": {"maml": {"query_batch": 1}}})
    assert resolve({"budget": "smoke", "hparams": {"maml": {"query_batch": 1}}}).hparams["maml"]["query_batch"] == 1
    resolve({"budget": "smoke", "protocol": "stream", "hparams": {"maml": {"query_batch": "0"}}})  # 0: all at once
    # a learner the run does not train is not checked
    resolve({"budget": "smoke", "protocol": "stream", "learners": "protonet", "hparams": {"maml": {"query_batch": 1}}})
