"""Seconds per meta-training step at each learner's training shape, conv4 against the strided networks."""
import statistics
import time

import torch

from metabench.algorithms import build_learner
from metabench.datasets import load_split
from metabench.datasets.sampler import EpisodeSampler

torch.set_num_threads(2)
split = load_split("omniglot", "vinyals", None, 28, False)
README_T = {"inner_batch": 25, "train_inner_steps": 3, "meta_batch": 10, "train_shots": 15, "test_inner_batch": 25, "test_inner_steps": 5}
CASES = [("maml", {}), ("maml", {"network": "conv4-stride-mean"}), ("fomaml", {}), ("fomaml", {"network": "conv4-stride-mean"}),
         ("reptile", {}), ("reptile", {"network": "conv4-stride-flat"}), ("reptile", {"network": "conv4-stride-flat", **README_T})]
for name, hp in CASES:
    learner = build_learner(name, 5, (1, 28, 28), 1000, torch.device("cpu"), 0, hp)
    shape = learner.train_shape(5, 1, 15)
    sampler = EpisodeSampler(split.train, shape.ways, shape.shots, shape.queries, 0, "train")
    times = []
    for i in range(25):
        eps = sampler.episodes(i * shape.meta_batch, shape.meta_batch)
        t = time.perf_counter(); learner.meta_train_step(eps); times.append(time.perf_counter() - t)
    print(name, hp.get("network", "conv4"), "readme" if "train_shots" in hp else "", f"{statistics.median(times[5:]):.4f} s/step", flush=True)
