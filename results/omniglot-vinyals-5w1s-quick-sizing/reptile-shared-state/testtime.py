"""Reptile's shared inner state at test time (validation episodes only).

Usage (with METABENCH_DATA set):  python testtime.py SEED

Meta-trains Reptile as the quick budget does (1000 iterations, seed SEED, the shared inner state),
in process, then scores the first 1000 5-way 1-shot validation episodes of Omniglot (vinyals),
15 queries per class, episode seed 0, after 10 test-time steps, starting the test-time Adam from
a new state ("fresh") or from a copy of meta-training's (the authors' evaluate(); "shared", what
Reptile.predict does). Prints mean accuracy (%) and the 95% interval (1.96 s / sqrt n) of each,
and of their paired difference.
"""
import sys

import numpy as np
import torch

from metabench.algorithms import build_learner
from metabench.config import resolve
from metabench.rundata import data_for
from metabench.training import train

seed = int(sys.argv[1])
config = resolve({"learners": ["reptile"], "budget": "quick", "test_episodes": 1, "val_episodes": 1000, "curve_points": 1})
data = data_for(config)
learner = build_learner("reptile", 5, data.input_shape, 1000, torch.device("cpu"), seed,
                        {"inner_state": "shared", "test_inner_steps": 10})
shape = learner.train_shape(5, 1, 15)
train(learner, data.train_sampler(shape, seed), shape.meta_batch, 1000, None, 0, None)
fresh, shared = [], []
for i in range(1000):
    ep = data.val.episodes(i, 1)[0]
    with torch.enable_grad():  # opt=None: a new inner optimiser
        _, _, outs = learner._fine_tune(learner._fast, ep.support_x, ep.support_y, 10, 5, learner._episode_rng(ep),
                                        ep.query_x, [10])
    fresh.append((outs[10].argmax(1) == ep.query_y).float().mean().item() * 100)
    shared.append((learner.predict(ep).argmax(1) == ep.query_y).float().mean().item() * 100)
for name, a in (("fresh", fresh), ("shared", shared)):
    a = np.array(a)
    print(name, round(a.mean(), 2), round(1.96 * a.std() / np.sqrt(len(a)), 2))
d = np.array(shared) - np.array(fresh)
print("shared - fresh", round(d.mean(), 2), round(1.96 * d.std() / np.sqrt(len(d)), 2))
