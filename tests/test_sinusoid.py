"""Sinusoid regression (Finn et al. 2017, Sec. 5.1): tasks, the regression learners, and runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from metabench import cli
from metabench.algorithms import build_learner
from metabench.algorithms.maml_core import MLP_REGRESSION, adapt_and_predict
from metabench.algorithms.pretrained import FINETUNE_LRS
from metabench.algorithms.reptile import minibatches
from metabench.config import learners_for, resolve
from metabench.datasets.sinusoid import AMPLITUDE, PHASE, X_RANGE, SinusoidSampler, fingerprint
from metabench.errors import ConfigError
from metabench.evaluation import REGRESSION_STEPS, evaluate

RUN_FILES = {"config.json", "environment.json", "episodes.csv", "curves.csv", "summary.csv", "summary.md", "run.json",
             "weights"}


def test_tasks_are_pure_functions_of_seed_stream_and_index() -> None:
    a, b = SinusoidSampler(10, 5, seed=3, stream="test"), SinusoidSampler(10, 5, seed=3, stream="test")
    for i in (0, 7, 123):
        ta, tb = a.index(i), b.index(i)
        assert ta.key() == tb.key()
    assert a.index(0).key() != a.index(1).key()
    assert a.index(0).key() != SinusoidSampler(10, 5, seed=3, stream="val").index(0).key()
    assert a.index(0).key() != SinusoidSampler(10, 5, seed=4, stream="test").index(0).key()
    ids = [a.index(i) for i in range(20)]
    assert fingerprint(ids) == fingerprint([b.index(i) for i in range(20)])
    assert fingerprint(ids) != fingerprint(ids[:19]) and len(fingerprint(ids)) == 64


def test_episode_tensors_are_the_sine_of_the_inputs() -> None:
    sampler = SinusoidSampler(5, 7, seed=0)
    ep = sampler.episode(4)
    task = ep.index
    assert ep.support_x.shape == ep.support_y.shape == (5, 1) and ep.query_x.shape == ep.query_y.shape == (7, 1)
    assert ep.support_x.dtype == torch.float32
    x = ep.query_x.double().squeeze(1).numpy()
    assert np.allclose(ep.query_y.squeeze(1).numpy(), task.amplitude * np.sin(x - task.phase), atol=1e-5)
    assert np.allclose(ep.support_x.squeeze(1).numpy(), task.support.astype(np.float32))


def test_task_distribution_matches_the_paper() -> None:
    """Amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5] (Kolmogorov-Smirnov over 2000 tasks)."""
    sampler = SinusoidSampler(10, 0, seed=1, stream="train")
    tasks = [sampler.index(i) for i in range(2000)]
    amp = np.array([t.amplitude for t in tasks])
    phase = np.array([t.phase for t in tasks])
    x = np.concatenate([t.support for t in tasks])
    for values, (low, high) in ((amp, AMPLITUDE), (phase, PHASE), (x, X_RANGE)):
        assert low <= values.min() and values.max() <= high
        assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3
    assert PHASE == (0.0, math.pi)


def test_bad_task_shapes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="raise --shots"):
        SinusoidSampler(0, 5, seed=0)


def test_adapt_and_predict_matches_gradient_descent_by_hand() -> None:
    """Outputs after s steps equal s plain gradient steps on the support MSE (float64)."""
    torch.manual_seed(0)
    params = {n: p.detach().double() for n, p in build_learner("maml", 1, (1,), 1).model.named_parameters()}
    ep = SinusoidSampler(10, 20, seed=0).episode(0)
    sx, sy, qx = ep.support_x.double(), ep.support_y.double(), ep.query_x.double()
    outputs = adapt_and_predict(MLP_REGRESSION, params, sx, sy, qx, 0.01, [3, 0, 1])
    assert sorted(outputs) == [0, 1, 3]
    fast = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    expected = {0: MLP_REGRESSION.forward(fast, qx).detach()}
    for step in range(1, 4):
        loss = ((MLP_REGRESSION.forward(fast, sx) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {n: (p - 0.01 * g).detach().requires_grad_(True) for (n, p), g in zip(fast.items(), grads)}
        expected[step] = MLP_REGRESSION.forward(fast, qx).detach()
    for s in (0, 1, 3):
        assert torch.allclose(outputs[s], expected[s], rtol=0, atol=1e-12)
    assert not torch.allclose(outputs[0], outputs[3])
    assert all(not p.requires_grad for p in params.values())  # inputs untouched


def test_regression_learners_use_the_regression_settings() -> None:
    maml = build_learner("maml", 1, (1,), 10)
    assert maml.kind == "regression" and maml.config.inner_lr == 0.01 and maml.config.meta_batch == 25
    assert build_learner("fomaml", 1, (1,), 10).config.inner_lr == 0.01
    reptile = build_learner("reptile", 1, (1,), 10)
    assert reptile.config.inner_optimizer == "sgd" and reptile.train_shape(1, 10, 100).shots == 50
    assert sum(p.numel() for p in maml.model.parameters()) == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    with pytest.raises(ConfigError, match="not do regression.*no classes"):
        build_learner("protonet", 1, (1,), 10)
    with pytest.raises(ConfigError, match="regression only"):
        build_learner("pretrained", 5, (1, 28, 28), 10)


def test_reptile_regression_inner_loop_is_plain_sgd() -> None:
    """One training task: five SGD steps of 0.02 on minibatches of 10 of its 50 points, then
    theta <- theta + 0.1 (phi - theta) (Nichol & Schulman's sine-wave settings)."""
    learner = build_learner("reptile", 1, (1,), 100, seed=0)
    ep = SinusoidSampler(50, 0, seed=0, stream="train").episode(0)
    theta = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    batches = minibatches(50, 10, 5, np.random.default_rng(0))
    phi = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
    for idx in batches:
        idx_t = torch.from_numpy(idx)
        loss = ((MLP_REGRESSION.forward(phi, ep.support_x[idx_t]) - ep.support_y[idx_t]) ** 2).mean()
        grads = torch.autograd.grad(loss, list(phi.values()))
        phi = {n: (p - 0.02 * g).detach().requires_grad_(True) for (n, p), g in zip(phi.items(), grads)}
    learner.meta_train_step([ep])
    for n, p in learner.model.named_parameters():
        assert torch.allclose(p.detach(), theta[n] + 0.1 * (phi[n].detach() - theta[n]), atol=1e-6), n


def test_pretrained_pools_all_points_and_tunes_its_step_size() -> None:
    learner = build_learner("pretrained", 1, (1,), 10, seed=0)
    episodes = SinusoidSampler(10, 10, seed=0, stream="train").episodes(0, 3)
    model_before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    x = torch.cat([t for e in episodes for t in (e.support_x, e.query_x)])
    y = torch.cat([t for e in episodes for t in (e.support_y, e.query_y)])
    with torch.no_grad():
        expected = ((MLP_REGRESSION.forward(model_before, x) - y) ** 2).mean().item()
    assert learner.meta_train_step(episodes).loss == pytest.approx(expected, rel=1e-6)
    val = SinusoidSampler(10, 50, seed=0, stream="val").episodes(0, 4)
    chosen = learner.finish_training(val)
    scores = chosen["test_lr_val_mse"]
    assert set(scores) == set(FINETUNE_LRS)
    finite = {lr: v for lr, v in scores.items() if np.isfinite(v)}
    assert chosen["test_lr"] == min(finite, key=finite.get) == learner.test_lr
    fixed = build_learner("pretrained", 1, (1,), 10, overrides={"test_lr": 0.05})
    assert fixed.finish_training(val) == {"test_lr": 0.05, "test_lr_val_mse": {}}


@pytest.mark.slow
def test_maml_learns_sinusoids_on_a_tiny_budget() -> None:
    """300 meta-iterations lower the query MSE after 10 steps on the same 100 test tasks, by
    more than 3 standard errors of the paired difference."""
    learner = build_learner("maml", 1, (1,), 300, seed=0)
    test = SinusoidSampler(10, 50, seed=0)
    before = np.array([r["mse_10"] for r in evaluate(learner, test, 100)[0]])
    train = SinusoidSampler(10, 10, seed=0, stream="train")
    for i in range(300):
        learner.meta_train_step(train.episodes(25 * i, 25))
    after = np.array([r["mse_10"] for r in evaluate(learner, test, 100)[0]])
    gain = before - after
    assert gain.mean() > 3 * gain.std(ddof=1) / np.sqrt(gain.size), (before.mean(), after.mean())


def test_regression_summary_by_hand_and_diverged_tasks() -> None:
    """Means and CIs over tasks, medians with a diverged (NaN) task counted as the worst, and the
    table says "diverged" instead of printing a meaningless mean."""
    from metabench.protocols.regression import regression_markdown_table, summarize_regression

    rows = []
    for learner, values in (("maml", [1.0, 2.0, 3.0, 6.0]), ("reptile", [1.0, 2.0, 3.0, float("nan")])):
        for episode, v in enumerate(values):
            rows.append({"seed": 0, "learner": learner, "episode": episode,
                         **{f"mse_{s}": v * (s + 1) for s in REGRESSION_STEPS}})
    timings = pd.DataFrame([{"seed": 0, "learner": n, "meta_iterations": 5, "meta_train_seconds": 2.0,
                             "test_seconds": 0.4, "test_episodes": 4} for n in ("maml", "reptile")])
    summary = summarize_regression(pd.DataFrame(rows), timings, ("maml", "reptile")).set_index("learner")
    assert summary.loc["maml", "mse_0"] == pytest.approx(3.0)
    assert summary.loc["maml", "ci95_0"] == pytest.approx(1.959963984540054 * np.std([1, 2, 3, 6], ddof=1) / 2)
    assert summary.loc["maml", "mse_10"] == pytest.approx(33.0) and summary.loc["maml", "median_10"] == pytest.approx(27.5)
    assert summary.loc["reptile", "diverged_1"] == 1 and summary.loc["maml", "diverged_1"] == 0
    assert np.isnan(summary.loc["reptile", "mse_1"]) and summary.loc["reptile", "median_1"] == pytest.approx(5.0)
    table = regression_markdown_table(summary.reset_index())
    assert "| MAML | 3.000 ± " in table and "| Reptile | diverged on 1 of 4 tasks |" in table
    assert summary.loc["maml", "test_ms_per_episode"] == pytest.approx(100.0)


def test_config_defaults_and_errors_for_regression() -> None:
    config = resolve({"dataset": "sinusoid"})
    assert (config.split, config.ways, config.shots, config.queries) == ("finn", 1, 10, 100)
    assert config.learners == learners_for("regression") == ("maml", "fomaml", "reptile", "pretrained")
    assert config.iterations["maml"] > 1000 and config.image_size == 0
    asked = resolve({"dataset": "sinusoid", "learners": "maml,protonet,matchingnet"})
    assert asked.learners == ("maml",) and set(asked.skipped) == {"protonet", "matchingnet"}
    assert "not defined for regression" in asked.skipped["protonet"]
    with pytest.raises(ConfigError, match="no learner left to run on sinusoid"):
        resolve({"dataset": "sinusoid", "learners": "protonet"})
    with pytest.raises(ConfigError, match="drop --ways"):
        resolve({"dataset": "sinusoid", "ways": 5})
    with pytest.raises(ConfigError, match="cannot test on sinusoid after meta-training on omniglot"):
        resolve({"dataset": "omniglot", "test_dataset": "sinusoid"})
    assert "pretrained" not in resolve({}).learners


@pytest.mark.slow
def test_sinusoid_smoke_run_writes_every_output(tmp_path: Path, capsys, one_line_error) -> None:
    out = tmp_path / "sin"
    assert cli.main(["run", "--quiet", "--dataset", "sinusoid", "--budget", "smoke", "--learners",
                     "maml,reptile,pretrained,protonet", "--test-episodes", "6", "--device", "cpu", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    printed = capsys.readouterr().out
    # re-tested from the kept weights (the pretrained baseline with its tuned step size): the same results
    assert cli.main(["evaluate", "--quiet", str(out), "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "episodes.csv"), pd.read_csv(tmp_path / "again" / "episodes.csv"))
    assert "| MAML |" in printed and "Not run: Prototypical Networks is not defined for regression" in printed
    episodes = pd.read_csv(out / "episodes.csv")
    assert list(episodes.columns) == ["seed", "learner", "episode", *[f"mse_{s}" for s in REGRESSION_STEPS]]
    assert len(episodes) == 3 * 6 and (episodes.filter(like="mse_") >= 0).all().all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["learner"]) == ["maml", "reptile", "pretrained"]
    for row in summary.to_dict("records"):
        mine = episodes[episodes["learner"] == row["learner"]]
        for s in REGRESSION_STEPS:
            assert row[f"mse_{s}"] == pytest.approx(mine[f"mse_{s}"].mean())
            assert row[f"ci95_{s}"] == pytest.approx(1.959963984540054 * mine[f"mse_{s}"].std(ddof=1) / np.sqrt(6))
    curves = pd.read_csv(out / "curves.csv")
    assert "val_mse" in curves and "train_accuracy" not in curves and curves["val_mse"].notna().sum() == 3
    meta = json.loads((out / "run.json").read_text())
    assert set(meta["skipped"]) == {"protonet"} and meta["tuned"]["pretrained"][0]["test_lr"] in FINETUNE_LRS
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "regression" and config["learner_settings"]["maml"]["hyperparameters"]["inner_lr"] == 0.01
    # same tasks for another learner set: same fingerprint
    other = tmp_path / "sin2"
    assert cli.main(["run", "--quiet", "--dataset", "sinusoid", "--budget", "smoke", "--learners", "fomaml",
                     "--test-episodes", "6", "--out", str(other)]) == 0
    assert json.loads((other / "run.json").read_text())["fingerprint"] == meta["fingerprint"]
    capsys.readouterr()
    assert cli.main(["run", "--dataset", "sinusoid", "--learners", "protonet", "--out", str(tmp_path / "x")]) == 2
    one_line_error("no learner left to run on sinusoid", "--learners")
    assert not (tmp_path / "x").exists()
    assert cli.main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "## Regression" in index and "| MAML |" in index
    for name in ("tables/regression-sin.md", "tables/regression-sin.tex", "tables/regression-sin.csv",
                 "figures/regression-sin.png", "figures/regression-sin.pdf"):
        assert (tmp_path / "rep" / name).is_file(), name
