"""The performance gate's logic (:mod:`metabench.perfgate`) without timing anything: interleaving
with a fake clock, the verdicts, the confirmation measurement, baselines and their errors, and the
``metabench gate`` command. The gate itself runs in tests/perf/test_gate.py (``--perf-gate``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from metabench import perfgate
from metabench.cli import main
from metabench.errors import ConfigError

HERE = {"cpu": "Test CPU", "torch": "2.13.0", "torch_threads": 2, "python": "3.11", "commit": None}


@pytest.fixture(autouse=True)
def _this_machine_is_the_baselines_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The synthetic baselines below are recorded on "Test CPU": so is this machine, unless a
    test says otherwise."""
    monkeypatch.setattr(perfgate, "machine", lambda: dict(HERE))


def _baseline(**ratios: float) -> perfgate.Baseline:
    return perfgate.Baseline(ratios, {k: [v * 0.95, v, v * 1.05] for k, v in ratios.items()},
                             {"cpu": "Test CPU", "torch": "2.13.0", "torch_threads": 2}, 15, perfgate.THRESHOLD)


def _write(folder: Path, baseline: perfgate.Baseline) -> Path:
    folder.mkdir()
    (folder / "baseline.json").write_text(json.dumps({"ratios": baseline.ratios, "repeats": baseline.repeats,
                                                      "machine": baseline.machine, "rounds": baseline.rounds,
                                                      "threshold": baseline.threshold}))
    return folder


def _rows(**ratios: float) -> pd.DataFrame:
    return pd.DataFrame([{"workload": w, "round": r, "step_s": v, "reference_s": 1.0, "ratio": v}
                         for w, v in ratios.items() for r in range(3)])


def test_interleaved_alternates_the_order_and_pairs_each_round() -> None:
    """Warm-up calls are untimed; even rounds time the reference first, odd rounds the step; each
    pair holds that round's step and reference seconds."""
    now = [0.0]
    calls: list[str] = []

    def fake(name: str, seconds: float):
        def f() -> None:
            calls.append(name)
            now[0] += seconds
        return f

    out = perfgate.interleaved(fake("step", 3.0), fake("ref", 2.0), rounds=4, warmup=1, clock=lambda: now[0])
    assert out == [(3.0, 2.0)] * 4
    assert calls == ["ref", "step", "ref", "step", "step", "ref", "ref", "step", "step", "ref"]
    with pytest.raises(ConfigError, match="rounds >= 1"):
        perfgate.interleaved(fake("step", 1), fake("ref", 1), rounds=0)


def test_check_fails_only_above_the_threshold() -> None:
    base = _baseline(maml=0.8, protonet=1.0)
    limit = 0.8 * (1 + perfgate.THRESHOLD)
    verdicts = perfgate.check({"maml": limit, "protonet": 1.0 * (1 + perfgate.THRESHOLD) * 1.01}, base).set_index("workload")
    assert verdicts.loc["maml", "passed"] and not verdicts.loc["protonet", "passed"]
    assert verdicts.loc["maml", "change_pct"] == pytest.approx(100 * perfgate.THRESHOLD)
    assert verdicts.loc["protonet", "limit"] == pytest.approx(1 + perfgate.THRESHOLD)
    with pytest.raises(ConfigError, match="no ratio for reptile"):
        perfgate.check({"reptile": 1.0}, base)


def test_gate_confirms_a_failure_with_a_second_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workload above its limit is measured again: it passes if the second measurement is within
    the limit (one unlucky measurement), and fails only when both are above it."""
    folder = _write(tmp_path / "base", _baseline(maml=0.8, fomaml=0.7))
    high, ok = 0.8 * (1 + perfgate.THRESHOLD) + 0.1, 0.8
    measurements = iter([_rows(maml=high, fomaml=0.7), _rows(maml=ok)])
    asked: list[list[str]] = []

    def fake_measure(workloads, rounds, slow_core, progress=None):
        asked.append(list(workloads))
        return next(measurements)

    monkeypatch.setattr(perfgate, "measure", fake_measure)
    verdicts, text = perfgate.gate(folder, ["maml", "fomaml"])
    assert asked == [["maml", "fomaml"], ["maml"]]
    assert verdicts["passed"].all() and verdicts.set_index("workload").loc["maml", "confirmed"]
    assert "pass (on a second measurement)" in text

    measurements = iter([_rows(maml=high, fomaml=0.7), _rows(maml=high + 0.2)])
    verdicts, text = perfgate.gate(folder, ["maml", "fomaml"])
    row = verdicts.set_index("workload").loc["maml"]
    assert not row["passed"] and row["measured"] == pytest.approx(high)  # the lower of the two
    assert "**FAIL** (measured twice)" in text and "Test CPU" in text


def test_another_kind_of_machine_gets_the_wider_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On another CPU model, vector instruction set or torch the limit is OTHER_KIND_THRESHOLD, and
    the table says why."""
    base = _baseline(maml=1.0)
    here = dict(HERE)
    assert perfgate.threshold_for(base, here) == perfgate.THRESHOLD
    assert perfgate.threshold_for(base, {**here, "cpu": "Other CPU"}) == perfgate.OTHER_KIND_THRESHOLD
    assert perfgate.threshold_for(base, {**here, "torch": "2.14.0"}) == perfgate.OTHER_KIND_THRESHOLD
    assert perfgate.threshold_for(base, {**here, "cpu_capability": "AVX2"}) == perfgate.OTHER_KIND_THRESHOLD
    folder = _write(tmp_path / "base", base)
    ratio = 1 + (perfgate.THRESHOLD + perfgate.OTHER_KIND_THRESHOLD) / 2  # between the two limits
    monkeypatch.setattr(perfgate, "measure", lambda workloads, *a, **k: _rows(**{w: ratio for w in workloads}))
    monkeypatch.setattr(perfgate, "machine", lambda: {**here, "cpu": "Other CPU"})
    verdicts, text = perfgate.gate(folder, ["maml"])
    assert verdicts["passed"].all() and f"the limit is +{100 * perfgate.OTHER_KIND_THRESHOLD:.0f}%" in text
    monkeypatch.setattr(perfgate, "machine", lambda: here)
    verdicts, _ = perfgate.gate(folder, ["maml"])
    assert not verdicts["passed"].any()


def test_bad_baselines_and_workloads_are_refused_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfgate, "measure", lambda *a, **k: pytest.fail("measured despite bad input"))
    with pytest.raises(ConfigError, match=r"no gate baseline at .*repository root.*metabench gate --record"):
        perfgate.gate(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "baseline.json").write_text('{"ratios": {"maml": 1}}')
    with pytest.raises(ConfigError, match="is not a gate baseline .*record it again"):
        perfgate.load_baseline(bad)
    good = _write(tmp_path / "good", _baseline(maml=0.8))
    with pytest.raises(ConfigError, match="unknown gate workload 'sgd'"):
        perfgate.gate(good, ["sgd"])
    with pytest.raises(ConfigError, match="baseline .* has no ratio for protonet: record it again"):
        perfgate.gate(good, ["maml", "protonet"])
    with pytest.raises(ConfigError, match="no gate workloads given"):
        perfgate.gate(good, [])


def test_record_writes_the_baseline_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``record`` keeps every repeat's median, takes their median as the ratio, and writes
    nothing when a worker fails."""
    repeats = iter([_rows(maml=0.8, protonet=1.0), _rows(maml=0.9, protonet=1.1), _rows(maml=0.7, protonet=0.9)])
    monkeypatch.setattr(perfgate, "_measure_in_worker", lambda workloads, rounds: next(repeats))
    base = perfgate.record(tmp_path / "base", ["maml", "protonet"], rounds=3, repeats=3)
    assert base.ratios == {"maml": 0.8, "protonet": 1.0}
    assert base.spread("maml") == pytest.approx((0.9 - 0.7) / 0.8)
    assert perfgate.load_baseline(tmp_path / "base").repeats == {"maml": [0.8, 0.9, 0.7], "protonet": [1.0, 1.1, 0.9]}
    assert len(pd.read_csv(tmp_path / "base" / "rounds.csv")) == 3 * 2 * 3
    assert "| maml | 0.800 | 0.800, 0.900, 0.700 | 25.0% |" in (tmp_path / "base" / "baseline.md").read_text()

    def failing(workloads, rounds):
        raise ConfigError("a gate worker failed (boom)")

    monkeypatch.setattr(perfgate, "_measure_in_worker", failing)
    with pytest.raises(ConfigError, match="worker failed"):
        perfgate.record(tmp_path / "other", ["maml"], repeats=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    with pytest.raises(ConfigError, match="--repeats 2 or more"):
        perfgate.record(tmp_path / "one", ["maml"], repeats=1)


@pytest.mark.parametrize(("name", "slow"), [(n, False) for n in perfgate.WORKLOADS] + [("maml", True)])
def test_workloads_step_and_reference_both_train(name: str, slow: bool) -> None:
    """Each workload's step is the learner's meta-training step (its weights change) and its
    reference is a real training step too (the reference network's weights change); the slowed
    core is the learner on :data:`~metabench.perfgate.SLOW_CORE`."""
    work = perfgate.build_workload(name, slow)
    if name in ("maml", "fomaml"):
        config = work.learner.config
        expected = ("recompute", 1, "contiguous") if slow else ("auto", 0, "auto")
        assert (config.strategy, config.chunk, config.layout) == expected
    params = [*work.learner.model.parameters(), *work.reference_model.parameters()]
    before = [p.detach().clone() for p in params]
    work.step()
    work.reference()
    after = params
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if b.requires_grad)


def test_gate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                      one_line_error) -> None:
    """``metabench gate`` exits 0 when every workload passes, 1 with a one-line message naming the
    regressed workloads, 2 with a one-line error for a missing baseline."""
    folder = _write(tmp_path / "base", _baseline(maml=0.8, reptile=0.8))
    monkeypatch.setattr(perfgate, "measure", lambda workloads, *a, **k: _rows(**{w: 0.8 for w in workloads}))
    assert main(["gate", "--baseline", str(folder), "--workloads", "maml,reptile"]) == 0
    assert "| maml | 0.800 | 0.800 | +0.0% |" in capsys.readouterr().out
    monkeypatch.setattr(perfgate, "measure", lambda workloads, *a, **k: _rows(**{w: 2.0 for w in workloads}))
    assert main(["gate", "--baseline", str(folder), "--workloads", "maml,reptile"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("metabench: performance gate failed for maml, reptile: a ratio is above its limit") and "--record" in err
    assert main(["gate", "--baseline", str(tmp_path / "none")]) == 2
    one_line_error("no gate baseline", "metabench gate --record")
    assert main(["gate", "--baseline", str(folder), "--workloads", ","]) == 2
    one_line_error("no gate workloads given")
    assert main(["gate", "--baseline", str(folder), "--repeats", "3"]) == 2
    one_line_error("--repeats applies to --record only")
    assert main(["gate", "--record", str(folder), "--slow-core"]) == 2
    one_line_error("leave out --slow-core with --record")
    assert main(["gate", "--record", str(folder)]) == 2
    one_line_error("already exists: pass another --record DIR")


def test_the_committed_baseline_covers_every_workload_at_the_current_threshold() -> None:
    """results/perf-gate-cpu is the baseline CI gates on: every workload, recorded at the
    threshold and rounds the gate uses now (a change of either needs a new recording), with at
    least five repeats for its spread."""
    base = perfgate.load_baseline(Path(__file__).resolve().parents[1] / perfgate.DEFAULT_BASELINE)
    assert list(base.ratios) == list(perfgate.WORKLOADS)
    assert base.threshold == perfgate.THRESHOLD and base.rounds == perfgate.ROUNDS
    assert all(len(base.repeats[w]) >= 5 for w in perfgate.WORKLOADS)
