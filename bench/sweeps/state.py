"""A sweep directory and the state of its cells.

Layout (``metabench sweep run FILE --out DIR``)::

    DIR/sweep.toml                  the sweep file it was made from, as given
    DIR/sweep.json                  format, name, the parsed sweep, the cells (in order)
    DIR/history.jsonl               one line per `sweep run`: when, engine, slots, host, CPU,
                                    wall seconds, the cells it ran and their exit statuses
    DIR/cells/<cell>/cell.json      the cell: key, label, variant, values, resolved configuration
    DIR/cells/<cell>/status.json    the last attempt: state, attempt, host, pid, engine, times, error
    DIR/cells/<cell>/log.txt        the output of every attempt, appended
    DIR/cells/<cell>/lock           held (flock) by the process running the cell
    DIR/cells/<cell>/run/           the finished run directory (``metabench run``'s, published atomically)
    DIR/cells/<cell>/run.incomplete/   its working folder while it trains (checkpoints; :mod:`metabench.workdir`)

A cell is **done** when ``run/`` is a finished run directory, **running** while a process holds its
lock, **failed** when its last attempt raised (its error in ``status.json``, the traceback in
``log.txt``), **interrupted** when an attempt was stopped or killed (it resumes from its
checkpoints), and **pending** otherwise. The state is read from the files each time, never kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metabench import workdir
from metabench.errors import ConfigError
from metabench.outdir import check_writable, write_atomically

from .spec import Cell, SweepSpec

#: ``sweep.json``'s ``format`` value.
FORMAT = "metabench-sweep/1"
#: Cell states, in the order ``metabench sweep status`` lists them.
STATES = ("done", "running", "interrupted", "failed", "pending")


def cell_dir(sweep: Path, cell: Cell | str) -> Path:
    """The folder of ``cell`` (a :class:`Cell` or its name) in sweep directory ``sweep``."""
    return sweep / "cells" / (cell if isinstance(cell, str) else cell.name)


def is_sweep(path: Path) -> bool:
    """Whether ``path`` is a sweep directory (has ``sweep.json``)."""
    return (path / "sweep.json").is_file()


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``path`` so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _json(tmp, data)
    os.replace(tmp, path)


def _cell_record(cell: Cell) -> dict[str, Any]:
    return {"key": cell.key, "name": cell.name, "label": cell.label, "variant": cell.variant,
            "values": dict(cell.values), "config": dict(cell.config)}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]


def open_sweep(out: Path, spec: SweepSpec, cells: Sequence[Cell]) -> None:
    """Create the sweep directory ``out`` for ``spec`` (all or nothing), or check that the
    existing one was made from the same sweep; cells new to it (after a change of the learners'
    budgets, say, which makes new cell keys) get their folders.

    Raises:
        ConfigError: ``out`` is not writable, is something else, or was made from another sweep
            file (naming what differs).
    """
    record = {"format": FORMAT, "name": spec.name, "spec": spec.canonical(), "cells": [c.name for c in cells]}
    if out.exists():
        if not is_sweep(out):
            raise ConfigError(f"{out} exists and is not a sweep directory: choose another --out")
        old = read_sweep(out)
        diff = _differences(old["spec"], spec.canonical())
        if diff:
            raise ConfigError(f"{out} was made from another sweep file ({'; '.join(diff[:4])}"
                              f"{'; ...' if len(diff) > 4 else ''}): choose another --out, or restore the sweep file "
                              f"it was made from (a copy is {out / 'sweep.toml'} unless it was edited)")
        for cell in cells:
            folder = cell_dir(out, cell)
            if not (folder / "cell.json").is_file():
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomically(folder / "cell.json", _cell_record(cell))
        if old["cells"] != record["cells"]:
            write_json_atomically(out / "sweep.json", record)
        return
    check_writable(out, "sweep directory")

    def write(folder: Path) -> None:
        (folder / "sweep.toml").write_text(spec.source)
        _json(folder / "sweep.json", record)
        for cell in cells:
            c = cell_dir(folder, cell)
            c.mkdir(parents=True)
            _json(c / "cell.json", _cell_record(cell))

    write_atomically(out, write, "sweep directory")


def append_history(sweep: Path, entry: dict[str, Any]) -> None:
    """Append one ``sweep run``'s record to ``history.jsonl`` (one JSON object per line)."""
    with open(sweep / "history.jsonl", "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def read_history(sweep: Path) -> list[dict[str, Any]]:
    """The records of ``history.jsonl`` (empty if none), skipping a line cut short by a kill."""
    try:
        lines = (sweep / "history.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_sweep(path: Path) -> dict[str, Any]:
    """``sweep.json`` of sweep directory ``path``.

    Raises:
        ConfigError: if ``path`` is not a sweep directory.
    """
    try:
        data = json.loads((path / "sweep.json").read_text())
        if data.get("format") != FORMAT:
            raise ValueError(data.get("format"))
        return data
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{path} is not a metabench sweep directory (no readable sweep.json of format {FORMAT}): "
                          "pass the --out of `metabench sweep run`, or a sweep file") from None


def read_cell(folder: Path) -> dict[str, Any]:
    """``cell.json`` of a cell folder.

    Raises:
        ConfigError: if it is missing or unreadable.
    """
    try:
        return json.loads((folder / "cell.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder} is not a sweep cell (no readable cell.json): rerun `metabench sweep run` on its "
                          "sweep directory") from None


def read_status(folder: Path) -> dict[str, Any]:
    """``status.json`` of a cell folder (empty if the cell never started)."""
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def is_finished_run(run: Path) -> bool:
    """Whether ``run`` is a finished run directory (every file of
    :data:`metabench.results.RUN_FILES`, which a run publishes all at once)."""
    from metabench.results import RUN_FILES

    return all((run / name).is_file() for name in RUN_FILES)


def _flock(fd: int, flags: int, folder: Path) -> bool:
    """``flock(fd, flags | LOCK_NB)``: True if taken, False if another process holds it.

    Raises:
        ConfigError: the filesystem cannot lock (e.g. Lustre mounted without ``flock``).
    """
    try:
        fcntl.flock(fd, flags | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot lock {folder / 'lock'} ({exc.strerror or exc}): put the sweep directory on a "
                          "filesystem with flock (Lustre: mount with -o flock)") from None


def lock_held(folder: Path) -> bool:
    """Whether some process holds the cell's lock (is running it) now.

    Raises:
        ConfigError: the filesystem cannot lock.
    """
    try:
        fd = os.open(folder / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _flock(fd, fcntl.LOCK_SH, folder)
    finally:
        os.close(fd)  # releases the shared lock taken to look


def cell_state(folder: Path) -> str:
    """The state of the cell in ``folder`` (one of :data:`STATES`), read from its files."""
    if is_finished_run(folder / "run"):
        return "done"
    if lock_held(folder):
        return "running"
    status = read_status(folder).get("state")
    if status == "failed":
        return "failed"
    if status in ("running", "interrupted") or workdir.working_folder(folder / "run").is_dir():
        return "interrupted"
    return "pending"


#: How long a cell waits for its lock before it counts as run by another process: a status
#: check (:func:`lock_held`) holds it for an instant.
LOCK_WAIT_S = 2.0


@contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Hold the cell's lock while the cell runs (waiting up to :data:`LOCK_WAIT_S` seconds).

    Raises:
        ConfigError: another process holds it, or the filesystem cannot lock.
    """
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while not _flock(fd, fcntl.LOCK_EX, folder):
            if time.monotonic() > deadline:
                raise ConfigError(f"{folder} is being run by another process: wait for it, or stop it")
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CellStatus:
    """A cell and where it stands.

    Attributes:
        name: the cell's folder name. label, variant: see :class:`~metabench.sweeps.spec.Cell`.
        state: one of :data:`STATES`. folder: the cell's folder.
        error: the failed attempt's one-line error (``""`` otherwise). attempts: attempts started.
    """

    name: str
    label: str
    variant: str
    state: str
    folder: Path
    error: str
    attempts: int


def statuses(sweep: Path) -> list[CellStatus]:
    """Every cell of sweep directory ``sweep`` (in ``sweep.json``'s order) with its state.

    Raises:
        ConfigError: ``sweep`` is not a sweep directory, or a cell's ``cell.json`` is unreadable.
    """
    out = []
    for name in read_sweep(sweep)["cells"]:
        folder = cell_dir(sweep, name)
        cell = read_cell(folder)
        status = read_status(folder)
        state = cell_state(folder)
        out.append(CellStatus(name, cell["label"], cell.get("variant", ""), state, folder,
                              status.get("error", "") if state == "failed" else "", int(status.get("attempt", 0))))
    return out


def counts(cells: Sequence[CellStatus]) -> dict[str, int]:
    """Cells per state, every state of :data:`STATES` present."""
    return {s: sum(c.state == s for c in cells) for s in STATES}
