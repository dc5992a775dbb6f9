"""The active protocol: episodes, rounds, annotator, determinism, bad input, and a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metabench import cli
from metabench.config import resolve
from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError
from metabench.protocols import protocol_for
from metabench.protocols.acquisition import STRATEGIES
from metabench.protocols.active import Active, ActiveScorer, ActiveSettings, aulc
from metabench.rundata import data_for

RUN_FILES = {"config.json", "environment.json", "episodes.csv", "curves.csv", "summary.csv", "summary.md", "run.json",
             "weights"}


class NearestMean:
    """A fake learner: class means of the support images in pixel space, logits = -squared
    distance. It records every support set it is adapted on."""

    def __init__(self) -> None:
        self.supports: list[tuple[bytes, tuple[int, ...]]] = []

    def predict(self, ep: Episode) -> torch.Tensor:
        self.supports.append((ep.index.key(), tuple(ep.support_y.tolist())))
        flat = ep.support_x.flatten(1)
        means = torch.stack([flat[ep.support_y == c].mean(0) for c in range(ep.ways)])
        return -torch.cdist(ep.query_x.flatten(1), means) ** 2

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def active_config(data_root: Path, **settings) -> object:
    return resolve({"budget": "smoke", "protocol": "active", "protocol_settings": settings, "test_episodes": 3,
                    "data_root": str(data_root), "download": False, "learners": "protonet"})


def scored(data_root: Path, strategies=tuple(STRATEGIES), **settings) -> tuple[pd.DataFrame, NearestMean]:
    config = active_config(data_root, strategies=",".join(strategies), **settings)
    protocol = protocol_for(config)
    material = protocol.material(config, data_for(config))
    learner = NearestMean()
    scorer = protocol.scorer(config.ways)
    rows = [{"episode": i, **r} for i in range(2) for r in scorer(learner, material.sampler.episode(i))]
    return pd.DataFrame(rows), learner


def test_rounds_labels_and_shared_first_round(data_root: Path) -> None:
    rows, learner = scored(data_root)
    assert list(rows.columns) == ["episode", "strategy", "round", "labels", "accuracy", "loss", "wrong_labels",
                                  "min_class_labels"]
    for (_, strategy), part in rows.groupby(["episode", "strategy"], sort=False):
        assert part["labels"].tolist() == [5, 10, 15, 20] and part["round"].tolist() == [0, 1, 2, 3]
        assert (part["wrong_labels"] == 0).all()  # epsilon 0
        assert part["min_class_labels"].iloc[0] == 1
    balanced = rows[rows["strategy"] == "balanced"]
    assert balanced["min_class_labels"].tolist() == [1, 2, 3, 4] * 2  # a standard K-shot episode each round
    first = rows[rows["round"] == 0].groupby("episode")["accuracy"].nunique()
    assert (first == 1).all()  # round 0 is the same 1-shot episode for every strategy
    # one adaptation for round 0, then one per strategy and round: 1 + 6 x 3 per episode
    assert len(learner.supports) == 2 * (1 + len(STRATEGIES) * 3)


def test_strategies_do_not_perturb_each_other(data_root: Path) -> None:
    both, _ = scored(data_root, strategies=("entropy", "random"), epsilon=0.3)
    alone, _ = scored(data_root, strategies=("random",), epsilon=0.3)
    pd.testing.assert_frame_equal(both[both["strategy"] == "random"].reset_index(drop=True), alone)


def test_annotator_answers_are_fixed_per_item(data_root: Path) -> None:
    """With noise, the wrong labels an item gets do not depend on which strategy asked: all
    strategies end holding the whole pool, hence the same number of wrong labels."""
    rows, _ = scored(data_root, pool=4, queries=4, budget=20, epsilon=0.4)
    last = rows[rows["labels"] == 20].groupby("episode")["wrong_labels"]
    assert (last.nunique() == 1).all() and rows["wrong_labels"].max() > 0
    assert (rows[rows["round"] == 0]["wrong_labels"] == 0).all()  # the seed set is labelled correctly


def test_material_is_deterministic_and_fingerprinted(data_root: Path) -> None:
    config = active_config(data_root)
    data = data_for(config)
    a, b = protocol_for(config).material(config, data), protocol_for(config).material(config, data)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    ep_a, ep_b = a.sampler.episode(1), b.sampler.episode(1)
    assert torch.equal(ep_a.support_x, ep_b.support_x) and torch.equal(ep_a.query_x, ep_b.query_x)
    assert ep_a.support_x.shape[0] == 50 and ep_a.query_x.shape[0] == 50  # P = Q = 10 per class, 5 classes
    other = active_config(data_root, epsilon=0.1)
    assert protocol_for(other).material(other, data).fingerprint != a.fingerprint


def test_aulc_is_the_trapezoid_mean() -> None:
    part = pd.DataFrame({"episode": [0, 0, 0, 1, 1, 1], "labels": [5, 10, 20] * 2,
                         "accuracy": [50.0, 70.0, 90.0, 80.0, 80.0, 80.0]})
    area = aulc(part)
    assert area.loc[0] == pytest.approx((5 * (50 + 70) / 2 + 10 * (70 + 90) / 2) / 15)
    assert area.loc[1] == 80.0


@pytest.mark.parametrize(("settings", "message"), [
    ({"pool": 15, "queries": 10}, "pool 15 \\+ queries 10 = 25 images per class, but the omniglot test classes have 20"),
    ({"budget": 4}, "label budget 4 is below the seed set"),
    ({"budget": 60}, "label budget 60 is above the pool"),
    ({"strategies": "entropy,oracle"}, "unknown acquisition strategy 'oracle'"),
    ({"epsilon": 1.0}, "--epsilon must be in \\[0, 1\\)"),
    ({"epsilon": -0.1}, "--epsilon must be in \\[0, 1\\)"),
    ({"start": 11}, "seed set \\(11 per class\\) is larger than the pool"),
])
def test_bad_settings_name_the_fix(settings: dict, message: str, data_root: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        config = active_config(data_root, **settings)
        protocol = protocol_for(config)
        protocol.check(config, data_for(config))


def test_regression_and_wrong_flags_are_refused(tmp_path: Path, capsys) -> None:
    assert cli.main(["run", "--dataset", "sinusoid", "--protocol", "active", "--out", str(tmp_path / "x")]) == 2
    assert "protocol active is not defined for regression datasets: use --protocol regression" in capsys.readouterr().err
    assert cli.main(["run", "--pool", "5", "--out", str(tmp_path / "y")]) == 2
    assert "--pool is a setting of --protocol active" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smoke_run_evaluate_and_report(tmp_path: Path, data_root: Path, capsys) -> None:
    out = tmp_path / "active"
    args = ["run", "--quiet", "--budget", "smoke", "--protocol", "active", "--test-episodes", "2", "--learners",
            "protonet,maml", "--strategies", "random,entropy,kcenter", "--device", "cpu", "--data-root", str(data_root),
            "--out", str(out)]
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "active" and config["protocol_settings"]["strategies"] == ["random", "entropy", "kcenter"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["learner", "strategy"]].values.tolist() == [
        [n, s] for n in ("protonet", "maml") for s in ("random", "entropy", "kcenter")]
    assert np.isnan(summary.loc[0, "vs_random_pp"]) and not np.isnan(summary.loc[1, "vs_random_pp"])
    assert "| Prototypical Networks | kcenter |" in (out / "summary.md").read_text()
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) == 2 * 2 * 3 * 4  # learners x episodes x strategies x rounds

    again = tmp_path / "again"
    assert cli.main(["evaluate", "--quiet", str(out), "--out", str(again), "--strategies", "random,balanced",
                     "--epsilon", "0.2", "--protocol", "active"]) == 0
    assert set(pd.read_csv(again / "summary.csv")["strategy"]) == {"random", "balanced"}

    episodic = tmp_path / "episodic"
    assert cli.main(["evaluate", "--quiet", str(out), "--out", str(episodic), "--protocol", "episodic",
                     "--test-episodes", "3"]) == 0
    assert list(pd.read_csv(episodic / "episodes.csv").columns) == ["seed", "learner", "episode", "accuracy", "loss"]

    report = tmp_path / "report"
    assert cli.main(["report", str(out), str(episodic), "--out", str(report)]) == 0
    index = (report / "index.md").read_text()
    assert "## Active selection of support labels" in index and "## Accuracy" in index
    for name in ("active-active.md", "active-active.tex", "active-active.csv"):
        assert (report / "tables" / name).is_file()
    assert (report / "figures" / "active-active.png").is_file() and (report / "figures" / "active-active.pdf").is_file()
    capsys.readouterr()


def test_scorer_is_picklable() -> None:
    import pickle

    scorer = Active(ActiveSettings()).scorer(5)
    assert pickle.loads(pickle.dumps(scorer)) == scorer
    assert isinstance(scorer, ActiveScorer) and (scorer.round_size, scorer.budget) == (5, 20)


def test_every_learner_sees_the_same_pools(data_root: Path) -> None:
    """Two different learners are adapted on the same round-0 seed sets and, under random (which
    ignores the learner), on the same labelled sets in every round."""
    config = active_config(data_root, strategies="random,entropy")
    protocol = protocol_for(config)
    material = protocol.material(config, data_for(config))
    scorer = protocol.scorer(config.ways)

    class Shuffled(NearestMean):  # another learner: its logits permuted, so entropy picks differ
        def predict(self, ep: Episode) -> torch.Tensor:
            return super().predict(ep).roll(1, dims=1)

    seen = []
    for learner in (NearestMean(), Shuffled()):
        for i in range(2):
            scorer(learner, material.sampler.episode(i))
        seen.append(learner.supports)
    per_episode = 1 + 2 * 3
    random_rounds = [s for e in range(2) for s in seen[0][e * per_episode:e * per_episode + 4]]
    assert random_rounds == [s for e in range(2) for s in seen[1][e * per_episode:e * per_episode + 4]]


def test_cross_domain_pools(data_root: Path) -> None:
    config = resolve({"budget": "smoke", "protocol": "active", "test_dataset": "digits", "test_episodes": 2,
                      "data_root": str(data_root), "download": False, "learners": "protonet"})
    protocol = protocol_for(config)
    data = data_for(config)
    protocol.check(config, data)
    material = protocol.material(config, data)
    assert material.pool == "digits/all/test"
    rows = protocol.scorer(config.ways)(NearestMean(), material.sampler.episode(0))
    assert [r["labels"] for r in rows if r["strategy"] == "kcenter"] == [5, 10, 15, 20]


def test_settings_survive_the_working_folder_and_old_folders_resume() -> None:
    """state.json stores the configuration as JSON: a resume compares it with the same run's
    configuration (tuples of strategies or error rates included); a folder written before
    protocols existed (no protocol keys) counts as the standard protocol."""
    from metabench import workdir

    for protocol in ("active", "interactive"):
        record = resolve({"budget": "smoke", "protocol": protocol}).to_dict()
        assert workdir.differences(json.loads(json.dumps(record)), record) == []
    standard = resolve({"budget": "smoke"}).to_dict()
    old = {k: v for k, v in standard.items() if k not in ("protocol", "protocol_settings")}
    assert workdir.differences(old, standard) == []
    assert workdir.differences(old, resolve({"budget": "smoke", "protocol": "active"}).to_dict()) != []


def test_evaluate_keeps_a_runs_settings_and_the_report_shows_them(tmp_path: Path, data_root: Path) -> None:
    """Re-testing an active run changes only the settings given (the run's protocol is taken from
    it), and the report's caption states the run's own settings."""
    from metabench.reevaluate import evaluate_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "weights").mkdir()
    (run / "weights" / "protonet-seed0.safetensors").write_bytes(b"")
    (run / "run.json").write_text("{}")
    config = active_config(data_root, pool=8, epsilon=0.1)
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "kind": "classification"}))
    args = cli.build_parser().parse_args(["evaluate", str(run), "--label-budget", "15"])
    changes = cli.protocol_values(args, cli.run_protocol(run))
    again, _ = evaluate_config(run, changes)
    assert again.protocol == "active"
    assert (again.protocol_settings["pool"], again.protocol_settings["epsilon"], again.protocol_settings["budget"]) == (
        8, 0.1, 15)
    caption = Active(Active.make_settings(again.protocol_settings)).caption(again)
    assert "pool of 8" in caption and "ε = 0.1" in caption and "up to 15" in caption
