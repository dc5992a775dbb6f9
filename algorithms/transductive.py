"""Which query images share a batch at meta-test time, under transductive batch norm.

Batch norm here is transductive (:mod:`metabench.algorithms.backbones`): a forward pass normalises
with the statistics of the images it is given, so a query image's prediction depends on which
other query images are in its batch. MAML, first-order MAML and Reptile meta-train on query sets
(or inner minibatches) of a few images per class, while metabench's test episodes have 15 queries
per class; scoring all 75 in one batch normalises them with statistics of another batch size and
composition than the network was trained on. Finn et al.'s released code (github.com/cbfinn/maml,
``main.py``: ``DataGenerator(FLAGS.update_batch_size*2, ...)`` for Omniglot, K queries per class)
and Nichol et al.'s (github.com/openai/supervised-reptile, ``reptile.py``: ``_test_predictions``
with ``transductive``, on a test set of one image per class) both test Omniglot 1-shot on batches
of **one query per class**, the batches their published 1-shot numbers come from.

:func:`query_groups` splits an episode's query set into batches of ``per_class`` queries of every
class; :func:`forward_in_groups` runs a network on each batch and puts the outputs back in the
episode's order. The learners' ``query_batch`` setting chooses ``per_class`` (0: all queries in one
batch, the default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metabench.datasets.sampler import Episode


def query_groups(episode: Episode, per_class: int) -> list[torch.Tensor] | None:
    """Row indices into ``episode.query_x`` of each transductive query batch.

    Batch ``g`` holds queries ``g * per_class`` to ``(g + 1) * per_class - 1`` of every class (the
    last batch fewer if ``per_class`` does not divide the queries per class Q), in class-major
    order as the episode stores them (row ``c * Q + q`` is query ``q`` of class ``c``).

    Args:
        episode: an episode whose query set is class-major, ``ways * queries`` images.
        per_class: queries of each class per batch (>= 1), or 0 for one batch of all.

    Returns:
        ``None`` when every query goes in one batch (``per_class`` 0 or >= Q); otherwise a list of
        int64 ``[ways * b]`` index tensors (``b <= per_class``) on the episode's device, which
        together hold every query row once.

    Raises:
        ValueError: for a negative ``per_class``, or a query set that is not ``ways * queries``
            images labelled in class-major order, naming the setting to drop (runs refuse
            ``query_batch`` outside the episodic protocol before they start:
            :func:`metabench.protocols.check_query_batch`).
    """
    if per_class < 0:
        raise ValueError(f"query_batch must be >= 0 (0: all queries in one batch), got {per_class}")
    if per_class == 0:
        return None
    ways, queries = episode.ways, episode.queries
    if per_class >= queries:
        return None
    device = episode.query_x.device
    class_major = torch.arange(ways, device=device).repeat_interleave(queries)
    if episode.query_x.shape[0] != ways * queries or not torch.equal(episode.query_y.to(device), class_major):
        raise ValueError(f"query_batch={per_class} needs a query set of {ways} x {queries} images in class-major order, "
                         f"got {episode.query_x.shape[0]} images labelled in another order or number: "
                         "drop --set <learner>.query_batch for this protocol")
    rows = torch.arange(ways * queries, device=device).reshape(ways, queries)
    return [rows[:, start:start + per_class].reshape(-1) for start in range(0, queries, per_class)]


def forward_in_groups(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      groups: list[torch.Tensor] | None) -> torch.Tensor:
    """``forward`` applied to each batch ``x[groups[i]]``, outputs put back in the rows of ``x``.

    Args:
        forward: a network pass, ``[m, ...] -> [m, outputs]``.
        x: query images ``[M, C, H, W]``.
        groups: from :func:`query_groups`; ``None`` runs ``forward(x)`` once.

    Returns:
        ``[M, outputs]``: row ``i`` is the output for ``x[i]`` computed in its batch.
    """
    if groups is None:
        return forward(x)
    return merge_groups([forward(x[rows]) for rows in groups], groups)


def merge_groups(parts: list[torch.Tensor], groups: list[torch.Tensor]) -> torch.Tensor:
    """The outputs of each batch put back in the episode's query order.

    Args:
        parts: ``parts[i]`` the outputs ``[len(groups[i]), ...]`` for the rows ``groups[i]``.
        groups: from :func:`query_groups` (not ``None``).

    Returns:
        ``[M, ...]`` with row ``groups[i][j]`` equal to ``parts[i][j]``, M the rows of all groups.
    """
    out = parts[0].new_empty((sum(len(rows) for rows in groups), *parts[0].shape[1:]))
    for rows, part in zip(groups, parts):
        out[rows] = part
    return out
