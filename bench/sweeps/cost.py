"""What a sweep will cost: meta-iterations from the budgets, seconds from a measurement here.

``metabench sweep plan`` measures, for each distinct (data, learner, hyperparameters, episode
shapes, protocol) of the sweep, the seconds of one meta-training step at the learner's training
episode shape (the median of :data:`PROBE_STEPS` steps after one untimed step) and the seconds per
validation episode and per test item (the protocol's scoring of :data:`PROBE_ITEMS` items), on this
machine with the sweep's ``[resources] cpus`` threads. A cell's estimate is then

    iterations x s/step + validations x validation episodes x s/episode + test items x s/item

per learner x seed, where ``iterations`` is the budget's count (for ``converge``, the most: the
paper's count, so the estimate is an upper bound) and ``validations`` follows the budget's
validation schedule. Figures from one core count and CPU do not carry over to another machine.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Timed meta-training steps per probe (after one untimed step).
PROBE_STEPS = 3
#: Test items (episodes, pools, streams) scored per probe, and validation episodes.
PROBE_ITEMS = 2


@dataclass(frozen=True)
class Probe:
    """Measured costs of one learner on one configuration.

    Attributes:
        step_s: seconds per meta-training step (median of :data:`PROBE_STEPS`).
        val_episode_s: seconds per validation episode.
        test_item_s: seconds per test item of the run's protocol.
    """

    step_s: float
    val_episode_s: float
    test_item_s: float


def probe_key(config: Mapping[str, Any], learner: str) -> str:
    """What a probe depends on: the configuration without seeds, learners' other hyperparameters,
    iteration counts and output, as a string."""
    import json

    keep = {k: v for k, v in config.items() if k not in ("seeds", "learners", "hparams", "iterations", "out",
                                                         "validate_every", "skipped", "test_episodes", "val_episodes")}
    return json.dumps({**keep, "learner": learner, "hparams": config.get("hparams", {}).get(learner, {})},
                      sort_keys=True, default=str)


def probe(values: Mapping[str, Any], learner: str, threads: int) -> Probe:
    """Measure ``learner`` under the run configuration ``values`` (loads its data).

    Raises:
        ConfigError, DataError: as ``metabench run`` would before training (an episode shape the
            split cannot fill), or the data is not there (a plan downloads nothing).
    """
    import torch

    from metabench.algorithms import build_learner
    from metabench.config import resolve
    from metabench.evaluation import score_episode, synchronize
    from metabench.protocols import protocol_for
    from metabench.rundata import data_for
    from metabench.runner import resolve_device

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = resolve({**values, "learners": [learner], "seeds": [0], "download": False})  # plan fetches nothing
        device = resolve_device(config.device)
        data = data_for(config)
        model = build_learner(learner, config.ways, data.input_shape, config.iterations[learner], device, 0,
                              config.hparams.get(learner))
        shape = model.train_shape(config.ways, config.shots, config.queries)
        sampler = data.train_sampler(shape, 0, f"(training episodes of {learner})")
        times = []
        for i in range(PROBE_STEPS + 1):
            batch = [ep.to(device) for ep in sampler.episodes(i * shape.meta_batch, shape.meta_batch)]
            synchronize(device)
            start = time.perf_counter()
            model.meta_train_step(batch)
            synchronize(device)
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times[1:])
        protocol = protocol_for(config)
        protocol.check(config, data)
        material = protocol.material(config, data)
        val_sampler = data.val or data.test
        start = time.perf_counter()
        for i in range(PROBE_ITEMS):
            score_episode(model, val_sampler.episode(i).to(device))
        synchronize(device)
        val_s = (time.perf_counter() - start) / PROBE_ITEMS
        items = min(PROBE_ITEMS, material.count)
        _, test_s = protocol.score(model, dataclasses.replace(material, count=items), None, 1)
        return Probe(step_s, val_s, test_s / items)
    finally:
        torch.set_num_threads(before)


def validations(config: Mapping[str, Any], learner: str) -> int:
    """Validations during a learner's training (at most, when training to convergence)."""
    if not config.get("val_episodes"):
        return 0
    every = config.get("validate_every", {}).get(learner, 0)
    iterations = config["iterations"][learner]
    return iterations // every if every else min(config.get("curve_points", 0), iterations)


def estimate(config: Mapping[str, Any], probes: Mapping[str, Probe]) -> float:
    """Estimated seconds of a cell (:meth:`RunConfig.to_dict` ``config``), from ``probes`` by
    :func:`probe_key` of each of its learners."""
    total = 0.0
    for learner in config["learners"]:
        p = probes[probe_key(config, learner)]
        per_seed = (config["iterations"][learner] * p.step_s
                    + validations(config, learner) * config["val_episodes"] * p.val_episode_s
                    + config["test_episodes"] * p.test_item_s)
        total += per_seed * len(config["seeds"])
    return total
