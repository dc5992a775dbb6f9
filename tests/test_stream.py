"""The stream protocol: streams, task changes, returning tasks, detection, hidden labels, the
continual copy, bad input and a smoke run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from metabench import cli
from metabench.algorithms.protonet import ProtoNet
from metabench.config import resolve
from metabench.errors import ConfigError
from metabench.protocols import protocol_for
from metabench.protocols.stream import ChangeDetector, StreamScorer, continual_copy, unpack
from metabench.protocols.streams import StreamSampler, StreamSpec, schedule, stream_fingerprint
from metabench.rundata import data_for

RUN_FILES = {"config.json", "environment.json", "episodes.csv", "curves.csv", "summary.csv", "summary.md", "run.json",
             "weights"}


def setup(data_root: Path, dataset: str = "omniglot", episodes: int = 2, **settings):
    config = resolve({"dataset": dataset, "budget": "smoke", "protocol": "stream", "protocol_settings": settings,
                      "test_episodes": episodes, "data_root": str(data_root), "download": False,
                      "learners": "protonet" if dataset == "omniglot" else "maml"})
    protocol = protocol_for(config)
    data = data_for(config)
    protocol.check(config, data)
    return config, protocol, protocol.material(config, data)


def spec(**changes) -> StreamSpec:
    values = {"steps": 200, "stay": 0.9, "mixing": (0.5, 0.25, 0.25), "ways": 5, "shots": 1, "fresh": False, "seed": 0}
    return StreamSpec(**{**values, **changes})


# ----------------------------------------------------------------------------- streams


def test_switch_frequency_matches_p() -> None:
    for p in (0.9, 0.98):
        task, change, _, _, _ = schedule(spec(steps=20001, stay=p), 0, (1692, 10))
        switches = int(change[1:].sum())  # each of the 20000 later steps changes with probability 1 - p
        assert stats.binomtest(switches, 20000, 1 - p).pvalue > 0.001, (p, switches)
        assert change[0] and (task[1:] != task[:-1]).sum() == switches  # every change is a real change


def test_mixing_frequencies_match_the_settings() -> None:
    _, change, kind, _, _ = schedule(spec(steps=40000, stay=0.5), 3, (1692, 10))
    counts = np.bincount(kind[change][10:], minlength=3)  # after the first tasks, returns are always possible
    assert stats.chisquare(counts, counts.sum() * np.array([0.5, 0.25, 0.25])).pvalue > 0.001, counts


def test_returning_tasks_show_the_same_classes_in_the_same_label_order(data_root: Path) -> None:
    _, _, material = setup(data_root, steps=300)
    sampler = material.sampler
    idx = sampler.index(0)
    stream = sampler.episode(0)
    returns = np.flatnonzero(idx.change & (idx.visit > 1))
    assert returns.size > 3
    pools = sampler.pools
    every = {d: np.stack([p.images(np.full(p.n_per_class, c), np.arange(p.n_per_class)) for c in range(len(p))])
             for d, p in enumerate(pools)}  # [classes, images, C, H, W] of each pool

    def class_of(t: int, label: int) -> tuple[int, int]:
        """The (pool, class) whose images hold the pixels shown for ``label`` at step ``t``, found by search."""
        frame = stream.x[t][label].numpy()
        for d, images in every.items():
            hit = np.flatnonzero((images == frame).all(axis=(2, 3, 4)).any(axis=1))
            if hit.size:
                return d, int(hit[0])
        raise AssertionError(f"step {t} label {label}: pixels of no pool class")

    for t in returns[:4]:
        first = np.flatnonzero(idx.task == idx.task[t])[0]
        assert idx.visit[first] == 1 and first < t
        assert [class_of(t, n) for n in range(5)] == [class_of(first, n) for n in range(5)]
        assert torch.equal(stream.y[t], stream.y[first])
        # and the images are ones the task has not shown yet (its image order continues across visits)
        j = idx.task[t]
        earlier = idx.images[:t][idx.task[:t] == j, :, 0]
        if len(earlier) < pools[idx.domain[j]].n_per_class:
            assert not (earlier == idx.images[t, :, 0]).any(axis=1).any()


def test_streams_are_deterministic_and_fingerprinted(data_root: Path) -> None:
    _, _, a = setup(data_root, steps=100)
    _, _, b = setup(data_root, steps=100)
    _, _, other = setup(data_root, steps=100, stay=0.98)
    assert a.fingerprint == b.fingerprint != other.fingerprint
    assert torch.equal(a.sampler.episode(1).x, b.sampler.episode(1).x)
    scored_otherwise = setup(data_root, steps=100, memory=3, threshold=0.5, regimes="frozen,continual")[2]
    assert scored_otherwise.fingerprint == a.fingerprint  # the fingerprint names the streams, not how they are scored
    assert a.sampler.index(0).key() != a.sampler.index(1).key()
    changed = StreamSampler(a.sampler.spec, (a.sampler.pools[0], a.sampler.pools[0]))  # another out-of-distribution pool
    assert stream_fingerprint(changed, 2) != stream_fingerprint(a.sampler, 2)


def test_sinusoid_streams_change_function_and_return() -> None:
    sampler = StreamSampler(spec(ways=1, shots=10, mixing=(0.75, 0.0, 0.25)), None)
    stream = sampler.episode(0)
    idx = stream.index
    assert stream.x.shape == (200, 10, 1) and (idx.domain == 0).all()
    a, phase = idx.waves[idx.task[7]]
    assert torch.allclose(stream.y[7, :, 0], torch.from_numpy(a * np.sin(idx.x[7] - phase)).float())
    assert (idx.visit > 1).any()
    assert torch.equal(stream.x, StreamSampler(sampler.spec, None).episode(0).x)


# ----------------------------------------------------------------------------- the rule


def test_change_detector_on_a_hand_made_loss_sequence() -> None:
    detector = ChangeDetector(1.0)
    losses = [0.5, 0.4, 0.6, 2.0, 1.9, 0.7, 1.6, 0.3, 2.8]
    declared = [detector.observe(v) for v in losses]
    # 2.0 > mean(0.5, 0.4, 0.6) + 1 = 1.5; a new segment starts empty, so 1.9 is its first loss;
    # 0.7 < 1.9 + 1; 1.6 < mean(1.9, 0.7) + 1 = 2.3; 0.3; 2.8 > mean(1.9, 0.7, 1.6, 0.3) + 1 = 2.125
    assert declared == [False, False, False, True, False, False, False, False, True]
    assert not ChangeDetector(1.0).observe(9.0)  # nothing to compare the first loss with


class Peeker(ProtoNet):
    """Predicts the labels it is given for the incoming batch: caught if they were revealed."""

    calls = 0

    def stream_predict(self, episode):
        Peeker.calls += 1
        return 10.0 * torch.nn.functional.one_hot(episode.query_y, self.ways).float()


def protonet(cls=ProtoNet):
    torch.manual_seed(0)
    return cls(ProtoNet.Config(), 5, (1, 28, 28), 1, torch.device("cpu"), 0)


def test_predictions_are_scored_before_the_labels_are_revealed(data_root: Path) -> None:
    _, _, material = setup(data_root, steps=60)
    stream = material.sampler.episode(0)
    Peeker.calls = 0
    rows = StreamScorer("classification", ("frozen",), ("detected",), 5, 1.0)(protonet(Peeker), stream)
    scores = np.concatenate([unpack(r["scores"]) for r in rows])
    assert scores.size == 60 and Peeker.calls == 59  # every step after the first is predicted from the memory
    assert (scores == 20.0).all()  # the placeholders are all label 0: one of five examples right, not five


@pytest.mark.parametrize("name", ["protonet", "maml", "reptile"])
def test_continual_meta_updates_never_touch_the_saved_weights(name: str, data_root: Path) -> None:
    from metabench.algorithms import build_learner

    _, _, material = setup(data_root, steps=30)
    stream = material.sampler.episode(0)
    torch.manual_seed(0)
    learner = build_learner(name, 5, (1, 28, 28), 100, torch.device("cpu"), 0, {})
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    rows = StreamScorer("classification", ("frozen", "continual"), ("detected",), 5, 1.0)(learner, stream)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    frozen = [r["scores"] for r in rows if r["regime"] == "frozen"]
    continual = [r["scores"] for r in rows if r["regime"] == "continual"]
    assert frozen != continual  # the copy did learn
    copy = continual_copy(learner, 30)
    assert copy.iteration == 0 and copy.total_iterations == 30
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copy.model.parameters(), learner.model.parameters()))


def test_oracle_mode_resets_at_the_true_changes(data_root: Path) -> None:
    _, _, material = setup(data_root, steps=80)
    stream = material.sampler.episode(0)
    rows = StreamScorer("classification", ("frozen",), ("detected", "oracle"), 5, 1.0)(protonet(), stream)
    oracle = [r for r in rows if r["mode"] == "oracle"]
    assert all(unpack(r["scores"])[0] == 20.0 for r in oracle)  # no example of the new task yet: a guess
    assert all(r["declared"] == "" for r in oracle)
    assert sum(r["steps"] for r in oracle) == 80


def test_summary_counts_detections_recovery_and_returns() -> None:
    """A hand-made stream of 3 visits (task 0, task 1, task 0 again), written and read as a CSV."""
    from metabench.protocols.stream import StreamProtocol

    def row(episode, segment, start, scores, task, kind, visit, declared, learner="protonet"):
        return {"seed": 0, "learner": learner, "episode": episode, "regime": "frozen", "mode": "detected",
                "segment": segment, "start": start, "steps": len(scores), "task": task, "kind": kind, "visit": visit,
                "metric": "accuracy", "score": float(np.mean(scores)), "scores": "|".join(str(v) for v in scores),
                "ms": "|".join("2.0" for _ in scores), "declared": declared}

    rows = []
    for episode in (0, 1):
        rows += [row(episode, 0, 0, [20, 80, 100], 0, "in", 1, ""),
                 row(episode, 1, 3, [0, 60], 1, "out", 1, "0"),       # detected at the change
                 row(episode, 2, 5, [40, 100, 100, 100], 0, "return", 2, "2")]  # missed, a false alarm at offset 2
        rows += [row(episode, 0, 0, [20, 20, 20, 20, 20, 20, 20, 20, 20 + 20 * episode], 0, "in", 1, "", "matchingnet")]
    path = Path(__import__("tempfile").mkdtemp()) / "episodes.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    episodes = pd.read_csv(path)
    timings = pd.DataFrame([{"seed": 0, "learner": n, "meta_iterations": 1, "meta_train_seconds": 1.0,
                             "test_seconds": 1.0, "test_episodes": 2} for n in ("protonet", "matchingnet")])
    summary = StreamProtocol().summarize(episodes, timings, ("protonet", "matchingnet"))
    other = summary.iloc[1]
    assert (summary["best"] == "protonet").all() and np.isnan(summary.iloc[0]["vs_best"])
    # matchingnet's streams: 20 and 22.2 against protonet's 66.7 on both
    assert other["vs_best"] == pytest.approx(np.mean([20 - 600 / 9, 200 / 9 - 600 / 9]))
    assert 0 <= other["p_best_holm"] < 0.05 and np.isnan(other["vs_frozen"])  # no continual rows
    r = summary.iloc[0]
    assert r["online"] == pytest.approx(np.mean([20, 80, 100, 0, 60, 40, 100, 100, 100]))
    assert (r["online_in"], r["online_out"], r["online_return"]) == pytest.approx((200 / 3, 30, 85))
    assert r["first_visit"] == pytest.approx(200 / 3) and r["later_visits"] == pytest.approx(85)
    assert r["return_gain"] == pytest.approx(85 - 200 / 3)
    assert r["changes"] == 4 and r["detected_pct"] == 50.0 and r["false_per_100"] == pytest.approx(100 * 2 / 18)
    assert (r["rec_0"], r["rec_1"], r["rec_2"], r["rec_3"]) == pytest.approx((20, 80, 100, 100))  # changes only
    assert np.isnan(r["rec_4"]) and r["ms_median"] == 2.0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("settings", "message"), [
    ({"stay": 1.0}, "--stay is the probability that the task stays the same at a step: it must be in \\[0, 1\\)"),
    ({"stay": -0.1}, "must be in \\[0, 1\\)"),
    ({"mixing": "0.5,0.3,0.3"}, "--mixing probabilities must sum to 1"),
    ({"mixing": "0.5,0.5"}, "--mixing takes three probabilities"),
    ({"ood_dataset": "miniimagenet"}, "--ood-dataset miniimagenet has 3 channel\\(s\\) but the run's images have 1"),
    ({"fresh_classes": True}, "--fresh-classes forbids reuse: drop --fresh-classes, or lower --stream-steps"),
    ({"regimes": "frozen,online"}, "--regimes takes frozen and/or continual"),
    ({"ood_dataset": "none", "mixing": "0.5,0.25,0.25"}, "set the middle probability to 0"),
    ({"mixing": "nan,0.5,0.5"}, "--mixing takes three probabilities"),
    ({"ood_dataset": "omniglot", "ood_split": "vinyals"}, "is the run's own test data"),
    ({"ood_dataset": "digits", "ood_split": "lake"}, "unknown split 'lake' of digits: choose one of .* \\(--ood-split\\)"),
])
def test_bad_settings_name_the_fix(settings: dict, message: str, data_root: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        setup(data_root, **settings)


def test_sinusoid_has_no_out_of_distribution_domain(data_root: Path) -> None:
    with pytest.raises(ConfigError, match="set the middle probability to 0"):
        setup(data_root, dataset="sinusoid", mixing="0.5,0.25,0.25")
    config, protocol, material = setup(data_root, dataset="sinusoid", steps=40)
    assert protocol.mixing(config) == (0.75, 0.0, 0.25) and material.pool == "sinusoid/finn/test"


def test_bad_input_writes_nothing(tmp_path: Path, data_root: Path, one_line_error) -> None:
    out = tmp_path / "x"
    assert cli.main(["evaluate", "results/omniglot-vinyals-5w1s-quick", "--protocol", "stream", "--stay", "1",
                     "--data-root", str(data_root), "--out", str(out)]) == 2
    one_line_error("--stay", "[0, 1)")
    assert not out.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_smoke_run_and_report(tmp_path: Path, data_root: Path, capsys) -> None:
    out = tmp_path / "stream"
    assert cli.main(["run", "--quiet", "--budget", "smoke", "--protocol", "stream", "--test-episodes", "2",
                     "--learners", "protonet,maml", "--stream-steps", "40", "--regimes", "frozen,continual", "--oracle",
                     "--device", "cpu", "--data-root", str(data_root), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "stream" and config["protocol_settings"]["regimes"] == ["frozen", "continual"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["regime", "mode", "learner"]].values.tolist() == [
        [r, m, n] for r in ("frozen", "continual") for m in ("detected", "oracle") for n in ("protonet", "maml")]
    assert (summary["ms_p95"] >= summary["ms_median"]).all()
    episodes = pd.read_csv(out / "episodes.csv", keep_default_na=False)
    assert episodes.groupby(["learner", "regime", "mode", "episode"])["steps"].sum().eq(40).all()
    report = tmp_path / "report"
    assert cli.main(["report", str(out), "--out", str(report)]) == 0
    assert "## Online task streams" in (report / "index.md").read_text()
    for name in ("stream-stream-rolling.png", "stream-stream-recovery.pdf", "stream-stream-returns.png"):
        assert (report / "figures" / name).is_file()
    assert (report / "tables" / "stream-stream.tex").is_file()
    capsys.readouterr()


@pytest.mark.slow
def test_sinusoid_stream_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sine"
    assert cli.main(["run", "--quiet", "--dataset", "sinusoid", "--budget", "smoke", "--protocol", "stream",
                     "--test-episodes", "2", "--learners", "maml,reptile,pretrained", "--stream-steps", "30",
                     "--regimes", "frozen,continual", "--device", "cpu", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["metric"] == "mse").all()
    best = summary[summary["regime"] == "frozen"].sort_values("online")["learner"].iloc[0]
    assert (summary.loc[summary["regime"] == "frozen", "best"] == best).all()  # lower MSE is better
    capsys.readouterr()


# ----------------------------------------------------------------------------- committed runs

REPO = Path(__file__).resolve().parents[1]
COMMITTED = ["omniglot-vinyals-5w1s-quick-stream-p0.9", "omniglot-vinyals-5w1s-quick-stream", "sinusoid-k10-quick-stream",
             "omniglot-vinyals-5w1s-quick-stream-p0.98"]


def committed(run: str, data_root: Path):
    original = json.loads((REPO / "results" / run / "config.json").read_text())
    keep = ("dataset", "split", "test_dataset", "test_split", "ways", "shots", "queries", "learners", "test_episodes",
            "episode_seed", "image_size", "protocol", "protocol_settings")
    config = resolve({**{k: original[k] for k in keep}, "data_root": str(data_root), "download": False})
    return config, protocol_for(config)


@pytest.mark.parametrize("run", COMMITTED)
def test_committed_stream_runs_rebuild_their_fingerprints(run: str, data_root: Path) -> None:
    config, protocol = committed(run, data_root)
    material = protocol.material(config, data_for(config))
    meta = json.loads((REPO / "results" / run / "run.json").read_text())
    assert material.count == 20 and material.sampler.spec.steps == 1000
    assert material.fingerprint == meta["fingerprint"]


@pytest.mark.slow
def test_committed_stream_is_rescored_from_the_kept_weights(data_root: Path) -> None:
    """Prototypical Networks on stream 0 of the committed p = 0.9 run, frozen, in one thread as the
    run's worker processes scored it: the same per-step accuracies and declared changes on a CPU
    that rounds as the one that made the run (:func:`~metabench.environment.same_rounding`; the
    committed run predates its record of the instruction set). On another CPU float32 rounding differs; a flipped declaration
    changes the memory from there on, so only the stream's mean online accuracy is compared there
    (within 2 points, the spread of one stream's accuracy between the two regimes is larger)."""
    from metabench.environment import same_rounding
    from metabench.reevaluate import load_learner

    run = REPO / "results" / COMMITTED[0]
    config, protocol = committed(COMMITTED[0], data_root)
    material = protocol.material(config, data_for(config))
    learner = load_learner(REPO / "results" / "omniglot-vinyals-5w1s-quick-v1" / "weights" / "protonet-seed0.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = dataclasses.replace(protocol.scorer("classification"), regimes=("frozen",), modes=("detected",))
        rows = scorer(learner, material.sampler.episode(0))
    finally:
        torch.set_num_threads(threads)
    rows = pd.DataFrame(rows)
    kept = pd.read_csv(run / "episodes.csv", keep_default_na=False)
    kept = kept[(kept["learner"] == "protonet") & (kept["episode"] == 0) & (kept["regime"] == "frozen")
                & (kept["mode"] == "detected") & (kept["seed"] == 0)]
    assert kept["start"].tolist() == rows["start"].tolist()
    mine = np.concatenate([unpack(s) for s in rows["scores"]])
    theirs = np.concatenate([unpack(s) for s in kept["scores"]])
    if same_rounding(json.loads((run / "environment.json").read_text())):
        assert np.array_equal(mine, theirs)
        assert rows["declared"].astype(str).tolist() == kept["declared"].astype(str).tolist()
    else:
        assert abs(mine.mean() - theirs.mean()) < 2.0


def test_the_default_run_repeats_the_frozen_rows_of_the_two_regime_run() -> None:
    """The default command (frozen only) and the two-regime run used the same streams: the same
    fingerprint and, on the same machine and code, the same per-step accuracies and declared changes."""
    default, both = (REPO / "results" / COMMITTED[1], REPO / "results" / COMMITTED[0])
    assert json.loads((default / "run.json").read_text())["fingerprint"] == json.loads((both / "run.json").read_text())["fingerprint"]
    a = pd.read_csv(default / "episodes.csv", keep_default_na=False)
    b = pd.read_csv(both / "episodes.csv", keep_default_na=False)
    b = b[b["regime"] == "frozen"].reset_index(drop=True)
    assert set(a["regime"]) == {"frozen"} and len(a) == len(b)
    columns = ["learner", "episode", "segment", "start", "steps", "kind", "visit", "scores", "declared"]
    pd.testing.assert_frame_equal(a[columns].astype(str), b[columns].astype(str))


@pytest.mark.parametrize("run", COMMITTED)
def test_committed_summaries_follow_from_their_rows(run: str) -> None:
    """``summary.csv`` of each committed stream run is what :meth:`summarize` makes of its
    ``episodes.csv`` (all but the timing columns, which come from the run's timings)."""
    folder = REPO / "results" / run
    kept = pd.read_csv(folder / "summary.csv")
    episodes = pd.read_csv(folder / "episodes.csv", keep_default_na=False)
    learners = tuple(dict.fromkeys(kept["learner"]))
    timings = pd.DataFrame([{"seed": 0, "learner": n, "meta_iterations": 0, "meta_train_seconds": 0.0,
                             "test_seconds": 0.0, "test_episodes": 1} for n in learners])
    _, protocol = committed(run, Path("."))
    again = protocol.summarize(episodes, timings, learners)
    columns = [c for c in kept.columns if c not in ("meta_iterations", "meta_train_s", "test_ms_per_episode")]
    pd.testing.assert_frame_equal(again[columns].reset_index(drop=True), kept[columns], check_dtype=False,
                                  check_exact=False, rtol=1e-12)
