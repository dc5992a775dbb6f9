"""The benchmark runner: train each learner, test all on shared episodes, write a run directory.

Run directory (written under a temporary name and renamed into place only when complete, so a
failed run leaves nothing half-written):

``config.json``       the resolved :class:`~metabench.config.RunConfig`
``environment.json``  Python / torch versions, CPU / GPU name, git commit
``episodes.csv``      one row per seed x learner x test episode: accuracy (%), loss (nats)
``curves.csv``        training curve: train loss / accuracy and validation accuracy vs
                      meta-iteration and training wall-clock seconds
``summary.csv``       per learner: mean accuracy (%), 95% CI, meta-train seconds, test ms / episode
``summary.md``        the same as a Markdown table with the run's settings
``run.json``          episode fingerprint, wall time, start and end timestamps
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from metabench import __version__
from metabench.algorithms import LEARNERS, MetaLearner, build_learner
from metabench.config import RunConfig
from metabench.datasets import load_split
from metabench.datasets.base import Split
from metabench.datasets.sampler import EpisodeSampler, fingerprint
from metabench.environment import environment
from metabench.errors import ConfigError
from metabench.evaluation import evaluate, synchronize
from metabench.statistics import mean_ci95


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise the named device.

    Raises:
        ConfigError: if CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but torch {torch.__version__} sees no GPU: use --device cpu or auto")
    return device


def default_out(config: RunConfig) -> Path:
    """``runs/<UTC time>-<dataset>-<split>-<N>w<K>s`` under the current directory."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.split}-{config.ways}w{config.shots}s"


def _make_partial_dir(out: Path) -> tuple[Path, list[Path]]:
    """Create the temporary run directory beside ``out``; return it and the parents created.

    Raises:
        ConfigError: if ``out`` exists or its parent cannot be written.
    """
    if out.exists():
        raise ConfigError(f"run directory {out} already exists: choose another --out or delete it")
    created = []
    parent = out.parent
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    try:
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as exc:
        for p in reversed(created):
            shutil.rmtree(p, ignore_errors=True)
        raise ConfigError(
            f"cannot write the run directory {out} ({exc.strerror or exc}): choose a writable --out"
        ) from None
    return partial, list(reversed(created))


def train(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    meta_batch: int,
    iterations: int,
    val_sampler: EpisodeSampler | None,
    val_episodes: int,
    curve_points: int,
    desc: str | None,
) -> tuple[list[dict], float]:
    """Meta-train ``learner`` for ``iterations`` steps of ``meta_batch`` episodes each.

    Step ``i`` uses episodes ``i*meta_batch .. (i+1)*meta_batch - 1`` of ``sampler``, so learners
    with the same training episode shape and seed see the same tasks. Validation accuracy (on
    ``val_episodes`` episodes of ``val_sampler``) is measured at ``curve_points`` evenly spaced
    iterations, the last one at the end of training.

    Returns:
        ``(curve, seconds)``: curve rows (``iteration``, ``train_seconds``, ``train_loss``,
        ``train_accuracy`` in percent averaged since the previous row, ``val_accuracy`` and
        ``val_ci95`` in percent or NaN) and the training wall-clock seconds, validation excluded.
    """
    device = learner.device
    val_at = set()
    if val_sampler is not None and val_episodes > 0 and curve_points > 0:
        val_at = {int(round(x)) for x in np.linspace(0, iterations, curve_points + 1)[1:]}
    log_every = max(1, iterations // 100)
    curve, window_loss, window_acc = [], [], []
    seconds = 0.0
    bar = tqdm(range(iterations), desc=desc, disable=desc is None, leave=False, unit="it")
    for i in bar:
        synchronize(device)
        start = time.perf_counter()
        batch = [ep.to(device) for ep in sampler.episodes(i * meta_batch, meta_batch)]
        result = learner.meta_train_step(batch)
        synchronize(device)
        seconds += time.perf_counter() - start
        window_loss.append(result.loss)
        window_acc.append(result.accuracy)
        step = i + 1
        if step % log_every == 0 or step in val_at or step == iterations:
            row = {
                "iteration": step,
                "train_seconds": seconds,
                "train_loss": float(np.mean(window_loss)),
                "train_accuracy": 100.0 * float(np.mean(window_acc)),
                "val_accuracy": float("nan"),
                "val_ci95": float("nan"),
            }
            window_loss, window_acc = [], []
            if step in val_at:
                rows, _ = evaluate(learner, val_sampler, val_episodes)
                row["val_accuracy"], row["val_ci95"] = mean_ci95([r["accuracy"] for r in rows])
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_accuracy']:.1f}%")
            curve.append(row)
    return curve, seconds


def summarize(episodes: pd.DataFrame, timings: pd.DataFrame, learners: tuple[str, ...]) -> pd.DataFrame:
    """Per-learner summary: mean accuracy and 95% CI over all seeds' episodes, and timings.

    Args:
        episodes: rows ``seed, learner, episode, accuracy, loss`` (accuracy in percent).
        timings: rows ``seed, learner, meta_iterations, meta_train_seconds, test_seconds, test_episodes``.
        learners: the learners in table order.

    Returns:
        One row per learner: ``learner, name, accuracy_pct, ci95_pct, episodes, seeds,
        meta_iterations, meta_train_s`` (mean over seeds), ``test_ms_per_episode``.
    """
    rows = []
    for name in learners:
        acc = episodes.loc[episodes["learner"] == name, "accuracy"]
        t = timings[timings["learner"] == name]
        mean, ci = mean_ci95(acc)
        rows.append({
            "learner": name,
            "name": LEARNERS[name].title,
            "accuracy_pct": mean,
            "ci95_pct": ci,
            "episodes": int(acc.size),
            "seeds": int(t["seed"].nunique()),
            "meta_iterations": int(t["meta_iterations"].iloc[0]),
            "meta_train_s": float(t["meta_train_seconds"].mean()),
            "test_ms_per_episode": float(1000 * t["test_seconds"].sum() / t["test_episodes"].sum()),
        })
    return pd.DataFrame(rows)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (accuracy as ``mean ± CI`` in percent)."""
    lines = [
        "| Learner | Accuracy (%) | Meta-iterations | Meta-train time (s) | Test time / episode (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.name} | {r.accuracy_pct:.2f} ± {r.ci95_pct:.2f} | {r.meta_iterations} | "
            f"{r.meta_train_s:.1f} | {r.test_ms_per_episode:.1f} |"
        )
    return "\n".join(lines)


def summary_markdown(config: RunConfig, summary: pd.DataFrame, meta: dict[str, Any], env: dict[str, Any]) -> str:
    """``summary.md``: the table with the settings needed to read it."""
    hardware = env["gpu"] or f"{env['cpu']} ({env['torch_threads']} threads)"
    return (
        f"# {config.dataset} ({config.split} split), {config.ways}-way {config.shots}-shot\n\n"
        f"{markdown_table(summary)}\n\n"
        f"Mean accuracy over {config.test_episodes} test episodes ({config.queries} queries per class) "
        f"shared by all learners x {len(config.seeds)} seed(s), ± the 95% confidence interval "
        f"1.96·s/√n over episodes. Budget `{config.budget}`, device {env['device']} ({hardware}), "
        f"torch {env['torch']}. Run wall time {meta['wall_seconds'] / 60:.1f} min. "
        f"Episode fingerprint `{meta['fingerprint'][:16]}`.\n"
    )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def run(config: RunConfig, progress: bool = True) -> Path:
    """Run the benchmark described by ``config`` and return the finished run directory.

    Raises:
        ConfigError: invalid settings (episode shape larger than the split, unwritable output).
        DataError: data missing and not downloadable, or corrupt.
    """
    started = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    out = Path(config.out) if config.out else default_out(config)
    partial, created = _make_partial_dir(out)
    try:
        split = load_split(config.dataset, config.split, config.data_root, config.image_size, config.download)
        test_sampler, val_sampler = _eval_samplers(config, split)
        test_ids = [test_sampler.index(i) for i in range(config.test_episodes)]
        print_ = (lambda *a: tqdm.write(" ".join(map(str, a)))) if progress else (lambda *a: None)
        episode_rows, curve_rows, timing_rows = [], [], []
        for seed in config.seeds:
            for name in config.learners:
                iterations = config.iterations[name]
                learner = build_learner(
                    name, config.ways, split.train.dataset.image_shape, iterations, device, seed,
                    config.hparams.get(name),
                )
                shape = learner.train_shape(config.ways, config.shots, config.queries)
                sampler = EpisodeSampler(
                    split.train, shape.ways, shape.shots, shape.queries, seed, stream="train",
                    description=f"train split of {config.dataset}/{config.split} (training episodes of {name})",
                )
                label = f"{name} seed {seed}" if progress else None
                curve, train_s = train(
                    learner, sampler, shape.meta_batch, iterations, val_sampler,
                    config.val_episodes, config.curve_points, f"train {label}" if label else None,
                )
                rows, test_s = evaluate(learner, test_sampler, config.test_episodes, f"test  {label}" if label else None)
                episode_rows += [{"seed": seed, "learner": name, **r} for r in rows]
                curve_rows += [{"seed": seed, "learner": name, **r} for r in curve]
                timing_rows.append({
                    "seed": seed, "learner": name, "meta_iterations": iterations,
                    "meta_train_seconds": train_s, "test_seconds": test_s,
                    "test_episodes": config.test_episodes,
                })
                acc = np.mean([r["accuracy"] for r in rows])
                print_(f"{name} seed {seed}: {acc:.2f}% after {iterations} meta-iterations ({train_s:.0f} s)")
        episodes = pd.DataFrame(episode_rows)
        timings = pd.DataFrame(timing_rows)
        summary = summarize(episodes, timings, config.learners)
        env = environment(device)
        meta = {
            "metabench": __version__,
            "fingerprint": fingerprint(split.test, test_ids),
            "test_pool": f"{config.dataset}/{config.split}/test",
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - wall_start,
        }
        _write_json(partial / "config.json", {**config.to_dict(), "out": str(out), "device_resolved": str(device)})
        _write_json(partial / "environment.json", env)
        episodes.to_csv(partial / "episodes.csv", index=False)
        pd.DataFrame(curve_rows).to_csv(partial / "curves.csv", index=False)
        summary.to_csv(partial / "summary.csv", index=False)
        (partial / "summary.md").write_text(summary_markdown(config, summary, meta, env))
        _write_json(partial / "run.json", meta)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise
    return out


def _eval_samplers(config: RunConfig, split: Split) -> tuple[EpisodeSampler, EpisodeSampler | None]:
    """The shared test sampler and (if the split has validation classes) the validation sampler."""
    where = f"{config.dataset}/{config.split}"
    test = EpisodeSampler(
        split.test, config.ways, config.shots, config.queries, config.episode_seed, "test",
        description=f"test split of {where}",
    )
    val = None
    if len(split.val) > 0 and config.val_episodes > 0:
        val = EpisodeSampler(
            split.val, min(config.ways, len(split.val)), config.shots, config.queries,
            config.episode_seed, "val", description=f"validation split of {where}",
        )
    return test, val
