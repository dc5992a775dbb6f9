"""``metabench time``: the cells it sweeps, what one cell measures, the meta-gradient check, the
written outputs and the errors. Only tiny cells run here (2 repetitions); timings themselves are
measured by ``metabench time`` and ``nox -s perf``, never asserted."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pandas as pd
import pytest

from metabench import timing
from metabench.cli import main
from metabench.errors import ConfigError

TINY = {"implementation": "metabench", "learner": "maml", "ways": 5, "shots": 1, "queries": 2, "meta_batch": 2, "inner_steps": 1,
            "inner_lr": 0.4, "device": "cpu", "reps": 2, "warmup": 0}


def test_cells_cross_the_lists_and_skip_what_does_not_apply() -> None:
    """Inner steps only multiply the inner-loop learners, strategies, layouts and compilation only
    our MAML family, and peers get MAML only."""
    cells = timing.cells_for(["metabench", "learn2learn"], ["maml", "protonet"], ["5w1s", "20w5s"], [1, 4], [1, 5],
                             15, 0.4, "cpu", 20, 2, ["auto", "recompute"], [False, True], ["auto", "contiguous"])
    count = {(c.implementation, c.learner): 0 for c in cells}
    for c in cells:
        count[c.implementation, c.learner] += 1
    assert count == {("metabench", "maml"): 2 * 2 * 2 * 2 * 2 * 2, ("metabench", "protonet"): 2 * 2,
                     ("learn2learn", "maml"): 2 * 2 * 2}
    assert {c.label for c in cells} == {
        "metabench", "metabench[compiled]", "metabench[recompute]", "metabench[recompute,compiled]",
        "metabench[contiguous]", "metabench[contiguous,compiled]", "metabench[recompute,contiguous]",
        "metabench[recompute,contiguous,compiled]", "learn2learn"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"implementations": ["torchmeta"]}, "unknown implementation 'torchmeta'"),
    ({"learners": ["maml2"]}, "unknown learner 'maml2'"),
    ({"shapes": ["5w2s"]}, "unknown shape '5w2s'"),
    ({"strategies": ["fast"]}, "unknown strategy 'fast'"),
    ({"layouts": ["nhwc"]}, "unknown layout 'nhwc': choose from auto, contiguous, channels_last"),
    ({"reps": 0}, "--reps, --queries and --meta-batch must be >= 1"),
])
def test_bad_cells_are_rejected(kwargs: dict, message: str) -> None:
    args = {"implementations": ["metabench"], "learners": ["maml"], "shapes": ["5w1s"], "meta_batches": [1],
                "inner_steps": [1], "queries": 15, "inner_lr": 0.4, "device": "cpu", "reps": 20, "warmup": 2}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        timing.cells_for(**args)


def test_one_cell_measures_time_memory_flops_and_float32_error() -> None:
    """A MAML cell reports every repetition, a positive peak memory and FLOP count, and its
    float32 meta-gradient within float32 rounding of the float64 one."""
    result = timing.run_cell(timing.Cell(**TINY))
    assert len(result["times_s"]) == 2 and all(t > 0 for t in result["times_s"])
    assert result["peak_memory_bytes"] > 0
    assert result["flops"] > 1e8  # 2 tasks x 15 images through Conv4, forward and backward
    assert 0 < result["grad_rel_err_float32"] < 1e-4
    assert "grad_rel_diff_float64" not in result  # only peers are compared with ours


def test_summary_rows_ratios_and_markdown() -> None:
    """Rows carry median/IQR in ms and the matmul fraction; ratios divide by the default row of
    the same setting; the Markdown table has one line per row."""
    cells = [timing.Cell(**TINY), timing.Cell(**{**TINY, "strategy": "per_task"})]
    results = [{"times_s": [0.1, 0.2, 0.3, 0.4], "peak_memory_bytes": 2**21, "flops": 4e9},
               {"times_s": [0.3, 0.3, 0.3, 0.3], "peak_memory_bytes": 2**20, "flops": 4e9}]
    table = timing.add_ratios(pd.DataFrame([timing.summarize(c, r, 1e11) for c, r in zip(cells, results)]))
    first, second = table.iloc[0], table.iloc[1]
    assert first.median_ms == pytest.approx(250.0) and first.iqr_ms == pytest.approx(150.0)
    assert first.peak_memory_mib == 2.0 and first.pct_of_matmul == pytest.approx(100 * 4e9 / 0.25 / 1e11)
    assert second.time_vs_metabench == pytest.approx(300 / 250) and second.memory_vs_metabench == 0.5
    md = timing.markdown(table, 1e11, "test CPU")
    assert md.count("\n| metabench") == 2 and "| metabench[per_task] | maml |" in md


def test_time_command_writes_the_directory(tmp_path, capsys) -> None:
    """End to end through the CLI: JSON, CSV, Markdown and environment, one row per cell."""
    out = tmp_path / "timing"
    code = main(["time", "--learners", "maml,protonet", "--meta-batch", "2", "--queries", "2", "--reps", "2",
                 "--warmup", "0", "--strategies", "auto,recompute", "--out", str(out), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "timing.csv", "timing.json", "timing.md"]
    table = pd.read_csv(out / "timing.csv")
    assert list(table.label) == ["metabench", "metabench[recompute]", "metabench"]
    assert list(table.learner) == ["maml", "maml", "protonet"]
    assert (table.median_ms > 0).all() and table.grad_rel_err_float32.iloc[:2].lt(1e-4).all()
    assert len(json.loads((out / "timing.json").read_text())["rows"]) == 3
    assert "timing directory:" in capsys.readouterr().out


def test_time_command_errors_are_one_line(capsys) -> None:
    assert main(["time", "--compile-query", "maybe"]) == 2
    assert capsys.readouterr().err.strip() == "metabench: error: --compile-query takes comma-separated off/on, got 'maybe'"


@pytest.mark.parametrize("peer", ["learn2learn", "higher"])
def test_peers_compute_our_meta_gradient(peer: str) -> None:
    """learn2learn's and higher's second-order MAML on the same Conv4, weights and episodes give
    our meta-gradient to float64 rounding (2 inner steps). CI installs the peers
    (.ci/install_peers.py); elsewhere the test is skipped until `nox -s peers` or that script has
    installed them."""
    if importlib.util.find_spec(peer) is None:
        pytest.skip(f"peers not installed ({peer}: nox -s peers or python .ci/install_peers.py)")
    check = timing.gradient_check(dataclasses.replace(timing.Cell(**TINY), implementation=peer, inner_steps=2))
    assert check["grad_rel_diff_float64"] < 1e-10
    assert check["grad_rel_diff_float32"] < 1e-4


def test_reps_are_split_over_rounds() -> None:
    assert timing.split_reps(20, 4) == [5, 5, 5, 5]
    assert timing.split_reps(21, 4) == [6, 5, 5, 5]
    assert timing.split_reps(2, 4) == [1, 1]
    with pytest.raises(ConfigError, match="--rounds must be >= 1, got 0"):
        timing.split_reps(20, 0)


def test_rounds_interleave_cells_and_pool_their_times(monkeypatch) -> None:
    """Workers run round-robin over the cells; the times of all rounds are pooled; memory, FLOPs
    and the gradient check come from the first round only."""
    calls = []

    def fake_worker(cell, timeout=None, times_only=False):
        calls.append((cell.strategy, cell.reps, times_only))
        t = [0.1 * len(calls)] * cell.reps
        return {"times_s": t} if times_only else {"times_s": t, "peak_memory_bytes": 2**20, "flops": 1e9}

    monkeypatch.setattr(timing, "run_in_worker", fake_worker)
    monkeypatch.setattr(timing, "matmul_flops_per_s", lambda device: 1e11)
    cells = [timing.Cell(**{**TINY, "reps": 5}), timing.Cell(**{**TINY, "reps": 5, "strategy": "per_task"})]
    table, _ = timing.measure(cells, progress=False, rounds=3)
    assert calls == [("auto", 2, False), ("per_task", 2, False), ("auto", 2, True), ("per_task", 2, True),
                     ("auto", 1, True), ("per_task", 1, True)]
    assert list(table.rounds) == [3, 3] and list(table.reps) == [5, 5]
    # cell 1: calls 1, 3, 5 -> times 0.1 x2, 0.3 x2, 0.5 -> median 0.3 s
    assert table.median_ms.iloc[0] == pytest.approx(300.0)
    assert table.peak_memory_mib.iloc[1] == 1.0
    assert "taken in 3 interleaved rounds" in timing.markdown(table, 1e11, "test CPU")


def test_time_command_rounds(tmp_path) -> None:
    """--rounds through the CLI: each cell's repetitions are pooled from both rounds."""
    out = tmp_path / "t"
    assert main(["time", "--learners", "protonet", "--meta-batch", "1", "--queries", "2", "--reps", "3",
                 "--warmup", "0", "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "timing.json").read_text())["rows"]
    assert [(r["reps"], r["rounds"]) for r in rows] == [(3, 2)]
