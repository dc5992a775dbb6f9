"""Meta-training one learner: the outer loop, validation, early stopping and checkpoints.

:func:`train` runs the outer loop of a learner on a training sampler. Step ``i`` uses episodes
``i*meta_batch .. (i+1)*meta_batch - 1`` of the sampler, so learners with the same training
episode shape and seed see the same tasks. It validates on a fixed set of validation episodes
either at evenly spaced iterations (``curve_points``) or every ``validate_every`` iterations, and
with ``patience`` stops when the validation score has not improved for that many validations
(early stopping on validation, as Snell et al. 2017, Sec. 3.1, trained Prototypical Networks);
``keep_best`` then leaves the learner with its best-validation weights.

Checkpoints (:class:`Checkpointer`) hold everything the loop and the learner need to continue
(:meth:`~metabench.algorithms.MetaLearner.training_state`, the loop's counters, the curve so far,
the best weights, torch's random state), so a training killed at any point and resumed from its
last checkpoint ends with bit-identical weights on the same machine and software: episodes are a
pure function of their index, and the learners' own random draws are in the state.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metabench import checkpoint
from metabench.algorithms import MetaLearner
from metabench.datasets.sampler import EpisodeSampler
from metabench.datasets.sinusoid import SinusoidSampler
from metabench.evaluation import REGRESSION_STEPS, evaluate, synchronize
from metabench.statistics import mean_ci95

Sampler = EpisodeSampler | SinusoidSampler


@dataclass(frozen=True)
class Validation:
    """Validation during training: ``episodes`` episodes of ``sampler``, scored like test ones.

    Classification reports ``val_accuracy`` and ``val_ci95`` (percent; higher is better);
    regression reports ``val_mse`` and ``val_mse_ci95``, the query MSE after the last of
    :data:`~metabench.evaluation.REGRESSION_STEPS` test-time steps (lower is better).
    ``workers`` processes score the episodes (:func:`~metabench.evaluation.evaluate`).
    """

    sampler: Sampler
    episodes: int
    kind: str
    workers: int = 1

    @property
    def columns(self) -> tuple[str, str]:
        """The two curve columns it fills."""
        return ("val_mse", "val_mse_ci95") if self.kind == "regression" else ("val_accuracy", "val_ci95")

    def better(self, score: float, best: float | None) -> bool:
        """Whether validation score ``score`` improves on ``best`` (``None``: nothing yet)."""
        if not np.isfinite(score):
            return False
        return best is None or (score < best if self.kind == "regression" else score > best)

    def __call__(self, learner: MetaLearner) -> dict[str, float]:
        rows, _ = evaluate(learner, self.sampler, self.episodes, workers=self.workers)
        key = f"mse_{REGRESSION_STEPS[-1]}" if self.kind == "regression" else "accuracy"
        return dict(zip(self.columns, mean_ci95([r[key] for r in rows])))


@dataclass
class LoopState:
    """The outer loop's own state, saved in every checkpoint (plain JSON values).

    Attributes:
        step: meta-iterations done.
        seconds: training wall-clock seconds so far (in ``meta_train_step`` and moving episodes
            to the device; episode construction and validation excluded).
        cpu_seconds: process CPU seconds over the same spans (all threads; less sensitive than
            wall time to other work on the machine).
        curve: the curve rows so far (see :func:`train`).
        window_loss, window_acc: step losses and accuracies since the last curve row.
        best, best_iteration: best validation score so far and where (``None``, 0: none yet).
        since_best: validations since the best one.
        stop_reason: why training ended (``None`` while it runs).
        segments: one entry per process that trained (start iteration, end iteration, CPU);
            more than one means the training was resumed.
    """

    step: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)
    window_loss: list[float] = field(default_factory=list)
    window_acc: list[float] = field(default_factory=list)
    best: float | None = None
    best_iteration: int = 0
    since_best: int = 0
    stop_reason: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        curve: rows ``iteration, train_seconds, train_cpu_seconds, train_loss``,
            ``train_accuracy`` (percent, classification only; both averaged since the previous
            row) and the two validation columns of :class:`Validation` (NaN between validations).
        seconds, cpu_seconds: training wall-clock and CPU seconds (see :class:`LoopState`).
        iterations: meta-iterations trained (fewer than asked when stopped early).
        stop_reason: why training ended.
        best_iteration: the iteration of the best validation (0 without validation).
        best_score: the best validation score (``None`` without validation).
        tested_iteration: the iteration whose weights the learner now has (the best one with
            ``keep_best``, else the last).
        segments: see :class:`LoopState`.
    """

    curve: list[dict[str, Any]]
    seconds: float
    cpu_seconds: float
    iterations: int
    stop_reason: str
    best_iteration: int
    best_score: float | None
    tested_iteration: int
    segments: list[dict[str, Any]]


class Checkpointer:
    """Where a training's checkpoints go: ``folder/last.safetensors``, the previous one kept as
    ``folder/previous.safetensors`` (a fallback if the last one is unreadable).

    Args:
        folder: the learner x seed's folder inside the run's working folder.
        interval_s: wall-clock seconds between checkpoints (0: after every meta-iteration);
            checkpoints are also written after every validation and at the end.
        warn: called with a one-line message when the last checkpoint is unreadable and the
            previous one is used instead.
    """

    def __init__(self, folder: Path, interval_s: float, warn=print) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self.warn = warn

    @property
    def last(self) -> Path:
        """The newest checkpoint."""
        return self.folder / "last.safetensors"

    @property
    def previous(self) -> Path:
        """The checkpoint before it."""
        return self.folder / "previous.safetensors"

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write a new checkpoint atomically, keeping the one before as ``previous``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.last.exists():
            self.last.replace(self.previous)
        checkpoint.save(self.last, tensors, meta)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The newest readable checkpoint, or ``None`` if there is none yet.

        Raises:
            CheckpointError: if checkpoints exist but none can be read (naming each file and why).
        """
        errors = []
        for path in (self.last, self.previous):
            if not path.exists():
                continue
            try:
                state = checkpoint.load(path)
            except checkpoint.CheckpointError as exc:
                errors.append(str(exc))
                continue
            if errors:
                self.warn(f"metabench: warning: {errors[0]}; resuming from {path.name} instead")
                # Removed now, so that the next save does not rotate it over the good one.
                self.last.unlink(missing_ok=True)
            return state
        if errors:
            raise checkpoint.CheckpointError(
                f"no readable checkpoint in {self.folder}: {'; '.join(errors)}: delete {self.folder} to retrain this learner")
        return None


def validation_points(iterations: int, curve_points: int, validate_every: int) -> set[int]:
    """The iterations after which to validate: every ``validate_every`` (and the last), or
    ``curve_points`` evenly spaced ones ending at the last; none for ``curve_points == 0`` and
    ``validate_every == 0``."""
    if validate_every > 0:
        return set(range(validate_every, iterations + 1, validate_every)) | {iterations}
    if curve_points <= 0:
        return set()
    return {round(x) for x in np.linspace(0, iterations, curve_points + 1)[1:]}


def _save(checkpointer: Checkpointer, learner: MetaLearner, state: LoopState,
          best_weights: dict[str, torch.Tensor] | None) -> None:
    tensors, learner_meta = learner.training_state()
    if best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    checkpointer.save(tensors, {"learner": learner_meta, "loop": dataclasses.asdict(state)})


def train(
    learner: MetaLearner,
    sampler: Sampler,
    meta_batch: int,
    iterations: int,
    validation: Validation | None,
    curve_points: int,
    desc: str | None,
    validate_every: int = 0,
    patience: int = 0,
    keep_best: bool = False,
    checkpointer: Checkpointer | None = None,
    cpu: str = "",
) -> TrainResult:
    """Meta-train ``learner`` for up to ``iterations`` steps of ``meta_batch`` episodes each,
    resuming from ``checkpointer``'s last checkpoint if there is one.

    Args:
        learner: a freshly built learner (its state is replaced by the checkpoint's, if any).
        sampler: training episodes. meta_batch: episodes per step. iterations: the most steps.
        validation: the validation set (``None`` or 0 episodes: no validation).
        curve_points, validate_every: when to validate (:func:`validation_points`).
        desc: progress-bar label; ``None`` hides the bar.
        patience: stop after this many validations without improvement (0: never early).
        keep_best: finish with the best-validation weights (the last ones without validation).
        checkpointer: where checkpoints go (``None``: none are written).
        cpu: the CPU's name, recorded per training segment.

    Returns:
        A :class:`TrainResult`.

    Raises:
        CheckpointError: if checkpoints exist but none is readable.
    """
    device = learner.device
    validating = validation is not None and validation.episodes > 0
    val_at = validation_points(iterations, curve_points, validate_every) if validating else set()
    val_columns = validation.columns if validation is not None else ("val_accuracy", "val_ci95")
    log_every = max(1, iterations // 100)
    state, best_weights = LoopState(), None
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        tensors, meta = saved
        learner.load_training_state(tensors, meta["learner"])  # load_state_dict places them (Adam's step stays on CPU)
        torch.set_rng_state(tensors["rng.torch"])
        state = LoopState(**meta["loop"])
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        best_weights = best or None
    if state.stop_reason is None:
        state.segments.append({"from_iteration": state.step, "to_iteration": state.step, "cpu": cpu,
                               "torch_threads": torch.get_num_threads()})
    last_save = time.perf_counter()
    bar = tqdm(total=iterations, initial=state.step, desc=desc, disable=desc is None, leave=False, unit="it")
    try:
        while state.stop_reason is None and state.step < iterations:
            i = state.step
            episodes = sampler.episodes(i * meta_batch, meta_batch)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            batch = [ep.to(device) for ep in episodes]
            result = learner.meta_train_step(batch)
            synchronize(device)
            state.seconds += time.perf_counter() - start
            state.cpu_seconds += time.process_time() - start_cpu
            state.window_loss.append(result.loss)
            state.window_acc.append(result.accuracy)
            state.step = step = i + 1
            state.segments[-1]["to_iteration"] = step
            bar.update(1)
            validated = False
            if step % log_every == 0 or step in val_at or step == iterations:
                row = {"iteration": step, "train_seconds": state.seconds, "train_cpu_seconds": state.cpu_seconds,
                       "train_loss": float(np.mean(state.window_loss))}
                if learner.kind == "classification":
                    row["train_accuracy"] = 100.0 * float(np.mean(state.window_acc))
                row.update(dict.fromkeys(val_columns, float("nan")))
                state.window_loss, state.window_acc = [], []
                if step in val_at:
                    row.update(validation(learner))
                    validated = True
                    score = row[val_columns[0]]
                    if validation.better(score, state.best):
                        state.best, state.best_iteration, state.since_best = score, step, 0
                        if keep_best:
                            best_weights = {k: v.detach().clone() for k, v in learner.state_dict().items()}
                    else:
                        state.since_best += 1
                        if patience and state.since_best >= patience:
                            state.stop_reason = (f"early stop: no improvement of the validation score for {patience} "
                                                 f"validations since iteration {state.best_iteration}")
                    shown = f"{score:.2f}%" if learner.kind == "classification" else f"{score:.3f}"
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=shown)
                state.curve.append(row)
            if state.stop_reason is None and step == iterations:
                state.stop_reason = f"reached the iteration limit ({iterations})"
            due = time.perf_counter() - last_save >= (checkpointer.interval_s if checkpointer else 0)
            if checkpointer is not None and (validated or due or state.stop_reason is not None):
                _save(checkpointer, learner, state, best_weights)
                last_save = time.perf_counter()
    finally:
        bar.close()
    tested = state.step
    if keep_best and best_weights is not None:
        learner.load_state_dict(best_weights)
        tested = state.best_iteration
    return TrainResult(
        curve=state.curve, seconds=state.seconds, cpu_seconds=state.cpu_seconds, iterations=state.step,
        stop_reason=state.stop_reason or "", best_iteration=state.best_iteration, best_score=state.best,
        tested_iteration=tested, segments=state.segments,
    )
