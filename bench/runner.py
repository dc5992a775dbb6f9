"""The benchmark runner: train each learner, test all on shared episodes, write a run directory.

Run directory (published atomically only when complete; until then the run works in
``<out>.incomplete/``, see :mod:`metabench.workdir`, which an interrupted run leaves to be resumed):

``config.json``       the resolved :class:`~metabench.config.RunConfig`
``environment.json``  Python / torch versions, CPU / GPU name, git commit
``episodes.csv``      one row per seed x learner x test episode: accuracy (%), loss (nats);
                      for regression the query MSE after 0, 1, 5 and 10 test-time steps
``curves.csv``        training curve: train loss / accuracy and validation accuracy (regression:
                      validation MSE after 10 steps) vs meta-iteration, training seconds and
                      training CPU seconds
``summary.csv``       per learner: mean accuracy (%) or MSE, 95% CI, meta-train seconds, test ms / episode
``summary.md``        the same as a Markdown table with the run's settings
``run.json``          episode fingerprint, wall time, start and end timestamps, how each
                      learner x seed's training ended (``training``), settings chosen on
                      validation data (``tuned``) and learners not run (``skipped``)
``weights/``          ``<learner>-seed<k>.safetensors``: the tested weights with what rebuilds the
                      learner (:mod:`metabench.checkpoint`, :func:`metabench.reevaluate.load_learner`)

Image datasets give N-way K-shot episodes (:class:`~metabench.datasets.sampler.EpisodeSampler`);
regression datasets (sinusoid) give K-shot tasks
(:class:`~metabench.datasets.sinusoid.SinusoidSampler`); the rest of the run is the same.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from metabench import __version__, checkpoint, workdir
from metabench.algorithms import LEARNERS, MetaLearner, build_learner, learner_config
from metabench.config import RunConfig
from metabench.datasets import DATASETS
from metabench.environment import cpu_name, environment, git_commit
from metabench.errors import ConfigError, MetabenchError
from metabench.evaluation import default_workers
from metabench.outdir import check_writable, write_atomically
from metabench.protocols import EvaluationProtocol, Material, protocol_for
from metabench.rundata import RunData, data_for
from metabench.training import Checkpointer, Validation, train


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise the named device.

    Raises:
        ConfigError: if CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for CUDA but torch {torch.__version__} sees no GPU: use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible: use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def default_out(config: RunConfig) -> Path:
    """``runs/<UTC time>-<dataset>-<split>-<N>w<K>s`` under the current directory."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.split}-{config.ways}w{config.shots}s"




def stopping_text(training: dict[str, dict[str, Any]], kind: str) -> str:
    """A paragraph on how each learner x seed's training ended, for runs that stopped early or
    tested their best-validation weights (empty otherwise)."""
    lines = []
    for unit, t in training.items():
        early = t["meta_iterations"] < t["max_iterations"] or t["tested_iteration"] != t["meta_iterations"]
        if not early or t.get("best_validation") is None:
            continue
        best = f"{t['best_validation']:.2f}%" if kind == "classification" else f"MSE {t['best_validation']:.3f}"
        lines.append(f"{unit}: trained {t['meta_iterations']} of at most {t['max_iterations']} meta-iterations "
                     f"({t['stop_reason']}); tested with the weights of iteration {t['tested_iteration']} "
                     f"(best validation {best}).")
    return ("\n\nTraining ended by validation (the table's meta-iterations are those trained):\n\n"
            + "\n".join(f"- {line}" for line in lines)) if lines else ""


def summary_markdown(config: RunConfig, summary: pd.DataFrame, meta: dict[str, Any], env: dict[str, Any],
                     protocol: EvaluationProtocol) -> str:
    """``summary.md``: the protocol's table with the settings needed to read it."""
    hardware = env["gpu"] or f"{env['cpu']} ({env['torch_threads']} threads)"
    common = (
        f"shared by all learners x {len(config.seeds)} seed(s), ± the 95% confidence interval "
        f"1.96·s/√n over {protocol.UNIT}s. "
        f"Budget `{config.budget}`, device {env['device']} ({hardware}), torch {env['torch']}. "
        f"Run wall time {meta['wall_seconds'] / 60:.1f} min. Episode fingerprint `{meta['fingerprint'][:16]}`."
    )
    tuned = ""
    for name, by_seed in meta.get("tuned", {}).items():
        lrs = [format(r["test_lr"], "g") for r in by_seed if "test_lr" in r]
        if lrs:
            per_seed = " (per seed)" if len(lrs) > 1 else ""
            tuned += f" {LEARNERS[name].title}: fine-tuning step size {', '.join(lrs)}{per_seed}, chosen on the validation tasks."
    skipped = "".join(f"\n\nNot run: {reason}." for reason in config.skipped.values())
    skipped += stopping_text(meta.get("training", {}), DATASETS[config.dataset].kind)
    return f"{protocol.markdown(config, summary, common)}{tuned}{skipped}\n"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; ``work`` is its working folder (kept, resumable),
    or ``None`` if it stopped before creating one."""

    def __init__(self, work: Path | None) -> None:
        super().__init__(str(work))
        self.work = work


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV written by metabench, with floats read back exactly as written (pandas from 3.1
    does by default and deprecates the option; before, it needs ``float_precision="round_trip"``)."""
    major, minor = (int(v) for v in pd.__version__.split(".")[:2])
    if (major, minor) >= (3, 1):
        return pd.read_csv(path)
    return pd.read_csv(path, float_precision="round_trip")


def _unit_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def weights_meta(config: RunConfig, name: str, seed: int, input_shape: tuple[int, ...], kind: str,
                 iteration: int, tuned: dict[str, Any]) -> dict[str, Any]:
    """The JSON document stored with a learner's kept weights (``weights/<learner>-seed<k>.safetensors``):
    what :func:`metabench.reevaluate.load_learner` needs to rebuild it without training."""
    return {
        "format": "metabench-weights/1", "metabench": __version__, "learner": name, "seed": seed,
        "kind": kind, "ways": config.ways, "input_shape": list(input_shape),
        "dataset": config.dataset, "split": config.split, "image_size": config.image_size,
        "hparams": dict(config.hparams.get(name, {})),
        "hyperparameters": dataclasses.asdict(learner_config(name, config.hparams.get(name), kind)),
        "iteration": iteration, "tuned": tuned,
    }


def run(config: RunConfig, progress: bool = True) -> Path:
    """Run the benchmark described by ``config`` and return the finished run directory.

    Everything that can be checked is checked before training starts (output folder, data,
    the test and every learner's training episode shape). The run works in
    ``<out>.incomplete/`` (:mod:`metabench.workdir`): each learner x seed checkpoints its
    training there every ``config.checkpoint_minutes`` and keeps its results there when done;
    if that folder exists already (an interrupted run with the same ``--out``), the run
    resumes from it, skipping finished learners. The run directory is published atomically
    (:func:`write_atomically`) at the end and the working folder removed.

    Raises:
        ConfigError: invalid settings (episode shape larger than the split, unwritable output),
            or a working folder of another configuration or other training code.
        DataError: data missing and not downloadable, or corrupt.
        CheckpointError: a learner's checkpoints exist but none can be read.
        RunInterrupted: on Ctrl-C or SIGTERM (the working folder is kept).
    """
    started = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    kind = DATASETS[config.dataset].kind
    out = Path(config.out) if config.out else default_out(config)
    work = workdir.working_folder(out)
    if out.exists() and work.exists():
        raise ConfigError(f"{out} is finished and {work} is left over from it: delete {work}")
    check_writable(out)
    record = {**config.to_dict(), "out": str(out), "device_resolved": str(device)}
    state = None
    if work.exists():
        state = workdir.read_state(work)
        workdir.check_resumable(work, state, record)
    else:
        check_writable(work, "working folder")
    data = data_for(config)
    iterations = dict(config.iterations)
    shapes, plans = {}, {}
    for name in config.learners:  # check every training episode shape now, before any training
        learner_cfg = learner_config(name, config.hparams.get(name), kind)
        shape = LEARNERS[name](learner_cfg, config.ways, data.input_shape, 1, torch.device("cpu"), 0).train_shape(
            config.ways, config.shots, config.queries)
        data.train_sampler(shape, 0, f"(training episodes of {name}: {shape.ways}-way {shape.shots}-shot {shape.queries} queries)")
        shapes[name] = shape
        plans[name] = {"hyperparameters": dataclasses.asdict(learner_cfg), "train_episodes": dataclasses.asdict(shape)}
    if (config.patience or config.keep_best) and data.val is None:
        raise ConfigError(f"{config.dataset}/{config.split} has no validation classes, which early stopping and keep_best "
                          "need: use --budget quick or paper, or a split with validation classes")
    protocol = protocol_for(config)
    protocol.check(config, data)
    material = protocol.material(config, data)
    workers = config.workers or default_workers(device)
    note = (lambda text: tqdm.write(text)) if progress else (lambda text: None)
    validation = Validation(data.val, config.val_episodes, kind, workers) if data.val is not None else None
    if state is None:
        workdir.create(work, record, git_commit(), started.isoformat(timespec="seconds"))
    else:
        note(f"resuming {work} (started {state.get('started_at')})")
    try:
        with workdir.locked(work):
            for stale in [*out.parent.glob(f".{out.name}.partial-*"), *work.glob("units/*/.done.partial-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by a process killed while publishing
            results = [
                _train_and_test(config, name, seed, data, shapes[name], validation, protocol, material, work, device,
                                workers, progress, note)
                for seed in config.seeds for name in config.learners
            ]
            _publish(config, out, work, results, protocol, material, kind, iterations, workers, device, plans,
                     started, wall_start)
    except KeyboardInterrupt:
        raise RunInterrupted(work) from None
    except MetabenchError:
        raise  # one line that names the fix; the working folder stays as it is
    except BaseException:
        print(f"metabench: the run's working folder {work} is kept: resume with `metabench run --resume {work}` "
              f"once the problem is fixed, or delete it", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return out


@dataclass(frozen=True)
class _UnitResult:
    """One learner x seed, trained and tested (read back from its ``done/`` folder)."""

    name: str
    seed: int
    episodes: pd.DataFrame
    curve: pd.DataFrame
    info: dict[str, Any]
    weights: Path


def _train_and_test(config: RunConfig, name: str, seed: int, data: RunData, shape, validation: Validation | None,
                    protocol: EvaluationProtocol, material: Material, work: Path, device: torch.device, workers: int,
                    progress: bool, note) -> _UnitResult:
    """Train and test one learner x seed in ``work/units/<learner>-seed<k>/`` (resuming its
    checkpoint), or read it back if it is done already."""
    unit = work / "units" / _unit_name(name, seed)
    done = unit / "done"
    kind = DATASETS[config.dataset].kind
    if not done.is_dir():
        learner = build_learner(name, config.ways, data.input_shape, config.iterations[name], device, seed,
                                config.hparams.get(name))
        label = f"{name} seed {seed}" if progress else None
        checkpointer = Checkpointer(unit, 60.0 * config.checkpoint_minutes, warn=note)
        trained = train(
            learner, data.train_sampler(shape, seed), shape.meta_batch, config.iterations[name], validation,
            config.curve_points, f"train {label}" if label else None, validate_every=config.validate_every.get(name, 0),
            patience=config.patience, keep_best=config.keep_best, checkpointer=checkpointer, cpu=cpu_name(),
        )
        tunes = type(learner).finish_training is not MetaLearner.finish_training
        val_episodes = [ep.to(device) for ep in data.val.episodes(0, config.val_episodes)] if tunes and data.val else []
        chosen = learner.finish_training(val_episodes)
        rows, test_s = protocol.score(learner, material, f"test  {label}" if label else None, workers)
        info = {
            "seed": seed, "learner": name, "meta_iterations": trained.iterations,
            "max_iterations": config.iterations[name], "meta_train_seconds": trained.seconds,
            "meta_train_cpu_seconds": trained.cpu_seconds, "test_seconds": test_s, "test_episodes": config.test_episodes,
            "stop_reason": trained.stop_reason, "best_iteration": trained.best_iteration,
            "best_validation": trained.best_score, "tested_iteration": trained.tested_iteration,
            "segments": trained.segments, "tuned": chosen,
        }
        meta = weights_meta(config, name, seed, data.input_shape, kind, trained.tested_iteration, chosen)

        def write(folder: Path) -> None:
            pd.DataFrame([{"seed": seed, "learner": name, **r} for r in rows]).to_csv(folder / "episodes.csv", index=False)
            pd.DataFrame([{"seed": seed, "learner": name, **r} for r in trained.curve]).to_csv(folder / "curve.csv", index=False)
            _write_json(folder / "result.json", info)
            checkpoint.save(folder / "weights.safetensors", learner.state_dict(), meta)

        write_atomically(done, write, "finished learner's folder")
        for stale in (checkpointer.last, checkpointer.previous):
            stale.unlink(missing_ok=True)
        result = _read_unit(done, name, seed)
        _note_result(note, result, protocol)
        return result
    result = _read_unit(done, name, seed)
    note(f"{name} seed {seed}: finished before, results kept from {done}")
    return result


def _read_unit(done: Path, name: str, seed: int) -> _UnitResult:
    return _UnitResult(name, seed, read_csv(done / "episodes.csv"), read_csv(done / "curve.csv"),
                       json.loads((done / "result.json").read_text()), done / "weights.safetensors")


def _note_result(note, result: _UnitResult, protocol: EvaluationProtocol) -> None:
    info = result.info
    how = f"{info['meta_iterations']} meta-iterations ({info['meta_train_seconds']:.0f} s; {info['stop_reason']})"
    note(f"{result.name} seed {result.seed}: {protocol.note(result.episodes)}; {how}")


def _publish(config: RunConfig, out: Path, work: Path, results: list[_UnitResult], protocol: EvaluationProtocol,
             material: Material, kind: str, iterations: dict[str, int], workers: int, device: torch.device, plans: dict,
             started: datetime, wall_start: float) -> None:
    """Write the run directory ``out`` atomically from the finished learners in ``work``."""
    state = workdir.read_state(work)
    episodes = pd.concat([r.episodes for r in results], ignore_index=True)
    curves = pd.concat([r.curve for r in results], ignore_index=True)
    timings = pd.DataFrame([{k: r.info[k] for k in ("seed", "learner", "meta_iterations", "meta_train_seconds",
                                                      "test_seconds", "test_episodes")} for r in results])
    summary = protocol.summarize(episodes, timings, config.learners)
    tuned: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.info["tuned"]:
            tuned.setdefault(r.name, []).append({"seed": r.seed, **r.info["tuned"]})
    training = {
        _unit_name(r.name, r.seed): {k: r.info[k] for k in (
            "meta_iterations", "max_iterations", "stop_reason", "best_iteration", "best_validation", "tested_iteration",
            "meta_train_cpu_seconds", "segments")}
        for r in results
    }
    env = environment(device)
    meta = {
        "metabench": __version__,
        "fingerprint": material.fingerprint,
        "test_pool": material.pool,
        "started_at": state.get("started_at", started.isoformat(timespec="seconds")),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall_start,
        "resumed": any(len(t["segments"]) > 1 for t in training.values()) or state.get("started_at") != started.isoformat(timespec="seconds"),
        "started_git": state.get("git"),
        "training": training,
        "tuned": tuned,
        "skipped": dict(config.skipped),
    }
    resolved = {**config.to_dict(), "kind": kind, "iterations": iterations, "workers": workers, "out": str(out),
                "device_resolved": str(device), "learner_settings": plans}

    def write(folder: Path) -> None:
        _write_json(folder / "config.json", resolved)
        _write_json(folder / "environment.json", env)
        episodes.to_csv(folder / "episodes.csv", index=False)
        curves.to_csv(folder / "curves.csv", index=False)
        summary.to_csv(folder / "summary.csv", index=False)
        (folder / "summary.md").write_text(summary_markdown(config, summary, meta, env, protocol))
        _write_json(folder / "run.json", meta)
        (folder / "weights").mkdir()
        for r in results:
            shutil.copyfile(r.weights, folder / "weights" / f"{_unit_name(r.name, r.seed)}.safetensors")

    write_atomically(out, write)
