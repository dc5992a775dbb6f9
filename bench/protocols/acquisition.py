"""Active selection of support labels in few-shot episodes, and a simulated annotator.

In the active protocol a learner does not receive a labelled support set: it sees an
**unlabelled pool** of ``P`` items of the episode's ``N`` classes and asks an **annotator** for the
labels of a few of them per round. Which items it asks for is the **acquisition** strategy; the
items labelled so far form the **support set** the learner is adapted on before the next round.

One acquisition round looks at a :class:`PoolView` (what the strategy may see: which pool items
are still unlabelled, the adapted learner's predicted probabilities and embeddings) and returns
the indices of the next ``count`` items to label. Strategies (:data:`STRATEGIES`, by name):

``random``            uniform over the unlabelled pool (:func:`random_selection`)
``balanced``          class-balanced random: standard K-shot episodes (:func:`balanced_random`)
``entropy``           largest predictive entropy (:func:`max_entropy`)
``margin``            smallest gap between the two most probable classes (:func:`smallest_margin`)
``least_confidence``  smallest maximum probability (:func:`least_confidence`)
``kcenter``           greedy k-center in embedding space, the core-set approach
                      (:func:`k_center_greedy`)

Every strategy has the signature ``(view, count, generator) -> int64 [count]``; :data:`NEEDS` says
which learner outputs (``"probs"``, ``"embeddings"``) each one reads, so the caller computes only
those. :func:`annotate` simulates an annotator that gives a wrong label with probability
``epsilon``.

Everything here is a pure function of its inputs and the generator state: there is no module
state, and the same generator state gives the same choices and the same labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "NEEDS",
    "STRATEGIES",
    "PoolView",
    "Strategy",
    "annotate",
    "balanced_random",
    "k_center_greedy",
    "least_confidence",
    "max_entropy",
    "random_selection",
    "smallest_margin",
    "strategy",
]


def annotate(
    true_labels: torch.Tensor, ways: int, epsilon: float, generator: torch.Generator
) -> torch.Tensor:
    """The labels a simulated annotator gives for items whose true labels are ``true_labels``.

    Each label is independently replaced, with probability ``epsilon``, by a wrong label drawn
    uniformly from the other ``ways - 1`` classes, and is otherwise returned unchanged. This is the
    random classification noise model of Angluin & Laird 1988 ("Learning from noisy examples",
    Machine Learning 2(4):343-370) in its multiclass form with uniform ("symmetric") noise.

    The same random numbers are drawn whatever ``epsilon`` is: one uniform ``[m]`` (item ``i``
    is flipped when ``u[i] < epsilon``) and one integer ``[m]`` offset in ``0..ways-2`` (the wrong
    label is ``(true + 1 + offset) % ways``). So with the same generator state the items flipped at
    a smaller ``epsilon`` are a subset of those flipped at a larger one, with the same wrong
    labels.

    Args:
        true_labels: int64 ``[m]``, values in ``0..ways-1``.
        ways: number of classes ``N`` (at least 2).
        epsilon: probability of a wrong label, in ``[0, 1)``.
        generator: the source of randomness; ``2 * m`` numbers are drawn from it.

    Returns:
        int64 ``[m]`` on the device of ``true_labels``: the annotator's labels (a new tensor).

    Raises:
        ValueError: if ``ways < 2``, ``epsilon`` is not in ``[0, 1)``, or ``true_labels`` is not a
            1-D int64 tensor with values in ``0..ways-1``.
    """
    if ways < 2:
        raise ValueError(
            f"annotate needs at least 2 classes, got ways={ways}: pass the episode's number of ways"
        )
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(
            f"annotate: epsilon={epsilon} is not in [0, 1): "
            "pass the annotator's error rate as a probability below 1"
        )
    if true_labels.dim() != 1 or true_labels.dtype != torch.int64:
        raise ValueError(
            f"annotate needs true_labels as a 1-D int64 tensor, got {true_labels.dtype} of shape "
            f"{tuple(true_labels.shape)}: pass the class indices of the items to label"
        )
    if true_labels.numel() and not (0 <= int(true_labels.min()) and int(true_labels.max()) < ways):
        raise ValueError(
            f"annotate: true_labels must be in 0..{ways - 1}: "
            f"pass class indices of the episode's {ways} ways"
        )
    m, device = true_labels.numel(), generator.device
    u = torch.rand(m, generator=generator, device=device).to(true_labels.device)
    offset = torch.randint(0, ways - 1, (m,), generator=generator, device=device)
    wrong = (true_labels + 1 + offset.to(true_labels.device)) % ways
    return torch.where(u < epsilon, wrong, true_labels)


@dataclass(frozen=True, kw_only=True)
class PoolView:
    """What an acquisition strategy may look at in one round (``P`` pool items, ``L`` labelled).

    Attributes:
        available: bool ``[P]``, True for pool items not yet labelled.
        probs: float ``[P, N]`` (``N >= 2``) predicted class probabilities of every pool item from
            the learner adapted on the labels so far (rows sum to 1), or ``None`` when not
            computed.
        embeddings: float ``[P, D]`` the learner's embedding of every pool item, or ``None``.
        labelled_embeddings: float ``[L, D]`` the learner's embeddings of the labelled support set
            (``[0, D]`` when nothing is labelled yet), or ``None``.
        pool_classes: int64 ``[P]``, the *true* class of every pool item. Only the class-balanced
            random baseline (:func:`balanced_random`) may use it: it stands for a standard K-shot
            episode, whose classes are known by construction.
        labelled_classes: int64 ``[L]``, the true classes of the labelled support set.

    Raises:
        ValueError: if the shapes or dtypes do not agree with the above.
    """

    available: torch.Tensor
    probs: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    labelled_embeddings: torch.Tensor | None = None
    pool_classes: torch.Tensor
    labelled_classes: torch.Tensor

    def __post_init__(self) -> None:
        if self.available.dim() != 1 or self.available.dtype != torch.bool:
            raise ValueError(
                "PoolView.available must be a 1-D bool tensor [P]: "
                "True for pool items not yet labelled"
            )
        p, n_labelled = self.available.numel(), self.labelled_classes.numel()
        for name in ("pool_classes", "labelled_classes"):
            classes = getattr(self, name)
            if (
                classes.dim() != 1
                or classes.dtype != torch.int64
                or (classes.numel() and int(classes.min()) < 0)
            ):
                raise ValueError(
                    f"PoolView.{name} must be a 1-D int64 tensor of class indices >= 0"
                )
        if self.pool_classes.numel() != p:
            raise ValueError(
                f"PoolView.pool_classes has {self.pool_classes.numel()} entries for {p} pool "
                "items: give one per item"
            )
        probs, emb, lab = self.probs, self.embeddings, self.labelled_embeddings
        if probs is not None and (probs.dim() != 2 or probs.shape[0] != p or probs.shape[1] < 2):
            raise ValueError(
                f"PoolView.probs must be [P={p}, N>=2], got {tuple(probs.shape)}: "
                "one row of class probabilities per pool item"
            )
        if emb is not None and (emb.dim() != 2 or emb.shape[0] != p):
            raise ValueError(
                f"PoolView.embeddings must be [P={p}, D], got {tuple(emb.shape)}: "
                "one row per pool item"
            )
        if lab is not None and (lab.dim() != 2 or lab.shape[0] != n_labelled):
            raise ValueError(
                f"PoolView.labelled_embeddings must be [L={n_labelled}, D], got "
                f"{tuple(lab.shape)}: one row per labelled item ([0, D] when nothing is labelled)"
            )
        if lab is not None and emb is not None and lab.shape[1] != emb.shape[1]:
            raise ValueError(
                f"PoolView.labelled_embeddings have dimension {lab.shape[1]} but embeddings "
                f"{emb.shape[1]}: embed both with the same learner"
            )


Strategy = Callable[[PoolView, int, torch.Generator], torch.Tensor]
"""An acquisition strategy: ``(view, count, generator) -> int64 [count]`` pool indices."""


def _available_indices(name: str, view: PoolView, count: int) -> torch.Tensor:
    """int64 ``[A]`` the indices of the available pool items in increasing order, after checking
    that ``1 <= count <= A`` (ValueError otherwise)."""
    available = torch.nonzero(view.available).flatten()
    if count < 1 or count > available.numel():
        raise ValueError(
            f"{name}: cannot choose count={count} items from {available.numel()} unlabelled pool "
            "items: ask for at least 1 and at most the number of unlabelled items"
        )
    return available


def _lowest(name: str, view: PoolView, count: int, key: torch.Tensor) -> torch.Tensor:
    """The ``count`` available items with the smallest ``key`` (float ``[P]``), smallest first,
    ties to the lowest pool index (a stable sort of the available items in index order)."""
    available = _available_indices(name, view, count)
    order = torch.sort(key[available], stable=True).indices[:count]
    return available[order]


def _probs(name: str, view: PoolView) -> torch.Tensor:
    if view.probs is None:
        raise ValueError(
            f"{name} needs the learner's predicted probabilities on the pool (view.probs)"
        )
    return view.probs


def random_selection(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` items drawn uniformly at random, without replacement, from the unlabelled pool.

    The passive baseline every active-learning strategy is compared with (Settles 2009, "Active
    Learning Literature Survey", Computer Sciences Technical Report 1648, University of
    Wisconsin-Madison). One ``torch.randperm`` over the available items is drawn.

    Args:
        view: the round's pool (uses ``available`` only).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: the source of randomness.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, in the order chosen.

    Raises:
        ValueError: if ``count < 1`` or ``count`` exceeds the number of available items.
    """
    available = _available_indices("random_selection", view, count)
    perm = torch.randperm(available.numel(), generator=generator, device=generator.device)
    return available[perm[:count].to(available.device)]


def balanced_random(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """Class-balanced random selection: the standard K-shot support set, chosen round by round.

    Each of the ``count`` labels goes to the class with the fewest labelled examples so far
    (``view.labelled_classes`` plus the items already chosen in this call; ties to the lowest
    class index) among the classes that still have available items, and within that class to an
    item chosen uniformly at random. Starting from one label per class and asking for ``count = N``
    per round, every round adds one example per class, as in the N-way K-shot episodes of Vinyals
    et al. 2016 ("Matching Networks for One Shot Learning", NeurIPS). It reads the true classes of
    the pool (``view.pool_classes``), which a real active learner does not know: it is a reference
    protocol, not an acquisition strategy a learner could run.

    One ``torch.randperm`` over the available items is drawn; within each class items are taken in
    its order, which is uniform over the class's remaining items.

    Args:
        view: the round's pool (uses ``available``, ``pool_classes``, ``labelled_classes``).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: the source of randomness.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, in the order chosen.

    Raises:
        ValueError: if ``count < 1`` or ``count`` exceeds the number of available items.
    """
    available = _available_indices("balanced_random", view, count)
    perm = torch.randperm(available.numel(), generator=generator, device=generator.device)
    shuffled = available[perm.to(available.device)]
    n_classes = int(torch.cat([view.pool_classes, view.labelled_classes]).max()) + 1
    shuffled_classes = view.pool_classes[shuffled]
    queues = [shuffled[shuffled_classes == c].tolist() for c in range(n_classes)]
    counts = torch.bincount(view.labelled_classes, minlength=n_classes).tolist()
    chosen: list[int] = []
    for _ in range(count):
        c = min((c for c in range(n_classes) if queues[c]), key=lambda c: (counts[c], c))
        chosen.append(queues[c].pop(0))
        counts[c] += 1
    return torch.tensor(chosen, dtype=torch.int64, device=available.device)


def max_entropy(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """The ``count`` available items of largest predictive entropy ``-sum_c p_c log p_c``.

    Entropy uncertainty sampling (Settles 2009, "Active Learning Literature Survey", Sec. 3.1);
    ``0 log 0 = 0``. Ties go to the lowest pool index; ``generator`` is not used (it is accepted
    for the common signature).

    Args:
        view: the round's pool (uses ``available`` and ``probs``, float ``[P, N]``).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: unused.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, most uncertain first.

    Raises:
        ValueError: if ``view.probs`` is None, ``count < 1`` or ``count`` exceeds the number of
            available items.
    """
    probs = _probs("max_entropy", view)
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    return _lowest("max_entropy", view, count, -entropy)


def smallest_margin(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """The ``count`` available items whose two most probable classes are closest in probability.

    Margin uncertainty sampling (Settles 2009, "Active Learning Literature Survey", Sec. 3.1): the
    margin is ``p_(1) - p_(2)``, the largest minus the second-largest predicted probability. Ties
    go to the lowest pool index; ``generator`` is not used (it is accepted for the common
    signature).

    Args:
        view: the round's pool (uses ``available`` and ``probs``, float ``[P, N]``).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: unused.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, smallest margin first.

    Raises:
        ValueError: if ``view.probs`` is None, ``count < 1`` or ``count`` exceeds the number of
            available items.
    """
    top2 = _probs("smallest_margin", view).topk(2, dim=1).values
    return _lowest("smallest_margin", view, count, top2[:, 0] - top2[:, 1])


def least_confidence(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """The ``count`` available items whose most probable class has the smallest probability.

    Least-confidence uncertainty sampling (Settles 2009, "Active Learning Literature Survey",
    Sec. 3.1): the item maximising ``1 - max_c p_c``. Ties go to the lowest pool index;
    ``generator`` is not used (it is accepted for the common signature).

    Args:
        view: the round's pool (uses ``available`` and ``probs``, float ``[P, N]``).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: unused.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, least confident first.

    Raises:
        ValueError: if ``view.probs`` is None, ``count < 1`` or ``count`` exceeds the number of
            available items.
    """
    top = _probs("least_confidence", view).max(dim=1).values
    return _lowest("least_confidence", view, count, top)


def k_center_greedy(view: PoolView, count: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-center selection in the learner's embedding space (the core-set approach).

    Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach", ICLR, Algorithm 1 (k-Center-Greedy). The centres are the labelled support set
    (``view.labelled_embeddings``) plus the items chosen so far; each step chooses the available
    item farthest (Euclidean distance) from its nearest centre, ties to the lowest pool index.
    When nothing is labelled (``L = 0``) every item is infinitely far, and the first item is drawn
    uniformly at random from the available ones with ``generator`` (one ``torch.randint``); the
    generator is not used otherwise.

    Args:
        view: the round's pool (uses ``available``, ``embeddings`` float ``[P, D]`` and
            ``labelled_embeddings`` float ``[L, D]``).
        count: number of items to choose, ``1 <= count <=`` the number of available items.
        generator: the source of the first pick when ``L = 0``.

    Returns:
        int64 ``[count]`` distinct indices of available pool items, in the order chosen.

    Raises:
        ValueError: if ``view.embeddings`` or ``view.labelled_embeddings`` is None, ``count < 1``
            or ``count`` exceeds the number of available items.
    """
    if view.embeddings is None or view.labelled_embeddings is None:
        raise ValueError(
            "k_center_greedy needs the learner's embeddings of the pool and of the labelled "
            "support set (view.embeddings, view.labelled_embeddings; [0, D] when nothing is "
            "labelled)"
        )
    available = _available_indices("k_center_greedy", view, count)
    emb, centres = view.embeddings, view.labelled_embeddings
    exact = "donot_use_mm_for_euclid_dist"  # exact distances: a point is at distance 0 from itself
    if centres.shape[0] > 0:
        nearest = torch.cdist(emb, centres, compute_mode=exact).min(dim=1).values
    else:
        nearest = torch.full((emb.shape[0],), torch.inf, dtype=emb.dtype, device=emb.device)
    open_ = view.available.clone()  # items that may still be chosen
    chosen: list[int] = []
    for step in range(count):
        if step == 0 and centres.shape[0] == 0:
            device = generator.device
            first = torch.randint(available.numel(), (1,), generator=generator, device=device)
            pick = int(available[int(first)])
        else:
            # the first maximum over the open items: ties go to the lowest index
            pick = int(torch.argmax(nearest.masked_fill(~open_, -torch.inf)))
        chosen.append(pick)
        open_[pick] = False
        distance = torch.cdist(emb, emb[pick : pick + 1], compute_mode=exact).squeeze(1)
        nearest = torch.minimum(nearest, distance)
    return torch.tensor(chosen, dtype=torch.int64, device=available.device)


STRATEGIES: dict[str, Strategy] = {
    "random": random_selection,
    "balanced": balanced_random,
    "entropy": max_entropy,
    "margin": smallest_margin,
    "least_confidence": least_confidence,
    "kcenter": k_center_greedy,
}
"""The acquisition strategies by name (the order in which tables list them)."""

NEEDS: dict[str, frozenset[str]] = {
    "random": frozenset(),
    "balanced": frozenset(),
    "entropy": frozenset({"probs"}),
    "margin": frozenset({"probs"}),
    "least_confidence": frozenset({"probs"}),
    "kcenter": frozenset({"embeddings"}),
}
"""Which learner outputs each strategy reads: ``"probs"`` (:attr:`PoolView.probs`) and
``"embeddings"`` (:attr:`PoolView.embeddings` and :attr:`PoolView.labelled_embeddings`)."""


def strategy(name: str) -> Strategy:
    """The acquisition strategy called ``name`` (a key of :data:`STRATEGIES`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in STRATEGIES:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown acquisition strategy {name!r}: use one of {known}")
    return STRATEGIES[name]
