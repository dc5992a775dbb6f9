"""Read the directories that ``metabench run`` and ``metabench time`` write, for reports.

A folder is recognised by the files in it:

- an **accuracy run** (``metabench run``) holds ``episodes.csv``, ``run.json`` and ``config.json``
  (and ``summary.csv``, ``curves.csv``, ``environment.json``);
- a **timing directory** (``metabench time``) holds ``timing.csv`` (and ``environment.json``).

Everything is validated on reading (files present, columns present, numbers numeric, every learner
tested on the same episodes), so that a report either uses sound inputs or stops with one line
naming the problem and its fix (:class:`~metabench.errors.ReportError`). Reading needs only pandas:
no torch import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metabench.errors import ReportError

RUN_FILES = ("episodes.csv", "run.json", "config.json")
TIMING_FILES = ("timing.csv",)
EPISODE_COLUMNS = ("seed", "learner", "episode", "accuracy")
SUMMARY_COLUMNS = ("learner", "name", "meta_iterations", "meta_train_s", "test_ms_per_episode")
CURVE_COLUMNS = ("seed", "learner", "iteration", "train_seconds", "val_accuracy", "val_ci95")
TIMING_COLUMNS = ("label", "implementation", "learner", "ways", "shots", "queries", "meta_batch", "inner_steps",
                  "device", "reps", "median_ms", "iqr_ms", "peak_memory_mib")


@dataclass(frozen=True)
class Setting:
    """What a column of the accuracy table stands for: N-way K-shot test episodes of a split.

    Attributes:
        dataset: e.g. ``omniglot``. split: e.g. ``vinyals``. ways: N. shots: K.
        variant: what else sets the column apart, for cells of a sweep that differ in more than
            the setting (e.g. ``budget=quick``); ``""`` for a plain run.
    """

    dataset: str
    split: str
    ways: int
    shots: int
    variant: str = ""

    @property
    def group(self) -> str:
        """``Omniglot (vinyals)``: the heading over a table's columns of one dataset and split."""
        from metabench.datasets import DATASETS  # the registry's titles (no torch import)

        info = DATASETS.get(self.dataset)
        return f"{info.title if info else self.dataset} ({self.split})"

    @property
    def column(self) -> str:
        """``5-way 1-shot`` (with the variant in parentheses, if any): a table's column header."""
        return f"{self.ways}-way {self.shots}-shot" + (f" ({self.variant})" if self.variant else "")

    @property
    def title(self) -> str:
        """``Omniglot (vinyals) 5-way 1-shot`` (with the variant in parentheses, if any)."""
        return f"{self.group} {self.column}"

    @property
    def short(self) -> str:
        """``omniglot-vinyals-5w1s`` (then the variant, made safe): used in file names and CSV
        column names."""
        base = f"{self.dataset}-{self.split}-{self.ways}w{self.shots}s"
        return base + ("-" + re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.variant).strip("_") if self.variant else "")


@dataclass(frozen=True)
class AccuracyRun:
    """One ``metabench run`` directory.

    Attributes:
        path: the folder.
        setting: its test setting.
        config: ``config.json`` (the resolved run configuration).
        meta: ``run.json`` (``fingerprint``: SHA-256 hex of the test episodes, wall time, ...).
        environment: ``environment.json`` (empty if absent).
        episodes: ``episodes.csv``: ``seed, learner, episode, accuracy`` (percent), ``loss``.
        summary: ``summary.csv``: per learner ``name, meta_iterations, meta_train_s`` (seconds,
            mean over seeds), ``test_ms_per_episode`` (milliseconds).
        curves: ``curves.csv`` (``seed, learner, iteration, train_seconds, val_accuracy,
            val_ci95``; validation columns NaN between validation points); empty if none.
    """

    path: Path
    setting: Setting
    config: dict[str, Any]
    meta: dict[str, Any]
    environment: dict[str, Any]
    episodes: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame

    @property
    def learners(self) -> list[str]:
        """Learner names in the run's order."""
        return list(dict.fromkeys(self.episodes["learner"]))

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the run's test episodes (``run.json``)."""
        return str(self.meta["fingerprint"])


@dataclass(frozen=True)
class TimingRun:
    """One ``metabench time`` directory.

    Attributes:
        path: the folder.
        table: ``timing.csv``, one row per timed cell (median and IQR of the step time in ms,
            peak memory in MiB, ...), plus ``source`` (the folder) and ``device_name``
            (:func:`device_name`).
        environment: ``environment.json`` (empty if absent).
    """

    path: Path
    table: pd.DataFrame
    environment: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path} ({exc}): restore the file from the run or rerun it") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object: restore the file from the run or rerun it")
    return data


def _read_csv(path: Path, columns: Sequence[str], numeric: Sequence[str], allow_empty: bool = False) -> pd.DataFrame:
    """Read a CSV, check ``columns`` are present and ``numeric`` ones are numbers.

    Raises:
        ReportError: unreadable file, missing column or non-numeric value.
    """
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        if allow_empty:
            return pd.DataFrame(columns=list(columns))
        raise ReportError(f"{path} is empty: rerun the command that wrote it") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path} ({exc}): restore the file or rerun the command that wrote it") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(f"{path} lacks the column(s) {', '.join(missing)}: it was not written by this version of "
                          "metabench; rerun the command that wrote it")
    for col in numeric:
        converted = pd.to_numeric(table[col], errors="coerce")
        if (converted.isna() & table[col].notna()).any():
            raise ReportError(f"{path}: column {col} holds values that are not numbers: restore the file or rerun")
        table[col] = converted
    if not allow_empty and table.empty:
        raise ReportError(f"{path} has no rows: rerun the command that wrote it")
    return table


def kind_of(path: Path) -> str:
    """``"run"`` or ``"timing"``, from the files in ``path``.

    Raises:
        ReportError: if ``path`` is missing, not a folder, or neither kind (naming what to pass).
    """
    if not path.exists():
        raise ReportError(f"{path} does not exist: pass a folder written by `metabench run` or `metabench time`")
    if not path.is_dir():
        raise ReportError(f"{path} is a file: pass the folder that `metabench run` or `metabench time` wrote (--out)")
    if all((path / f).is_file() for f in RUN_FILES):
        return "run"
    if all((path / f).is_file() for f in TIMING_FILES):
        return "timing"
    if (path / "report.json").is_file():
        raise ReportError(f"{path} is a report, not a run: pass the run and timing folders it was made from")
    present = [f for f in RUN_FILES if (path / f).is_file()]
    if present:
        missing = [f for f in RUN_FILES if f not in present]
        raise ReportError(f"{path} looks like an incomplete run directory (no {', '.join(missing)}): "
                          "rerun `metabench run` for it")
    raise ReportError(f"{path} is neither a run directory (episodes.csv, run.json, config.json from `metabench run`) "
                      "nor a timing directory (timing.csv from `metabench time`): pass the folder those commands "
                      "wrote (their --out)")


def read_run(path: Path) -> AccuracyRun:
    """Read and validate one ``metabench run`` directory.

    Raises:
        ReportError: missing or malformed files; learners not all tested on the same episodes.
    """
    config = _read_json(path / "config.json")
    meta = _read_json(path / "run.json")
    env = _read_json(path / "environment.json") if (path / "environment.json").is_file() else {}
    for key in ("dataset", "split", "ways", "shots"):
        if key not in config:
            raise ReportError(f"{path / 'config.json'} lacks {key!r}: rerun `metabench run` for this directory")
    if not meta.get("fingerprint"):
        raise ReportError(f"{path / 'run.json'} lacks the episode fingerprint: rerun `metabench run` for this directory")
    if config.get("kind") == "regression":
        raise ReportError(f"{path} is a regression run ({config['dataset']}): reports cover classification runs only so far; "
                          "its summary.md and summary.csv hold its table")
    dataset, split = str(config["dataset"]), str(config["split"])
    if (config.get("test_dataset", dataset), config.get("test_split", split)) != (dataset, split):
        # cross-domain: ASCII, because Setting.short names files
        dataset, split = f"{dataset}-to-{config['test_dataset']}", f"{split}-to-{config['test_split']}"
    setting = Setting(dataset, split, int(config["ways"]), int(config["shots"]))
    episodes = _read_csv(path / "episodes.csv", EPISODE_COLUMNS, ("seed", "episode", "accuracy"))
    episodes["learner"] = episodes["learner"].astype(str)
    if episodes["accuracy"].isna().any():
        raise ReportError(f"{path / 'episodes.csv'} has empty accuracies: rerun `metabench run` for this directory")
    counts = episodes.groupby(["learner", "seed"])["episode"].apply(lambda s: tuple(sorted(s)))
    if counts.nunique() != 1:
        raise ReportError(f"{path / 'episodes.csv'}: the learners and seeds were not all tested on the same episodes "
                          "(the file was edited or truncated): rerun `metabench run` for this directory")
    if (path / "summary.csv").is_file():
        summary = _read_csv(path / "summary.csv", SUMMARY_COLUMNS,
                            ("meta_iterations", "meta_train_s", "test_ms_per_episode"))
        summary["learner"] = summary["learner"].astype(str)
    else:
        raise ReportError(f"{path} has no summary.csv: rerun `metabench run` for this directory")
    absent = [name for name in dict.fromkeys(episodes["learner"]) if name not in set(summary["learner"])]
    if absent:
        raise ReportError(f"{path / 'summary.csv'} lacks the learner(s) {', '.join(absent)} of episodes.csv: "
                          "rerun `metabench run` for this directory")
    if (path / "curves.csv").is_file():
        curves = _read_csv(path / "curves.csv", CURVE_COLUMNS,
                           ("seed", "iteration", "train_seconds", "val_accuracy", "val_ci95"), allow_empty=True)
        curves["learner"] = curves["learner"].astype(str)
    else:
        curves = pd.DataFrame(columns=list(CURVE_COLUMNS))
    return AccuracyRun(path, setting, config, meta, env, episodes, summary, curves)


def device_name(device: str, env: dict[str, Any]) -> str:
    """``cpu (AMD EPYC)`` or ``cuda (NVIDIA H100 80GB HBM3)`` from a timing row's device type and
    its directory's ``environment.json`` (the type alone when the name is not recorded)."""
    name = env.get("cpu") if device == "cpu" else env.get("gpu")
    return f"{device} ({name})" if name else device


def read_timing(path: Path) -> TimingRun:
    """Read and validate one ``metabench time`` directory.

    Raises:
        ReportError: missing or malformed ``timing.csv``.
    """
    env = _read_json(path / "environment.json") if (path / "environment.json").is_file() else {}
    table = _read_csv(path / "timing.csv", TIMING_COLUMNS,
                      ("ways", "shots", "queries", "meta_batch", "inner_steps", "reps", "median_ms", "iqr_ms",
                       "peak_memory_mib"))
    for col in ("label", "implementation", "learner", "device"):
        table[col] = table[col].astype(str)
    if table["median_ms"].isna().any():
        raise ReportError(f"{path / 'timing.csv'} has rows without a median time: rerun `metabench time`")
    table["source"] = str(path)
    table["device_name"] = [device_name(d, env) for d in table["device"]]
    return TimingRun(path, table, env)


@dataclass(frozen=True)
class ProtocolRun:
    """A run directory of an evaluation protocol other than the standard episodic one
    (``config.json`` names it in ``protocol``), which the protocol's own report section renders.

    Attributes:
        path: the run directory.
        protocol: its ``protocol`` (e.g. ``"active"``).
        config: ``config.json``; meta: ``run.json``.
        summary: ``summary.csv`` (the protocol's columns).
        episodes: ``episodes.csv`` (the protocol's rows).
        name: what the report calls it (``""``: the folder's name; see :attr:`label`).
    """

    path: Path
    protocol: str
    config: dict[str, Any]
    meta: dict[str, Any]
    summary: pd.DataFrame
    episodes: pd.DataFrame
    name: str = ""

    @property
    def label(self) -> str:
        """How the report names the run (its sections' headings and file names): ``name`` (a
        sweep cell's name) or the folder's name."""
        return self.name or self.path.name


#: Protocols whose runs are read as :class:`AccuracyRun` (the rest as :class:`ProtocolRun`).
STANDARD_PROTOCOLS = ("episodic",)


def format_test_settings(settings: dict[str, dict[str, Any]]) -> str:
    """The test-time settings a ``metabench evaluate --set`` changed (``run.json``
    ``test_settings``, learner -> name -> value) as text: ``fomaml query_batch = 1; reptile
    query_batch = 1`` (empty for none)."""
    return "; ".join(f"{name} " + ", ".join(f"{k} = {v}" for k, v in sorted(items.items()))
                     for name, items in sorted(settings.items()))


def run_protocol(config: dict[str, Any]) -> str:
    """The protocol of a run's ``config.json``; runs from before protocols existed name none and
    were tested with their dataset kind's standard protocol."""
    return str(config.get("protocol") or ("regression" if config.get("kind") == "regression" else "episodic"))


def read_protocol_run(path: Path) -> ProtocolRun:
    """Read a run directory of a non-standard protocol.

    Raises:
        ReportError: missing or malformed files.
    """
    config = _read_json(path / "config.json")
    if not (path / "summary.csv").is_file():
        raise ReportError(f"{path} has no summary.csv: rerun `metabench run` or `metabench evaluate` for it")
    try:
        summary = pd.read_csv(path / "summary.csv")
        episodes = pd.read_csv(path / "episodes.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} has an unreadable CSV ({exc}): rerun the command that wrote it") from None
    return ProtocolRun(path, run_protocol(config), config, _read_json(path / "run.json"), summary, episodes)


def read_inputs(paths: Sequence[str | Path]) -> tuple[list[AccuracyRun], list[TimingRun], list[ProtocolRun]]:
    """Read every folder given to ``metabench report``, each as a run or a timing directory.

    Args:
        paths: folders, in the order given (the order of columns and inputs in the report).

    Returns:
        ``(runs, timings, protocol_runs)`` in the order given: standard accuracy runs, timing
        directories, and runs of other evaluation protocols (:class:`ProtocolRun`).

    Raises:
        ReportError: no folder given, a folder given twice, or any folder unusable (see
            :func:`kind_of`, :func:`read_run`, :func:`read_timing`).
    """
    if not paths:
        raise ReportError("no run directories given: pass one or more folders written by `metabench run` or "
                          "`metabench time`")
    seen: dict[Path, str] = {}
    runs, timings, others = [], [], []
    for raw in paths:
        path = Path(raw)
        key = path.resolve()
        if key in seen:
            raise ReportError(f"{raw} is given twice (also as {seen[key]}): pass each folder once")
        seen[key] = str(raw)
        if kind_of(path) != "run":
            timings.append(read_timing(path))
        elif run_protocol(_read_json(path / "config.json")) not in STANDARD_PROTOCOLS:
            others.append(read_protocol_run(path))
        else:
            runs.append(read_run(path))
    return runs, timings, others
