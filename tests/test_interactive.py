"""The interactive protocol: streams, corrections, annotator noise, latency, bad input, smoke run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from metabench import cli
from metabench.config import resolve
from metabench.datasets.sampler import Episode
from metabench.errors import ConfigError
from metabench.protocols import interactive, protocol_for
from metabench.rundata import data_for

RUN_FILES = {"config.json", "environment.json", "episodes.csv", "curves.csv", "summary.csv", "summary.md", "run.json",
             "weights"}


class NearestMean:
    """A fake learner: class means of the labelled images in pixel space; optionally slow."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep
        self.calls = 0

    def predict(self, ep: Episode) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.sleep)
        flat = ep.support_x.flatten(1)
        means = torch.stack([flat[ep.support_y == c].mean(0) for c in range(ep.ways)])
        return -torch.cdist(ep.query_x.flatten(1), means) ** 2


def setup(data_root: Path, **settings):
    config = resolve({"budget": "smoke", "protocol": "interactive", "protocol_settings": settings, "test_episodes": 2,
                      "data_root": str(data_root), "download": False, "learners": "protonet"})
    protocol = protocol_for(config)
    data = data_for(config)
    protocol.check(config, data)
    return config, protocol, protocol.material(config, data)


def rows_of(data_root: Path, learner=None, **settings) -> pd.DataFrame:
    config, protocol, material = setup(data_root, **settings)
    scorer = protocol.scorer(config.ways)
    learner = learner or NearestMean()
    return pd.DataFrame([{"episode": i, **r} for i in range(2) for r in scorer(learner, material.sampler.episode(i))])


def test_stream_rounds_corrections_and_shared_first_round(data_root: Path) -> None:
    rows = rows_of(data_root)
    assert list(rows.columns) == ["episode", "epsilon", "round", "labels", "seen_accuracy", "heldout_accuracy",
                                  "corrections", "cumulative_corrections", "wrong_labels", "latency_ms"]
    for (_, epsilon), part in rows.groupby(["episode", "epsilon"]):
        assert part["round"].tolist() == list(range(8))
        # only corrected items join the labelled set; seen accuracy counts the M = 5 items
        assert part["labels"].diff().dropna().tolist() == part["corrections"].iloc[:-1].tolist()
        assert part["labels"].iloc[0] == 5
        assert (part["cumulative_corrections"] == part["corrections"].cumsum()).all()
        assert (part["seen_accuracy"] == 100.0 * (5 - part["corrections"]) / 5).all()
        if epsilon == 0:
            assert (part["wrong_labels"] == 0).all()
    first = rows[rows["round"] == 0].groupby("episode")[["seen_accuracy", "heldout_accuracy", "latency_ms"]].nunique()
    assert (first == 1).all().all()  # round 0 (seed set only) is shared by the error rates


def test_confirm_mode_feeds_back_every_item(data_root: Path) -> None:
    rows = rows_of(data_root, confirm=True, epsilons="0")
    assert rows.groupby("episode")["labels"].apply(list).tolist() == [[5 + 5 * r for r in range(8)]] * 2


def test_annotator_noise_reaches_the_labels(data_root: Path) -> None:
    rows = rows_of(data_root, confirm=True, epsilons="0,0.5")
    last = rows[rows["round"] == 7]
    assert (last[last["epsilon"] == 0]["wrong_labels"] == 0).all()
    noisy = last[last["epsilon"] == 0.5]["wrong_labels"] / (last[last["epsilon"] == 0.5]["labels"] - 5)
    assert noisy.between(0.2, 0.8).all()  # about half of the 35 labels the person gave (5-sigma: 0.5 ± 0.42)


def test_latency_is_the_learner_call_only(data_root: Path, monkeypatch) -> None:
    """A learner that takes 50 ms per call; the annotator and the scoring made 200 ms slower:
    the latency is the 50 ms only."""
    real = interactive.annotate

    def slow_annotate(*args, **kwargs):
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(interactive, "annotate", slow_annotate)
    rows = rows_of(data_root, learner=NearestMean(sleep=0.05), epsilons="0", rounds=3)
    assert rows["latency_ms"].between(50, 150).all(), rows["latency_ms"].tolist()


def test_material_is_deterministic_and_fingerprinted(data_root: Path) -> None:
    _, _, a = setup(data_root)
    _, _, b = setup(data_root)
    _, _, other = setup(data_root, rounds=6)
    assert a.fingerprint == b.fingerprint != other.fingerprint
    ep = a.sampler.episode(0)
    assert ep.support_x.shape[0] == 5 * 9 and ep.query_x.shape[0] == 5 * 5  # seed + 8 stream images; 5 held out
    assert torch.equal(ep.support_x, b.sampler.episode(0).support_x)
    first, second = rows_of(data_root), rows_of(data_root)
    pd.testing.assert_frame_equal(first.drop(columns="latency_ms"), second.drop(columns="latency_ms"))


@pytest.mark.parametrize(("settings", "message"), [
    ({"rounds": 20}, "1 seed \\+ 20 stream \\+ 5 query images per class = 26, but the omniglot test classes have 20"),
    ({"epsilons": "0,1.0"}, "--epsilons must be annotator error rates in \\[0, 1\\)"),
    ({"epsilons": "0,0"}, "listed twice"),
    ({"epsilons": "a"}, "--epsilons takes comma-separated numbers"),
    ({"rounds": 0}, "rounds must be a whole number >= 1"),
])
def test_bad_settings_name_the_fix(settings: dict, message: str, data_root: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        setup(data_root, **settings)


def test_flags_of_another_protocol_are_refused(tmp_path: Path, capsys) -> None:
    assert cli.main(["run", "--protocol", "active", "--rounds", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--rounds is a setting of --protocol interactive (this run's protocol is active)" in capsys.readouterr().err
    assert cli.main(["run", "--dataset", "sinusoid", "--protocol", "interactive", "--out", str(tmp_path / "y")]) == 2
    assert "protocol interactive is not defined for regression datasets" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_and_report(tmp_path: Path, data_root: Path, capsys) -> None:
    out = tmp_path / "interactive"
    assert cli.main(["run", "--quiet", "--budget", "smoke", "--protocol", "interactive", "--test-episodes", "2",
                     "--learners", "protonet,fomaml", "--rounds", "3", "--epsilons", "0,0.2", "--device", "cpu",
                     "--data-root", str(data_root), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "interactive" and config["protocol_settings"]["epsilons"] == [0.0, 0.2]
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["epsilon", "learner"]].values.tolist() == [[e, n] for e in (0.0, 0.2) for n in ("protonet", "fomaml")]
    assert (summary["latency_p95_ms"] >= summary["latency_median_ms"]).all()
    assert len(pd.read_csv(out / "episodes.csv")) == 2 * 2 * 2 * 3  # learners x streams x epsilons x rounds
    report = tmp_path / "report"
    assert cli.main(["report", str(out), "--out", str(report)]) == 0
    assert "## Interactive feedback" in (report / "index.md").read_text()
    assert (report / "figures" / "interactive-interactive.png").is_file()
    assert (report / "tables" / "interactive-interactive.tex").is_file()
    capsys.readouterr()
