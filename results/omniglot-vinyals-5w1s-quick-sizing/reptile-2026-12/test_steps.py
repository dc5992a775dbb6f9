"""Validation accuracy of a kept Reptile after 10, 25, 50 and 100 test-time inner steps.

Usage (with METABENCH_DATA set):  python test_steps.py WEIGHTS.safetensors EPISODES

Scores the first EPISODES 5-way 1-shot validation episodes of Omniglot (vinyals), 15 queries per
class, episode seed 0: the validation episodes ``metabench run`` uses. No test episode is read.
Prints one line per step count: steps, mean accuracy (%), 95% confidence interval (1.96 s / sqrt n).
"""

import sys
from pathlib import Path

import numpy as np

from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler
from metabench.reevaluate import load_learner

STEPS = [10, 25, 50, 100]

learner = load_learner(Path(sys.argv[1]))
split = load_split("omniglot", "vinyals", None, 28, False)
val = EpisodeSampler(split.val, 5, 1, 15, 0, "val")
acc: dict[int, list[float]] = {s: [] for s in STEPS}
for i in range(int(sys.argv[2])):
    episode = val.episodes(i, 1)[0]
    outputs = learner.predict_steps(episode, STEPS)
    for s in STEPS:
        acc[s].append((outputs[s].argmax(1) == episode.query_y).float().mean().item() * 100)
for s in STEPS:
    a = np.array(acc[s])
    print(s, round(a.mean(), 2), round(1.96 * a.std() / np.sqrt(len(a)), 2))
