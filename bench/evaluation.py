"""Meta-test evaluation: every learner on the same fixed episodes, optionally in worker processes."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor

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


def score(learner: MetaLearner, sampler: EpisodeSampler | SinusoidSampler, indices: range) -> list[dict]:
    """Adapt ``learner`` to each episode in ``indices`` and score its query predictions.

    Returns one dict per episode: ``episode`` and the scores of :func:`score_episode`.
    """
    return [{"episode": i, **score_episode(learner, sampler.episode(i).to(learner.device))} for i in indices]


_WORKER: dict = {}


def _init_worker(payload: bytes, threads: int) -> None:
    """Worker process set-up: a private copy of the learner and sampler, and its thread count.

    They arrive as plain pickle bytes: multiprocessing's own pickler would put the tensors in
    memory shared between workers, and learners that fine-tune buffers in place at test time
    (Reptile) would then race on them.
    """
    torch.set_num_threads(threads)
    _WORKER["learner"], _WORKER["sampler"] = pickle.loads(payload)


def _score_in_worker(indices: range) -> list[dict]:
    return score(_WORKER["learner"], _WORKER["sampler"], indices)


def default_workers(device: torch.device) -> int:
    """Evaluation processes to use: one per torch CPU thread on CPU (test-time adaptation runs
    on small batches, where a second intra-op thread adds little: Reptile's 50-step fine-tuning
    of a 5-way 1-shot episode took 480 ms on one thread and 417 ms on two, on 2 CPU cores), one
    on CUDA."""
    return 1 if device.type == "cuda" else max(1, min(8, torch.get_num_threads()))


def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler | SinusoidSampler,
    count: int,
    desc: str | None = None,
    workers: int = 1,
) -> tuple[list[dict], float]:
    """Adapt ``learner`` to episodes ``0..count-1`` of ``sampler`` and score its query predictions.

    Args:
        learner: a (meta-trained) learner; its meta-parameters are not changed.
        sampler: the episodes (the run's shared test or validation sampler).
        count: number of episodes.
        desc: progress-bar label; ``None`` hides the bar.
        workers: processes to spread the episodes over (CPU only; each gets
            ``max(1, torch threads // workers)`` threads and its own copy of the learner). They
            are used only for learners whose class sets ``TEST_IN_WORKERS`` (slow test-time
            adaptation) and at least ``4 * workers`` episodes: a decision that depends on nothing
            but these, never on timings, so the same call scores the same way every time.
            Worker processes score with fewer threads, which changes float rounding (losses by
            about 1e-7) but not the computation.

    Returns:
        ``(rows, seconds)``: one dict per episode in order, with ``episode`` and the scores of
        :func:`score_episode` (``accuracy`` in percent and ``loss`` in nats, or ``mse_<steps>``),
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
        parallel = workers > 1 and device.type == "cpu" and type(learner).TEST_IN_WORKERS and count >= 4 * workers
        rest = range(count)
        if not parallel:
            for i in rest:
                rows += score(learner, sampler, range(i, i + 1))
                bar.update(1)
        else:
            threads = max(1, torch.get_num_threads() // workers)
            chunk = max(1, min(25, len(rest) // (4 * workers)))
            pieces = [range(s, min(count, s + chunk)) for s in range(rest.start, count, chunk)]
            context = multiprocessing.get_context("spawn")  # fork is unsafe after torch started threads
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(pickle.dumps((learner, sampler)), threads)) as pool:
                for part in pool.map(_score_in_worker, pieces):
                    rows += part
                    bar.update(len(part))
    synchronize(device)
    return rows, time.perf_counter() - start
