"""Episode sampler: determinism, disjointness, label range, images, fingerprints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metabench.datasets.base import ClassPool, ImageDataset
from metabench.datasets.sampler import EpisodeSampler, build_episode, fingerprint
from metabench.errors import ConfigError


def fake_pool(n_classes: int = 30, per_class: int = 20, side: int = 8) -> ClassPool:
    """A pool whose every image encodes its (class, index) so episodes can be checked exactly."""
    images = np.zeros((n_classes, per_class, 1, side, side), dtype=np.uint8)
    images[:, :, 0, 0, 0] = np.arange(n_classes)[:, None]
    images[:, :, 0, 0, 1] = np.arange(per_class)[None, :]
    ds = ImageDataset("fake", images, tuple(f"c{i}" for i in range(n_classes)))
    names = tuple(f"c{i}/rot000" for i in range(n_classes))
    return ClassPool(ds, np.arange(n_classes), np.zeros(n_classes, dtype=np.int64), names)


@settings(max_examples=60, deadline=None)
@given(
    ways=st.integers(2, 30), shots=st.integers(1, 10), queries=st.integers(1, 10),
    seed=st.integers(0, 2**31), index=st.integers(0, 10**6),
)
def test_episode_properties(ways: int, shots: int, queries: int, seed: int, index: int) -> None:
    pool = fake_pool()
    ep = EpisodeSampler(pool, ways, shots, queries, seed).episode(index)
    idx = ep.index
    # classes are distinct pool classes; labels 0..N-1 in class-major order
    assert len(set(idx.classes.tolist())) == ways
    assert ep.support_y.tolist() == [c for c in range(ways) for _ in range(shots)]
    assert ep.query_y.tolist() == [c for c in range(ways) for _ in range(queries)]
    # support and query images are disjoint within each class, and unique
    for c in range(ways):
        s, q = set(idx.support[c].tolist()), set(idx.query[c].tolist())
        assert len(s) == shots and len(q) == queries and not (s & q)
    # the tensors hold exactly the indexed images (class id at pixel 0, image id at pixel 1)
    sx = (ep.support_x[:, 0, 0, :2] * 255).round().long()
    assert torch.equal(sx[:, 0], torch.from_numpy(np.repeat(idx.classes, shots)))
    assert torch.equal(sx[:, 1], torch.from_numpy(idx.support.reshape(-1)))
    qx = (ep.query_x[:, 0, 0, :2] * 255).round().long()
    assert torch.equal(qx[:, 1], torch.from_numpy(idx.query.reshape(-1)))
    assert ep.support_x.dtype == torch.float32 and float(ep.support_x.max()) <= 1.0


def test_deterministic_in_parameters_and_index() -> None:
    pool = fake_pool()
    a, b = EpisodeSampler(pool, 5, 1, 15, seed=3), EpisodeSampler(pool, 5, 1, 15, seed=3)
    for i in (0, 7, 123456):
        ia, ib = a.index(i), b.index(i)
        assert all(np.array_equal(x, y) for x, y in zip((ia.classes, ia.support, ia.query), (ib.classes, ib.support, ib.query)))
    # order of access does not matter
    assert np.array_equal(a.index(5).classes, EpisodeSampler(pool, 5, 1, 15, seed=3).index(5).classes)
    # a different seed, index or stream gives different episodes
    assert fingerprint(pool, [a.index(i) for i in range(20)]) != fingerprint(pool, [a.index(i) for i in range(1, 21)])
    other_seed = EpisodeSampler(pool, 5, 1, 15, seed=4)
    other_stream = EpisodeSampler(pool, 5, 1, 15, seed=3, stream="train")
    ids = [a.index(i) for i in range(20)]
    assert fingerprint(pool, ids) != fingerprint(pool, [other_seed.index(i) for i in range(20)])
    assert fingerprint(pool, ids) != fingerprint(pool, [other_stream.index(i) for i in range(20)])
    assert fingerprint(pool, ids) == fingerprint(pool, [b.index(i) for i in range(20)])


def test_class_order_is_shuffled() -> None:
    sampler = EpisodeSampler(fake_pool(), 5, 1, 1, seed=0)
    orders = [sampler.index(i).classes for i in range(50)]
    assert any(not np.all(np.diff(c) > 0) for c in orders), "labels must follow a shuffled class order"
    # every class shows up over many episodes
    assert len(set(np.concatenate(orders).tolist())) == 30


def test_rotated_classes_are_rotated_images(omniglot_vinyals) -> None:
    pool = omniglot_vinyals.test
    rot = np.flatnonzero(pool.rotation == 1)[0]
    same_char = np.flatnonzero((pool.base == pool.base[rot]) & (pool.rotation == 0))[0]
    idx = np.arange(3)
    turned = pool.images(np.full(3, rot), idx)
    upright = pool.images(np.full(3, same_char), idx)
    assert np.array_equal(turned, np.rot90(upright, 1, axes=(-2, -1)))


def test_real_omniglot_episode(omniglot_vinyals) -> None:
    sampler = EpisodeSampler(omniglot_vinyals.test, 5, 1, 15, seed=0)
    ep = sampler.episode(0)
    assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (75, 1, 28, 28)
    rebuilt = build_episode(omniglot_vinyals.test, ep.index)
    assert torch.equal(rebuilt.query_x, ep.query_x)


def test_too_many_ways_or_images(omniglot_vinyals) -> None:
    with pytest.raises(ConfigError, match=r"lower --ways to at most 1692"):
        EpisodeSampler(omniglot_vinyals.test, 1693, 1, 1, seed=0, description="test split")
    with pytest.raises(ConfigError, match=r"lower --shots or --queries"):
        EpisodeSampler(omniglot_vinyals.test, 5, 10, 11, seed=0)
    with pytest.raises(ConfigError, match="ways >= 2"):
        EpisodeSampler(omniglot_vinyals.test, 1, 1, 1, seed=0)


def test_the_fingerprint_follows_the_pools_class_names_and_pixels() -> None:
    """Equal episode indices on a pool whose class names or pixels differ are other episodes: the
    fingerprint says so (one renamed class, one changed pixel of one image)."""
    pool = fake_pool()
    ids = [EpisodeSampler(pool, 5, 1, 15, seed=3).index(i) for i in range(20)]
    base = fingerprint(pool, ids)
    renamed = ClassPool(pool.dataset, pool.base, pool.rotation, (*pool.names[:-1], "c29/rot090"))
    assert fingerprint(renamed, ids) != base
    images = pool.dataset.images.copy()
    images[17, 3, 0, 5, 5] ^= 1
    repainted = ClassPool(ImageDataset("fake", images, pool.dataset.class_names), pool.base, pool.rotation, pool.names)
    assert fingerprint(repainted, ids) != base
    assert fingerprint(ClassPool(pool.dataset, pool.base, pool.rotation, pool.names), ids) == base
