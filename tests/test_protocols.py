"""The evaluation-protocol seam: the standard protocols reproduce the committed runs exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metabench.algorithms import LEARNERS
from metabench.config import resolve
from metabench.environment import same_rounding
from metabench.errors import ConfigError
from metabench.protocols import protocol_class, protocol_for, registry, standard
from metabench.reevaluate import evaluate_run
from metabench.rundata import data_for

REPO = Path(__file__).resolve().parents[1]
#: Committed runs with kept weights, re-scored through the protocols: (run directory, episodes
#: re-scored, worker processes as the run scored them: None for the run's own setting; ``-v1`` is the
#: quick run as first sized, whose weights the protocol runs evaluate, scored before meta-training
#: went channels-last (prediction did not change with it); the sinusoid
#: run scored every learner in one process, before Reptile's TEST_IN_WORKERS, see its WEIGHTS.md).
COMMITTED = [("omniglot-vinyals-5w1s-quick", 8, None), ("omniglot-vinyals-5w1s-quick-v1", 8, None), ("sinusoid-k10-quick", 16, 1)]


def committed_config(run: str, data_root: Path):
    """The committed run's configuration as ``metabench run`` resolves it today."""
    original = json.loads((REPO / "results" / run / "config.json").read_text())
    keep = ("dataset", "split", "test_dataset", "test_split", "ways", "shots", "queries", "learners", "test_episodes",
            "episode_seed", "image_size", "workers")
    return resolve({**{k: original[k] for k in keep}, "data_root": str(data_root), "download": False}), original


@pytest.mark.parametrize("run", ["omniglot-vinyals-5w1s-quick", "omniglot-to-digits-5w1s-quick", "sinusoid-k10-quick"])
def test_protocols_rebuild_the_committed_fingerprints(run: str, data_root: Path) -> None:
    config, original = committed_config(run, data_root)
    protocol = protocol_for(config)
    assert protocol.name == standard(original["kind"])
    material = protocol.material(config, data_for(config))
    meta = json.loads((REPO / "results" / run / "run.json").read_text())
    assert material.count == original["test_episodes"] == 600
    assert material.fingerprint == meta["fingerprint"] == PINNED_FINGERPRINTS[run]
    assert material.pool == meta["test_pool"]


#: The committed runs' episode fingerprints, written out: the README and docs quote the first
#: (``13f0821f766c94b0``); a change of the sampler, the splits or the preprocessing changes them.
PINNED_FINGERPRINTS = {
    "omniglot-vinyals-5w1s-quick": "13f0821f766c94b0b58a71bc65bf63e0eb421d05450adc1a7ee255fd88a7a668",
    "omniglot-to-digits-5w1s-quick": "3b72d1ccda95ced200c6a1201ba3448cf0917f613bfa3eb85a7c6cc40f202807",
    "sinusoid-k10-quick": "ebffd242eb4f9c6a81eb654c74ebe2cc4614e880759feb8f9b68ae78f29a60cb",
}


#: Learners whose test-time fine-tuning (Reptile: 10 Adam steps in the quick runs) amplifies another
#: CPU's rounding: their losses are compared to 1e-3 relative there (measured on an AVX2-only "AMD
#: EPYC" against the committed runs: 5.7e-5 at most over the first 8 episodes; a change of the
#: weights or of the method moves losses by far more).
OTHER_CPU_RTOL = {"reptile": 1e-3}


@pytest.mark.slow
@pytest.mark.parametrize(("run", "count", "workers"), COMMITTED)
def test_protocols_rescore_the_committed_episodes(run: str, count: int, workers: int | None, data_root: Path,
                                                  tmp_path: Path) -> None:
    """The kept weights of a committed run, scored through its protocol, give the committed
    per-episode results.

    Accuracies (counts of correct queries) must be identical. Losses and MSEs must be bit for bit
    identical on a CPU that rounds as the one that made the run (the same model name and vector
    instruction set, :func:`~metabench.environment.same_rounding`), except for learners that fine-tune in worker
    processes (``TEST_IN_WORKERS``: Reptile, unless ``workers`` is 1), whose float32 losses differ by rounding
    (2.4e-7 nats at most, measured on the first 8 episodes; their accuracies are identical). On
    another CPU float32 rounding differs everywhere (other vector widths and summation
    orders). Those are compared to 1e-5 relative, about 100 float32 ulps, plus 1e-6 absolute: a
    loss near 0 (a confident episode) carries its logits' rounding, which is absolute in nats, not
    relative (an "AMD EPYC" with AVX2 only, against the committed runs' "AMD EPYC": MAML's losses
    3.3e-6 relative apart at most, one Prototypical Networks loss of 0.0035 nats 4.2e-8 apart,
    1.2e-5 relative; identical accuracies). The committed runs predate the record of the instruction set, so
    they are compared this way everywhere.
    """
    source = REPO / "results" / run
    out = evaluate_run(source, tmp_path / "again", progress=False, test_episodes=count, data_root=str(data_root),
                       download=False, device="cpu", workers=workers)
    committed = pd.read_csv(source / "episodes.csv")
    committed = committed[committed["episode"] < count].reset_index(drop=True)
    again = pd.read_csv(out / "episodes.csv")
    assert list(again.columns) == list(committed.columns)
    assert again[["seed", "learner", "episode"]].equals(committed[["seed", "learner", "episode"]])
    same_cpu = same_rounding(json.loads((source / "environment.json").read_text()))
    values = [c for c in committed.columns if c not in ("seed", "learner", "episode")]
    for name in dict.fromkeys(committed["learner"]):
        mine = (committed["learner"] == name).to_numpy()
        exact = same_cpu and not (LEARNERS[name].TEST_IN_WORKERS and workers != 1)
        for column in values:
            a, b = again.loc[mine, column].to_numpy(), committed.loc[mine, column].to_numpy()
            if exact or column == "accuracy":
                assert np.array_equal(a, b, equal_nan=True), (name, column)
            else:
                rtol = OTHER_CPU_RTOL.get(name, 1e-5) if not same_cpu else 1e-5
                np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6, err_msg=f"{name} {column}")


def test_registry_and_kinds() -> None:
    assert {"episodic", "regression"} <= set(registry())
    assert standard("classification") == "episodic" and standard("regression") == "regression"
    with pytest.raises(ConfigError, match="unknown protocol 'nope': use one of episodic, regression"):
        protocol_class("nope", "classification")
    with pytest.raises(ConfigError, match="protocol regression is not defined for classification datasets"):
        protocol_class("regression", "classification")


def test_config_records_the_protocol_and_its_settings() -> None:
    config = resolve({"budget": "smoke"})
    assert config.protocol == "episodic" and config.protocol_settings == {}
    assert config.to_dict()["protocol"] == "episodic"
    assert resolve({"dataset": "sinusoid", "budget": "smoke"}).protocol == "regression"
    with pytest.raises(ConfigError, match="protocol episodic has no setting"):
        resolve({"budget": "smoke", "protocol_settings": {"pool": 3}})
