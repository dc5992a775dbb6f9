"""Run one sweep cell: the process every engine starts (``python -m metabench.sweeps.cell CELL_DIR``).

The cell is an ordinary ``metabench run`` into ``CELL_DIR/run`` (:func:`metabench.runner.run`),
which checkpoints into ``CELL_DIR/run.incomplete/`` and resumes from it when a previous attempt
was stopped or killed. While it runs the process holds the cell's lock and ``status.json`` says
``running``; at the end ``status.json`` says ``done``, ``failed`` (with the one-line error; the
traceback is in ``log.txt``) or ``interrupted`` (SIGTERM or Ctrl-C: the checkpoints are kept).

:func:`launch` starts this process with the cell's output appended to ``log.txt``, its torch
threads set; on Linux the cell asks for a SIGTERM when the process that launched it dies, so
that killing a sweep stops its cells cleanly rather than leaving them to run on unseen.

Exit status: 0 done, 1 failed, 3 the cell is being run by another process, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metabench import workdir
from metabench.errors import ConfigError, MetabenchError

from . import state

#: Exit status of a cell whose lock another process holds.
BUSY = 3
#: Exit status of an interrupted cell (as ``metabench run``'s).
INTERRUPTED = 130


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the sweep's records use it)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_cell(folder: Path, data_root: str | None = None, engine: str = "local", progress: bool = False) -> int:
    """Run (or resume, or recognise as done) the cell in ``folder``; returns the exit status.

    Args:
        folder: the cell's folder (holds ``cell.json``).
        data_root: the data root for this worker (``None``: the cell's own, else ``$METABENCH_DATA``).
        engine: recorded in ``status.json``.
        progress: show progress bars (in the log).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(state.holding(folder))
        except ConfigError as exc:  # another process runs the cell, or the folder cannot be locked
            print(f"== {exc}", flush=True)
            return BUSY
        return _run_locked(folder, data_root, engine, progress)


def _run_locked(folder: Path, data_root: str | None, engine: str, progress: bool) -> int:
    from metabench.config import resolve
    from metabench.runner import run

    out = folder / "run"
    work = workdir.working_folder(out)
    if state.is_finished_run(out):
        shutil.rmtree(work, ignore_errors=True)  # left by a kill between publishing and clean-up
        state.write_json_atomically(folder / "status.json", {**state.read_status(folder), "state": "done"})
        return 0
    previous = state.read_status(folder)
    status = {"state": "running", "attempt": int(previous.get("attempt", 0)) + 1, "engine": engine,
              "host": socket.gethostname(), "pid": os.getpid(), "started_at": now(),
              "torch_threads": _threads(), "resumed": work.is_dir()}
    state.write_json_atomically(folder / "status.json", status)
    print(f"== attempt {status['attempt']} on {status['host']} (pid {status['pid']}, {engine}) at "
          f"{status['started_at']}{', resuming' if status['resumed'] else ''}", flush=True)
    start = time.perf_counter()
    try:
        values = {**state.read_cell(folder)["values"], "out": str(out)}
        if data_root:
            values["data_root"] = data_root
        run(resolve(values), progress=progress)
    except KeyboardInterrupt:
        state.write_json_atomically(folder / "status.json", {**status, "state": "interrupted", "finished_at": now()})
        print("== interrupted: the checkpoints are kept; rerun the sweep to resume", flush=True)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
        one_line = str(exc) if isinstance(exc, MetabenchError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        error = one_line.splitlines()[0] if one_line.strip() else type(exc).__name__
        state.write_json_atomically(folder / "status.json", {**status, "state": "failed", "finished_at": now(),
                                                             "error": error})
        print(f"== failed: {error}", flush=True)
        return 1
    seconds = time.perf_counter() - start
    state.write_json_atomically(folder / "status.json", {**status, "state": "done", "finished_at": now(),
                                                         "seconds": round(seconds, 3)})
    print((out / "summary.md").read_text(), flush=True)
    print(f"== done in {seconds:.1f} s", flush=True)
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``),
    and stop at once if the parent ``parent`` (its pid) is gone already. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:
        raise KeyboardInterrupt  # the launcher died before the request took effect


def command(folder: Path, threads: int, data_root: str | None, engine: str) -> list[str]:
    """The command line that runs the cell in ``folder``."""
    args = [sys.executable, "-m", "metabench.sweeps.cell", str(folder), "--threads", str(threads), "--engine", engine,
            "--parent", str(os.getpid())]
    return args + (["--data-root", data_root] if data_root else [])


def start(folder: Path | str, threads: int, data_root: str | None = None, engine: str = "local",
          env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start the cell in ``folder`` in a new process, its output appended to ``folder/log.txt``,
    with ``threads`` torch threads (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` too)."""
    folder = Path(folder)
    environ = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(folder / "log.txt", "ab") as log:
        # its own session: a Ctrl-C at the terminal reaches the driver only, which stops the cell once (stop())
        return subprocess.Popen(command(folder, threads, data_root, engine), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=environ, start_new_session=True)


def stop(procs: Sequence[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM each running process (a cell stops cleanly and keeps its checkpoints), then SIGKILL
    those still running after ``grace_s`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(folder: Path | str, threads: int, data_root: str | None = None, engine: str = "local",
           env: Mapping[str, str] | None = None) -> int:
    """Run the cell in ``folder`` in a new process (:func:`start`) and wait for it; returns its
    exit status (negative: killed by that signal). If the waiting process is interrupted, the cell
    is stopped (:func:`stop`) first."""
    proc = start(folder, threads, data_root, engine, env)
    try:
        return proc.wait()
    except BaseException:
        stop([proc])
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m metabench.sweeps.cell CELL_DIR [--threads N] [--data-root R] [--engine E]``."""
    parser = argparse.ArgumentParser(prog="python -m metabench.sweeps.cell", description="Run one metabench sweep cell.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--data-root")
    parser.add_argument("--engine", default="local")
    parser.add_argument("--parent", type=int, default=0, help="pid of the launching process: stop when it dies")
    args = parser.parse_args(argv)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)  # SIGUSR2: Slurm's warning before the time limit

    def interrupt(signum: int, frame: Any) -> None:
        for sig in stops:  # stop once: a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in stops:  # set even where the engine's process ignores them (submitit ignores SIGTERM)
        signal.signal(sig, interrupt)
    try:
        die_with_parent(args.parent)
    except KeyboardInterrupt:
        return INTERRUPTED
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return run_cell(args.folder, args.data_root, args.engine)
    except KeyboardInterrupt:  # stopped before the run started: nothing to keep
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
