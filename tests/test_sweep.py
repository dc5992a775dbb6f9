"""``metabench sweep``: sweep files and their cells, the three engines, resuming a killed sweep,
failed cells, and reports over a partly finished sweep.

The engine tests run the shipped smoke sweep (``sweeps/smoke.toml``: protonet and maml x seeds
0, 1 on Omniglot 5-way 1-shot, two meta-iterations each) through the local engine, a real Ray
runtime started on this machine, and the Slurm engine's code path with submitit's local
executor, and check that every engine gives the same cells with the same results as a plain
``metabench run`` of those learners and seeds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from metabench import cli, runner, sweeps
from metabench.errors import ConfigError
from metabench.sweeps import cell as cell_mod
from metabench.sweeps import engines, spec, state

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "smoke.toml"


def sweep_cli(*args: str) -> int:
    return cli.main(["sweep", *args])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def subprocess_env(data_root: Path) -> dict[str, str]:
    return {**os.environ, "METABENCH_DATA": str(data_root)}


def metabench(*args: str, data_root: Path, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metabench.cli", *args], cwd=cwd, env=subprocess_env(data_root),
                          capture_output=True, text=True, check=False, **kw)


# --------------------------------------------------------------------------------------------
# sweep files and cells (pure, no data)


def test_the_smoke_sweep_has_four_cells_one_learner_and_seed_each() -> None:
    cells = spec.expand(spec.load(SMOKE))
    assert [(c.learners, c.seeds) for c in cells] == [(["protonet"], [0]), (["protonet"], [1]), (["maml"], [0]),
                                                      (["maml"], [1])]
    for c in cells:
        assert c.name == f"{c.label}-{c.key}" and len(c.key) == 12
        assert c.label.startswith("omniglot-vinyals-5w1s-") and c.variant == ""
        assert c.config["budget"] == "smoke" and c.config["iterations"] == {c.learners[0]: 2}
        assert c.key == spec.cell_key(c.config)
    assert len({c.key for c in cells}) == 4


def test_the_committed_smoke_sweep_is_the_shipped_file_expanded_and_done() -> None:
    """results/sweep-smoke (the README's measured cost) holds the cells sweeps/smoke.toml expands to
    today, all done: a change of the budgets or the configuration that renamed the cells shows here."""
    committed = REPO / "results" / "sweep-smoke"
    assert (committed / "sweep.toml").read_text() == SMOKE.read_text()
    assert state.read_sweep(committed)["cells"] == [c.name for c in spec.expand(spec.load(SMOKE))]
    assert [c.state for c in state.statuses(committed)] == ["done"] * 4
    history = state.read_history(committed)
    assert history[-1]["engine"] == "local" and history[-1]["jobs"] == 2 and not history[-1]["interrupted"]


def test_cell_keys_follow_the_configuration_only(tmp_path: Path) -> None:
    base = spec.expand(spec.load(SMOKE))
    text = SMOKE.read_text()
    more = spec.expand(spec.parse(text.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"), "smoke"))
    assert [c.key for c in more][:2] == [c.key for c in base][:2] and len(more) == 6  # old cells keep their keys
    renamed = spec.expand(spec.parse(text.replace('name = "smoke"', 'name = "other"') + "\n# a comment\n", "x"))
    assert [c.key for c in renamed] == [c.key for c in base]  # name and layout do not define cells
    threads = spec.expand(spec.parse(text.replace("cpus = 1", "cpus = 2"), "smoke"))
    assert [c.key for c in threads] == [c.key for c in base]
    changed = spec.expand(spec.parse(text.replace('budget = "smoke"', 'budget = "smoke"\ntest_episodes = 12'), "smoke"))
    assert not {c.key for c in changed} & {c.key for c in base}  # a changed cell is a new cell


def test_overrides_split_variants_and_cells_they_do_not_concern_appear_once() -> None:
    text = """
[shared]
budget = "smoke"
[grid]
learners = ["protonet", "maml"]
set = [[], ["maml.inner_lr=0.1"]]
budget = ["smoke", "quick"]
"""
    with pytest.raises(ConfigError, match=r"budget in both \[shared\] and \[grid\]"):
        spec.parse(text, "s")
    cells = spec.expand(spec.parse(text.replace('[shared]\nbudget = "smoke"\n', ""), "s"))
    got = [(c.learners[0], c.variant) for c in cells]
    # the axes in the file's order, the last varying fastest; protonet: one cell per budget (the maml
    # override does not concern it); maml: one per override x budget
    assert got == [("protonet", "budget=smoke"), ("maml", "budget=smoke"), ("protonet", "budget=quick"),
                   ("maml", "budget=quick"), ("maml", "maml.inner_lr=0.1, budget=smoke"),
                   ("maml", "maml.inner_lr=0.1, budget=quick")]
    tuned = [c for c in cells if "inner_lr" in c.variant]
    assert all(c.config["hparams"] == {"maml": {"inner_lr": "0.1"}} for c in tuned)
    assert all(c.config["hparams"] == {} for c in cells if c.learners == ["protonet"])


def test_variants_name_only_what_varies_and_concerns_the_cell() -> None:
    text = """
[shared]
budget = "smoke"
set = ["maml.inner_lr=0.1"]
[grid]
learners = ["protonet", "maml"]
iterations = [5, {maml = 7}]
"""
    cells = spec.expand(spec.parse(text, "s"))
    got = [(c.learners[0], c.config["iterations"][c.learners[0]], c.variant) for c in cells]
    # the shared override is in every maml cell and so names no column; the maml-only table leaves
    # protonet as it is (smoke: 2 iterations) and names nothing for it
    assert got == [("protonet", 5, "iterations=5"), ("maml", 5, "iterations=5"), ("protonet", 2, ""),
                   ("maml", 7, 'iterations={"maml": 7}')]
    assert all(c.config["hparams"] == {"maml": {"inner_lr": "0.1"}} for c in cells if c.learners == ["maml"])


def test_settings_tables_pair_keys_and_setting_groups_give_one_cell_per_combination() -> None:
    text = """
group = "setting"
[shared]
budget = "smoke"
[grid]
ways = [5, 20]
seeds = [0, 1]
[[settings]]
dataset = "omniglot"
split = "vinyals"
[[settings]]
dataset = "omniglot"
split = "lake"
"""
    cells = spec.expand(spec.parse(text, "s"))
    assert [(c.config["split"], c.config["ways"]) for c in cells] == [("vinyals", 5), ("vinyals", 20), ("lake", 5),
                                                                      ("lake", 20)]
    assert all(c.seeds == [0, 1] and len(c.learners) == 5 and "-all-seeds0_1-" in c.name for c in cells)


@pytest.mark.parametrize("text, fragments", [
    ("[grid]\nwidth = [1]", ["unknown key(s) width in [grid]", "valid keys are"]),
    ("[shared]\nout = 'x'", ["unknown key(s) out in [shared]", "the sweep chooses each cell's folder"]),
    ("[grid]\nways = 5", ["grid axis ways = 5", "is not a list", "ways = [5]"]),
    ("[grid]\nways = []", ["grid axis ways", "is empty, so the grid has no cell"]),
    ("[grids]\nways = [5]", ["unknown section(s) or key(s) grids"]),
    ("group = 'seed'", ["group = 'seed'", "choose one of learner, setting"]),
    ("[resources]\ncpus = 0", ["[resources] cpus", ">= 1"]),
    ("[resources]\nram = 3", ["unknown key(s) ram in [resources]"]),
    ("[slurm]\ntimeout_min = '1h'", ["[slurm] timeout_min", "must be a whole number"]),
    ("[grid]\nways = [5, 1]", ["sweep cell with ways=1", "--ways must be at least 2"]),
    ("[grid]\nlearners = ['maml', 'snail']", ["sweep cell with the shared settings", "unknown learner 'snail'"]),
    ("[grid]\nset = [['maml.inner_lr']]", ["--set 'maml.inner_lr' is not of the form"]),
    ("[shared]\nbudget = 'smoke'\n[grid]\nset = [['maml.inner_rate=1']]", ["sweep cell with set=", "inner_rate"]),
    ("ways = [", ["is not valid TOML"]),
    ("[grid]\ncheckpoint_minutes = [1, 2]", ["checkpoint_minutes in [grid]", "changes no result", "move it to [shared]"]),
    ("[shared]\ndata_root = 'data'", ["data_root = 'data' in [shared]", "is relative", "--data-root"]),
])
def test_bad_sweep_files_are_refused_with_one_line_before_anything_runs(
        text: str, fragments: list[str], tmp_path: Path, one_line_error) -> None:
    path = write(tmp_path / "bad.toml", text)
    assert sweep_cli("plan", str(path), "--no-measure") == 2
    one_line_error(*fragments)
    assert sweep_cli("run", str(path), "--out", str(tmp_path / "out")) == 2
    one_line_error(*fragments)
    assert not (tmp_path / "out").exists()


def test_a_sweep_directory_of_another_sweep_file_is_refused_naming_what_differs(tmp_path: Path, one_line_error) -> None:
    sweep = spec.load(SMOKE)
    out = tmp_path / "sw"
    state.open_sweep(out, sweep, spec.expand(sweep))
    other = write(tmp_path / "other.toml", SMOKE.read_text().replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    assert sweep_cli("run", str(other), "--out", str(out)) == 2
    one_line_error(f"{out} was made from another sweep file", "grid.seeds: [0, 1] -> [0, 1, 2]", "choose another --out")
    assert sweep_cli("run", str(out), "--out", str(tmp_path / "elsewhere")) == 2
    one_line_error("is a sweep directory: drop --out")
    assert sweep_cli("status", str(tmp_path)) == 2
    one_line_error("is not a metabench sweep directory")
    assert sweep_cli("run", str(tmp_path / "missing.toml")) == 2
    one_line_error("does not exist: pass a sweep file")
    (tmp_path / "plain").mkdir()
    assert sweep_cli("run", str(SMOKE), "--out", str(tmp_path / "plain")) == 2
    one_line_error("exists and is not a sweep directory: choose another --out")


def test_missing_engines_name_their_extra_and_a_silent_ray_address_is_refused(
        tmp_path: Path, monkeypatch, one_line_error) -> None:
    import builtins

    real = builtins.__import__

    def no_engines(name, *args, **kwargs):
        if name in ("ray", "submitit"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_engines)
    for engine, extra in (("ray", "metabench[ray]"), ("slurm", "metabench[slurm]")):
        assert sweep_cli("run", str(SMOKE), "--out", str(tmp_path / "sw"), "--engine", engine) == 2
        one_line_error(f"--engine {engine} needs", extra)
    assert not (tmp_path / "sw").exists()
    monkeypatch.setattr(builtins, "__import__", real)
    if importlib.util.find_spec("submitit") is not None:
        monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
        assert sweep_cli("run", str(SMOKE), "--out", str(tmp_path / "sw"), "--engine", "slurm") == 2
        one_line_error("found no Slurm here (no sbatch on PATH)", "--cluster local")
        monkeypatch.undo()
        assert not (tmp_path / "sw").exists()
    assert sweep_cli("run", str(SMOKE), "--out", str(tmp_path / "sw"), "--engine", "dask") == 2
    one_line_error("unknown engine 'dask'")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"the Ray cluster at 127.0.0.1:{port} does not answer .*ray start --head"):
        engines.check_address(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ConfigError, match="is not host:port"):
        engines.check_address("head-node")
    if importlib.util.find_spec("ray") is not None and not os.environ.get("RAY_ADDRESS"):
        assert sweep_cli("run", str(SMOKE), "--out", str(tmp_path / "sw"), "--engine", "ray", "--address", "auto") == 2
        one_line_error("cannot connect to the Ray cluster at auto", "ray start --head")
        assert not (tmp_path / "sw").exists()  # refused before anything was created
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        engines.local_jobs(1, 0, 0)
    assert engines.local_jobs(1, 1) == 1 and engines.local_jobs(1, 0, 3) == 3


def test_cell_states_are_read_from_the_files(tmp_path: Path) -> None:
    sweep = spec.load(SMOKE)
    cells = spec.expand(sweep)
    out = tmp_path / "sw"
    state.open_sweep(out, sweep, cells)
    folders = [state.cell_dir(out, c) for c in cells]
    assert [s.state for s in state.statuses(out)] == ["pending"] * 4
    state.write_json_atomically(folders[0] / "status.json", {"state": "failed", "attempt": 2, "error": "boom"})
    state.write_json_atomically(folders[1] / "status.json", {"state": "running", "attempt": 1})  # its process died
    (folders[2] / "run").mkdir()
    for name in ("run.json", "config.json", "episodes.csv"):
        (folders[2] / "run" / name).write_text("{}")
    with state.holding(folders[3]):
        got = state.statuses(out)
        assert [s.state for s in got] == ["failed", "interrupted", "done", "running"]
        assert got[0].error == "boom" and got[0].attempts == 2
        with pytest.raises(ConfigError, match="is being run by another process"), state.holding(folders[3]):
            pass
        assert cell_mod.run_cell(folders[3]) == cell_mod.BUSY
    assert state.statuses(out)[3].state == "pending"
    text = sweeps.status_text(state.statuses(out), out)
    assert "4 cells: 1 done, 1 interrupted, 1 failed, 1 pending" in text
    assert f"failed: {cells[0].name} (attempt 2): boom" in text and "--retry-failed" in text


# --------------------------------------------------------------------------------------------
# engines (real runs on Omniglot)


def _cell_episodes(out: Path) -> dict[str, pd.DataFrame]:
    return {c.name: runner.read_csv(c.folder / "run" / "episodes.csv") for c in state.statuses(out)}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """The smoke sweep through the local engine (two cells at a time), as a user runs it."""
    cwd = tmp_path_factory.mktemp("local")
    done = metabench("sweep", "run", str(SMOKE), "--out", "sw", "--jobs", "2", data_root=data_root, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 cells: 4 done" in done.stdout
    return cwd / "sw"


@pytest.mark.slow
def test_local_engine_cells_are_ordinary_runs_equal_to_a_plain_run(local_sweep: Path, data_root: Path,
                                                                   tmp_path: Path) -> None:
    cells = state.statuses(local_sweep)
    assert [c.state for c in cells] == ["done"] * 4
    for c in cells:
        status = state.read_status(c.folder)
        assert status["engine"] == "local" and status["torch_threads"] == 1 and status["attempt"] == 1
        assert (c.folder / "run" / "weights").is_dir() and not (c.folder / "run.incomplete").exists()
        assert "== done in" in (c.folder / "log.txt").read_text()
    plain = subprocess.run(  # one torch thread, as the cells have
        [sys.executable, "-m", "metabench.cli", "run", "--quiet", "--budget", "smoke", "--learners", "protonet,maml",
         "--seeds", "0,1", "--checkpoint-minutes", "0", "--out", "plain"], cwd=tmp_path, capture_output=True, text=True,
        env={**subprocess_env(data_root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, timeout=600, check=False)
    assert plain.returncode == 0, plain.stderr
    rows = runner.read_csv(tmp_path / "plain" / "episodes.csv")
    cells_rows = pd.concat(_cell_episodes(local_sweep).values(), ignore_index=True)
    key = ["learner", "seed", "episode"]
    pd.testing.assert_frame_equal(rows.sort_values(key).reset_index(drop=True),
                                  cells_rows.sort_values(key).reset_index(drop=True), check_exact=True)
    again = metabench("sweep", "run", str(local_sweep), data_root=data_root, cwd=tmp_path, timeout=120)
    assert again.returncode == 0 and "4 done, 0 to run" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_ray_engine_runs_the_smoke_sweep_on_a_real_ray_runtime(local_sweep: Path, data_root: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    pytest.importorskip("ray")
    port = _free_port()
    # a private cluster of this test: no usage reports, and no token (Ray >= 2.5x makes one per `ray start`
    # and keeps it in the user's home, where the previous cluster's can linger)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = subprocess_env(data_root)
    ray_cli = str(Path(sys.executable).with_name("ray"))  # the environment's own Ray
    start = subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard",
                            "false", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180,
                           check=False)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        done = metabench("sweep", "run", str(SMOKE), "--out", "sw", "--engine", "ray", "--address", f"127.0.0.1:{port}",
                         data_root=data_root, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
    assert [state.read_status(c.folder)["engine"] for c in state.statuses(tmp_path / "sw")] == ["ray"] * 4
    _assert_same_cells(local_sweep, tmp_path / "sw")


@pytest.mark.slow
def test_slurm_engine_code_path_runs_the_smoke_sweep_with_submitits_local_executor(
        local_sweep: Path, data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    done = metabench("sweep", "run", str(SMOKE), "--out", "sw", "--engine", "slurm", "--cluster", "local",
                     data_root=data_root, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [state.read_status(c.folder)["engine"] for c in state.statuses(tmp_path / "sw")] == ["slurm"] * 4
    assert list((tmp_path / "sw" / "slurm").iterdir())  # submitit's job folders
    _assert_same_cells(local_sweep, tmp_path / "sw")


def test_slurm_parameters_and_the_requeue_of_a_cell() -> None:
    sweep = spec.load(REPO / "sweeps" / "omniglot-paper.toml")
    params = engines.slurm_parameters(sweep.slurm, sweep.resources["cpus"], sweep.resources["gpus"], sweep.name)
    assert params == {"name": "metabench-omniglot-paper", "timeout_min": 720, "cpus_per_task": 4, "mem_gb": 16,
                      "slurm_array_parallelism": 20, "gpus_per_node": 1}
    submitit = pytest.importorskip("submitit")
    # what submitit's signal handler does at the time limit: it requeues only callables with a
    # `checkpoint` attribute, with the submission their checkpoint function returns
    job = engines.SlurmCell()
    submission = submitit.helpers.DelayedSubmission(job, "cells/x", 4, None)
    assert hasattr(submission.function, "checkpoint")
    again = submission._checkpoint_function()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is job and again.args == ("cells/x", 4, None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_cells(a: Path, b: Path) -> None:
    from test_resume import assert_same_run

    names_a, names_b = [c.name for c in state.statuses(a)], [c.name for c in state.statuses(b)]
    assert names_a == names_b
    for name in names_a:
        assert_same_run(state.cell_dir(a, name) / "run", state.cell_dir(b, name) / "run")


# --------------------------------------------------------------------------------------------
# a killed sweep, failed cells, partial reports

KILLABLE = """
name = "killable"
[shared]
budget = "smoke"
iterations = 24
test_episodes = 5
val_episodes = 2
checkpoint_minutes = 0
# MAML cells train for about 5 s after their first checkpoint (time to kill them there);
# Prototypical Networks cells are kept short
[shared.hparams.maml]
meta_batch = 8
[shared.hparams.protonet]
train_ways = 20
[grid]
learners = ["maml", "protonet"]
seeds = [0, 1]
"""


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_sweep_killed_at_its_driver_and_at_a_cell_resumes_to_the_uninterrupted_results(
        data_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "killable.toml", KILLABLE)
    straight = metabench("sweep", "run", str(path), "--out", "straight", "--jobs", "1", data_root=data_root,
                         cwd=tmp_path, timeout=900)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    driver = subprocess.Popen([sys.executable, "-m", "metabench.cli", "sweep", "run", str(path), "--out", "killed",
                               "--jobs", "1"], cwd=tmp_path, env=subprocess_env(data_root),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "killed"
    try:
        first = None

        def a_cell_checkpointed() -> bool:
            nonlocal first
            if not out.is_dir():
                return False
            for c in state.statuses(out):
                if c.state == "running" and list((c.folder / "run.incomplete").glob("units/*/last.safetensors")):
                    first = c
                    return True
            return False

        _wait_for(a_cell_checkpointed, 300, "a cell's first checkpoint")
        os.kill(state.read_status(first.folder)["pid"], signal.SIGKILL)  # the cell dies; the driver goes on
        _wait_for(lambda: any(c.state == "running" and c.name != first.name for c in state.statuses(out)), 300,
                  "the next cell")
        middle = next(c for c in state.statuses(out) if c.state == "running")
        _wait_for(lambda: bool(list((middle.folder / "run.incomplete").glob("units/*/last.safetensors"))), 300,
                  "the next cell's checkpoint")
        driver.send_signal(signal.SIGKILL)  # the driver dies: its running cell gets SIGTERM and stops cleanly
        driver.wait(timeout=60)
        _wait_for(lambda: all(c.state != "running" for c in state.statuses(out)), 120, "the cells to stop")
    finally:
        if driver.poll() is None:
            driver.kill()
    got = {c.name: c.state for c in state.statuses(out)}
    assert got[first.name] == "interrupted" and got[middle.name] == "interrupted", got
    assert state.read_status(middle.folder)["state"] == "interrupted"  # stopped by SIGTERM, said so
    assert "pending" in got.values() or "done" in got.values()
    partial = metabench("report", "killed", "--out", "partial", data_root=data_root, cwd=tmp_path, timeout=300)
    assert partial.returncode == 0, partial.stderr
    index = (tmp_path / "partial" / "index.md").read_text()
    done_now = sum(v == "done" for v in got.values())
    assert f"{done_now} of 4 cells in this report" in index
    assert f"- missing (interrupted): `{first.name}`" in index and f"- missing (interrupted): `{middle.name}`" in index
    status = metabench("sweep", "status", "killed", data_root=data_root, cwd=tmp_path)
    assert "(resumes from its checkpoints)" in status.stdout and "run the rest: metabench sweep run killed" in status.stdout
    rerun = metabench("sweep", "run", "killed", data_root=data_root, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert state.read_status(first.folder)["resumed"] is True and state.read_status(first.folder)["attempt"] == 2
    _assert_same_cells(tmp_path / "straight", out)
    assert sorted(p.name for p in out.rglob(".*partial*")) == []


@pytest.mark.slow
def test_a_failing_cell_is_recorded_the_others_go_on_and_it_is_retried_only_when_asked(
        data_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "failing.toml", """
name = "failing"
[shared]
budget = "smoke"
learners = ["protonet"]
[grid]
queries = [15, 30]
""")  # Omniglot has 20 images per character: 1 shot + 30 queries cannot be drawn, which only the data can tell
    first = metabench("sweep", "run", str(path), "--out", "sw", data_root=data_root, cwd=tmp_path, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    cells = state.statuses(tmp_path / "sw")
    assert [c.state for c in cells] == ["done", "failed"]
    assert "queries" in cells[1].error and "\n" not in cells[1].error
    assert "Traceback" in (cells[1].folder / "log.txt").read_text()
    assert f"failed: {cells[1].name} (attempt 1)" in first.stdout and "--retry-failed" in first.stdout
    again = metabench("sweep", "run", "sw", data_root=data_root, cwd=tmp_path, timeout=600)
    assert again.returncode == 1 and "1 failed (not retried: pass --retry-failed)" in again.stdout
    assert state.statuses(tmp_path / "sw")[1].attempts == 1
    retried = metabench("sweep", "run", "sw", "--retry-failed", data_root=data_root, cwd=tmp_path, timeout=600)
    assert retried.returncode == 1 and state.statuses(tmp_path / "sw")[1].attempts == 2
    rep = metabench("report", "sw", "--out", "rep", data_root=data_root, cwd=tmp_path, timeout=300)
    assert rep.returncode == 0, rep.stderr
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "1 of 2 cells in this report" in index and f"- missing (failed): `{cells[1].name}`: " in index
    assert "| Prototypical Networks |" in (tmp_path / "rep" / "tables" / "accuracy.md").read_text()
    meta = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert meta["sweeps"][0]["states"] == {cells[0].name: "done", cells[1].name: "failed"}


@pytest.mark.slow
def test_a_sweep_report_aggregates_seeds_across_cells(local_sweep: Path, tmp_path: Path) -> None:
    from metabench.report import report

    report([local_sweep], tmp_path / "rep")
    long = pd.read_csv(tmp_path / "rep" / "tables" / "accuracy_long.csv")
    ours = long[long["source"] == "metabench"].set_index("learner")
    assert ours.loc["protonet", "seeds"] == 2 and ours.loc["maml", "seeds"] == 2
    episodes = pd.concat(_cell_episodes(local_sweep).values(), ignore_index=True)
    for learner in ("protonet", "maml"):
        expected = episodes[episodes["learner"] == learner].groupby("episode")["accuracy"].mean().mean()
        assert ours.loc[learner, "accuracy_pct"] == pytest.approx(expected, rel=1e-9)  # the CSV keeps 10 digits
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "4 of 4 cells in this report (4 done)." in index and "## Paired comparisons" in index


@pytest.mark.slow
def test_plan_measures_each_learner_once_and_estimates_every_cell(data_root: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("METABENCH_DATA", str(data_root))
    assert sweep_cli("plan", str(SMOKE)) == 0
    captured = capsys.readouterr()
    assert captured.err.count("measuring ") == 2  # protonet and maml, not per seed
    rows = [line for line in captured.out.splitlines() if line.startswith("| ") and "`omniglot" in line]
    assert len(rows) == 4 and all(line.rstrip(" |").endswith((" s", " min")) for line in rows)
    assert "Estimated total:" in captured.out and "2 probe(s) measured here with 1 thread(s)" in captured.out


@pytest.mark.slow
def test_sigterm_stops_the_driver_and_its_cell_cleanly_and_the_run_is_recorded(data_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "killable.toml", KILLABLE)
    driver = subprocess.Popen([sys.executable, "-m", "metabench.cli", "sweep", "run", str(path), "--out", "sw",
                               "--jobs", "1"], cwd=tmp_path, env=subprocess_env(data_root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "sw"
    try:
        _wait_for(lambda: out.is_dir() and any(c.state == "running" and list((c.folder / "run.incomplete").glob(
            "units/*/last.safetensors")) for c in state.statuses(out)), 300, "a cell's first checkpoint")
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "sweep interrupted; its cells keep their checkpoints" in err, err
    cells = state.statuses(out)
    assert [c.state for c in cells] == ["interrupted", "pending", "pending", "pending"]
    assert state.read_status(cells[0].folder)["state"] == "interrupted"
    log = (cells[0].folder / "log.txt").read_text()
    assert "== interrupted" in log and "Traceback" not in log
    history = state.read_history(out)
    assert len(history) == 1 and history[0]["interrupted"] is True and history[0]["ran"] == {cells[0].name: 130}
    assert sorted(p.name for p in out.rglob("*.tmp")) == []


@pytest.mark.slow
def test_a_report_over_regression_cells_names_each_cells_section_and_files(data_root: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "sine.toml", """
name = "sine"
[shared]
dataset = "sinusoid"
budget = "smoke"
[grid]
learners = ["maml", "pretrained"]
""")
    done = metabench("sweep", "run", str(path), "--out", "sw", data_root=data_root, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rep = metabench("report", "sw", "--out", "rep", data_root=data_root, cwd=tmp_path, timeout=300)
    assert rep.returncode == 0, rep.stderr
    names = [c.name for c in state.statuses(tmp_path / "sw")]
    index = (tmp_path / "rep" / "index.md").read_text()
    for name in names:
        assert (tmp_path / "rep" / "tables" / f"regression-{name}.csv").is_file()
        assert f"### {name}: sinusoid" in index
    assert "2 of 2 cells in this report" in index
