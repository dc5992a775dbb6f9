"""``metabench gate``: a performance gate that works on a clean runner.

A **workload** is one learner's meta-training step at its *training* episode shape (the shape
``metabench run`` trains it on: :meth:`~metabench.algorithms.MetaLearner.train_shape`, on
synthetic Omniglot-shaped episodes, :func:`metabench.timing.synthetic_episodes`) paired with a
**reference**: a computation of the same kind written here without metabench's learners or core.

* MAML and first-order MAML: a plain MAML loop, one task at a time, with ``torch.autograd.grad``
  through ``torch.func.functional_call`` on a Conv4 built from ``nn.Conv2d``, ``nn.BatchNorm2d``
  and ``nn.MaxPool2d`` (Finn et al. 2017, Alg. 2, lines 5-10, as the algorithm reads), then one
  Adam step: what a user would write without our core.
* Reptile, Prototypical Networks and Matching Networks: a fixed convolution workload, one forward
  and backward pass of that Conv4 over as many images as the step's episodes hold, then one Adam
  step.

Both are timed in the same process, **interleaved**: every round times the reference and the
step once each, in alternating order, so that a drift of the machine's speed (another tenant, a
frequency change) reaches both alike (Kalibera & Jones 2013, "Rigorous benchmarking in reasonable
time", Sec. 3, on randomised and interleaved execution). A workload's figure is the **median over
rounds of the ratio** ``step seconds / reference seconds``: dimensionless, so that most of the
machine's speed cancels and a ratio measured on one machine can be compared with one recorded on
another machine of the same kind.

The gate compares each median ratio with a committed **baseline** (a folder written by
``metabench gate --record DIR``: ``baseline.json``, the rounds of every repeat in ``rounds.csv``,
and ``baseline.md``; this project's is ``results/perf-gate-cpu/``) and fails when a ratio is more
than :data:`THRESHOLD` above the baseline's on two measurements in a row, or more than
:data:`OTHER_KIND_THRESHOLD` on a machine of another kind (CPU model or torch version) than the
baseline's. The threshold's justification, the spread of repeated measurements it rests on, is in
that folder's README.md and docs/timing.md.

Everything here measures wall-clock seconds on CPU; nothing here is asserted by the ordinary
tests (``tests/perf/test_gate.py`` runs the gate itself, with ``--perf-gate``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from metabench import peers
from metabench.errors import ConfigError
from metabench.timing import TIMED_LEARNERS

#: The workloads, one per learner: the learners ``metabench time`` times.
WORKLOADS = TIMED_LEARNERS
#: A ratio more than this fraction above its baseline fails the gate (0.30: 30% slower relative
#: to the reference). Why this value: docs/timing.md, "The performance gate".
THRESHOLD = 0.30
#: The threshold on a machine of another kind than the baseline's (another CPU model or torch
#: version), until a baseline is recorded there: ratios move between kinds of CPU by amounts not
#: measured yet (no Intel machine was available), so the gate then catches only large
#: regressions (twice :data:`THRESHOLD`) instead of failing CI for the machine it landed on.
OTHER_KIND_THRESHOLD = 0.60
#: Timed rounds per workload (one step and one reference each) after :data:`WARMUP` untimed ones.
ROUNDS = 15
WARMUP = 2
#: Fresh processes a recorded baseline measures (its spread comes from them).
REPEATS = 5
#: The baseline this project commits (relative to the repository root, where CI and nox run).
DEFAULT_BASELINE = Path("results/perf-gate-cpu")
#: The known-slow configuration of the MAML core, which ``slow_core`` (``metabench gate
#: --slow-core``) gives the MAML workloads to show that the gate fails: the ``recompute``
#: strategy (time traded for memory: every inner step's graph rebuilt), one task per chunk (the
#: small kernels whose per-call cost ``chunked`` exists to avoid) and contiguous images (slower
#: convolutions and pooling on CPU). Its measured slowdown: results/perf-gate-cpu/README.md.
SLOW_CORE = {"strategy": "recompute", "chunk": 1, "layout": "contiguous"}
_IMAGE = (1, 28, 28)


@dataclass(frozen=True)
class Baseline:
    """A recorded baseline.

    Attributes:
        ratios: workload -> median over repeats of each repeat's median ratio.
        repeats: workload -> each repeat's median ratio (one fresh process per repeat).
        machine: what it was recorded on (``cpu``, ``torch``, ``torch_threads``, ``python``,
            ``commit``).
        rounds: timed rounds per repeat.
        threshold: the gate's threshold when it was recorded (:data:`THRESHOLD` decides).
    """

    ratios: dict[str, float]
    repeats: dict[str, list[float]]
    machine: dict[str, Any]
    rounds: int
    threshold: float

    def spread(self, workload: str) -> float:
        """``(max - min) / median`` of the repeats' ratios of ``workload`` (a fraction)."""
        r = self.repeats[workload]
        return (max(r) - min(r)) / statistics.median(r)


def reference_conv4(ways: int | None) -> nn.Module:
    """The reference network, :func:`metabench.peers.torch_nn_conv4` for 1-channel 28x28 images
    with 64 filters: ``[B, 1, 28, 28]`` -> ``[B, 64]`` or ``[B, ways]``."""
    return peers.torch_nn_conv4(ways)


class Workload(NamedTuple):
    """A workload built by :func:`build_workload`: ``step`` and ``reference`` (no arguments),
    the learner the step trains and the module the reference trains."""

    step: Callable[[], None]
    reference: Callable[[], None]
    learner: Any
    reference_model: nn.Module


def reference_maml(episodes: Sequence[Any], ways: int, inner_steps: int, inner_lr: float,
                   first_order: bool) -> tuple[Callable[[], None], nn.Module]:
    """A plain MAML meta-training step (Finn et al. 2017, Alg. 2): per task, ``inner_steps``
    gradient steps of size ``inner_lr`` on the support set (``create_graph`` unless
    ``first_order``), the query loss at the adapted weights backpropagated to theta, then Adam.
    Returns the step and the :func:`reference_conv4` it trains."""
    torch.manual_seed(0)
    model = reference_conv4(ways)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        theta = dict(model.named_parameters())
        for e in episodes:
            fast = theta
            for _ in range(inner_steps):
                loss = F.cross_entropy(torch.func.functional_call(model, fast, (e.support_x,)), e.support_y)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
                fast = {n: p - inner_lr * g for (n, p), g in zip(fast.items(), grads)}
            query = F.cross_entropy(torch.func.functional_call(model, fast, (e.query_x,)), e.query_y)
            (query / len(episodes)).backward()
        optimizer.step()

    return step, model


def reference_convolutions(images: int) -> tuple[Callable[[], None], nn.Module]:
    """The fixed convolution workload: one forward and backward pass of :func:`reference_conv4`
    (no head) over ``images`` synthetic 28x28 images (the sum of the embeddings' squares as the
    loss), then Adam. Returns the step and the module it trains."""
    torch.manual_seed(0)
    model = reference_conv4(None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(images, *_IMAGE, generator=torch.Generator().manual_seed(1)) < 0.1).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).pow(2).sum().backward()
        optimizer.step()

    return step, model


def check_request(workloads: Sequence[str]) -> None:
    """Refuse a gate request before anything is measured.

    Raises:
        ConfigError: for no workloads or an unknown workload.
    """
    if not workloads:
        raise ConfigError(f"no gate workloads given: pass --workloads with some of {', '.join(WORKLOADS)}")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ConfigError(f"unknown gate workload {unknown[0]!r}: choose from {', '.join(WORKLOADS)}")


def build_workload(name: str, slow_core: bool = False) -> Workload:
    """Workload ``name``: the learner's meta-training step on a meta-batch of synthetic episodes
    of its training shape, and its reference (module docstring).

    Args:
        name: one of :data:`WORKLOADS`.
        slow_core: run ``maml`` and ``fomaml`` on :data:`SLOW_CORE` instead of the learners'
            defaults.

    Raises:
        ConfigError: for an unknown workload.
    """
    from metabench.algorithms import build_learner, learner_config
    from metabench.timing import Cell, synthetic_episodes

    check_request([name])
    maml_family = name in ("maml", "fomaml")
    overrides = dict(SLOW_CORE) if maml_family and slow_core else {}
    learner = build_learner(name, 5, _IMAGE, 1000, "cpu", 0, overrides)
    shape = learner.train_shape(5, 1, 15)
    config = learner_config(name, overrides)
    cell = Cell("metabench", name, shape.ways, shape.shots, shape.queries, shape.meta_batch,
                getattr(config, "train_inner_steps", 1), getattr(config, "inner_lr", 0.0), "cpu", 1, 0)
    episodes = synthetic_episodes(cell)
    if maml_family:
        reference, model = reference_maml(episodes, shape.ways, config.train_inner_steps, config.inner_lr,
                                          config.first_order)
    else:  # as many images as the step's episodes hold
        reference, model = reference_convolutions(sum(e.support_x.shape[0] + e.query_x.shape[0] for e in episodes))
    return Workload(lambda: learner.meta_train_step(episodes), reference, learner, model)


def interleaved(step: Callable[[], None], reference: Callable[[], None], rounds: int, warmup: int = WARMUP,
                clock: Callable[[], float] = time.perf_counter) -> list[tuple[float, float]]:
    """``(step seconds, reference seconds)`` of each of ``rounds`` rounds after ``warmup`` untimed
    calls of each; even rounds time the reference first, odd rounds the step first.

    Raises:
        ConfigError: for ``rounds < 1`` or ``warmup < 0``.
    """
    if rounds < 1 or warmup < 0:
        raise ConfigError(f"the gate needs rounds >= 1 and warmup >= 0, got {rounds} and {warmup}: pass --rounds 1 or more")
    for _ in range(warmup):
        reference()
        step()

    def timed(f: Callable[[], None]) -> float:
        t0 = clock()
        f()
        return clock() - t0

    out = []
    for r in range(rounds):
        if r % 2 == 0:
            ref = timed(reference)
            out.append((timed(step), ref))
        else:
            s = timed(step)
            out.append((s, timed(reference)))
    return out


def measure(workloads: Iterable[str], rounds: int = ROUNDS, slow_core: bool = False,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every round of every workload, measured in this process.

    Returns:
        One row per workload and round: ``workload``, ``round``, ``step_s`` and ``reference_s``
        (seconds), ``ratio`` (``step_s / reference_s``).

    Raises:
        ConfigError: for an unknown workload, or ``rounds < 1``.
    """
    rows = []
    for name in workloads:
        work = build_workload(name, slow_core)
        for r, (s, ref) in enumerate(interleaved(work.step, work.reference, rounds)):
            rows.append({"workload": name, "round": r, "step_s": s, "reference_s": ref, "ratio": s / ref})
        if progress:
            done = [row["ratio"] for row in rows if row["workload"] == name]
            progress(f"{name}: median ratio {statistics.median(done):.3f} over {rounds} rounds")
    return pd.DataFrame(rows)


def medians(rounds: pd.DataFrame) -> dict[str, float]:
    """Workload -> median ratio of :func:`measure`'s rows (in the rows' order of workloads)."""
    return {name: float(group["ratio"].median()) for name, group in rounds.groupby("workload", sort=False)}


def machine() -> dict[str, Any]:
    """What a baseline records about the machine: CPU model and vector instruction set, torch
    version and threads, Python, and the git commit of the code measured."""
    from metabench.environment import cpu_capability, cpu_name, git_commit

    return {"cpu": cpu_name(), "cpu_capability": cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "commit": git_commit()["commit"]}


def load_baseline(folder: Path) -> Baseline:
    """Read the ``baseline.json`` of a folder written by :func:`record`.

    Raises:
        ConfigError: if the folder or file is missing or not a baseline.
    """
    path = Path(folder) / "baseline.json"
    if not path.is_file():
        raise ConfigError(f"no gate baseline at {path}: run from the repository root (the default is relative to it), "
                          f"pass --baseline DIR, or record one with `metabench gate --record {folder}`")
    try:
        raw = json.loads(path.read_text())
        return Baseline({k: float(v) for k, v in raw["ratios"].items()},
                        {k: [float(x) for x in v] for k, v in raw["repeats"].items()},
                        dict(raw["machine"]), int(raw["rounds"]), float(raw["threshold"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a gate baseline ({type(exc).__name__}: {exc}): record it again with "
                          f"`metabench gate --record {folder}`") from None


def check(measured: dict[str, float], baseline: Baseline, threshold: float = THRESHOLD) -> pd.DataFrame:
    """The gate's verdict per workload.

    Args:
        measured: workload -> median ratio (:func:`medians`).
        baseline: the committed baseline.
        threshold: fail a ratio above ``baseline * (1 + threshold)``.

    Returns:
        One row per workload: ``workload``, ``baseline`` and ``measured`` (ratios), ``change_pct``
        (percent, positive = slower), ``limit`` (the largest passing ratio), ``passed``.

    Raises:
        ConfigError: for a measured workload the baseline lacks.
    """
    missing = [w for w in measured if w not in baseline.ratios]
    if missing:
        raise ConfigError(f"the baseline has no ratio for {', '.join(missing)}: record it again with `metabench gate --record`")
    rows = []
    for name, ratio in measured.items():
        base = baseline.ratios[name]
        limit = base * (1 + threshold)
        rows.append({"workload": name, "baseline": base, "measured": ratio, "change_pct": 100 * (ratio / base - 1),
                     "limit": limit, "passed": bool(ratio <= limit)})
    return pd.DataFrame(rows)


def same_kind(baseline: Baseline, here: dict[str, Any]) -> bool:
    """Whether this machine (:func:`machine`) is of the baseline's kind: the same CPU model name,
    vector instruction set and torch version. Virtual machines name only the CPU family ("AMD
    EPYC"), and two such machines, one with AVX2 only, gave Reptile's step ratios 35% apart; a
    baseline that does not record the instruction set is of no known kind."""
    return all(here.get(key) == baseline.machine.get(key) for key in ("cpu", "cpu_capability", "torch"))


def threshold_for(baseline: Baseline, here: dict[str, Any]) -> float:
    """:data:`THRESHOLD` on a machine of the baseline's kind, else :data:`OTHER_KIND_THRESHOLD`."""
    return THRESHOLD if same_kind(baseline, here) else OTHER_KIND_THRESHOLD


def verdict_markdown(verdicts: pd.DataFrame, baseline: Baseline, here: dict[str, Any], threshold: float = THRESHOLD) -> str:
    """The gate's table (Markdown) with the two machines and the rule, for the terminal and CI logs."""
    m = baseline.machine
    repeats = len(next(iter(baseline.repeats.values()), []))
    lines = [(f"Performance gate: each step's median time as a ratio to its in-process reference; fail above "
              f"+{100 * threshold:.0f}% of the baseline."),
             (f"Baseline: {m.get('cpu')} ({m.get('cpu_capability') or 'instruction set not recorded'}), "
              f"torch {m.get('torch')}, {m.get('torch_threads')} threads, {baseline.rounds} rounds x {repeats} repeats. "
              f"This run: {here['cpu']} ({here.get('cpu_capability')}), torch {here['torch']}, "
              f"{here.get('torch_threads')} threads."), ""]
    if not same_kind(baseline, here):
        lines += [(f"Note: the baseline was recorded on another CPU, instruction set or torch (or does not record "
                   f"which), "
                   f"so the limit is +{100 * OTHER_KIND_THRESHOLD:.0f}% instead of +{100 * THRESHOLD:.0f}%: record a "
                   f"baseline on this kind of machine with `metabench gate --record DIR` and pass --baseline DIR."), ""]
    lines += [
              "| workload | baseline ratio | measured ratio | change | limit | verdict |",
              "|---|---:|---:|---:|---:|---|"]
    for row in verdicts.itertuples():
        lines.append(f"| {row.workload} | {row.baseline:.3f} | {row.measured:.3f} | {row.change_pct:+.1f}% | "
                     f"{row.limit:.3f} | {_verdict(row.passed, getattr(row, 'confirmed', False))} |")
    return "\n".join(lines) + "\n"


def _verdict(passed: bool, confirmed: bool) -> str:
    if passed:
        return "pass (on a second measurement)" if confirmed else "pass"
    return "**FAIL** (measured twice)" if confirmed else "**FAIL**"


def gate(baseline_dir: Path = DEFAULT_BASELINE, workloads: Sequence[str] = WORKLOADS, rounds: int = ROUNDS,
         slow_core: bool = False, progress: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, str]:
    """Measure ``workloads`` in this process (``slow_core``: the MAML workloads on
    :data:`SLOW_CORE`) and check them against the baseline in ``baseline_dir``.

    A workload above its limit is measured once more (``rounds`` new rounds) and fails only if
    that measurement is above the limit too (its ``measured`` is then the lower of the two), so
    that one unlucky measurement on a noisy machine does not fail CI while a real slowdown, which
    every measurement shows, still does.

    Returns:
        ``(verdicts, markdown)``: :func:`check`'s frame (with ``confirmed``: whether a second
        measurement was taken) and :func:`verdict_markdown`'s table. The measurement runs with
        the baseline's torch thread count (restored afterwards); the limit is
        :func:`threshold_for` this machine.

    Raises:
        ConfigError: for a missing or malformed baseline, one without a ratio for a requested
            workload, or no or an unknown workload.
    """
    baseline = load_baseline(baseline_dir)  # before measuring: bad input costs nothing
    check_request(workloads)
    missing = [w for w in workloads if w not in baseline.ratios]
    if missing:
        raise ConfigError(f"the baseline {baseline_dir} has no ratio for {', '.join(missing)}: record it again with "
                          f"`metabench gate --record DIR` or leave {missing[0]} out of --workloads")
    here = machine()
    threshold = threshold_for(baseline, here)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(baseline.machine.get("torch_threads") or threads))  # the ratios depend on it
    try:
        measured = medians(measure(workloads, rounds, slow_core, progress))
        first = check(measured, baseline, threshold)
        again = first.loc[~first["passed"], "workload"].tolist()
        if again:
            if progress:
                progress(f"above the limit: {', '.join(again)}; measuring again to confirm")
            second = medians(measure(again, rounds, slow_core, progress))
            measured = {w: min(r, second.get(w, r)) for w, r in measured.items()}
    finally:
        torch.set_num_threads(threads)
    verdicts = check(measured, baseline, threshold).assign(confirmed=lambda f: f["workload"].isin(again))
    return verdicts, verdict_markdown(verdicts, baseline, here, threshold)


def _measure_in_worker(workloads: Sequence[str], rounds: int) -> pd.DataFrame:
    """:func:`measure` in a fresh ``python -m metabench.perfgate`` process (its rows)."""
    done = subprocess.run([sys.executable, "-m", "metabench.perfgate", ",".join(workloads), str(rounds)],
                          capture_output=True, text=True, check=False)
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
    try:
        if done.returncode == 0:
            return pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        last = "its output was not the rows' JSON"
    raise ConfigError(f"a gate worker failed ({last}): run `python -m metabench.perfgate {','.join(workloads)} {rounds}` "
                      "to see why")


def record(out: Path, workloads: Sequence[str] = WORKLOADS, rounds: int = ROUNDS, repeats: int = REPEATS,
           progress: Callable[[str], None] | None = None) -> Baseline:
    """Measure ``repeats`` times, each in a fresh process, and write a baseline folder ``out``
    atomically: ``baseline.json`` (median ratios, each repeat's, the machine, rounds, threshold),
    ``rounds.csv`` (every round of every repeat) and ``baseline.md`` (the table with spreads).

    Raises:
        ConfigError: if ``out`` exists or cannot be written, ``repeats < 2`` (no spread),
            ``rounds < 1``, no or an unknown workload, or a worker fails.
    """
    from metabench.outdir import check_writable, write_atomically

    if repeats < 2:
        raise ConfigError(f"a baseline needs --repeats 2 or more to show its spread, got {repeats}")
    if rounds < 1:
        raise ConfigError(f"the gate needs rounds >= 1, got {rounds}: pass --rounds 1 or more")
    if Path(out).exists():
        raise ConfigError(f"baseline folder {out} already exists: pass another --record DIR or delete it")
    check_writable(out, "baseline folder")
    check_request(workloads)
    frames = []
    for i in range(repeats):
        frame = _measure_in_worker(workloads, rounds)
        frames.append(frame.assign(repeat=i))
        if progress:
            progress(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v:.3f}" for k, v in medians(frame).items()))
    rows = pd.concat(frames, ignore_index=True)
    per_repeat = {w: [medians(f)[w] for f in frames] for w in workloads}
    baseline = Baseline({w: statistics.median(v) for w, v in per_repeat.items()}, per_repeat, machine(), rounds, THRESHOLD)

    def write(folder: Path) -> None:
        (folder / "baseline.json").write_text(json.dumps({
            "ratios": baseline.ratios, "repeats": baseline.repeats, "machine": baseline.machine,
            "rounds": rounds, "threshold": THRESHOLD}, indent=2) + "\n")
        rows[["repeat", "workload", "round", "step_s", "reference_s", "ratio"]].to_csv(folder / "rounds.csv", index=False)
        (folder / "baseline.md").write_text(baseline_markdown(baseline, rows))

    write_atomically(out, write, "baseline folder")
    return baseline


def baseline_markdown(baseline: Baseline, rows: pd.DataFrame) -> str:
    """The baseline's table: per workload the median ratio, each repeat's, their spread, the
    rounds' own interquartile range, and the median step and reference seconds."""
    m = baseline.machine
    lines = [(f"Gate baseline: {m['cpu']}, torch {m['torch']}, {m['torch_threads']} threads, "
              f"commit {str(m.get('commit'))[:7]}; {len(next(iter(baseline.repeats.values())))} repeats "
              f"(fresh processes) x {baseline.rounds} rounds."), "",
             "| workload | ratio | repeats | spread of repeats | IQR of rounds | step (ms) | reference (ms) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for w, ratio in baseline.ratios.items():
        r = rows[rows["workload"] == w]
        q1, q3 = r["ratio"].quantile([0.25, 0.75])
        lines.append(f"| {w} | {ratio:.3f} | {', '.join(f'{x:.3f}' for x in baseline.repeats[w])} | "
                     f"{100 * baseline.spread(w):.1f}% | {100 * (q3 - q1) / ratio:.1f}% | "
                     f"{1000 * r['step_s'].median():.1f} | {1000 * r['reference_s'].median():.1f} |")
    return "\n".join(lines) + "\n"


def _worker_main(argv: Sequence[str]) -> int:
    workloads, rounds = argv
    print(measure(workloads.split(","), int(rounds)).to_json(orient="records"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_worker_main(sys.argv[1:]))

