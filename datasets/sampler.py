"""N-way K-shot episode sampling, deterministic in (pool, ways, shots, queries, seed, index).

An episode (Vinyals et al. 2016, Sec. 2.1; Finn et al. 2017, Sec. 3.1) draws ``ways`` classes of a
:class:`~metabench.datasets.base.ClassPool` and, per class, ``shots`` support images and
``queries`` disjoint query images. Class ``i`` of the drawn (shuffled) order gets label ``i``.
Episode ``index`` of a sampler depends on nothing but the sampler's parameters and ``index``, so
test episodes are reproducible across learners, processes and machines, and a run can prove which
episodes it used with :func:`fingerprint`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from metabench.errors import ConfigError

from .base import ClassPool


@dataclass(frozen=True)
class EpisodeIndex:
    """Which images make up one episode, as indices into a :class:`ClassPool`.

    Attributes:
        classes: int64 ``[ways]``, pool class of label ``0..ways-1``.
        support: int64 ``[ways, shots]``, image index (within its class) of each support image.
        query: int64 ``[ways, queries]``, image index of each query image; disjoint from ``support``.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def key(self) -> bytes:
        """The three index arrays as little-endian int64 bytes: what identifies the episode
        (used by :func:`fingerprint` and to seed per-episode random draws)."""
        return b"".join(np.ascontiguousarray(a, dtype="<i8").tobytes() for a in (self.classes, self.support, self.query))


@dataclass(frozen=True)
class Episode:
    """One few-shot task: a labelled support set and a labelled query set.

    Images are float32 in [0, 1]; examples are ordered class-major (all shots of label 0, then
    label 1, ...).

    Attributes:
        support_x: float32 ``[ways * shots, channels, H, W]``.
        support_y: int64 ``[ways * shots]``, labels in ``0..ways-1``.
        query_x: float32 ``[ways * queries, channels, H, W]``.
        query_y: int64 ``[ways * queries]``.
        index: the :class:`EpisodeIndex` it was built from.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    index: EpisodeIndex

    @property
    def ways(self) -> int:
        """Number of classes N."""
        return int(self.index.classes.shape[0])

    @property
    def shots(self) -> int:
        """Support images per class K."""
        return int(self.index.support.shape[1])

    @property
    def queries(self) -> int:
        """Query images per class Q."""
        return int(self.index.query.shape[1])

    def to(self, device: torch.device | str) -> Episode:
        """Return the episode with its four tensors on ``device``."""
        return Episode(
            self.support_x.to(device, non_blocking=True),
            self.support_y.to(device, non_blocking=True),
            self.query_x.to(device, non_blocking=True),
            self.query_y.to(device, non_blocking=True),
            self.index,
        )


def _stream_key(stream: str) -> int:
    """A stable 63-bit integer for a stream name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little") >> 1


class EpisodeSampler:
    """Draws N-way K-shot episodes with Q queries per class from one class pool.

    Args:
        pool: the classes to draw from (e.g. ``split.test``).
        ways: N, classes per episode (>= 2).
        shots: K, support images per class (>= 1).
        queries: Q, query images per class (>= 0; 0 for learners such as Reptile that train
            without a query split; runs test with Q >= 1).
        seed: episode seed; with ``stream`` and the episode index it fixes every draw.
        stream: name separating independent streams with the same seed ("train", "val", "test").
        description: how to name the pool in error messages, e.g. ``"test split of omniglot/vinyals"``.

    Raises:
        ConfigError: if ``ways`` exceeds the classes in the pool or ``shots + queries`` exceeds
            the images per class, or any of them is too small.
    """

    def __init__(
        self,
        pool: ClassPool,
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        stream: str = "test",
        description: str = "class pool",
    ) -> None:
        if ways < 2 or shots < 1 or queries < 0:
            raise ConfigError(
                f"episodes need ways >= 2, shots >= 1 and queries >= 0 (got {ways}-way "
                f"{shots}-shot, {queries} queries): raise --ways/--shots/--queries"
            )
        if ways > len(pool):
            raise ConfigError(
                f"{ways}-way episodes need {ways} classes but the {description} has "
                f"{len(pool)}: lower --ways to at most {len(pool)}"
            )
        if shots + queries > pool.n_per_class:
            raise ConfigError(
                f"{shots} shots + {queries} queries per class need {shots + queries} images per "
                f"class but the {description} has {pool.n_per_class}: lower --shots or --queries "
                f"so that they sum to at most {pool.n_per_class}"
            )
        self.pool = pool
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed, self.stream = seed, stream

    def index(self, i: int) -> EpisodeIndex:
        """The indices of episode ``i`` (pure function of the sampler's parameters and ``i``)."""
        rng = np.random.default_rng([self.seed, _stream_key(self.stream), i])
        # argsort of uniform draws rather than Generator.choice, whose algorithm NumPy may change
        classes = rng.random(len(self.pool)).argsort()[: self.ways]
        order = rng.random((self.ways, self.pool.n_per_class)).argsort(axis=1)
        take = order[:, : self.shots + self.queries]
        return EpisodeIndex(
            classes.astype(np.int64),
            take[:, : self.shots].astype(np.int64),
            take[:, self.shots :].astype(np.int64),
        )

    def episode(self, i: int) -> Episode:
        """Build episode ``i``: images as float32 in [0, 1], labels 0..ways-1 (see :class:`Episode`)."""
        idx = self.index(i)
        return build_episode(self.pool, idx)

    def episodes(self, start: int, count: int) -> list[Episode]:
        """Episodes ``start .. start+count-1`` (a meta-batch when training), as a list of
        :class:`Episode`."""
        return [self.episode(i) for i in range(start, start + count)]


def build_episode(pool: ClassPool, idx: EpisodeIndex) -> Episode:
    """Gather the images of an :class:`EpisodeIndex` from ``pool`` into an :class:`Episode`."""
    ways, shots = idx.support.shape
    queries = idx.query.shape[1]
    cls_s = np.repeat(idx.classes, shots)
    cls_q = np.repeat(idx.classes, queries)
    sx = pool.images(cls_s, idx.support.reshape(-1))
    qx = pool.images(cls_q, idx.query.reshape(-1))
    to_float = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    return Episode(
        to_float(sx),
        torch.arange(ways).repeat_interleave(shots),
        to_float(qx),
        torch.arange(ways).repeat_interleave(queries),
        idx,
    )


def fingerprint(pool: ClassPool, indices: list[EpisodeIndex]) -> str:
    """Identify a list of episodes: sha256 (64 hex digits) of their count and N/K/Q, the pool's
    class names, the pixels of the pool's dataset and every episode's index arrays, in order.

    Two runs whose fingerprints agree evaluated on identical episodes (same classes, rotations,
    images, preprocessing and label order).
    """
    h = hashlib.sha256()
    if indices:
        ways, shots = indices[0].support.shape
        h.update(f"{len(indices)} episodes, {ways}-way {shots}-shot {indices[0].query.shape[1]} queries\n".encode())
    h.update("\n".join(pool.names).encode())
    h.update(hashlib.sha256(np.ascontiguousarray(pool.dataset.images).data).digest())
    for idx in indices:
        h.update(idx.key())
    return h.hexdigest()
