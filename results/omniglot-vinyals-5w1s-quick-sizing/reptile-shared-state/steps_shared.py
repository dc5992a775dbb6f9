"""Test-time steps of Reptile with the shared inner state (validation episodes only).

Usage (with METABENCH_DATA set):  python steps_shared.py

Meta-trains Reptile as the quick budget does (1000 iterations, seed 0, the shared inner state),
in process, then scores the first 500 5-way 1-shot validation episodes of Omniglot (vinyals),
15 queries per class, episode seed 0, after 5, 10, 25 and 50 test-time steps (each starting from
a copy of meta-training's inner state). Prints steps, mean accuracy (%), 95% interval.
"""
import numpy as np
import torch

from metabench.algorithms import build_learner
from metabench.config import resolve
from metabench.rundata import data_for
from metabench.training import train

STEPS = [5, 10, 25, 50]
config = resolve({"learners": ["reptile"], "budget": "quick", "test_episodes": 1, "val_episodes": 500, "curve_points": 1})
data = data_for(config)
learner = build_learner("reptile", 5, data.input_shape, 1000, torch.device("cpu"), 0, {"inner_state": "shared"})
shape = learner.train_shape(5, 1, 15)
train(learner, data.train_sampler(shape, 0), shape.meta_batch, 1000, None, 0, None)
acc = {s: [] for s in STEPS}
for i in range(500):
    ep = data.val.episodes(i, 1)[0]
    outs = learner.predict_steps(ep, STEPS)
    for s in STEPS:
        acc[s].append((outs[s].argmax(1) == ep.query_y).float().mean().item() * 100)
for s in STEPS:
    a = np.array(acc[s])
    print(s, round(a.mean(), 2), round(1.96 * a.std() / np.sqrt(len(a)), 2))
