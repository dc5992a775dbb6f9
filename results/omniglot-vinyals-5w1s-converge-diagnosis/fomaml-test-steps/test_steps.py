"""Validation accuracy of the converged first-order MAML after 0 to 20 test-time inner steps.

Usage (with METABENCH_DATA set, from the repository root):
    python results/omniglot-vinyals-5w1s-converge-diagnosis/fomaml-test-steps/test_steps.py \
        results/omniglot-vinyals-5w1s-converge-strided/weights/fomaml-seed0.safetensors 1000

Scores the first EPISODES 5-way 1-shot validation episodes of Omniglot (vinyals), 15 queries per
class, episode seed 0: the validation episodes ``metabench run`` selected the best checkpoint on
(``metabench.rundata``). No test episode is read. The step size is the learner's inner learning
rate (0.4). Prints one line per step count: steps, mean accuracy (%), 95% confidence interval
(1.96 s / sqrt n, percent), and the mean paired difference from 3 steps (the paper's test-time
count, Finn et al. 2017, App. A.1) with its 95% interval.
"""

import sys
from pathlib import Path

import numpy as np

from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler
from metabench.reevaluate import load_learner

STEPS = [0, 1, 2, 3, 5, 10, 20]

learner = load_learner(Path(sys.argv[1]))
split = load_split("omniglot", "vinyals", None, 28, False)
val = EpisodeSampler(split.val, 5, 1, 15, 0, "val")
acc: dict[int, list[float]] = {s: [] for s in STEPS}
for i in range(int(sys.argv[2])):
    episode = val.episode(i)
    outputs = learner.predict_steps(episode, STEPS)
    for s in STEPS:
        acc[s].append((outputs[s].argmax(1) == episode.query_y).float().mean().item() * 100)
base = np.array(acc[3])
print("steps accuracy ci95 diff_vs_3 diff_ci95")
for s in STEPS:
    a = np.array(acc[s])
    d = a - base
    print(s, round(a.mean(), 3), round(1.96 * a.std(ddof=1) / np.sqrt(len(a)), 2),
          round(d.mean(), 3), round(1.96 * d.std(ddof=1) / np.sqrt(len(d)), 2))
