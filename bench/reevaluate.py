"""``metabench evaluate``: re-test the learners a run kept, without training them again.

A finished run directory holds each trained learner's weights in
``weights/<learner>-seed<k>.safetensors`` (:mod:`metabench.checkpoint`: tensors plus a JSON
document naming the learner, its hyperparameters, the input shape, N and the iteration the weights
are from). :func:`evaluate_run` rebuilds each learner from its file and tests it on other
episodes: another test dataset (cross-domain), another N-way K-shot shape, more episodes, another
episode seed, and with other test-time settings (``--set``, a learner's ``TEST_SETTINGS`` only,
e.g. ``query_batch``). It writes an ordinary run directory (``config.json``, ``environment.json``,
``episodes.csv``, ``summary.csv``, ``summary.md``, ``run.json``; no curves, since nothing
trained) that ``metabench report`` reads like any other.

Learners whose network ends in an N-way linear head (MAML, first-order MAML, Reptile) can only be
tested at the N they were trained for; the metric learners (Prototypical and Matching Networks)
at any N. Which is which is not a list kept here: a learner whose weights do not fit the network
it builds for the new N is reported as not run, with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from metabench import __version__, checkpoint
from metabench.algorithms import LEARNERS, MetaLearner, apply_overrides, build_learner
from metabench.config import RunConfig, resolve
from metabench.datasets import DATASETS
from metabench.environment import environment
from metabench.errors import ConfigError
from metabench.evaluation import default_workers
from metabench.outdir import check_writable, write_atomically
from metabench.protocols import protocol_class, protocol_for, standard
from metabench.results import format_test_settings
from metabench.rundata import data_for
from metabench.runner import resolve_device, summary_markdown

#: Settings ``metabench evaluate`` may change (all others come from the run).
CHANGEABLE = ("test_dataset", "test_split", "ways", "shots", "queries", "test_episodes", "episode_seed", "learners",
              "device", "data_root", "download", "workers", "protocol", "protocol_settings")


def kept_hparams(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameter overrides that rebuild the learner of a weights file's ``meta``: those
    its run set, plus, for each of the learner's ``LEGACY_SETTINGS`` missing from the recorded
    ``hyperparameters`` (a field added after the file was written), the value it was trained with."""
    recorded = meta.get("hyperparameters") or {}
    legacy = {k: v for k, v in LEARNERS[meta["learner"]].LEGACY_SETTINGS.items() if k not in recorded}
    return {**legacy, **meta["hparams"]}


def check_test_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Check hyperparameters to change on learner ``name``'s kept weights: only its
    ``TEST_SETTINGS`` (those that act at meta-test time), each with a valid value.

    Raises:
        ConfigError: for an unknown learner, a hyperparameter that shapes what the learner
            learned (naming the ones allowed), or a bad value.
    """
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r} in --set: choose from {', '.join(LEARNERS)}")
    learned = sorted(set(settings) - set(LEARNERS[name].TEST_SETTINGS))
    if learned:
        allowed = ", ".join(LEARNERS[name].TEST_SETTINGS) or "none"
        raise ConfigError(f"{name}.{', '.join(learned)} shapes what {name} learned, so kept weights cannot change it: "
                          f"--set in metabench evaluate takes its test-time settings only ({allowed})")
    apply_overrides(LEARNERS[name].Config(), settings, name)


def load_learner(path: Path, device: torch.device | str = "cpu", ways: int | None = None,
                 test_settings: Mapping[str, Any] | None = None) -> MetaLearner:
    """Rebuild a trained learner from its kept weights.

    Args:
        path: a ``weights/<learner>-seed<k>.safetensors`` file of a run directory.
        device: where to put it.
        ways: N of the episodes it will be tested on (default: the N it was trained for).
        test_settings: hyperparameters to change that act at meta-test time only (the learner's
            ``TEST_SETTINGS``, e.g. ``{"query_batch": 1}``), over those it was trained with.

    Returns:
        The learner with the trained weights and the settings it chose on validation data.

    Raises:
        CheckpointError: if the file is missing, corrupt or not metabench weights.
        ConfigError: if the weights do not fit the learner's network for ``ways`` (its output
            layer fixes N), or ``test_settings`` names a hyperparameter that is not one of the
            learner's ``TEST_SETTINGS`` or has a bad value.
    """
    tensors, meta = checkpoint.load(path)
    if meta.get("format") != "metabench-weights/1" or meta.get("learner") not in LEARNERS:
        raise checkpoint.CheckpointError(f"{path} is not a metabench weights file (format {meta.get('format')!r})")
    name = meta["learner"]
    check_test_settings(name, test_settings or {})
    trained_ways = int(meta["ways"])
    ways = trained_ways if ways is None else ways
    learner = build_learner(name, ways, tuple(meta["input_shape"]), max(1, int(meta["iteration"])), device,
                            int(meta["seed"]), {**kept_hparams(meta), **(test_settings or {})})
    try:
        learner.load_state_dict(tensors)
    except RuntimeError:
        raise ConfigError(f"{LEARNERS[name].title} was trained {trained_ways}-way and its network's output layer fixes N: "
                          f"evaluate it with --ways {trained_ways}") from None
    learner.iteration = int(meta["iteration"])
    learner.restore_tuned(meta.get("tuned") or {})
    return learner


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate_config(run_dir: Path, changes: Mapping[str, Any],
                    test_settings: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The configuration of re-testing ``run_dir``: its own, with ``changes`` (keys of
    :data:`CHANGEABLE`) applied and ``test_settings`` (learner -> test-time hyperparameters)
    over its ``hparams``, and the run's ``config.json``.

    Raises:
        ConfigError: if ``run_dir`` is not a finished run directory with kept weights, or a
            change is invalid.
    """
    config_file = run_dir / "config.json"
    if not config_file.is_file() or not (run_dir / "run.json").is_file():
        raise ConfigError(f"{run_dir} is not a finished metabench run directory (no config.json and run.json): pass the "
                          "--out of a finished `metabench run`")
    if not (run_dir / "weights").is_dir() or not any((run_dir / "weights").glob("*.safetensors")):
        raise ConfigError(f"{run_dir} has no weights/ folder: it was made before metabench kept weights, or by "
                          "`metabench evaluate`; rerun `metabench run` to get them")
    original = json.loads(config_file.read_text())
    unknown = sorted(set(changes) - set(CHANGEABLE))
    if unknown:
        raise ConfigError(f"metabench evaluate cannot change {', '.join(unknown)}: only {', '.join(CHANGEABLE)}")
    keep = ("dataset", "split", "test_dataset", "test_split", "ways", "shots", "queries", "learners", "test_episodes",
            "episode_seed", "seeds", "device", "data_root", "image_size", "hparams", "workers", "protocol",
            "protocol_settings")
    values = {k: original[k] for k in keep if k in original and original[k] is not None}
    if "test_dataset" in changes and "test_split" not in changes:
        values.pop("test_split", None)  # the new test dataset's default split
    kind = DATASETS[original["dataset"]].kind if original.get("dataset") in DATASETS else "classification"
    if changes.get("protocol") not in (None, original.get("protocol", standard(kind))):
        values.pop("protocol_settings", None)  # another protocol: its own defaults unless given
        if changes.get("test_episodes") is None:
            cls = protocol_class(changes["protocol"], kind)
            values["test_episodes"] = cls.DEFAULT_EPISODES or RunConfig.test_episodes
    elif isinstance(changes.get("protocol_settings"), Mapping):  # the same protocol: change only what is given
        changes = {**changes, "protocol_settings": {**values.get("protocol_settings", {}), **changes["protocol_settings"]}}
    values.update({k: v for k, v in changes.items() if v is not None})
    hparams = {name: dict(items) for name, items in values.get("hparams", {}).items()}
    for name, items in (test_settings or {}).items():
        hparams[name] = {**hparams.get(name, {}), **items}
    values["hparams"] = hparams
    values.update(budget="smoke", iterations=1, val_episodes=0, curve_points=0)  # nothing trains
    return resolve(values), original


def evaluate_run(run_dir: Path, out: Path | None = None, progress: bool = True,
                 test_settings: Mapping[str, Mapping[str, Any]] | None = None, **changes: Any) -> Path:
    """Re-test the learners kept in ``run_dir`` and write a run directory of the results.

    Args:
        run_dir: a finished ``metabench run`` directory with ``weights/``.
        out: the directory to write (default ``<run_dir>-eval-<dataset>-<N>w<K>s``).
        progress: show progress bars.
        test_settings: learner -> test-time hyperparameters to change (``--set``; see
            :func:`load_learner`), merged into the output's ``config.json`` ``hparams`` and
            recorded under ``test_settings`` there and in ``run.json`` (for the learners tested).
        changes: settings of :data:`CHANGEABLE` (``None`` keeps the run's).

    Returns:
        The directory written.

    Raises:
        ConfigError: as :func:`evaluate_config`; an existing ``out``; no learner left that can
            take the new episodes; ``test_settings`` for a learner not re-tested, as
            :func:`check_test_settings`, or a ``query_batch`` outside the episodic protocol
            (:func:`~metabench.protocols.check_query_batch`).
        CheckpointError: an unreadable weights file.
        DataError: test data missing and not downloadable.
    """
    started = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    test_settings = {k: dict(v) for k, v in (test_settings or {}).items()}
    for name, settings in test_settings.items():
        check_test_settings(name, settings)
    config, original = evaluate_config(run_dir, changes, test_settings)
    suffix = "" if config.protocol == standard(DATASETS[config.dataset].kind) else f"-{config.protocol}"
    out = out or run_dir.with_name(f"{run_dir.name}-eval-{config.test_dataset}-{config.ways}w{config.shots}s{suffix}")
    check_writable(out)
    kind = DATASETS[config.dataset].kind
    device = resolve_device(config.device)
    files = {(name, seed): run_dir / "weights" / f"{name}-seed{seed}.safetensors"
             for seed in config.seeds for name in config.learners}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"{run_dir} has no weights for {', '.join(missing)}: choose --learners among those it kept")
    unknown = sorted(set(test_settings) - set(config.learners))
    if unknown:
        raise ConfigError(f"--set names {', '.join(unknown)}, which this evaluation does not re-test: use learners among "
                          f"{', '.join(config.learners)}")
    skipped = dict(config.skipped)
    loaded: dict[tuple[str, int], MetaLearner] = {}
    for (name, seed), path in files.items():
        try:
            loaded[(name, seed)] = load_learner(path, device, config.ways, test_settings.get(name))
        except ConfigError as exc:
            skipped[name] = f"{exc}".split(":")[0] + f", so it cannot be tested {config.ways}-way"
    learners = tuple(n for n in config.learners if n not in skipped)
    if not learners:
        raise ConfigError(f"no learner of {run_dir} can be tested {config.ways}-way (their output layers fix N): use --ways "
                          "with the N they were trained for, or a run of learners without an N-way layer")
    config = dataclasses.replace(config, learners=learners, skipped=skipped)
    test_settings = {name: items for name, items in test_settings.items() if name in learners}
    data = data_for(config)
    protocol = protocol_for(config)
    protocol.check(config, data)
    material = protocol.material(config, data)
    workers = config.workers or default_workers(device)
    source_meta = json.loads((run_dir / "run.json").read_text())
    source_summary = pd.read_csv(run_dir / "summary.csv") if (run_dir / "summary.csv").is_file() else None
    episode_rows, timing_rows, weights = [], [], {}
    for seed in config.seeds:
        for name in learners:
            path = files[(name, seed)]
            learner = loaded[(name, seed)]
            label = f"test  {name} seed {seed}" if progress else None
            rows, test_s = protocol.score(learner, material, label, workers)
            episode_rows += [{"seed": seed, "learner": name, **r} for r in rows]
            train_s, trained = float("nan"), learner.iteration
            if source_summary is not None and name in set(source_summary["learner"]):
                row = source_summary.loc[source_summary["learner"] == name].iloc[0]
                train_s, trained = float(row["meta_train_s"]), int(row["meta_iterations"])
            timing_rows.append({"seed": seed, "learner": name, "meta_iterations": trained,
                                "meta_train_seconds": train_s, "test_seconds": test_s,
                                "test_episodes": config.test_episodes})
            weights[f"{name}-seed{seed}"] = _sha256(path)
            if progress:
                tqdm.write(f"{name} seed {seed}: {protocol.note(pd.DataFrame(rows))}")
    episodes, timings = pd.DataFrame(episode_rows), pd.DataFrame(timing_rows)
    summary = protocol.summarize(episodes, timings, learners)
    env = environment(device)
    meta = {
        "metabench": __version__,
        "fingerprint": material.fingerprint,
        "test_pool": material.pool,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall_start,
        "evaluated_from": str(run_dir),
        "source_fingerprint": source_meta.get("fingerprint"),
        "weights_sha256": weights,
        "tuned": source_meta.get("tuned", {}),
        "test_settings": test_settings,
        "skipped": skipped,
    }
    resolved = {**config.to_dict(), "kind": kind, "budget": original.get("budget"),
                "iterations": {n: int(timings.loc[timings["learner"] == n, "meta_iterations"].iloc[0]) for n in learners},
                "workers": workers, "out": str(out), "device_resolved": str(device),
                "evaluated_from": str(run_dir), "test_settings": test_settings, "learner_settings": {
                    n: original.get("learner_settings", {}).get(n) for n in learners}}

    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        (folder / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
        episodes.to_csv(folder / "episodes.csv", index=False)
        summary.to_csv(folder / "summary.csv", index=False)
        text = summary_markdown(dataclasses.replace(config, budget=str(original.get("budget"))), summary, meta, env,
                                protocol)
        changed = format_test_settings(test_settings)
        (folder / "summary.md").write_text(text + f"\nRe-tested from the weights kept in `{run_dir}` (no training)."
                                           + (f" Test-time settings changed: {changed}." if changed else "") + "\n")
        (folder / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    write_atomically(out, write)
    return out
