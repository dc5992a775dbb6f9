"""``metabench sweep``: the benchmark grid as cells, resumable, on one machine or a cluster.

A sweep file (:mod:`.spec`) crosses axes of ``metabench run``'s configuration; each combination
(per learner x seed, or per setting) is a **cell**, an ordinary run in its own folder of the sweep
directory (:mod:`.state`), named from a hash of its configuration. An engine (:mod:`.engines`:
local, Ray, Slurm through submitit) runs the cells that are not done (:mod:`.cell`); a killed
sweep resumes (done cells skipped, interrupted ones resumed from their checkpoints);
``metabench report SWEEP_DIR`` reports the done cells and lists the others. This is not a
scheduler: the engines schedule, metabench describes the cells and keeps their state.

Commands: ``sweep plan FILE`` (the cells and their estimated cost, :mod:`.cost`), ``sweep run
FILE|DIR``, ``sweep status DIR``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from metabench.environment import cpu_name
from metabench.errors import ConfigError

from . import engines, spec, state
from .cell import now
from .spec import Cell, SweepSpec


def default_out(sweep: SweepSpec) -> Path:
    """``runs/sweep-<name>`` under the current directory."""
    return Path("runs") / f"sweep-{sweep.name}"


def load_target(target: str | Path) -> tuple[SweepSpec, Path | None]:
    """The sweep of ``target``: a sweep file, or a sweep directory (its ``sweep.toml``); with the
    directory when ``target`` is one.

    Raises:
        ConfigError: ``target`` is neither.
    """
    path = Path(target)
    if path.is_dir():
        name = state.read_sweep(path)["name"]
        return spec.parse((path / "sweep.toml").read_text(), name, str(path / "sweep.toml")), path
    if not path.exists():
        raise ConfigError(f"{path} does not exist: pass a sweep file (e.g. sweeps/smoke.toml) or a sweep directory")
    return spec.load(path), None


def _duration(seconds: float) -> str:
    """``12.3 s``, ``4.5 min`` or ``6.7 h``."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan_text(sweep: SweepSpec, cells: Sequence[Cell], measure: bool = True, progress: Callable[[str], None] | None = None) -> str:
    """The cells of ``sweep`` with their learners, seeds, meta-iterations and, with ``measure``,
    their estimated time on this machine (:mod:`.cost`), as a Markdown table with a total.

    Raises:
        ConfigError, DataError: a probe cannot run (data missing, an episode shape too large).
    """
    from . import cost

    cpus = sweep.resources["cpus"]
    probes: dict[str, cost.Probe] = {}
    rows = ["| # | cell | learners | seeds | meta-iterations |" + (" estimate |" if measure else ""),
            "|---:|---|---|---|---:|" + ("---:|" if measure else "")]
    total = 0.0
    for i, cell in enumerate(cells, 1):
        estimate = ""
        if measure:
            for learner in cell.learners:
                key = cost.probe_key(cell.config, learner)
                if key not in probes:
                    if progress:
                        progress(f"measuring {learner} for {cell.label} ...")
                    probes[key] = cost.probe(cell.values, learner, cpus)
            seconds = cost.estimate(cell.config, probes)
            total += seconds
            estimate = _duration(seconds)
        iterations = ", ".join(f"{n} {cell.config['iterations'][n]}" for n in cell.learners)
        rows.append(f"| {i} | `{cell.name}` | {', '.join(cell.learners)} | {', '.join(map(str, cell.seeds))} | "
                    f"{iterations} |" + (f" {estimate} |" if measure else ""))
    head = (f"Sweep `{sweep.name}`: {len(cells)} cell(s), one per "
            f"{'learner x seed' if sweep.group == 'learner' else 'setting'}; {sweep.resources['cpus']} CPU thread(s) "
            f"and {sweep.resources['gpus']} GPU(s) per cell.")
    foot = ""
    if measure:
        foot = (f"\n\nEstimated total: {_duration(total)} of one cell slot ({len(probes)} probe(s) measured here with "
                f"{cpus} thread(s); training, validation and testing, without each cell's start-up and data loading; "
                "budgets that train to convergence are counted at their most iterations). Divide by the cells that "
                "run at once.")
    return head + "\n\n" + "\n".join(rows) + foot


@dataclass(frozen=True)
class SweepResult:
    """What ``sweep run`` did.

    Attributes:
        out: the sweep directory. ran: cells started by this call, with their exit statuses.
        cells: every cell's state afterwards (:func:`metabench.sweeps.state.statuses`).
    """

    out: Path
    ran: dict[str, int]
    cells: list[state.CellStatus]


def run_sweep(target: str | Path, out: Path | None = None, engine: str = "local", jobs: int | None = None,
              address: str | None = None, cluster: str = "slurm", retry_failed: bool = False,
              data_root: str | None = None, note: Callable[[str], None] = print) -> SweepResult:
    """Run the cells of sweep ``target`` (a file or a sweep directory) that are not done.

    Pending and interrupted cells run (interrupted ones resume from their checkpoints); failed
    cells only with ``retry_failed``; cells another process is running are left to it.

    Raises:
        ConfigError: an invalid sweep or cell (before anything runs), ``out`` made from another
            sweep file, an engine that is not installed, a Ray cluster that does not answer.
    """
    engines.preflight(engine, address, cluster)  # before anything is created
    sweep, existing = load_target(target)
    if existing is not None and out is not None and Path(out).resolve() != existing.resolve():
        raise ConfigError(f"{target} is a sweep directory: drop --out (it runs in place), or pass its sweep.toml with --out")
    out = existing or (Path(out) if out is not None else default_out(sweep))
    cells = spec.expand(sweep)
    if engine == "local" and jobs is not None:
        engines.local_jobs(1, 0, jobs)  # validates --jobs
    connected = engines.ray_connect(address) if engine == "ray" else False  # a silent cluster creates nothing
    try:
        return _run(sweep, cells, out, engine, jobs, address, cluster, retry_failed, data_root, note)
    finally:
        if connected:
            import ray

            ray.shutdown()


def _run(sweep: SweepSpec, cells: list[Cell], out: Path, engine: str, jobs: int | None, address: str | None,
         cluster: str, retry_failed: bool, data_root: str | None, note: Callable[[str], None]) -> SweepResult:
    """:func:`run_sweep` once everything is checked (and Ray connected): create or open the sweep
    directory, run the cells that are not done, record the run in ``history.jsonl``."""
    state.open_sweep(out, sweep, cells)
    before = {c.name: c for c in state.statuses(out)}
    wanted = ("pending", "interrupted", "failed") if retry_failed else ("pending", "interrupted")
    # absolute paths: Ray and Slurm workers run elsewhere, from other working directories
    todo = [state.cell_dir(out.resolve(), c) for c in cells if before[c.name].state in wanted]
    data_root = str(Path(data_root).resolve()) if data_root else None
    busy = [c for c in before.values() if c.state == "running"]
    failed = [c for c in before.values() if c.state == "failed" and not retry_failed]
    done_before = sum(c.state == "done" for c in before.values())
    note(f"sweep {out}: {len(cells)} cells, {done_before} done, {len(todo)} to run"
         + (f", {len(busy)} running elsewhere" if busy else "")
         + (f", {len(failed)} failed (not retried: pass --retry-failed)" if failed else ""))
    cpus, gpus = sweep.resources["cpus"], sweep.resources["gpus"]
    finished = iter(range(1, len(todo) + 1))

    def done(name: str, status: int) -> None:
        what = {0: "done", 1: "failed", 3: "running elsewhere", 130: "interrupted",
                engines.LOST: "lost by the engine (see its log.txt)"}.get(status, f"stopped ({status})")
        note(f"[{next(finished)}/{len(todo)}] {name}: {what}")

    ran: dict[str, int] = {}
    started, wall = now(), time.perf_counter()
    slots = engines.local_jobs(cpus, gpus, jobs) if engine == "local" else None
    finished_ok = False

    def record(name: str, status: int) -> None:
        ran[name] = status
        done(name, status)

    try:
        if todo and engine == "local":
            engines.run_local(todo, cpus, slots, data_root, record)
        elif todo and engine == "ray":
            engines.run_ray(todo, cpus, gpus, data_root, record, address)
        elif todo:
            engines.run_slurm(todo, out, sweep.slurm, cpus, gpus, sweep.name, data_root, record, cluster, note)
        finished_ok = True
    finally:  # also when interrupted: what ran is recorded
        after = state.statuses(out)
        state.append_history(out, {
            "started_at": started, "finished_at": now(), "wall_seconds": round(time.perf_counter() - wall, 3),
            "engine": engine, "jobs": slots, "address": address, "cluster": cluster if engine == "slurm" else None,
            "host": socket.gethostname(), "cpu": cpu_name(), "interrupted": not finished_ok, "ran": dict(ran),
            "states": state.counts(after),
        })
    return SweepResult(out, ran, after)


def status_text(cells: Sequence[state.CellStatus], out: Path) -> str:
    """``metabench sweep status``: counts per state, then the cells not done with their state and,
    for failed ones, the error and the log."""
    counts = state.counts(cells)
    lines = [f"sweep {out}: {len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for c in cells:
        if c.state == "done":
            continue
        line = f"- {c.state}: {c.name}"
        if c.state == "failed":
            line += f" (attempt {c.attempts}): {c.error} (log: {c.folder / 'log.txt'})"
        elif c.state == "interrupted":
            line += " (resumes from its checkpoints)"
        lines.append(line)
    if counts["failed"]:
        lines.append(f"retry the failed cells: metabench sweep run {out} --retry-failed")
    elif counts["pending"] or counts["interrupted"]:
        lines.append(f"run the rest: metabench sweep run {out}")
    return "\n".join(lines)


__all__ = ["Cell", "SweepResult", "SweepSpec", "default_out", "load_target", "plan_text", "run_sweep", "status_text"]
