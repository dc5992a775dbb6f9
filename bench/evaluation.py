"""Meta-test evaluation: every learner on the same fixed episodes, optionally in worker processes."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from metabench.algorithms import MetaLearner
from metabench.algorithms.backbones import accuracy, cross_entropy
from metabench.algorithms.maml_core import mse
from metabench.datasets.sampler import Episode, EpisodeSampler
from metabench.datasets.sinusoid import SinusoidSampler

#: Test-time gradient steps after which regression tasks are scored: Finn et al. (2017) report
#: the MSE after 1 and 10 steps (Sec. 5.1, Fig. 2-3); 0 is the meta-learned initialisation.
REGRESSION_STEPS = (0, 1, 5, 10)


def score_episode(learner: MetaLearner, ep: Episode) -> dict[str, float]:
    """Score one episode already on the learner's device.

    Returns:
        Classification: ``accuracy`` (percent of query examples classified correctly) and
        ``loss`` (query cross-entropy, nats). Regression: ``mse_<s>``, the query mean squared
        error (squared units of y) after ``s`` test-time gradient steps, for each ``s`` in
        :data:`REGRESSION_STEPS`.
    """
    if learner.kind == "regression":
        outputs = learner.predict_steps(ep, REGRESSION_STEPS)
        return {f"mse_{s}": mse(outputs[s], ep.query_y).item() for s in REGRESSION_STEPS}
    logits = learner.predict(ep)
    return {"accuracy": 100.0 * accuracy(logits, ep.query_y), "loss": cross_entropy(logits, ep.query_y).item()}


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU), so wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Scores one episode on the learner's device: ``(learner, episode) -> dict`` (one row) or a list
#: of dicts (several rows, e.g. one per acquisition round). Must be picklable (a module-level
#: function or an instance of a module-level class) to run in worker processes.
Scorer = Callable[[MetaLearner, Episode], "dict[str, Any] | list[dict[str, Any]]"]


def score(learner: MetaLearner, sampler: EpisodeSampler | SinusoidSampler, indices: range,
          scorer: Scorer = score_episode) -> list[dict]:
    """Adapt ``learner`` to each episode in ``indices`` and score it with ``scorer``.

    Returns the rows of every episode in order, each starting with ``episode`` (its index).
    """
    rows = []
    for i in indices:
        out = scorer(learner, sampler.episode(i).to(learner.device))
        rows += [{"episode": i, **r} for r in (out if isinstance(out, list) else [out])]
    return rows


_WORKER: dict = {}


def _init_worker(payload: bytes, threads: int) -> None:
    """Worker process set-up: a private copy of the learner and sampler, and its thread count.

    They arrive as plain pickle bytes: multiprocessing's own pickler would put the tensors in
    memory shared between workers, and learners that fine-tune buffers in place at test time
    (Reptile) would then race on them.
    """
    torch.set_num_threads(threads)
    _WORKER["learner"], _WORKER["sampler"], _WORKER["scorer"] = pickle.loads(payload)


def _score_in_worker(indices: range) -> tuple[int, list[dict]]:
    return len(indices), score(_WORKER["learner"], _WORKER["sampler"], indices, _WORKER["scorer"])


def default_workers(device: torch.device) -> int:
    """Evaluation processes to use: one per torch CPU thread on CPU (test-time adaptation runs
    on small batches, where a second intra-op thread adds little: docs/timing.md, "Measurements
    behind the defaults"), one on CUDA."""
    return 1 if device.type == "cuda" else max(1, min(8, torch.get_num_threads()))


def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler | SinusoidSampler,
    count: int,
    desc: str | None = None,
    workers: int = 1,
    scorer: Scorer = score_episode,
    heavy: bool | None = None,
) -> tuple[list[dict], float]:
    """Adapt ``learner`` to episodes ``0..count-1`` of ``sampler`` and score them with ``scorer``.

    Args:
        learner: a (meta-trained) learner; its meta-parameters are not changed.
        sampler: the episodes (the run's shared test or validation sampler).
        count: number of episodes.
        desc: progress-bar label; ``None`` hides the bar.
        workers: processes to spread the episodes over (CPU only; each gets
            ``max(1, torch threads // workers)`` threads and its own copy of the learner). They
            are used only for ``heavy`` episodes (by default: learners whose class sets
            ``TEST_IN_WORKERS``, slow test-time adaptation) and at least ``4 * workers`` episodes: a decision that depends on nothing
            but these, never on timings, so the same call scores the same way every time.
            Worker processes score with fewer threads, which changes float rounding (losses by
            about 1e-7) but not the computation.
        scorer: what is measured on one episode (default :func:`score_episode`, the standard
            query accuracy and loss or MSEs); evaluation protocols pass their own.
        heavy: whether one episode is slow enough to repay worker processes (``None``: the
            learner class's ``TEST_IN_WORKERS``); protocols that adapt many times per episode
            pass ``True``. Like ``TEST_IN_WORKERS``, a fixed property of the call, not a timing.

    Returns:
        ``(rows, seconds)``: the rows of every episode in order, each with ``episode`` and the
        scores of ``scorer`` (by default ``accuracy`` in percent and ``loss`` in nats, or ``mse_<steps>``),
        and the wall-clock seconds of the whole evaluation (episode construction and worker
        start-up included).
    """
    device = learner.device
    synchronize(device)
    start = time.perf_counter()
    with tqdm(total=count, desc=desc, disable=desc is None, leave=False, unit="ep") as bar:
        rows: list[dict] = []
        # Worker start-up (importing torch, copying the learner) costs seconds, so processes are
        # used only for learners whose episodes are slow enough to repay them.
        heavy = type(learner).TEST_IN_WORKERS if heavy is None else heavy
        parallel = workers > 1 and device.type == "cpu" and heavy and count >= 4 * workers
        rest = range(count)
        if not parallel:
            for i in rest:
                rows += score(learner, sampler, range(i, i + 1), scorer)
                bar.update(1)
        else:
            threads = max(1, torch.get_num_threads() // workers)
            chunk = max(1, min(25, len(rest) // (4 * workers)))
            pieces = [range(s, min(count, s + chunk)) for s in range(rest.start, count, chunk)]
            context = multiprocessing.get_context("spawn")  # fork is unsafe after torch started threads
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(pickle.dumps((learner, sampler, scorer)), threads)) as pool:
                for done, part in pool.map(_score_in_worker, pieces):
                    rows += part
                    bar.update(done)
    synchronize(device)
    return rows, time.perf_counter() - start
