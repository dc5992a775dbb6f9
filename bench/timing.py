"""``metabench time``: the cost of one meta-training step, per learner and implementation.

A **cell** is one (implementation, learner, N-way, K-shot, Q queries, meta-batch, inner steps,
device). Each cell runs in a fresh worker process (``python -m metabench.timing CELL_JSON``), so
that cells cannot share allocator state, compiled kernels or imported peer libraries. The worker:

1. builds the learner (ours) or the peer's MAML on a Conv4 with weights from a fixed seed, and a
   meta-batch of synthetic Omniglot-shaped episodes from a fixed seed (28x28 binary images with 10%
   ink; the same tensors for every implementation);
2. runs ``warmup`` untimed steps, then ``reps`` timed steps: wall clock on CPU; on CUDA, CUDA
   events around each step after a synchronisation;
3. measures the peak memory of three more steps and reports the median: on CUDA,
   ``torch.cuda.max_memory_allocated`` minus the allocation before the step; on CPU (Linux), the
   growth of the resident set: glibc's mmap threshold is fixed at 64 KiB (so freed tensors go
   back to the OS instead of staying in the heap) and the worker runs with one malloc arena
   (``MALLOC_ARENA_MAX=1``; several arenas made repeated measurements vary by up to 40%), the
   peak is reset through ``/proc/self/clear_refs`` and read as ``VmHWM``;
4. counts the step's floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``
   (convolutions and matrix products, forward and all backward passes);
5. for second-order MAML, checks the meta-gradient (:func:`gradient_check`): a peer's against ours
   on identical weights and episodes, in float32 and in float64 (the relative difference
   ``||g_peer - g_ours|| / ||g_ours||``), and every implementation's float32 meta-gradient against
   ours in float64, which is the float32 rounding error that bounds any float32 comparison.

With ``--rounds R`` each cell's repetitions are split over R workers, taken round-robin over the
cells, and pooled (:func:`measure`), so that a slow drift of the machine's speed does not land on
some cells only.

The parent measures a float32 matrix-multiply rate (2048 x 2048, median of 10) on the same device in
the same run, reports the median and interquartile range of each cell's step time, and the
achieved FLOP/s as a fraction of that rate. Outputs (``timing.json``, ``timing.csv``,
``timing.md``, ``environment.json``) are written atomically into the run directory.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metabench.algorithms import LEARNERS, META_LEARNERS
from metabench.errors import ConfigError

IMPLEMENTATIONS = ("metabench", "learn2learn", "higher")
TIMED_LEARNERS = META_LEARNERS
#: Learners whose step has an inner loop, so that --inner-steps applies (their ``INNER_LOOP``).
INNER_LOOP = tuple(n for n in TIMED_LEARNERS if LEARNERS[n].INNER_LOOP)
SHAPES = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}


@dataclass(frozen=True)
class Cell:
    """One timed configuration.

    Attributes:
        implementation: ``metabench``, ``learn2learn`` or ``higher``.
        learner: one of :data:`TIMED_LEARNERS` (peers: ``maml`` only).
        ways, shots, queries: N, K and Q of every episode.
        meta_batch: episodes per meta-training step.
        inner_steps: inner-loop steps (MAML, first-order MAML, Reptile; ignored by the others).
        inner_lr: inner learning rate of MAML and first-order MAML (alpha).
        device: ``cpu`` or ``cuda``.
        reps: timed repetitions (>= 20 for a report). warmup: untimed steps before them.
        seed: seeds the weights and the episodes.
        check_gradient: for second-order MAML, also check the meta-gradient (:func:`gradient_check`).
        strategy: our MAML core's strategy (``auto`` or one of ``maml_core.STRATEGIES``);
            ignored by the other learners and by peers.
        compile_query: our MAML's query pass under ``torch.compile`` (compiled during warm-up).
        layout: our MAML core's image layout (``auto`` or one of ``maml_core.LAYOUTS``); like
            ``strategy``.
    """

    implementation: str
    learner: str
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int
    inner_lr: float
    device: str
    reps: int
    warmup: int
    seed: int = 0
    check_gradient: bool = True
    strategy: str = "auto"
    compile_query: bool = False
    layout: str = "auto"

    @property
    def label(self) -> str:
        """The implementation as shown in tables: ``metabench``, or
        ``metabench[strategy,layout,compiled]`` for a MAML core strategy or layout other than the default
        or a compiled query pass."""
        if self.implementation == "metabench" and self.learner in ("maml", "fomaml"):
            tags = [v for v in (self.strategy, self.layout) if v != "auto"] + (["compiled"] if self.compile_query else [])
            if tags:
                return f"metabench[{','.join(tags)}]"
        return self.implementation


def synthetic_episodes(cell: Cell, dtype: torch.dtype = torch.float32) -> list:
    """``cell.meta_batch`` Omniglot-shaped episodes (1 x 28 x 28 binary images, 10% ink), from
    ``cell.seed``, on ``cell.device``."""
    from metabench.datasets.sampler import Episode, EpisodeIndex

    gen = torch.Generator().manual_seed(cell.seed + 1)
    n, k, q = cell.ways, cell.shots, cell.queries
    out = []
    for _ in range(cell.meta_batch):
        sx = (torch.rand(n * k, 1, 28, 28, generator=gen) < 0.1).to(dtype)
        qx = (torch.rand(n * q, 1, 28, 28, generator=gen) < 0.1).to(dtype)
        idx = EpisodeIndex(np.arange(n), np.zeros((n, k), np.int64), np.zeros((n, q), np.int64))
        out.append(Episode(sx.to(cell.device), torch.arange(n).repeat_interleave(k).to(cell.device),
                           qx.to(cell.device), torch.arange(n).repeat_interleave(q).to(cell.device), idx))
    return out


def _overrides(cell: Cell) -> dict[str, Any]:
    o: dict[str, Any] = {"meta_batch": cell.meta_batch}
    if cell.learner in ("maml", "fomaml"):
        o.update(train_inner_steps=cell.inner_steps, inner_lr=cell.inner_lr, train_queries=cell.queries, strategy=cell.strategy,
                 compile_query=cell.compile_query, layout=cell.layout)
    elif cell.learner == "reptile":
        o.update(train_inner_steps=cell.inner_steps)
    return o


def build_step(cell: Cell) -> Callable[[], None]:
    """The cell's meta-training step as a closure over its learner and episodes.

    Raises:
        ConfigError: for a peer asked for a learner other than MAML, or not installed.
    """
    from metabench.algorithms import build_learner

    torch.manual_seed(cell.seed)
    learner = build_learner(cell.learner, cell.ways, (1, 28, 28), 1000, cell.device, cell.seed, _overrides(cell))
    episodes = synthetic_episodes(cell)
    if cell.implementation == "metabench":
        return lambda: learner.meta_train_step(episodes)
    from metabench import peers

    if cell.learner != "maml":
        raise ConfigError(f"peers are timed for second-order MAML only, not {cell.learner}: use --learners maml")
    model = peers.standard_conv4(dict(learner.model.named_parameters()), cell.ways)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = peers.peer_step(cell.implementation, model, optimizer, cell.inner_steps, cell.inner_lr, False)
    return lambda: step(episodes)


def _meta_gradients(
    cell: Cell, dtype: torch.dtype, configs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The cell's meta-gradient in ``dtype`` on weights and episodes from ``cell.seed``: the
    peer's (``None`` for ``metabench``) and ours for each ``(strategy, layout)`` of ``configs``,
    flattened in :data:`~metabench.peers.CONV4_NAMES` order."""
    from metabench import peers
    from metabench.algorithms.backbones import Conv4
    from metabench.algorithms.maml_core import CONV4, CoreOptions, meta_gradient

    torch.manual_seed(cell.seed)
    params = dict(Conv4(1, 28, n_outputs=cell.ways).to(cell.device, dtype).named_parameters())
    episodes = synthetic_episodes(cell, dtype)
    stack = [torch.stack([getattr(e, a) for e in episodes]) for a in ("support_x", "support_y", "query_x", "query_y")]
    g_peer = None
    if cell.implementation != "metabench":
        model = peers.standard_conv4(params, cell.ways)
        model.zero_grad(set_to_none=True)
        peers.meta_gradient_step(cell.implementation, model, episodes, cell.inner_steps, cell.inner_lr, False)
        g_peer = torch.cat([p.grad.flatten() for p in model.parameters()])
    ours = []
    for strategy, layout in configs:
        options = CoreOptions(cell.inner_steps, cell.inner_lr, strategy=strategy, layout=layout)
        g = meta_gradient(CONV4, params, *stack, options).grads
        ours.append(torch.cat([g[n].flatten() for n in peers.CONV4_NAMES]))
    return g_peer, ours


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gradient_check(cell: Cell) -> dict[str, float]:
    """How exact the cell's second-order MAML meta-gradient is (relative L2 differences).

    "Ours" is our core as the cell runs it: its strategy and layout, or the defaults for the
    device (:func:`~metabench.algorithms.maml_core.choose_strategy`, ``choose_layout``) for a
    peer's cell.

    Returns:
        ``grad_rel_err_float32``: this row's float32 meta-gradient against ours in float64: its
        float32 rounding error. For a peer also ``grad_rel_diff_float64`` (peer against ours,
        both in float64: ~1e-12 means the same computation) and ``grad_rel_diff_float32``
        (both in float32: the rounding of both, at most about the sum of their float32 errors
        unless the two run the same operations in the same order). Identical weights and
        episodes throughout.
    """
    from metabench.algorithms.maml_core import CONV4, choose_layout, choose_strategy

    device = torch.device(cell.device)
    ours = [(
        choose_strategy(CONV4, device, cell.ways * (cell.shots + cell.queries)) if cell.strategy == "auto" else cell.strategy,
        choose_layout(CONV4, device) if cell.layout == "auto" else cell.layout,
    )]
    peer64, (ours64,) = _meta_gradients(cell, torch.float64, ours)
    peer32, (ours32,) = _meta_gradients(cell, torch.float32, ours)
    if peer32 is None:
        return {"grad_rel_err_float32": _rel(ours32, ours64)}
    return {
        "grad_rel_err_float32": _rel(peer32, ours64),
        "grad_rel_diff_float32": _rel(peer32, ours32),
        "grad_rel_diff_float64": _rel(peer64, ours64),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory(step: Callable[[], None], device: str) -> int | None:
    """Peak memory of one call of ``step``, in bytes, above what was allocated before it
    (module docstring, item 3); ``None`` where it cannot be measured (CPU off Linux)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so large frees return to the OS
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        step()
        return (_status_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def count_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one call of ``step`` (PyTorch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step: Callable[[], None], device: str, reps: int, warmup: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``step`` after ``warmup`` untimed ones (CUDA: events
    recorded around each call, after a synchronisation)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def _median_or_none(values: list[int | None]) -> int | None:
    return None if None in values else int(statistics.median(values))


def run_cell(cell: Cell, times_only: bool = False) -> dict[str, Any]:
    """Measure one cell in this process (what the worker does); see the module docstring.
    ``times_only``: only the step times (the later rounds of :func:`measure`)."""
    step = build_step(cell)
    times = time_step(step, cell.device, cell.reps, cell.warmup)
    if times_only:
        return {"times_s": times}
    memory = _median_or_none([peak_memory(step, cell.device) for _ in range(3)])
    flops = count_flops(step)
    out: dict[str, Any] = {"times_s": times, "peak_memory_bytes": memory, "flops": flops}
    if cell.check_gradient and cell.learner == "maml":
        out.update(gradient_check(cell))
    return out


def matmul_flops_per_s(device: str, n: int = 2048, reps: int = 10) -> float:
    """Median float32 matrix-multiply rate (FLOP/s) of ``n x n`` products on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = time_step(lambda: a @ b, device, reps, 2)
    return 2 * n**3 / statistics.median(times)


def cells_for(
    implementations: Sequence[str], learners: Sequence[str], shapes: Sequence[str], meta_batches: Sequence[int],
    inner_steps: Sequence[int], queries: int, inner_lr: float, device: str, reps: int, warmup: int,
    strategies: Sequence[str] = ("auto",), compile_query: Sequence[bool] = (False,), layouts: Sequence[str] = ("auto",),
) -> list[Cell]:
    """The cross product of the given lists; learners without an inner loop get one inner-steps
    value (the first), peers only MAML, and ``strategies``, ``compile_query`` and ``layouts``
    apply to our MAML and first-order MAML.

    Raises:
        ConfigError: for an unknown implementation, learner, shape, strategy or layout, or
            ``reps`` < 1.
    """
    for impl in implementations:
        if impl not in IMPLEMENTATIONS:
            raise ConfigError(f"unknown implementation {impl!r}: choose from {', '.join(IMPLEMENTATIONS)}")
    for name in learners:
        if name not in TIMED_LEARNERS:
            raise ConfigError(f"unknown learner {name!r}: choose from {', '.join(TIMED_LEARNERS)}")
    for shape in shapes:
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
    from metabench.algorithms.maml_core import LAYOUTS, STRATEGIES

    for strategy in strategies:
        if strategy not in ("auto", *STRATEGIES):
            raise ConfigError(f"unknown strategy {strategy!r}: choose from auto, {', '.join(STRATEGIES)}")
    for layout in layouts:
        if layout not in ("auto", *LAYOUTS):
            raise ConfigError(f"unknown layout {layout!r}: choose from auto, {', '.join(LAYOUTS)}")
    if reps < 1 or warmup < 0 or queries < 1 or min(meta_batches) < 1 or min(inner_steps) < 0:
        raise ConfigError("--reps, --queries and --meta-batch must be >= 1, --warmup and --inner-steps >= 0")
    cells = []
    for impl in implementations:
        for name in learners:
            if impl != "metabench" and name != "maml":
                continue
            for shape in shapes:
                ways, shots = SHAPES[shape]
                for mb in meta_batches:
                    for steps in (inner_steps if name in INNER_LOOP else inner_steps[:1]):
                        ours = impl == "metabench" and name in ("maml", "fomaml")
                        for strategy in (strategies if ours else ("auto",)):
                            for layout in (layouts if ours else ("auto",)):
                                for compiled in (compile_query if ours else (False,)):
                                    cells.append(Cell(impl, name, ways, shots, queries, mb, steps, inner_lr, device, reps,
                                                      warmup, strategy=strategy, compile_query=compiled, layout=layout))
    return cells


def summarize(cell: Cell, result: dict[str, Any], matmul_rate: float) -> dict[str, Any]:
    """One table row: the cell, median and IQR of the step time (ms), memory (MiB), FLOPs, the
    achieved FLOP/s and its percentage of the matrix-multiply rate."""
    t = np.asarray(result["times_s"]) * 1e3
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    row = {"label": cell.label, **asdict(cell)}
    mem = result["peak_memory_bytes"]
    row.update(
        median_ms=med, iqr_ms=q3 - q1, peak_memory_mib=None if mem is None else mem / 2**20,
        gflop_per_step=result["flops"] / 1e9, achieved_gflop_s=result["flops"] / (med / 1e3) / 1e9,
        pct_of_matmul=100 * result["flops"] / (med / 1e3) / matmul_rate,
        grad_rel_err_float32=result.get("grad_rel_err_float32"),
        grad_rel_diff_float32=result.get("grad_rel_diff_float32"),
        grad_rel_diff_float64=result.get("grad_rel_diff_float64"),
    )
    return row


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``time_vs_metabench`` and ``memory_vs_metabench``: each row's median time and peak
    memory divided by those of the ``metabench`` row with the same learner and setting."""
    keys = ["learner", "ways", "shots", "queries", "meta_batch", "inner_steps", "device"]
    ours = table[table.label == "metabench"].set_index(keys)[["median_ms", "peak_memory_mib"]]
    joined = table.merge(ours, left_on=keys, right_index=True, how="left", suffixes=("", "_ours"))
    table = table.copy()
    table["time_vs_metabench"] = joined.median_ms / joined.median_ms_ours
    table["memory_vs_metabench"] = joined.peak_memory_mib / joined.peak_memory_mib_ours
    return table


def _rounds_text(table: pd.DataFrame) -> str:
    rounds = int(table["rounds"].max()) if "rounds" in table else 1
    return f", taken in {rounds} interleaved rounds of fresh workers (cells round-robin)" if rounds > 1 else ""


def markdown(table: pd.DataFrame, matmul_rate: float, device_name: str) -> str:
    """The timing table in Markdown, with how it was measured."""
    lines = [
        (f"Device: {device_name}. Matrix-multiply rate (float32 2048x2048, median of 10): "
        f"{matmul_rate / 1e9:.1f} GFLOP/s. Step time: median and interquartile range over the "
        f"repetitions{_rounds_text(table)}; memory: peak above the step's start (CUDA allocator, or resident-set growth on CPU); "
        "ratios divide by the metabench row (default strategy and layout) of the same setting; grad diff: relative L2 "
        "difference of the peer's meta-gradient from ours (default strategy and layout) on identical weights and episodes, "
        "in float32 and in float64; f32 error: the row's float32 meta-gradient against ours in float64 (the rounding "
        "error that any float32 implementation has, and the scale of the f32 diff)."),
        "",
        ("| implementation | learner | N-way K-shot | Q | meta-batch | inner steps | median (ms) | IQR (ms) "
        "| time / ours | peak memory (MiB) | memory / ours | GFLOP / step | % of matmul | f32 error | grad diff f32 | grad diff f64 |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: Any, spec: str) -> str:
        return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)

    for r in table.itertuples():
        steps = r.inner_steps if r.learner in INNER_LOOP else "—"
        lines.append(
            f"| {r.label} | {r.learner} | {r.ways}-way {r.shots}-shot | {r.queries} | {r.meta_batch} | {steps} "
            f"| {r.median_ms:.1f} | {r.iqr_ms:.1f} | {fmt(r.time_vs_metabench, '.2f')} | {fmt(r.peak_memory_mib, '.1f')} "
            f"| {fmt(r.memory_vs_metabench, '.2f')} | {r.gflop_per_step:.2f} | {r.pct_of_matmul:.1f} "
            f"| {fmt(r.grad_rel_err_float32, '.1e')} | {fmt(r.grad_rel_diff_float32, '.1e')} "
            f"| {fmt(r.grad_rel_diff_float64, '.1e')} |"
        )
    return "\n".join(lines)


def run_in_worker(cell: Cell, timeout: float | None = None, times_only: bool = False) -> dict[str, Any]:
    """Measure ``cell`` in a fresh Python process (``python -m metabench.timing``); see
    :func:`run_cell` for ``times_only``.

    Raises:
        MetabenchError: with the worker's last error line if it fails.
    """
    from metabench.errors import MetabenchError

    proc = subprocess.run(
        [sys.executable, "-m", "metabench.timing", json.dumps(asdict(cell)), *(["--times-only"] if times_only else [])],
        check=False, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_ARENA_MAX": "1"},
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MetabenchError(f"timing worker failed for {cell.implementation}/{cell.learner}: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def split_reps(reps: int, rounds: int) -> list[int]:
    """``reps`` repetitions spread over ``rounds`` rounds as evenly as possible (earlier rounds
    take the remainder); rounds without a repetition are dropped.

    Raises:
        ConfigError: if ``rounds`` < 1.
    """
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    return [n for n in (reps // rounds + (r < reps % rounds) for r in range(rounds)) if n > 0]


def measure(cells: Sequence[Cell], progress: bool = True, rounds: int = 1) -> tuple[pd.DataFrame, float]:
    """Run every cell in worker processes, with a progress bar; returns the table (with ratios)
    and the matrix-multiply rate (FLOP/s) measured in this process.

    With ``rounds`` > 1 each cell's repetitions are split over that many fresh workers, taken
    round-robin over the cells (cell 1, 2, ..., n, then 1, 2, ... again), and pooled. A slow drift
    of the machine's speed then reaches every cell alike instead of whichever cells ran during it
    (docs/timing.md gives the drift seen on the 2-core VM). Memory,
    FLOPs and the gradient check come from the first round.
    """
    from tqdm import tqdm

    rate = matmul_flops_per_s(cells[0].device)
    plan = [(r, i, n) for r, n in enumerate(split_reps(cells[0].reps, rounds)) for i in range(len(cells))]
    results: list[dict[str, Any]] = [{} for _ in cells]
    bar = tqdm(plan, desc="metabench time", unit="cell", disable=not progress)
    for r, i, n in bar:
        cell = cells[i]
        bar.set_postfix_str(f"round {r + 1} {cell.label} {cell.learner} {cell.ways}w{cell.shots}s "
                            f"B={cell.meta_batch} S={cell.inner_steps}")
        got = run_in_worker(replace(cell, reps=n), times_only=r > 0)
        if r == 0:
            results[i] = got
        else:
            results[i]["times_s"] += got["times_s"]
    rows = [{**summarize(cell, result, rate), "rounds": plan[-1][0] + 1} for cell, result in zip(cells, results)]
    return add_ratios(pd.DataFrame(rows)), rate


def write_outputs(folder: Path, table: pd.DataFrame, rate: float, env: dict[str, Any]) -> None:
    """Write ``timing.json``, ``timing.csv``, ``timing.md`` and ``environment.json`` into ``folder``."""
    device_name = env.get("device_name") or env.get("cpu") or "?"
    (folder / "timing.json").write_text(json.dumps(
        {"matmul_flop_per_s": rate, "rows": json.loads(table.to_json(orient="records"))}, indent=2) + "\n")
    table.to_csv(folder / "timing.csv", index=False)
    (folder / "timing.md").write_text(markdown(table, rate, device_name) + "\n")
    (folder / "environment.json").write_text(json.dumps(env, indent=2) + "\n")


def _worker_main(argv: Sequence[str]) -> int:
    cell = Cell(**json.loads(argv[0]))
    if cell.device == "cpu":
        torch.set_num_threads(int(os.environ.get("METABENCH_THREADS", torch.get_num_threads())))
    print(json.dumps(run_cell(cell, times_only="--times-only" in argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))


