"""Checkpoints, resume and kept weights.

A training killed at any point (SIGKILL included) and resumed ends bit for bit where the
uninterrupted one does; Ctrl-C keeps the checkpoints and says how to resume; a working folder of
another configuration, other code, a finished run or a corrupt checkpoint are refused or recovered
with one line naming the fix; ``metabench evaluate`` re-tests kept weights.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from metabench import checkpoint, cli, runner, workdir
from metabench.algorithms import LEARNERS, build_learner
from metabench.datasets.sampler import EpisodeSampler
from metabench.results import read_run
from metabench.training import Checkpointer

CLASSIFIERS = [name for name, cls in LEARNERS.items() if "classification" in cls.KINDS]
#: Small but complete: validation every 2 iterations, early stopping, best weights, a checkpoint
#: after every iteration, and learners with each kind of training state (Adam, StepLR, Reptile's
#: minibatch generator).
SMALL = ["--learners", "maml,reptile,protonet,matchingnet", "--budget", "converge", "--iterations", "6",
         "--validate-every", "2", "--patience", "2", "--val-episodes", "3", "--test-episodes", "3",
         "--checkpoint-minutes", "0", "--set", "maml.meta_batch=2", "--set", "protonet.train_ways=10",
         "--set", "reptile.meta_batch=2", "--set", "reptile.test_inner_steps=3"]
SMALL_OVERRIDES = {"maml": {"meta_batch": 2}, "fomaml": {"meta_batch": 2}, "protonet": {"train_ways": 10},
                   "reptile": {"meta_batch": 2}}


def run_cli(*args: str) -> int:
    return cli.main(["run", "--quiet", *args])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def metabench(*args: str, data_root: Path, cwd: Path) -> subprocess.Popen:
    """``metabench ARGS`` in a subprocess (its own process, so that it can be killed), with
    SIGINT at its default even when the tests themselves run in the background (shells make
    background jobs ignore SIGINT, and a Python started so never sees a Ctrl-C)."""
    env = {**os.environ, "METABENCH_DATA": str(data_root)}
    return subprocess.Popen([sys.executable, "-m", "metabench.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # noqa: PLW1509 - the tests start no threads


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical results and weights (timings aside)."""
    pd.testing.assert_frame_equal(runner.read_csv(a / "episodes.csv"), runner.read_csv(b / "episodes.csv"),
                                  check_exact=True)
    timing = ["train_seconds", "train_cpu_seconds"]
    pd.testing.assert_frame_equal(runner.read_csv(a / "curves.csv").drop(columns=timing),
                                  runner.read_csv(b / "curves.csv").drop(columns=timing), check_exact=True)
    names = sorted(p.name for p in (a / "weights").iterdir())
    assert names == sorted(p.name for p in (b / "weights").iterdir()) and names
    for name in names:
        ta, ma = checkpoint.load(a / "weights" / name)
        tb, mb = checkpoint.load(b / "weights" / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
        assert ma == mb
    ra, rb = (json.loads((d / "run.json").read_text())["training"] for d in (a, b))
    keys = ("meta_iterations", "stop_reason", "best_iteration", "best_validation", "tested_iteration")
    assert {u: {k: v[k] for k in keys} for u, v in ra.items()} == {u: {k: v[k] for k in keys} for u, v in rb.items()}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_training_state_round_trip_continues_bit_for_bit(name: str, omniglot_vinyals, tmp_path: Path) -> None:
    """2 steps, save, load into a learner built with another seed, 2 more steps == 4 steps."""
    def build(seed: int):
        return build_learner(name, 5, (1, 28, 28), 4, "cpu", seed, SMALL_OVERRIDES.get(name))

    shape = build(0).train_shape(5, 1, 15)
    sampler = EpisodeSampler(omniglot_vinyals.train, shape.ways, shape.shots, shape.queries, 0, "train")
    steps = [sampler.episodes(i * shape.meta_batch, shape.meta_batch) for i in range(4)]
    straight = build(0)
    for batch in steps:
        straight.meta_train_step(batch)
    first = build(0)
    for batch in steps[:2]:
        first.meta_train_step(batch)
    tensors, meta = first.training_state()
    checkpoint.save(tmp_path / "state.safetensors", tensors, meta)
    resumed = build(1)
    resumed.load_training_state(*checkpoint.load(tmp_path / "state.safetensors"))
    for batch in steps[2:]:
        resumed.meta_train_step(batch)
    assert resumed.iteration == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), name


def test_corrupt_checkpoint_falls_back_then_fails_with_the_file_named(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "unit", 0.0, warn=lambda text: warnings.append(text))
    warnings: list[str] = []
    ckpt.save({"w": torch.arange(3.0)}, {"step": 1})
    ckpt.save({"w": torch.arange(3.0) * 2}, {"step": 2})
    assert ckpt.load()[1] == {"step": 2}
    data = ckpt.last.read_bytes()
    ckpt.last.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    tensors, meta = ckpt.load()
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.arange(3.0))
    assert len(warnings) == 1 and "last.safetensors is truncated or corrupt" in warnings[0] and "previous" in warnings[0]
    assert not ckpt.last.exists()  # removed, so the next save cannot rotate it over the good one
    ckpt.save({"w": torch.arange(3.0) * 3}, {"step": 3})
    assert checkpoint.load(ckpt.previous)[1] == {"step": 1} and ckpt.load()[1] == {"step": 3}
    ckpt.last.write_bytes(data[: len(data) // 2])
    ckpt.previous.write_bytes(b"\x00" * 40)
    with pytest.raises(checkpoint.CheckpointError, match=r"no readable checkpoint in .*unit: .*last.safetensors is "
                                                         r"truncated .*previous.safetensors is truncated .*: delete"):
        ckpt.load()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path: Path, data_root: Path) -> None:
    """The same command, killed with SIGKILL at random moments and rerun until it finishes,
    gives the uninterrupted run's results and weights bit for bit."""
    straight = metabench("run", "--quiet", *SMALL, "--out", "straight", data_root=data_root, cwd=tmp_path)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    rng = random.Random(13)
    kills, resumed = 0, 0
    work = tmp_path / "killed.incomplete"
    for attempt in range(31):
        if (tmp_path / "killed" / "run.json").is_file():
            # killed after publishing: the run is finished (a working folder left by a kill between
            # publishing and clean-up is refused with "delete it", tested elsewhere)
            shutil.rmtree(work, ignore_errors=True)
            break
        had_progress = bool(list(work.glob("units/*/*.safetensors")) or list(work.glob("units/*/done")))
        proc = metabench("run", "--quiet", *SMALL, "--out", "killed", data_root=data_root, cwd=tmp_path)
        try:
            proc.wait(timeout=rng.uniform(2.0, 7.0) + 0.3 * kills if attempt < 30 else 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            resumed += had_progress
            continue
        assert proc.returncode == 0, proc.stderr.read()
        resumed += had_progress
        break
    assert kills >= 1 and resumed >= 1, f"{kills} kills, {resumed} starts from a checkpoint: the resume path did not run"
    assert (tmp_path / "killed").is_dir() and not (tmp_path / "killed.incomplete").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial folders
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_keeps_checkpoints_says_how_to_resume_and_resume_finishes(sig: int, tmp_path: Path,
                                                                         data_root: Path) -> None:
    """Ctrl-C and SIGTERM (``kill PID``) stop a run the same way: exit status 130, the resume
    command on stderr, the working folder kept, no run directory; the resume finishes it."""
    args = ["run", "--quiet", *SMALL[:-4], "--learners", "maml,protonet", "--iterations", "40", "--patience", "0",
            "--out", "r"]
    proc = metabench(*args, data_root=data_root, cwd=tmp_path)
    work = tmp_path / "r.incomplete"
    deadline = time.monotonic() + 120
    while not list(work.glob("units/*/last.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read().strip().splitlines()[-1]
    assert err == ("metabench: interrupted; checkpoints kept in r.incomplete: resume with `metabench run --resume "
                   "r.incomplete` (or delete it)")
    assert (work / "INCOMPLETE.txt").read_text().startswith("This is the working folder of an unfinished metabench run")
    assert "metabench run --resume r.incomplete" in (work / "INCOMPLETE.txt").read_text()
    assert not (tmp_path / "r").exists()
    resumed = metabench("run", "--quiet", "--resume", "r.incomplete", data_root=data_root, cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert (tmp_path / "r" / "weights" / "maml-seed0.safetensors").is_file() and not work.exists()
    training = json.loads((tmp_path / "r" / "run.json").read_text())["training"]
    assert training["maml-seed0"]["meta_iterations"] == 40


@pytest.mark.slow
def test_a_learner_that_raises_mid_training_leaves_only_a_resumable_working_folder(
        tmp_path: Path, data_root: Path, monkeypatch, capsys) -> None:
    """An unexpected error in the middle of a training (a bug, say) propagates with its traceback
    (exit status 1 from the command line) after one line saying that the working folder is kept
    and how to resume; no run directory or partial folder is left, and the resume finishes."""
    from metabench.algorithms.protonet import ProtoNet

    real = ProtoNet.meta_train_step
    calls = []

    def failing(self, episodes):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated failure in the fourth meta-training step")
        return real(self, episodes)

    monkeypatch.setattr(ProtoNet, "meta_train_step", failing)
    out = tmp_path / "r"
    work = workdir.working_folder(out)
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_cli(*SMALL, "--learners", "protonet", "--data-root", str(data_root), "--out", str(out))
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"metabench: the run's working folder {work} is kept: resume with `metabench run --resume {work}` once the "
        "problem is fixed, or delete it")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r.incomplete"]
    assert (work / "units" / "protonet-seed0" / "last.safetensors").is_file()
    monkeypatch.setattr(ProtoNet, "meta_train_step", real)
    assert run_cli("--resume", str(work)) == 0
    training = json.loads((out / "run.json").read_text())["training"]["protonet-seed0"]
    assert training["segments"][0]["to_iteration"] == 3 and len(training["segments"]) == 2


def stop_after_first_learner(monkeypatch) -> object:
    """Make in-process runs stop, as by Ctrl-C, when their second learner x seed starts;
    returns the real ``runner._train_and_test`` to put back."""
    real = runner._train_and_test
    calls = []

    def stop_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runner, "_train_and_test", stop_after_first)
    return real


def interrupted_run(tmp_path: Path, data_root: Path, monkeypatch, capsys) -> Path:
    """An in-process run stopped (as by Ctrl-C) after its first learner: returns its working folder."""
    real = stop_after_first_learner(monkeypatch)
    out = tmp_path / "run"
    assert run_cli(*SMALL, "--learners", "protonet,matchingnet", "--data-root", str(data_root), "--out", str(out)) == 130
    monkeypatch.setattr(runner, "_train_and_test", real)
    work = workdir.working_folder(out)
    assert capsys.readouterr().err.strip() == (f"metabench: interrupted; checkpoints kept in {work}: resume with "
                                               f"`metabench run --resume {work}` (or delete it)")
    assert (work / "units" / "protonet-seed0" / "done" / "weights.safetensors").is_file()
    return work


@pytest.mark.slow
def test_resume_refuses_another_configuration_other_code_and_extra_flags(
        tmp_path: Path, data_root: Path, monkeypatch, capsys, one_line_error) -> None:
    work = interrupted_run(tmp_path, data_root, monkeypatch, capsys)
    common = [*SMALL, "--learners", "protonet,matchingnet", "--data-root", str(data_root), "--out", str(tmp_path / "run")]
    # the same command with one setting changed
    changed = [*common[:common.index("--iterations") + 1], "7", *common[common.index("--iterations") + 2:]]
    assert run_cli(*changed) == 2
    one_line_error(f"{work} was started with another configuration (iterations: ", "-> {\"protonet\": 7",
                   f"resume it with `metabench run --resume {work}` alone")
    assert run_cli("--resume", str(work), "--budget", "quick", "--out", "elsewhere") == 2
    one_line_error(f"--resume takes every setting from {work}/state.json: drop --budget, --out")
    # other software: another thread count rounds differently
    state = json.loads((work / "state.json").read_text())
    state["software"]["torch_threads"] = 64
    (work / "state.json").write_text(json.dumps(state))
    assert run_cli("--resume", str(work)) == 2
    one_line_error(f"{work} was started with other software (torch_threads 64 -> {torch.get_num_threads()})",
                   "the same thread count")
    state["software"]["torch_threads"] = torch.get_num_threads()
    # other training code: the recorded fingerprint of one file differs
    state["code"]["algorithms/protonet.py"] = "0" * 64
    state["git"] = {"commit": "a" * 40, "dirty": False}
    (work / "state.json").write_text(json.dumps(state))
    assert run_cli("--resume", str(work)) == 2
    one_line_error(f"{work} was started with other training code (algorithms/protonet.py differ)",
                   "git worktree add ../metabench-aaaaaaa aaaaaaaaaaaa", f"or delete {work}")
    assert (work / "units" / "protonet-seed0" / "done").is_dir()  # nothing was touched


@pytest.mark.slow
def test_resume_of_the_same_command_finishes_and_skips_finished_learners(
        tmp_path: Path, data_root: Path, monkeypatch, capsys) -> None:
    work = interrupted_run(tmp_path, data_root, monkeypatch, capsys)
    kept = runner.read_csv(work / "units" / "protonet-seed0" / "done" / "episodes.csv")
    trained = []
    real = runner.train
    monkeypatch.setattr(runner, "train", lambda learner, *a, **k: trained.append(learner.name) or real(learner, *a, **k))
    with workdir.locked(work):  # another process holds it
        assert run_cli("--resume", str(workdir.run_directory(work))) == 2
    assert "is in use by another metabench process" in capsys.readouterr().err
    assert run_cli("--resume", str(workdir.run_directory(work))) == 0  # the run directory's name also works
    assert trained == ["matchingnet"]
    out = workdir.run_directory(work)
    assert not work.exists() and (out / "episodes.csv").is_file()
    episodes = runner.read_csv(out / "episodes.csv")
    assert set(episodes["learner"]) == {"protonet", "matchingnet"}
    pd.testing.assert_frame_equal(episodes[episodes["learner"] == "protonet"].reset_index(drop=True), kept,
                                  check_exact=True)  # the finished learner's rows, kept


@pytest.mark.slow
def test_resume_of_a_regression_run_with_a_skipped_learner(tmp_path: Path, monkeypatch, capsys) -> None:
    """Prototypical Networks is skipped for sinusoids; the pretrained baseline tunes its step size
    on validation tasks: the resumed run equals an uninterrupted one and re-tests the same."""
    args = ["--dataset", "sinusoid", "--budget", "smoke", "--learners", "maml,protonet,pretrained", "--iterations", "20",
            "--test-episodes", "6", "--val-episodes", "4", "--checkpoint-minutes", "0"]
    assert run_cli(*args, "--out", str(tmp_path / "straight")) == 0
    real = stop_after_first_learner(monkeypatch)
    assert run_cli(*args, "--out", str(tmp_path / "resumed")) == 130
    monkeypatch.setattr(runner, "_train_and_test", real)
    capsys.readouterr()
    assert run_cli("--resume", str(tmp_path / "resumed.incomplete")) == 0
    straight, resumed = (runner.read_csv(tmp_path / d / "episodes.csv") for d in ("straight", "resumed"))
    pd.testing.assert_frame_equal(straight, resumed, check_exact=True)
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["skipped"].keys() == {"protonet"}
    assert cli.main(["evaluate", "--quiet", str(tmp_path / "resumed"), "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(resumed, runner.read_csv(tmp_path / "again" / "episodes.csv"), check_exact=True)


@pytest.mark.slow
def test_bad_resume_targets_and_evaluate_without_weights(tmp_path: Path, data_root: Path, one_line_error) -> None:
    (tmp_path / "junk").mkdir()
    assert run_cli("--resume", str(tmp_path / "junk")) == 2
    one_line_error(f"{tmp_path / 'junk'} is not a metabench working folder", "pass the DIR.incomplete folder")
    out = tmp_path / "done"
    assert run_cli("--budget", "smoke", "--learners", "protonet", "--test-episodes", "2", "--data-root", str(data_root),
                   "--out", str(out)) == 0
    assert run_cli("--resume", str(out)) == 2
    one_line_error(f"{out} is a finished run directory: nothing to resume", f"metabench evaluate {out}")
    workdir.working_folder(out).mkdir()  # left over, as by a kill between publishing and clean-up
    assert run_cli("--budget", "smoke", "--learners", "protonet", "--data-root", str(data_root), "--out", str(out)) == 2
    one_line_error(f"{out} is finished and {workdir.working_folder(out)} is left over from it: delete")
    for path in (out / "weights").iterdir():
        path.unlink()
    (out / "weights").rmdir()
    assert cli.main(["evaluate", "--quiet", str(out)]) == 2
    one_line_error(f"{out} has no weights/ folder", "rerun `metabench run`")
    assert cli.main(["evaluate", "--quiet", str(tmp_path / "junk")]) == 2
    one_line_error(f"{tmp_path / 'junk'} is not a finished metabench run directory")


@pytest.mark.slow
def test_evaluate_retests_kept_weights_cross_domain_and_at_another_n(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "trained"
    assert run_cli("--budget", "smoke", "--learners", "maml,reptile,protonet,matchingnet", "--test-episodes", "8",
                   "--set", "reptile.test_inner_steps=3", "--workers", "2", "--data-root", str(data_root),
                   "--out", str(out)) == 0
    # the same episodes again (Reptile's in two worker processes): the same per-episode results as the run itself
    assert cli.main(["evaluate", "--quiet", str(out), "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(runner.read_csv(out / "episodes.csv"), runner.read_csv(tmp_path / "again" / "episodes.csv"),
                                  check_exact=True)
    assert cli.main(["evaluate", "--quiet", str(out), "--test-dataset", "digits", "--test-episodes", "3"]) == 0
    digits = tmp_path / "trained-eval-digits-5w1s"
    run = read_run(digits)
    assert run.setting.short == "omniglot-to-digits-vinyals-to-all-5w1s"
    assert set(run.learners) == {"maml", "reptile", "protonet", "matchingnet"} and len(run.episodes) == 4 * 3
    assert run.episodes["accuracy"].between(0, 100).all()
    assert json.loads((digits / "run.json").read_text())["test_pool"] == "digits/all/test"
    assert json.loads((digits / "run.json").read_text())["evaluated_from"] == str(out)
    assert cli.main(["evaluate", "--quiet", str(out), "--ways", "20", "--test-episodes", "3",
                     "--out", str(tmp_path / "wide")]) == 0
    wide = read_run(tmp_path / "wide")
    assert wide.setting.ways == 20 and set(wide.learners) == {"protonet", "matchingnet"}
    skipped = json.loads((tmp_path / "wide" / "run.json").read_text())["skipped"]
    assert skipped.keys() == {"maml", "reptile"} and "MAML was trained 5-way" in skipped["maml"]
    assert wide.episodes["accuracy"].between(0, 100).all()
