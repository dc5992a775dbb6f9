"""`metabench run` end to end: a smoke run writes every file; bad input fails cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metabench import cli
from metabench.config import learners_for
from metabench.datasets import omniglot
from metabench.protocols import episodic

LEARNERS = learners_for("classification")
RUN_FILES = {"config.json", "environment.json", "episodes.csv", "curves.csv", "summary.csv", "summary.md", "run.json",
             "weights"}


def run_cli(*args: str) -> int:
    return cli.main(["run", "--quiet", *args])


def assert_nothing_written(parent: Path) -> None:
    """No run directory and no partial leftovers."""
    assert not parent.exists() or list(parent.iterdir()) == []


@pytest.mark.slow
def test_smoke_run_writes_every_output(tmp_path: Path, data_root: Path, capsys, monkeypatch) -> None:
    seen: dict[str, list[tuple]] = {}
    real_evaluate = episodic.evaluate  # the episodic protocol's scorer

    def spy(learner, sampler, count, desc=None, workers=1):
        if sampler.stream != "test":  # validation during training
            return real_evaluate(learner, sampler, count, desc)
        workers = 1  # the spy lives in this process
        original = learner.predict
        def predict(ep):
            seen.setdefault(learner.name, []).append(tuple(a.tobytes() for a in (ep.index.classes, ep.index.support, ep.index.query)))
            return original(ep)
        learner.predict = predict
        try:
            return real_evaluate(learner, sampler, count, desc, workers=workers)
        finally:
            learner.predict = original

    monkeypatch.setattr(episodic, "evaluate", spy)
    out = tmp_path / "runs" / "smoke"
    assert run_cli("--budget", "smoke", "--test-episodes", "4", "--device", "cpu", "--data-root", str(data_root), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "| Prototypical Networks |" in printed and str(out) in printed
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert sorted(p.name for p in (out / "weights").iterdir()) == sorted(f"{n}-seed0.safetensors" for n in LEARNERS)
    assert [p.name for p in out.parent.iterdir()] == ["smoke"]  # no partial directory, no working folder left

    # identical test episodes for every learner
    assert set(seen) == set(LEARNERS)
    first = seen["maml"]
    assert len(first) == 4 and all(seen[name] == first for name in LEARNERS)

    config = json.loads((out / "config.json").read_text())
    assert config["learners"] == list(LEARNERS) and config["budget"] == "smoke" and config["ways"] == 5
    assert config["learner_settings"]["maml"]["hyperparameters"]["inner_lr"] == 0.4
    assert config["learner_settings"]["protonet"]["train_episodes"]["ways"] == 60
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"].startswith("2.") and env["device"] == "cpu" and env["cpu"] and env["cpu_capability"]
    meta = json.loads((out / "run.json").read_text())
    assert len(meta["fingerprint"]) == 64 and meta["wall_seconds"] > 0
    episodes = pd.read_csv(out / "episodes.csv")
    assert list(episodes.columns) == ["seed", "learner", "episode", "accuracy", "loss"]
    assert len(episodes) == 5 * 4 and episodes["accuracy"].between(0, 100).all()
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["learner"]) == set(LEARNERS) and (curves["iteration"].max() == 2)
    assert curves["val_accuracy"].notna().sum() == 5  # one validation point per learner
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["learner"]) == list(LEARNERS)
    for row in summary.itertuples():
        acc = episodes.loc[episodes["learner"] == row.learner, "accuracy"]
        assert row.accuracy_pct == pytest.approx(acc.mean())
        assert row.ci95_pct == pytest.approx(1.959963984540054 * acc.std(ddof=1) / np.sqrt(4))
        assert row.meta_train_s > 0 and row.test_ms_per_episode > 0
    assert "± " in (out / "summary.md").read_text()


@pytest.mark.slow
def test_same_fingerprint_for_different_learners(tmp_path: Path, data_root: Path) -> None:
    common = ("--budget", "smoke", "--test-episodes", "3", "--val-episodes", "0", "--data-root", str(data_root))
    assert run_cli(*common, "--learners", "protonet", "--out", str(tmp_path / "a")) == 0
    assert run_cli(*common, "--learners", "matchingnet", "--seeds", "7", "--out", str(tmp_path / "b")) == 0
    fa = json.loads((tmp_path / "a" / "run.json").read_text())["fingerprint"]
    fb = json.loads((tmp_path / "b" / "run.json").read_text())["fingerprint"]
    assert fa == fb
    assert run_cli(*common, "--learners", "protonet", "--episode-seed", "1", "--out", str(tmp_path / "c")) == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["fingerprint"] != fa


@pytest.mark.slow
def test_two_seeds_share_episodes_and_ci_is_over_episodes(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "r"
    assert run_cli("--learners", "protonet", "--budget", "smoke", "--seeds", "0,1", "--test-episodes", "5",
                   "--val-episodes", "0", "--data-root", str(data_root), "--out", str(out)) == 0
    episodes = pd.read_csv(out / "episodes.csv")
    assert sorted(episodes["seed"].unique()) == [0, 1] and len(episodes) == 10
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    per_episode = episodes.groupby("episode")["accuracy"].mean()
    per_seed = episodes.groupby("seed")["accuracy"].mean()
    assert summary["episodes"] == 5 and summary["seeds"] == 2
    assert summary["accuracy_pct"] == pytest.approx(per_episode.mean())
    assert summary["ci95_pct"] == pytest.approx(1.959963984540054 * per_episode.std(ddof=1) / np.sqrt(5))
    assert summary["seed_std_pct"] == pytest.approx(per_seed.std(ddof=1))


@pytest.mark.slow
def test_lake_split_runs_without_validation_classes(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "lake"
    assert run_cli("--split", "lake", "--learners", "matchingnet", "--budget", "smoke", "--test-episodes", "3",
                   "--data-root", str(data_root), "--out", str(out)) == 0
    curves = pd.read_csv(out / "curves.csv")
    assert curves["val_accuracy"].isna().all()  # the lake split has no validation classes
    assert json.loads((out / "run.json").read_text())["test_pool"] == "omniglot/lake/test"


def test_toml_config_and_flags(tmp_path: Path, data_root: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        'learners = ["protonet"]\nbudget = "smoke"\ntest_episodes = 2\nval_episodes = 0\nshots = 2\n'
        "[hparams.protonet]\ntrain_ways = 10\n"
    )
    out = tmp_path / "r"
    assert cli.main(["run", "--quiet", "--config", str(toml), "--queries", "3", "--data-root", str(data_root), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["learners"] == ["protonet"] and config["shots"] == 2 and config["queries"] == 3
    assert config["hparams"] == {"protonet": {"train_ways": 10}}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--learners", "maml,nope"], ["unknown learner 'nope'", "choose from maml, fomaml"]),
        (["--dataset", "imagenet"], ["unknown dataset 'imagenet'", "omniglot"]),
        (["--split", "random"], ["unknown split 'random'", "vinyals, lake"]),
        (["--test-dataset", "digits", "--test-split", "vinyals"], ["unknown split 'vinyals' of digits", "(--test-split)"]),
        (["--ways", "1700"], ["1700-way", "lower --ways to at most 1692"]),
        (["--shots", "10", "--queries", "11"], ["21 images per class", "lower --shots or --queries"]),
        (["--set", "maml.inner_rate=1"], ["unknown hyperparameter maml.inner_rate"]),
        (["--set", "maml.meta_batch=0"], ["maml.meta_batch must be >= 1"]),
        (["--seeds", "0,a"], ["seeds must be a whole number"]),
        (["--seeds", "-1"], ["seeds must be >= 0"]),
        (["--device", "tpu"], ["device"]),
        # a learner's *training* episodes too large for the split fails before any training:
        # ProtoNet trains on 5 queries per class, so 16 shots need 21 images per class
        (["--learners", "matchingnet,protonet", "--shots", "16", "--queries", "4"],
         ["training episodes of protonet", "lower --shots or --queries"]),
    ],
)
def test_bad_configuration(tmp_path: Path, data_root: Path, one_line_error, args, fragments) -> None:
    parent = tmp_path / "runs"
    assert run_cli(*args, "--budget", "smoke", "--data-root", str(data_root), "--out", str(parent / "r")) == 2
    one_line_error(*fragments)
    assert_nothing_written(parent)


def test_missing_data_without_network(tmp_path: Path, one_line_error, monkeypatch, closed_url: str) -> None:
    monkeypatch.setattr(omniglot, "URLS", {k: closed_url + Path(v).name for k, v in omniglot.URLS.items()})
    monkeypatch.setattr(omniglot, "VINYALS_BASE_URL", closed_url)
    empty = tmp_path / "nodata"
    empty.mkdir()
    parent = tmp_path / "runs"
    assert run_cli("--budget", "smoke", "--data-root", str(empty), "--out", str(parent / "r")) == 2
    one_line_error("--data-root")
    assert_nothing_written(parent)
    assert not any(p.suffix == ".part" for p in empty.rglob("*"))


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_corrupt_archive(tmp_path: Path, data_root: Path, one_line_error, damage: str) -> None:
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    shutil.copytree(data_root / "splits", root / "splits")
    shutil.copy(data_root / "omniglot" / "images_evaluation.zip", root / "omniglot")
    raw = bytearray((data_root / "omniglot" / "images_background.zip").read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0xFF  # inside a member: its CRC no longer matches
    (root / "omniglot" / "images_background.zip").write_bytes(bytes(raw))
    parent = tmp_path / "runs"
    assert run_cli("--budget", "smoke", "--data-root", str(root), "--out", str(parent / "r")) == 2
    one_line_error("images_background.zip", "corrupt")
    assert_nothing_written(parent)


def test_bad_toml_values(tmp_path: Path, data_root: Path, one_line_error) -> None:
    for text, fragment in [('download = "false"', "download must be true or false"),
                           ('ways = "five"', "ways must be a whole number"),
                           ("[iterations]\nmamll = 3", "iterations given for unknown learner 'mamll'"),
                           ("hparams = 3", "hparams must be a table"),
                           ("ways = [", "not valid TOML")]:
        toml = tmp_path / "bad.toml"
        toml.write_text(text + "\n")
        assert cli.main(["run", "--quiet", "--config", str(toml), "--data-root", str(data_root),
                         "--out", str(tmp_path / "runs" / "r")]) == 2
        one_line_error(fragment)
        assert_nothing_written(tmp_path / "runs")


def test_unwritable_output_directory(tmp_path: Path, data_root: Path, one_line_error) -> None:
    # a regular file where a folder should be (permission bits do not stop root, which CI may be)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert run_cli("--budget", "smoke", "--data-root", str(data_root), "--out", str(blocker / "run")) == 2
    one_line_error("cannot write the run directory", "choose a writable --out")
    assert blocker.read_text() == ""


def test_existing_output_directory_is_not_overwritten(tmp_path: Path, data_root: Path, one_line_error) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("--budget", "smoke", "--data-root", str(data_root), "--out", str(out)) == 2
    one_line_error("already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_console_script_reports_one_line_error(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("metabench")
    proc = subprocess.run([str(exe), "run", "--learners", "nope", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "metabench: error: unknown learner 'nope': choose from maml, fomaml, reptile, protonet, matchingnet, pretrained"


@pytest.mark.slow
def test_cross_domain_run_tests_on_the_other_datasets_test_split(tmp_path: Path, data_root: Path) -> None:
    """Meta-train on Omniglot (vinyals), test on scikit-learn's digits: the test episodes are the
    digits' own (same fingerprint as sampling them directly), validation stays on Omniglot."""
    from metabench.datasets import load_split
    from metabench.datasets.sampler import EpisodeSampler, fingerprint

    out = tmp_path / "xd"
    assert run_cli("--learners", "protonet", "--budget", "smoke", "--test-dataset", "digits", "--test-episodes", "4",
                   "--data-root", str(data_root), "--out", str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["split"], config["test_dataset"], config["test_split"]) == ("omniglot", "vinyals", "digits", "all")
    meta = json.loads((out / "run.json").read_text())
    assert meta["test_pool"] == "digits/all/test"
    digits = load_split("digits", "all", image_size=28)
    sampler = EpisodeSampler(digits.test, 5, 1, 15, seed=0, stream="test")
    assert meta["fingerprint"] == fingerprint(digits.test, [sampler.index(i) for i in range(4)])
    assert "omniglot (vinyals split) → digits (all split), 5-way 1-shot" in (out / "summary.md").read_text()
    assert pd.read_csv(out / "curves.csv")["val_accuracy"].notna().sum() == 1  # Omniglot validation
    assert cli.main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "omniglot-to-digits (vinyals-to-all) 5-way 1-shot" in (tmp_path / "rep" / "index.md").read_text()


def test_cross_domain_configuration_errors(tmp_path: Path, one_line_error) -> None:
    assert run_cli("--dataset", "omniglot", "--test-dataset", "cifar-fs", "--out", str(tmp_path / "a")) == 2
    one_line_error("cannot test on cifar-fs after meta-training on omniglot", "image channels")
    assert run_cli("--dataset", "digits", "--out", str(tmp_path / "b")) == 2
    one_line_error("digits has no meta-training classes", "--test-dataset digits")
    assert not any(tmp_path.iterdir())
