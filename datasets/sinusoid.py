"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, Sec. 5.1).

Each task is a sine wave ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]`` and phase
``phi ~ U[0, pi]``; its K support points and Q query points have ``x ~ U[-5.0, 5.0]`` (the
paper's ranges). The paper trains with K = 5, 10 or 20 support points and reports the query MSE
after fine-tuning on them.

Tasks are generated, not loaded: task ``i`` of a sampler is a pure function of (shots, queries,
seed, stream, i), like image episodes (:mod:`metabench.datasets.sampler`), so every learner of a
run is tested on identical tasks and :func:`fingerprint` proves which ones.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from metabench.errors import ConfigError

from .sampler import Episode, _stream_key

__all__ = ["AMPLITUDE", "PHASE", "SHOTS", "X_RANGE", "SinusoidSampler", "SinusoidTask", "fingerprint"]

AMPLITUDE = (0.1, 5.0)  #: range of the amplitude A (Finn et al. 2017, Sec. 5.1)
PHASE = (0.0, math.pi)  #: range of the phase phi, radians (ibid.)
X_RANGE = (-5.0, 5.0)  #: range of the inputs x (ibid.)
SHOTS = (5, 10, 20)  #: the K the paper reports (Fig. 2 and 3; Sec. 5.1)


@dataclass(frozen=True)
class SinusoidTask:
    """One sine-wave task: what identifies it, like an image episode's index.

    Attributes:
        amplitude: A, in the units of y.
        phase: phi, radians.
        support: float64 ``[K]`` support inputs x.
        query: float64 ``[Q]`` query inputs x.
    """

    amplitude: float
    phase: float
    support: np.ndarray
    query: np.ndarray

    def targets(self, x: np.ndarray) -> np.ndarray:
        """``A sin(x - phi)`` for inputs ``x`` (any shape, float64)."""
        return self.amplitude * np.sin(x - self.phase)

    def key(self) -> bytes:
        """Amplitude, phase and the inputs as little-endian float64 bytes (used by
        :func:`fingerprint` and to seed per-task random draws, e.g. Reptile's minibatches)."""
        head = np.array([self.amplitude, self.phase], dtype="<f8").tobytes()
        return head + b"".join(np.ascontiguousarray(a, dtype="<f8").tobytes() for a in (self.support, self.query))


class SinusoidSampler:
    """Draws K-shot sinusoid regression tasks with Q query points.

    Same interface as :class:`~metabench.datasets.sampler.EpisodeSampler` (``index``,
    ``episode``, ``episodes``, ``stream``), so the runner and the learners treat both alike.

    Args:
        shots: K, support points per task (>= 1).
        queries: Q, query points per task (>= 0; 0 for learners that train without a query set).
        seed: task seed; with ``stream`` and the task index it fixes every draw.
        stream: name separating independent streams with the same seed ("train", "val", "test").

    Raises:
        ConfigError: if ``shots`` < 1 or ``queries`` < 0.
    """

    def __init__(self, shots: int, queries: int, seed: int, stream: str = "test") -> None:
        if shots < 1 or queries < 0:
            raise ConfigError(
                f"sinusoid tasks need shots >= 1 and queries >= 0 (got {shots} shots, {queries} "
                "queries): raise --shots/--queries"
            )
        self.shots, self.queries, self.seed, self.stream = shots, queries, seed, stream

    def index(self, i: int) -> SinusoidTask:
        """Task ``i`` (a pure function of the sampler's parameters and ``i``)."""
        rng = np.random.default_rng([self.seed, _stream_key(self.stream), i])
        amplitude = rng.uniform(*AMPLITUDE)
        phase = rng.uniform(*PHASE)
        x = rng.uniform(*X_RANGE, size=self.shots + self.queries)
        return SinusoidTask(float(amplitude), float(phase), x[: self.shots], x[self.shots :])

    def episode(self, i: int) -> Episode:
        """Task ``i`` as an :class:`~metabench.datasets.sampler.Episode`: ``support_x``,
        ``support_y`` float32 ``[K, 1]``, ``query_x``, ``query_y`` float32 ``[Q, 1]``."""
        return build_task(self.index(i))

    def episodes(self, start: int, count: int) -> list[Episode]:
        """Tasks ``start .. start+count-1`` (a meta-batch when training)."""
        return [self.episode(i) for i in range(start, start + count)]


def build_task(task: SinusoidTask) -> Episode:
    """The tensors of a :class:`SinusoidTask` (float32 columns ``[M, 1]``)."""
    column = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(-1, 1))
    return Episode(
        column(task.support), column(task.targets(task.support)),
        column(task.query), column(task.targets(task.query)), task,
    )


def fingerprint(tasks: list[SinusoidTask]) -> str:
    """Identify a list of tasks: sha256 (64 hex digits) of their count, K, Q and every task's
    :meth:`SinusoidTask.key`, in order. Two runs whose fingerprints agree used identical tasks."""
    h = hashlib.sha256()
    if tasks:
        h.update(f"{len(tasks)} sinusoid tasks, {len(tasks[0].support)} shots {len(tasks[0].query)} queries\n".encode())
    for task in tasks:
        h.update(task.key())
    return h.hexdigest()
