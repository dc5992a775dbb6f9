"""The performance gate itself (``--perf-gate``; ``nox -s perf`` and CI run it): each learner's
training step timed as a ratio to its in-process reference and checked against the committed
baseline (:mod:`metabench.perfgate`), and the proof that the gate can fail: second-order MAML on
the known-slow configuration of the core must fail it.

These tests time code, so they are not part of the ordinary run (deselected without
``--perf-gate``); what they assert is the gate's verdict, whose threshold is justified from the
spread of repeated measurements in results/perf-gate-cpu/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metabench import perfgate

pytestmark = pytest.mark.perf_gate
BASELINE = Path(__file__).resolve().parents[2] / perfgate.DEFAULT_BASELINE


def test_gate_passes_on_the_normal_core() -> None:
    """Every workload's median ratio is within the threshold of the committed baseline."""
    verdicts, text = perfgate.gate(BASELINE, progress=print)
    print(text)
    assert verdicts["passed"].all(), text


def test_gate_fails_on_a_slowed_core() -> None:
    """With the MAML core on its known-slow configuration (:data:`~metabench.perfgate.SLOW_CORE`:
    ``recompute``, one task per chunk, contiguous images; its measured slowdown is in
    results/perf-gate-cpu/README.md), second-order MAML fails the gate."""
    verdicts, text = perfgate.gate(BASELINE, ["maml"], slow_core=True, progress=print)
    print(text)
    assert not verdicts.set_index("workload").loc["maml", "passed"], text
