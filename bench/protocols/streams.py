"""Online task streams: the material of the stream protocol (:mod:`.stream`).

A stream (OSAKA, Caccia et al. 2020, "Online Fast Adaptation and Knowledge Accumulation",
NeurIPS, Sec. 3) is ``T`` steps. At every step a small batch of the **current task** arrives:
``k`` examples of each of its ``N`` classes (classification) or ``k`` points of its function
(sinusoid regression). At step 0, and afterwards at each step with probability ``1 - p``, the task
changes (``p`` is the probability that it stays). What arrives at a change is drawn with the mixing
probabilities ``(in, out, return)``:

``in``      a new task of ``N`` classes of the run's meta-test classes (in-distribution), or a new
            sine wave of the meta-training range;
``out``     a new task of ``N`` classes of another dataset's test classes (out-of-distribution;
            ``digits`` stands in for OSAKA's MNIST and Fashion-MNIST, which cannot be fetched here);
``return``  a task seen before in this stream (not the current one), uniformly: the same classes
            in the same label order (the same sine wave).

A ``return`` drawn before a second task exists becomes a new task (``in`` or ``out`` with their
renormalised probabilities), and so does the first task. Every class of a task gets a random order
of its images when the task is created; each step of the task takes the next ``k`` images of that
order, so a task shows all its images (20 per Omniglot class) before any repeats, also across
returns. Sine-wave inputs ``x`` are drawn afresh at every step (Finn et al. 2017, Sec. 5.1 ranges).
With ``fresh`` classes, new tasks never reuse a class the stream has used.

Stream ``i`` is a pure function of (the pools, N, k, T, p, mixing, fresh, seed, i), like test
episodes (:mod:`metabench.datasets.sampler`); :func:`stream_fingerprint` proves which streams a run
used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from metabench.datasets.base import ClassPool
from metabench.datasets.sampler import _stream_key
from metabench.datasets.sinusoid import AMPLITUDE, PHASE, X_RANGE
from metabench.errors import ConfigError

#: What a change brings, in the order of the mixing probabilities (column ``kind`` of the rows).
ARRIVALS = ("in", "out", "return")


@dataclass(frozen=True)
class StreamSpec:
    """The shape of a run's streams.

    Attributes:
        steps: T, steps per stream.
        stay: p, the probability that the task stays the same at a step, in [0, 1).
        mixing: probabilities of ``in``, ``out`` and ``return`` at a change (they sum to 1).
        ways: N (classification; 1 for regression, where it is the number of outputs).
        shots: k, examples per class (points, for regression) in each step's batch.
        fresh: new tasks never reuse a class the stream has used (classification only).
        seed: the episode seed.
    """

    steps: int
    stay: float
    mixing: tuple[float, float, float]
    ways: int
    shots: int
    fresh: bool
    seed: int


@dataclass(frozen=True)
class StreamIndex:
    """What makes up one stream (indices, like an episode's :class:`EpisodeIndex`).

    Attributes:
        task: int64 ``[T]``, the task of each step (0, 1, ... in order of first appearance).
        change: bool ``[T]``, the step starts a visit (a task change; step 0 included).
        kind: int8 ``[T]``, what the step's visit is (index into :data:`ARRIVALS`).
        visit: int64 ``[T]``, the visit number of the step's task (1: its first visit).
        domain: int8 ``[J]``, per task 0 (in-distribution pool) or 1 (out-of-distribution pool).
        classes: int64 ``[J, N]``, pool class of labels ``0..N-1`` (``[J, 0]`` for regression).
        images: int64 ``[T, N, k]``, image index within its class of each example
            (``[T, 0, 0]`` for regression).
        waves: float64 ``[J, 2]``, amplitude and phase (radians) of each sine wave (``[J, 0]``
            for classification).
        x: float64 ``[T, k]``, sine-wave inputs of each step (``[T, 0]`` for classification).
    """

    task: np.ndarray
    change: np.ndarray
    kind: np.ndarray
    visit: np.ndarray
    domain: np.ndarray
    classes: np.ndarray
    images: np.ndarray
    waves: np.ndarray
    x: np.ndarray

    def key(self) -> bytes:
        """All arrays as little-endian bytes: what identifies the stream (fingerprints, and the
        seeds of per-step random draws)."""
        parts = [np.ascontiguousarray(a, dtype="<i8") for a in (self.task, self.change, self.kind, self.visit,
                                                                 self.domain, self.classes, self.images)]
        parts += [np.ascontiguousarray(a, dtype="<f8") for a in (self.waves, self.x)]
        return b"".join(p.tobytes() for p in parts)

    @property
    def steps(self) -> int:
        """T."""
        return int(self.task.shape[0])


@dataclass(frozen=True)
class Stream:
    """One stream's tensors.

    Attributes:
        x: uint8 ``[T, N * k, C, H, W]`` images (class-major within a step: the ``k`` examples
            of label 0, then label 1, ...; kept as bytes, a quarter of float32's memory), or
            float32 ``[T, k, 1]`` sine-wave inputs.
        y: int64 ``[T, N * k]`` labels, or float32 ``[T, k, 1]`` targets.
        index: its :class:`StreamIndex`.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: StreamIndex

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t``'s batch: inputs (images as float32 in [0, 1]) and labels or targets."""
        x = self.x[t]
        return (x.float().div_(255.0) if x.dtype == torch.uint8 else x), self.y[t]

    def to(self, device: torch.device | str) -> Stream:
        """The stream with its tensors on ``device``."""
        return Stream(self.x.to(device), self.y.to(device), self.index)


def _choose(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """Index drawn with probabilities proportional to ``weights`` (one uniform draw)."""
    cumulative = np.cumsum(weights) / np.sum(weights)
    return int(min(np.searchsorted(cumulative, rng.random(), side="right"), len(weights) - 1))


def schedule(spec: StreamSpec, i: int, classes: tuple[int, int] | None) -> tuple[np.ndarray, ...]:
    """Which task each step of stream ``i`` shows (see the module docstring).

    Args:
        spec: the streams' shape.
        i: the stream index.
        classes: classes in the in- and out-of-distribution pools (``None`` for regression).

    Returns:
        ``(task [T], change [T], kind [T], visit [T], arrivals [J])``: ``arrivals[j]`` is 0 or 1,
        the pool of task ``j``.

    Raises:
        ConfigError: with ``fresh`` classes, when a pool has no ``N`` unused classes left.
    """
    rng = np.random.default_rng([spec.seed, _stream_key("stream-schedule"), i])
    task = np.empty(spec.steps, np.int64)
    change = np.zeros(spec.steps, bool)
    kind = np.empty(spec.steps, np.int8)
    visit = np.empty(spec.steps, np.int64)
    arrivals: list[int] = []
    visits: list[int] = []
    new = spec.mixing[:2]
    for t in range(spec.steps):
        if t == 0 or rng.random() >= spec.stay:
            what = _choose(rng, spec.mixing) if t else _choose(rng, new)
            if what == 2 and len(arrivals) < 2:
                what = _choose(rng, new)
            if what == 2:
                others = [j for j in range(len(arrivals)) if j != task[t - 1]]
                current = others[int(rng.integers(len(others)))]
            else:
                current = len(arrivals)
                arrivals.append(what)
                visits.append(0)
            visits[current] += 1
            change[t] = True
            kind[t] = what
        else:
            current = int(task[t - 1])
            kind[t] = kind[t - 1]
        task[t] = current
        visit[t] = visits[current]
    if classes is not None and spec.fresh:
        for pool in (0, 1):
            needed = spec.ways * arrivals.count(pool)
            if needed > classes[pool]:
                where = ("in-distribution", "out-of-distribution")[pool]
                raise ConfigError(
                    f"stream {i} starts {arrivals.count(pool)} new {where} tasks, {needed} classes, but the {where} pool "
                    f"has {classes[pool]} and --fresh-classes forbids reuse: drop --fresh-classes, or lower "
                    "--stream-steps, or raise --stay")
    return task, change, kind, visit, np.asarray(arrivals, np.int8)


class StreamSampler:
    """Builds the streams of a run (same interface as an episode sampler: ``index``, ``episode``).

    Args:
        spec: the streams' shape.
        pools: ``(in-distribution, out-of-distribution or None)`` class pools, or ``None`` for
            sinusoid regression. Both pools must hold images of one shape.
    """

    def __init__(self, spec: StreamSpec, pools: tuple[ClassPool, ClassPool | None] | None) -> None:
        self.spec = spec
        self.pools = pools
        self.ways = spec.ways

    def index(self, i: int) -> StreamIndex:
        """The indices of stream ``i`` (pure function of the sampler's parameters and ``i``)."""
        s = self.spec
        sizes = None
        if self.pools is not None:
            sizes = tuple(len(p) if p is not None else 0 for p in self.pools)
        task, change, kind, visit, arrivals = schedule(s, i, sizes)
        rng = np.random.default_rng([s.seed, _stream_key("stream-content"), i])
        n_tasks = arrivals.shape[0]
        if self.pools is None:
            waves = np.column_stack([rng.uniform(*AMPLITUDE, n_tasks), rng.uniform(*PHASE, n_tasks)])
            x = rng.uniform(*X_RANGE, size=(s.steps, s.shots))
            return StreamIndex(task, change, kind, visit, arrivals, np.empty((n_tasks, 0), np.int64),
                               np.empty((s.steps, 0, 0), np.int64), waves, x)
        classes = np.empty((n_tasks, s.ways), np.int64)
        orders = []
        unused = [np.arange(n) for n in sizes]
        for j, pool_id in enumerate(arrivals):
            pool = self.pools[pool_id]
            if s.fresh:
                pick = rng.random(unused[pool_id].size).argsort()[: s.ways]
                classes[j] = unused[pool_id][pick]
                unused[pool_id] = np.delete(unused[pool_id], pick)
            else:
                classes[j] = rng.random(len(pool)).argsort()[: s.ways]
            orders.append(rng.random((s.ways, pool.n_per_class)).argsort(axis=1))
        images = np.empty((s.steps, s.ways, s.shots), np.int64)
        shown = np.zeros(n_tasks, np.int64)
        for t in range(s.steps):
            j = task[t]
            n_per_class = orders[j].shape[1]
            take = (shown[j] * s.shots + np.arange(s.shots)) % n_per_class
            images[t] = orders[j][:, take]
            shown[j] += 1
        return StreamIndex(task, change, kind, visit, arrivals, classes, images,
                           np.empty((n_tasks, 0)), np.empty((s.steps, 0)))

    def episode(self, i: int) -> Stream:
        """Build stream ``i`` (see :class:`Stream`)."""
        idx = self.index(i)
        if self.pools is None:
            a, phase = idx.waves[idx.task, 0][:, None], idx.waves[idx.task, 1][:, None]
            y = a * np.sin(idx.x - phase)
            column = lambda v: torch.from_numpy(np.asarray(v, np.float32)[..., None])
            return Stream(column(idx.x), column(y), idx)
        s = self.spec
        first = self.pools[0]
        frames = np.empty((s.steps, s.ways * s.shots, *first.dataset.image_shape), np.uint8)
        for t in range(s.steps):
            j = idx.task[t]
            pool = self.pools[idx.domain[j]]
            frames[t] = pool.images(np.repeat(idx.classes[j], s.shots), idx.images[t].reshape(-1))
        labels = torch.arange(s.ways).repeat_interleave(s.shots).repeat(s.steps, 1)
        return Stream(torch.from_numpy(frames), labels, idx)


def stream_fingerprint(sampler: StreamSampler, count: int) -> str:
    """Identify streams ``0..count-1`` of ``sampler``: sha256 (64 hex digits) of their shape, the
    pools' class names and pixels, and every stream's :meth:`StreamIndex.key`."""
    h = hashlib.sha256()
    s = sampler.spec
    h.update(f"{count} streams, {s.steps} steps, p {s.stay!r}, mixing {s.mixing!r}, {s.ways}-way {s.shots}-shot, "
             f"fresh {s.fresh}, seed {s.seed}\n".encode())
    for pool in sampler.pools or ():
        if pool is not None:
            h.update("\n".join(pool.names).encode())
            h.update(hashlib.sha256(np.ascontiguousarray(pool.dataset.images).data).digest())
    for i in range(count):
        h.update(sampler.index(i).key())
    return h.hexdigest()
