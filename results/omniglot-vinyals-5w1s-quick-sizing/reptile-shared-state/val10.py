"""Validation accuracy (10 test-time steps) of kept Reptile weights on the first N validation episodes."""
import sys
from pathlib import Path

import numpy as np

from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler
from metabench.reevaluate import load_learner

learner = load_learner(Path(sys.argv[1]))
split = load_split("omniglot", "vinyals", None, 28, False)
val = EpisodeSampler(split.val, 5, 1, 15, 0, "val")
acc = []
for i in range(int(sys.argv[2])):
    episode = val.episodes(i, 1)[0]
    out = learner.predict_steps(episode, [10])[10]
    acc.append((out.argmax(1) == episode.query_y).float().mean().item() * 100)
a = np.array(acc)
print(sys.argv[1], round(a.mean(), 2), round(1.96 * a.std() / np.sqrt(len(a)), 2))
