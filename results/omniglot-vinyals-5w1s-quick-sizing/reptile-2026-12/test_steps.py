"""Validation accuracy of a kept Reptile after 10..100 test-time inner steps (validation episodes only)."""
import sys, numpy as np, torch
from pathlib import Path
from metabench.reevaluate import load_learner
from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler
learner = load_learner(Path(sys.argv[1]))
split = load_split("omniglot", "vinyals", None, 28, False)
val = EpisodeSampler(split.val, 5, 1, 15, 0, "val")
steps = [10, 25, 50, 100]
acc = {s: [] for s in steps}
for i in range(int(sys.argv[2])):
    ep = val.episodes(i, 1)[0]
    out = learner.predict_steps(ep, steps)
    for s in steps:
        acc[s].append((out[s].argmax(1) == ep.query_y).float().mean().item() * 100)
for s in steps:
    a = np.array(acc[s]); print(s, round(a.mean(), 2), round(1.96 * a.std() / np.sqrt(len(a)), 2))
