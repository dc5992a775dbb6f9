"""The working folder of a run in progress: checkpoints, finished learners, and what may resume it.

While ``metabench run --out DIR`` trains, everything it keeps lives in ``DIR.incomplete/``:

``state.json``        what the run is: its configuration, the fingerprint of the code that
                      trains (one SHA-256 per source file of ``metabench.algorithms``,
                      ``metabench.datasets``, :mod:`metabench.training`,
                      :mod:`metabench.evaluation`, :mod:`metabench.statistics` and
                      :mod:`metabench.rundata`), the software that computes (torch and numpy
                      versions, torch's thread count), the git commit, when it started
``INCOMPLETE.txt``    for a person: the run is unfinished; how to resume or delete it
``lock``              held (``flock``) by the process working on the folder
``units/<learner>-seed<k>/last.safetensors``, ``previous.safetensors``
                      the training's newest checkpoints (:class:`~metabench.training.Checkpointer`)
``units/<learner>-seed<k>/done/``
                      a finished learner x seed, written atomically: ``episodes.csv``,
                      ``curve.csv``, ``result.json``, ``weights.safetensors``

When every learner x seed is done the run directory ``DIR`` is published atomically and the
working folder removed. A run resumes (``metabench run --resume DIR.incomplete``, or the same
command with the same ``--out``) only with the same configuration and the same training code:
anything else could not reproduce the uninterrupted run bit for bit (the same holds for the
software: another torch version or thread count rounds differently).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metabench.errors import ConfigError

#: Suffix of a run's working folder.
SUFFIX = ".incomplete"
#: ``state.json``'s ``format`` value.
FORMAT = "metabench-working-folder/1"
#: Configuration keys that do not change any result, so a resume may differ in them (``skipped``
#: is derived from the learners and the dataset, which are compared).
NOT_DEFINING = frozenset({"out", "data_root", "download", "checkpoint_minutes", "skipped"})


def working_folder(out: Path) -> Path:
    """The working folder of run directory ``out``: ``out`` with :data:`SUFFIX` appended."""
    return out.with_name(out.name + SUFFIX)


def run_directory(work: Path) -> Path:
    """The run directory a working folder publishes (inverse of :func:`working_folder`)."""
    return work.with_name(work.name[: -len(SUFFIX)]) if work.name.endswith(SUFFIX) else work


def code_files() -> dict[str, Path]:
    """The source files whose contents decide a training's numbers, by package-relative name:
    every ``.py`` file of ``metabench.algorithms`` and ``metabench.datasets``, and of
    ``metabench`` the training loop, the scoring and its statistics (validation scores choose the
    best checkpoint) and the run's samplers (``training.py``, ``evaluation.py``,
    ``statistics.py``, ``rundata.py``)."""
    import metabench
    import metabench.algorithms
    import metabench.datasets

    files: dict[str, Path] = {}
    for package, label in ((metabench.algorithms, "algorithms"), (metabench.datasets, "datasets")):
        folder = Path(package.__file__).parent
        files.update({f"{label}/{p.name}": p for p in sorted(folder.glob("*.py"))})
    bench = Path(metabench.__file__).parent
    files.update({f"bench/{name}": bench / name for name in ("training.py", "evaluation.py", "statistics.py", "rundata.py")})
    return files


def code_fingerprint() -> dict[str, str]:
    """SHA-256 (hex) of each of :func:`code_files`."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in code_files().items()}


def software() -> dict[str, Any]:
    """What computes besides the code: torch and numpy versions and torch's intra-op thread
    count (a different thread count changes float rounding in convolutions)."""
    import numpy
    import torch

    return {"torch": torch.__version__, "numpy": numpy.__version__, "torch_threads": torch.get_num_threads()}


def defining(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration without the keys in :data:`NOT_DEFINING`."""
    return {k: v for k, v in config.items() if k not in NOT_DEFINING}


#: Keys added to the configuration after working folders were first written, with the value an
#: older folder (which lacks them) meant: runs before evaluation protocols were episodic or regression.
ADDED_KEYS = {"protocol_settings": {}}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: old -> new`` for every defining key that differs (keys only one
    side has count as differing, except those of :data:`ADDED_KEYS` and a missing ``protocol``,
    which take the value an older folder meant)."""
    old, new = dict(defining(old)), defining(new)
    for key, value in ADDED_KEYS.items():
        old.setdefault(key, value)
    if "protocol" not in old and new.get("protocol") in ("episodic", "regression"):
        old["protocol"] = new["protocol"]  # the standard protocol of the dataset's kind
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            out.append(f"{key}: {json.dumps(old.get(key, '(absent)'))} -> {json.dumps(new.get(key, '(absent)'))}")
    return out


def incomplete_text(work: Path) -> str:
    """The ``INCOMPLETE.txt`` of working folder ``work``."""
    return (
        f"This is the working folder of an unfinished metabench run (it becomes {run_directory(work).name}/ when "
        "every learner has trained and been tested).\n\n"
        "It holds checkpoints of the learner in training and the results of the learners already finished.\n"
        f"Resume it:  metabench run --resume {work}\n"
        f"Delete it:  rm -r {work}\n\n"
        "A resume needs the same configuration and the same training code (state.json records both).\n"
    )


def create(work: Path, config: Mapping[str, Any], commit: dict[str, Any], started_at: str) -> None:
    """Create the working folder ``work`` with ``state.json``, ``INCOMPLETE.txt`` and ``units/``,
    all or nothing (:func:`~metabench.outdir.write_atomically`).

    Raises:
        ConfigError: if it cannot be written, or another process created it meanwhile.
    """
    from metabench.outdir import write_atomically

    state = {"format": FORMAT, "config": dict(config), "code": code_fingerprint(), "software": software(),
             "git": commit, "started_at": started_at}

    def write(folder: Path) -> None:
        (folder / "units").mkdir()
        (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        (folder / "INCOMPLETE.txt").write_text(incomplete_text(work))

    write_atomically(work, write, "working folder")


def read_state(work: Path) -> dict[str, Any]:
    """``state.json`` of working folder ``work``.

    Raises:
        ConfigError: if ``work`` is not a metabench working folder (or is a finished run).
    """
    if (work / "run.json").is_file() and (work / "config.json").is_file():
        raise ConfigError(f"{work} is a finished run directory: nothing to resume (re-test it with metabench evaluate {work})")
    try:
        state = json.loads((work / "state.json").read_text())
        if state.get("format") != FORMAT:
            raise ValueError(state.get("format"))
        return state
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{work} is not a metabench working folder (no readable state.json of format {FORMAT}): "
                          f"pass the DIR{SUFFIX} folder an interrupted `metabench run --out DIR` left") from None


def check_resumable(work: Path, state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse to resume ``work`` with another configuration or other training code.

    Raises:
        ConfigError: naming what differs and the fix.
    """
    diff = differences(state["config"], config)
    if diff:
        raise ConfigError(f"{work} was started with another configuration ({'; '.join(diff)}): resume it with "
                          f"`metabench run --resume {work}` alone, or choose another --out, or delete {work}")
    now = code_fingerprint()
    changed = sorted(name for name in set(state["code"]) | set(now) if state["code"].get(name) != now.get(name))
    if changed:
        git = state.get("git") or {}
        commit = git.get("commit")
        where = (f"check out commit {commit[:12]} (e.g. git worktree add ../metabench-{commit[:7]} {commit[:12]}) and resume "
                 "from there") if commit else "resume with the code that started it"
        if git.get("dirty"):
            where += " (it was started from a tree with uncommitted changes, which the commit lacks)"
        raise ConfigError(f"{work} was started with other training code ({', '.join(changed)} differ): {where}, "
                          f"or delete {work} to start again")
    then, current = state.get("software", {}), software()
    diff = [f"{k} {then[k]} -> {current.get(k)}" for k in sorted(then) if then[k] != current.get(k)]
    if diff:
        raise ConfigError(f"{work} was started with other software ({'; '.join(diff)}), which rounds differently: resume it "
                          "with the same torch and numpy and the same thread count (e.g. OMP_NUM_THREADS), or delete "
                          f"{work} to start again")


@contextmanager
def locked(work: Path) -> Iterator[None]:
    """Hold ``work/lock`` for the duration, so that two processes never work on one folder.

    Raises:
        ConfigError: if another process holds it.
    """
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{work} is in use by another metabench process: wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
