"""Validation accuracy of a kept learner with its test queries normalised all together
(``query_batch`` 0) and in batches of one query per class (``query_batch`` 1).

Usage (with METABENCH_DATA set, from the repository root):
    python results/omniglot-vinyals-5w1s-converge-diagnosis/query-batch/query_batch.py \
        results/omniglot-vinyals-5w1s-converge-strided/weights/fomaml-seed0.safetensors 1000

Batch norm is transductive (docs/learners.md): a query's prediction depends on the other queries
in its batch. MAML and first-order MAML meta-train on query sets of one image per class
(``train_queries`` = K = 1, as Finn et al.'s released code, which also tests on one query per
class); metabench's episodes have 15 queries per class, by default scored in one batch of 75
(``metabench.algorithms.transductive``). This script scores the first EPISODES 5-way 1-shot
validation episodes of Omniglot (vinyals), 15 queries per class, episode seed 0 (the episodes
``metabench run`` chose the best checkpoint on; no test episode is read) both ways, with the same
adaptation to the support set. Prints the mean accuracy (%) of each with its 95% interval
(1.96 s / sqrt n) and the mean paired difference (per episode) with its interval.
"""

import sys
from pathlib import Path

import numpy as np

from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler
from metabench.reevaluate import load_learner

path, episodes = Path(sys.argv[1]), int(sys.argv[2])
learners = {b: load_learner(path, test_settings={"query_batch": b}) for b in (0, 1)}
split = load_split("omniglot", "vinyals", None, 28, False)
val = EpisodeSampler(split.val, 5, 1, 15, 0, "val")
acc: dict[int, list[float]] = {0: [], 1: []}
for i in range(episodes):
    episode = val.episode(i)
    for b, learner in learners.items():
        acc[b].append((learner.predict(episode).argmax(1) == episode.query_y).float().mean().item() * 100)
whole, groups = np.array(acc[0]), np.array(acc[1])
diff = groups - whole


def ci(a: np.ndarray) -> float:
    return 1.96 * a.std(ddof=1) / np.sqrt(len(a))


print(f"{path}, {len(whole)} validation episodes")
print(f"query_batch 0 (75 queries in one batch)      {whole.mean():.3f} ± {ci(whole):.2f}")
print(f"query_batch 1 (15 batches, one per class)    {groups.mean():.3f} ± {ci(groups):.2f}")
print(f"difference                                   {diff.mean():+.3f} ± {ci(diff):.2f}")
