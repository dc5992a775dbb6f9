"""Acquisition strategies and the simulated annotator (metabench.protocols.acquisition)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from metabench.protocols.acquisition import (
    NEEDS,
    STRATEGIES,
    PoolView,
    annotate,
    balanced_random,
    k_center_greedy,
    least_confidence,
    max_entropy,
    random_selection,
    smallest_margin,
    strategy,
)

FIVE_SIGMA_P = 2 * stats.norm.sf(5)  # two-sided normal tail beyond 5 standard deviations, 5.7e-7


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def view(
    available: list[bool] | None = None,
    probs: list[list[float]] | None = None,
    embeddings: list[list[float]] | None = None,
    labelled_embeddings: list[list[float]] | None = None,
    pool_classes: list[int] | None = None,
    labelled_classes: list[int] | None = None,
) -> PoolView:
    """A PoolView from plain lists; the pool size comes from the first of them that is given, the
    labelled-set size from ``labelled_embeddings`` or ``labelled_classes``, and missing classes are
    all 0."""
    p = len(next(x for x in (available, probs, embeddings, pool_classes) if x is not None))
    if labelled_classes is None:
        labelled_classes = [0] * len(labelled_embeddings or [])
    lab = None
    if labelled_embeddings is not None:
        dim = len(embeddings[0]) if embeddings else 1
        lab = torch.tensor(labelled_embeddings, dtype=torch.float32).reshape(-1, dim)
    return PoolView(
        available=torch.tensor(available if available is not None else [True] * p),
        probs=None if probs is None else torch.tensor(probs),
        embeddings=None if embeddings is None else torch.tensor(embeddings),
        labelled_embeddings=lab,
        pool_classes=torch.tensor(pool_classes if pool_classes is not None else [0] * p),
        labelled_classes=torch.tensor(labelled_classes, dtype=torch.int64),
    )


def binomial_bound(n: int, p: float) -> float:
    """Five standard deviations of a Binomial(n, p) count."""
    return 5 * math.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------- uncertainty sampling


def test_entropy_picks_the_item_the_learner_is_least_sure_of() -> None:
    probs = [
        [0.97, 0.01, 0.01, 0.01],
        [0.25, 0.25, 0.25, 0.25],
        [0.7, 0.1, 0.1, 0.1],
        [1.0, 0.0, 0.0, 0.0],
    ]
    v = view(probs=probs)
    assert max_entropy(v, 1, gen()).tolist() == [1]
    # full order by decreasing entropy; the one-hot row (0 log 0 = 0) has entropy 0 and comes last
    assert max_entropy(v, 4, gen()).tolist() == [1, 2, 0, 3]


def test_margin_picks_the_row_whose_top_two_are_closest() -> None:
    probs = [[0.7, 0.2, 0.1], [0.45, 0.44, 0.11], [0.6, 0.3, 0.1]]
    assert smallest_margin(view(probs=probs), 1, gen()).tolist() == [1]
    assert smallest_margin(view(probs=probs), 3, gen()).tolist() == [1, 2, 0]


def test_least_confidence_picks_the_lowest_maximum() -> None:
    probs = [[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1]]
    assert least_confidence(view(probs=probs), 1, gen()).tolist() == [1]
    assert least_confidence(view(probs=probs), 4, gen()).tolist() == [1, 3, 0, 2]


def test_margin_and_least_confidence_are_different_rules() -> None:
    # row 0: max 0.5 but its top two are 0.01 apart; row 1: max 0.4, top two 0.1 apart
    probs = [[0.5, 0.49, 0.01], [0.4, 0.3, 0.3]]
    v = view(probs=probs)
    assert smallest_margin(v, 1, gen()).tolist() == [0]
    assert least_confidence(v, 1, gen()).tolist() == [1]
    assert max_entropy(v, 1, gen()).tolist() == [1]  # entropies about 0.74 and 1.09 nats


def test_uncertainty_skips_labelled_items_and_breaks_ties_by_lowest_index() -> None:
    probs = [[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.6, 0.4], [0.5, 0.5], [0.6, 0.4]]
    available = [True, False, True, True, True, True]
    for fn in (max_entropy, smallest_margin, least_confidence):
        # item 1 is the most uncertain but labelled already; 2, 3 and 5 tie and keep index order
        assert fn(view(available=available, probs=probs), 5, gen()).tolist() == [4, 2, 3, 5, 0]


def test_uncertainty_does_not_use_the_generator() -> None:
    probs = torch.softmax(torch.randn(20, 5, generator=gen(3)), dim=1).tolist()
    for fn in (max_entropy, smallest_margin, least_confidence):
        g = gen(1)
        state = g.get_state()
        assert fn(view(probs=probs), 7, g).tolist() == fn(view(probs=probs), 7, gen(2)).tolist()
        assert torch.equal(g.get_state(), state)


# ---------------------------------------------------------------- k-center greedy


def test_k_center_picks_the_farthest_point_and_then_accounts_for_it() -> None:
    # the labelled item is at the origin; items 1 and 2 are far from it and close to each other
    embeddings = [[1.0, 0.0], [10.0, 0.0], [9.5, 0.0], [0.0, 7.0], [0.0, 1.0]]
    v = view(embeddings=embeddings, labelled_embeddings=[[0.0, 0.0]])
    assert k_center_greedy(v, 1, gen()).tolist() == [1]
    # item 2 is farther from the labelled set than item 3 (9.5 > 7) but only 0.5 from item 1
    assert k_center_greedy(v, 2, gen()).tolist() == [1, 3]
    # then items 0 and 4 tie at distance 1 (item 2 is 0.5 from item 1): the lower index
    assert k_center_greedy(v, 3, gen()).tolist() == [1, 3, 0]


def test_k_center_ignores_labelled_pool_items_and_uses_every_labelled_centre() -> None:
    embeddings = [[10.0], [5.0], [0.0], [-6.0], [-1.0]]
    # item 0 is the farthest point but it is labelled already; centres at 10 and 0
    available = [False, True, True, True, True]
    v = view(available=available, embeddings=embeddings, labelled_embeddings=[[10.0], [0.0]])
    assert k_center_greedy(v, 1, gen()).tolist() == [3]  # distances 5, 0, 6, 1
    assert k_center_greedy(v, 4, gen()).tolist() == [3, 1, 4, 2]


def test_k_center_ties_go_to_the_lowest_index() -> None:
    embeddings = [[1.0, 0.0], [0.0, 3.0], [3.0, 0.0], [-3.0, 0.0]]
    v = view(embeddings=embeddings, labelled_embeddings=[[0.0, 0.0]])
    assert k_center_greedy(v, 1, gen()).tolist() == [1]


def test_k_center_without_labels_starts_at_a_random_item() -> None:
    embeddings = [[float(i), 0.0] for i in range(10)]
    v = view(embeddings=embeddings, labelled_embeddings=[])
    firsts = {int(k_center_greedy(v, 1, gen(seed))[0]) for seed in range(40)}
    assert len(firsts) > 3  # the first pick depends on the generator...
    for seed in range(5):
        a = k_center_greedy(v, 3, gen(seed)).tolist()
        assert a == k_center_greedy(v, 3, gen(seed)).tolist()  # ...deterministically
        first = a[0]
        # then the far end of the line from it, then the point farthest from both chosen ones
        # (ties to the lowest index)
        second = 0 if first >= 5 else 9
        gaps = [min(abs(x - first), abs(x - second)) for x in range(10)]
        assert a[1:] == [second, gaps.index(max(gaps))]


# ---------------------------------------------------------------- balanced random


def class_pool(per_class: list[int]) -> list[int]:
    return [c for c, n in enumerate(per_class) for _ in range(n)]


def test_balanced_random_rounds_give_equal_class_counts() -> None:
    classes = torch.tensor(class_pool([6, 6, 6]))
    available = torch.ones(18, dtype=torch.bool)
    labelled: list[int] = []
    g = gen(7)
    for round_ in range(4):
        v = PoolView(
            available=available, pool_classes=classes,
            labelled_classes=torch.tensor(labelled, dtype=torch.int64),
        )
        chosen = balanced_random(v, 3, g)
        assert sorted(classes[chosen].tolist()) == [0, 1, 2]  # one label per class per round
        available = available.clone()
        available[chosen] = False
        labelled += classes[chosen].tolist()
        assert torch.bincount(torch.tensor(labelled)).tolist() == [round_ + 1] * 3


def test_balanced_random_fills_the_least_labelled_classes_first() -> None:
    v = view(pool_classes=class_pool([4, 4, 4]), labelled_classes=[0, 0, 0, 2])
    chosen = balanced_random(v, 5, gen())
    pool_classes = v.pool_classes[chosen].tolist()
    # labelled counts 3, 0, 1: class 1 first; then 1 and 2 tie at one label and the lower index
    # goes first, then class 2; then they tie at two labels, and again
    assert pool_classes == [1, 1, 2, 1, 2]


def test_balanced_random_skips_classes_without_available_items() -> None:
    classes = class_pool([3, 3, 3])
    available = [True] * 3 + [False] * 3 + [True] * 3  # class 1 fully labelled
    v = view(available=available, pool_classes=classes, labelled_classes=[0, 1, 1, 1, 2])
    chosen = balanced_random(v, 6, gen())
    assert sorted(v.pool_classes[chosen].tolist()) == [0, 0, 0, 2, 2, 2]


def test_balanced_random_is_deterministic_and_random_within_a_class() -> None:
    v = view(pool_classes=class_pool([10, 10, 10, 10, 10]))
    a, b = balanced_random(v, 10, gen(5)), balanced_random(v, 10, gen(5))
    assert torch.equal(a, b)
    assert len({tuple(balanced_random(v, 10, gen(s)).tolist()) for s in range(20)}) > 1


# ---------------------------------------------------------------- random


def test_random_is_deterministic_for_a_seed() -> None:
    v = view(available=[True] * 50)
    assert torch.equal(random_selection(v, 10, gen(11)), random_selection(v, 10, gen(11)))
    assert not torch.equal(random_selection(v, 10, gen(11)), random_selection(v, 10, gen(12)))


def test_random_is_uniform_over_the_available_items() -> None:
    available = [True, False, True, True, False, True, True, True, False, True]
    v = view(available=available)
    draws, count = 2000, 3
    n_available = sum(available)
    g = gen(2024)
    hits = torch.zeros(len(available), dtype=torch.int64)
    firsts = torch.zeros(len(available), dtype=torch.int64)
    for _ in range(draws):
        chosen = random_selection(v, count, g)
        hits[chosen] += 1
        firsts[chosen[0]] += 1
    for i, ok in enumerate(available):
        if not ok:
            assert hits[i] == 0
            continue
        p_in = count / n_available  # each available item is in a uniform 3-subset w.p. 3/7
        assert abs(int(hits[i]) - draws * p_in) <= binomial_bound(draws, p_in)
        p_first = 1 / n_available
        assert abs(int(firsts[i]) - draws * p_first) <= binomial_bound(draws, p_first)


# ---------------------------------------------------------------- every strategy


@st.composite
def pools(draw: st.DrawFn) -> tuple[PoolView, int, int]:
    """A random pool: sizes, availability, labelled set, coarse (tie-prone) probabilities and
    embeddings, a count and a seed."""
    p = draw(st.integers(1, 25))
    ways = draw(st.integers(2, 5))
    dim = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    available = draw(st.lists(st.booleans(), min_size=p, max_size=p).filter(any))
    labelled = draw(st.integers(0, 6))
    count = draw(st.integers(1, sum(available)))
    g = gen(seed)
    logits = torch.randint(0, 3, (p, ways), generator=g).float()
    v = PoolView(
        available=torch.tensor(available),
        probs=torch.softmax(logits, dim=1),
        embeddings=torch.randint(-2, 3, (p, dim), generator=g).float(),
        labelled_embeddings=torch.randint(-2, 3, (labelled, dim), generator=g).float(),
        pool_classes=torch.randint(0, ways, (p,), generator=g),
        labelled_classes=torch.randint(0, ways, (labelled,), generator=g),
    )
    return v, count, seed


@settings(max_examples=80, deadline=None)
@given(pools())
def test_every_strategy_returns_distinct_available_indices(case: tuple[PoolView, int, int]) -> None:
    v, count, seed = case
    for name, fn in STRATEGIES.items():
        chosen = fn(v, count, gen(seed))
        assert chosen.dtype == torch.int64 and chosen.shape == (count,), name
        assert len(set(chosen.tolist())) == count, name
        assert bool(v.available[chosen].all()), name
        assert torch.equal(chosen, fn(v, count, gen(seed))), name  # deterministic


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_count_out_of_range_raises(name: str) -> None:
    v = view(
        available=[True, False, True], probs=[[0.5, 0.5]] * 3, embeddings=[[0.0], [1.0], [2.0]],
        labelled_embeddings=[[1.0]], pool_classes=[0, 1, 1], labelled_classes=[1],
    )
    for count in (0, -1, 3):
        with pytest.raises(ValueError, match="unlabelled pool items"):
            strategy(name)(v, count, gen())
    assert strategy(name)(v, 2, gen()).tolist() in ([0, 2], [2, 0])


@pytest.mark.parametrize("fn", [max_entropy, smallest_margin, least_confidence])
def test_uncertainty_without_probs_raises(fn) -> None:
    with pytest.raises(ValueError, match=r"predicted probabilities on the pool \(view\.probs\)"):
        fn(view(available=[True, True]), 1, gen())


def test_k_center_without_embeddings_raises() -> None:
    with pytest.raises(ValueError, match=r"view\.embeddings, view\.labelled_embeddings"):
        k_center_greedy(view(available=[True, True]), 1, gen())
    with pytest.raises(ValueError, match=r"view\.embeddings, view\.labelled_embeddings"):
        k_center_greedy(view(embeddings=[[0.0], [1.0]]), 1, gen())


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_needs_lists_exactly_what_each_strategy_reads(name: str) -> None:
    full = view(
        probs=[[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]], embeddings=[[0.0], [1.0], [2.0]],
        labelled_embeddings=[], pool_classes=[0, 1, 1],
    )
    needs = NEEDS[name]
    assert needs <= {"probs", "embeddings"}
    # a view with only what NEEDS lists gives the same choice as the full view
    only = dataclasses.replace(
        full,
        probs=full.probs if "probs" in needs else None,
        embeddings=full.embeddings if "embeddings" in needs else None,
        labelled_embeddings=full.labelled_embeddings if "embeddings" in needs else None,
    )
    assert torch.equal(strategy(name)(only, 2, gen(4)), strategy(name)(full, 2, gen(4)))
    # and without any one of the fields it lists, the strategy raises
    fields = {"probs": ["probs"], "embeddings": ["embeddings", "labelled_embeddings"]}
    for need in needs:
        for field in fields[need]:
            with pytest.raises(ValueError, match="needs"):
                strategy(name)(dataclasses.replace(full, **{field: None}), 2, gen(4))


def test_strategy_names_and_unknown_name() -> None:
    names = ["random", "balanced", "entropy", "margin", "least_confidence", "kcenter"]
    assert list(STRATEGIES) == names
    assert list(NEEDS) == names
    assert strategy("margin") is smallest_margin
    expected = "unknown acquisition strategy 'x': use one of " + ", ".join(names)
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        strategy("x")


def test_pool_view_rejects_inconsistent_shapes() -> None:
    ok = {
        "available": torch.ones(3, dtype=torch.bool),
        "pool_classes": torch.zeros(3, dtype=torch.int64),
        "labelled_classes": torch.zeros(1, dtype=torch.int64),
    }
    PoolView(**ok)
    bad = [
        {"available": torch.ones(3)},  # not bool
        {"pool_classes": torch.zeros(4, dtype=torch.int64)},  # P is 3
        {"pool_classes": torch.tensor([0, -1, 0])},
        {"probs": torch.full((2, 2), 0.5)},
        {"probs": torch.ones(3, 1)},  # N < 2
        {"embeddings": torch.zeros(3)},
        {"embeddings": torch.zeros(3, 2), "labelled_embeddings": torch.zeros(2, 2)},  # L is 1
        {"embeddings": torch.zeros(3, 2), "labelled_embeddings": torch.zeros(1, 3)},  # D differs
    ]
    for change in bad:
        with pytest.raises(ValueError, match="PoolView"):
            PoolView(**{**ok, **change})


# ---------------------------------------------------------------- annotate


def test_annotate_with_epsilon_zero_returns_the_labels() -> None:
    labels = torch.randint(0, 5, (500,), generator=gen(1))
    out = annotate(labels, 5, 0.0, gen(2))
    assert torch.equal(out, labels) and out.dtype == torch.int64
    assert out is not labels


def test_annotate_draws_the_same_numbers_whatever_epsilon() -> None:
    labels = torch.randint(0, 5, (300,), generator=gen(1))
    states = []
    for eps in (0.0, 0.3, 0.9):
        g = gen(8)
        annotate(labels, 5, eps, g)
        states.append(g.get_state())
    assert all(torch.equal(s, states[0]) for s in states)
    assert torch.equal(annotate(labels, 5, 0.3, gen(8)), annotate(labels, 5, 0.3, gen(8)))


def test_annotate_flip_rate_and_wrong_labels() -> None:
    m, ways, eps = 20000, 5, 0.2
    labels = torch.randint(0, ways, (m,), generator=gen(1))
    out = annotate(labels, ways, eps, gen(2))
    flipped = out != labels
    assert abs(int(flipped.sum()) - m * eps) <= binomial_bound(m, eps)
    assert bool(((out >= 0) & (out < ways)).all())


def test_annotate_flips_are_nested_as_epsilon_grows() -> None:
    labels = torch.randint(0, 4, (5000,), generator=gen(1))
    low, high = annotate(labels, 4, 0.1, gen(3)), annotate(labels, 4, 0.2, gen(3))
    flip_low, flip_high = low != labels, high != labels
    assert bool((flip_low <= flip_high).all())  # subset
    assert int(flip_high.sum()) > int(flip_low.sum())
    assert torch.equal(low[flip_low], high[flip_low])  # the same wrong labels


def test_annotate_wrong_labels_are_uniform_over_the_other_classes() -> None:
    m, ways, eps = 30000, 5, 0.9
    labels = torch.randint(0, ways, (m,), generator=gen(1))
    out = annotate(labels, ways, eps, gen(2))
    for c in range(ways):
        wrong = out[(labels == c) & (out != labels)]
        counts = torch.bincount(wrong, minlength=ways)
        assert counts[c] == 0  # never the true label
        others = torch.cat([counts[:c], counts[c + 1 :]]).tolist()
        n = sum(others)
        assert stats.chisquare(others).pvalue > FIVE_SIGMA_P
        for k in others:  # and each count within five sigma of n / (ways - 1)
            assert abs(k - n / (ways - 1)) <= binomial_bound(n, 1 / (ways - 1))


@settings(max_examples=60, deadline=None)
@given(
    ways=st.integers(2, 10), m=st.integers(0, 200), seed=st.integers(0, 2**31 - 1),
    eps=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)).map(sorted),
)
def test_annotate_properties(ways: int, m: int, seed: int, eps: list[float]) -> None:
    labels = torch.randint(0, ways, (m,), generator=gen(seed + 1))
    low, high = annotate(labels, ways, eps[0], gen(seed)), annotate(labels, ways, eps[1], gen(seed))
    for out in (low, high):
        assert out.shape == (m,) and out.dtype == torch.int64
        assert bool(((out >= 0) & (out < ways)).all())
    assert bool(((low != labels) <= (high != labels)).all())
    changed = low != labels
    assert torch.equal(low[changed], high[changed])


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5, float("nan")])
def test_annotate_rejects_epsilon_outside_unit_interval(eps: float) -> None:
    with pytest.raises(ValueError, match=r"not in \[0, 1\)"):
        annotate(torch.tensor([0, 1]), 2, eps, gen())


def test_annotate_rejects_bad_ways_and_labels() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        annotate(torch.tensor([0, 0]), 1, 0.1, gen())
    with pytest.raises(ValueError, match=r"in 0\.\.2"):
        annotate(torch.tensor([0, 3]), 3, 0.1, gen())
    with pytest.raises(ValueError, match="1-D int64"):
        annotate(torch.tensor([0.0, 1.0]), 3, 0.1, gen())
