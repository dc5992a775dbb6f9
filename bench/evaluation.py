"""Meta-test evaluation: every learner on the same fixed episodes."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from metabench.algorithms import MetaLearner
from metabench.algorithms.backbones import accuracy, cross_entropy
from metabench.datasets.sampler import EpisodeSampler


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU), so wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    count: int,
    desc: str | None = None,
) -> tuple[list[dict], float]:
    """Adapt ``learner`` to episodes ``0..count-1`` of ``sampler`` and score its query predictions.

    Args:
        learner: a (meta-trained) learner; its meta-parameters are not changed.
        sampler: the episodes (the run's shared test or validation sampler).
        count: number of episodes.
        desc: progress-bar label; ``None`` hides the bar.

    Returns:
        ``(rows, seconds)``: one dict per episode with ``episode``, ``accuracy`` (percent of
        query examples classified correctly) and ``loss`` (query cross-entropy, nats), and the
        wall-clock seconds of the whole evaluation (episode construction included).
    """
    device = learner.device
    rows = []
    synchronize(device)
    start = time.perf_counter()
    for i in tqdm(range(count), desc=desc, disable=desc is None, leave=False, unit="ep"):
        ep = sampler.episode(i).to(device)
        logits = learner.predict(ep)
        rows.append({
            "episode": i,
            "accuracy": 100.0 * accuracy(logits, ep.query_y),
            "loss": cross_entropy(logits, ep.query_y).item(),
        })
    synchronize(device)
    return rows, time.perf_counter() - start
