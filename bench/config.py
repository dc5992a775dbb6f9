"""Run configuration: what to benchmark, on which episodes, for how long.

A :class:`RunConfig` is resolved from defaults, an optional TOML file and command-line flags (in
that order of precedence, later wins) and is stored verbatim in the run directory
(``config.json``), so a run can be repeated from its own record.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metabench.algorithms import LEARNERS, learner_config
from metabench.datasets import DATASETS
from metabench.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Budget:
    """How long each learner trains and how much evaluation a run does.

    Attributes:
        iterations: meta-training steps (outer-loop updates) per learner.
        test_episodes: test episodes shared by all learners (600 unless a preset says otherwise).
        val_episodes: validation episodes per point of the learning curve.
        curve_points: validation evaluations during training (evenly spaced, the last at the end).
    """

    iterations: Mapping[str, int]
    test_episodes: int = 600
    val_episodes: int = 20
    curve_points: int = 5


#: Budget presets. ``quick`` is sized so that all five learners train and test on 600 episodes in
#: at most 15 minutes on 2 CPU cores (see the README for the measured run). ``paper`` is the
#: papers' schedule: Finn et al. (2017) released Omniglot runs of 60,000 meta-iterations; Nichol
#: et al. (2018, App. A) 100,000; Snell et al. (2017) trained to convergence on validation loss
#: and Vinyals et al. (2016) give no count, so 20,000 episodes is used for the metric learners.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        iterations={name: 2 for name in LEARNERS}, test_episodes=10, val_episodes=2, curve_points=1
    ),
    "quick": Budget(
        iterations={"maml": 220, "fomaml": 200, "reptile": 500, "protonet": 300, "matchingnet": 800},
        test_episodes=600, val_episodes=10, curve_points=3,
    ),
    "paper": Budget(
        iterations={"maml": 60000, "fomaml": 60000, "reptile": 100000, "protonet": 20000, "matchingnet": 20000},
        test_episodes=600, val_episodes=100, curve_points=20,
    ),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a benchmark run.

    Attributes:
        dataset, split: data to use (see ``metabench.datasets.DATASETS``).
        ways, shots, queries: N-way K-shot test episodes with Q queries per class.
        learners: learner names, in the order they run.
        budget: preset name in :data:`BUDGETS`.
        iterations: meta-training steps per learner (resolved from the budget unless given).
        test_episodes, val_episodes, curve_points: see :class:`Budget`.
        seeds: training seeds (network initialisation and training episodes); one run per seed.
        episode_seed: seed of the test and validation episodes, shared by all learners and seeds.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        data_root: where the data is (``None``: ``METABENCH_DATA``, then the user cache).
        download: fetch missing data from the official sources.
        out: the run directory to write (``None``: ``runs/<time>-<dataset>-<split>-<N>w<K>s``).
        hparams: per-learner hyperparameter overrides, e.g. ``{"maml": {"inner_lr": 0.1}}``.
        image_size: side of the square images fed to the networks, in pixels.
        workers: processes for the test evaluation (0: one per torch CPU thread on CPU, one on
            CUDA; see :func:`metabench.evaluation.default_workers`).
    """

    dataset: str = "omniglot"
    split: str = "vinyals"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    learners: tuple[str, ...] = tuple(LEARNERS)
    budget: str = "quick"
    iterations: Mapping[str, int] = field(default_factory=dict)
    test_episodes: int = 600
    val_episodes: int = 20
    curve_points: int = 5
    seeds: tuple[int, ...] = (0,)
    episode_seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    download: bool = True
    out: str | None = None
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    image_size: int = 28
    workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for ``config.json``)."""
        d = dataclasses.asdict(self)
        d["learners"] = list(self.learners)
        d["seeds"] = list(self.seeds)
        d["iterations"] = dict(self.iterations)
        d["hparams"] = {k: dict(v) for k, v in self.hparams.items()}
        return d


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML run configuration (keys as in :class:`RunConfig`, ``[hparams.<learner>]`` tables).

    Raises:
        ConfigError: if the file is missing or not valid TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}): check the --config path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}): fix the file") from None


def _int(key: str, value: Any) -> int:
    """``value`` as an int, accepting ints, whole floats and digit strings.

    Raises:
        ConfigError: naming ``key`` for anything else (booleans, fractions, words).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{key} must be a whole number, got {value!r}: fix it in the flags or the TOML file")


def _bool(key: str, value: Any) -> bool:
    """``value`` if it is a boolean (TOML ``true``/``false``).

    Raises:
        ConfigError: for anything else (e.g. the string ``"false"``).
    """
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be true or false (unquoted in TOML), got {value!r}")


def resolve(values: Mapping[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a flat mapping (TOML merged with flags).

    Keys that are absent or ``None`` take the defaults; the budget preset fills ``iterations``,
    ``test_episodes``, ``val_episodes`` and ``curve_points`` unless they are given. A scalar
    ``iterations`` applies to every learner.

    Raises:
        ConfigError: for unknown keys, learners, datasets, splits, budgets, hyperparameters, or
            non-positive counts.
    """
    known = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(known))}")

    dataset = given.get("dataset", RunConfig.dataset)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    split = given.get("split", RunConfig.split)
    if split not in DATASETS[dataset].splits:
        raise ConfigError(f"unknown split {split!r} of {dataset}: choose one of {', '.join(DATASETS[dataset].splits)}")

    learners = given.get("learners", tuple(LEARNERS))
    if isinstance(learners, str):
        learners = [s.strip() for s in learners.split(",") if s.strip()]
    learners = tuple(learners)
    if not learners:
        raise ConfigError("no learners selected: pass --learners with at least one of " + ", ".join(LEARNERS))
    for name in learners:
        if name not in LEARNERS:
            raise ConfigError(f"unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
    if len(set(learners)) != len(learners):
        raise ConfigError("a learner is listed twice in --learners: list each once")

    budget_name = given.get("budget", RunConfig.budget)
    if budget_name not in BUDGETS:
        raise ConfigError(f"unknown budget {budget_name!r}: choose one of {', '.join(BUDGETS)}")
    budget = BUDGETS[budget_name]
    iterations = given.get("iterations")
    if iterations is None:
        iterations = {name: budget.iterations[name] for name in learners}
    elif isinstance(iterations, Mapping):
        for name in iterations:
            if name not in LEARNERS:
                raise ConfigError(f"iterations given for unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
        iterations = {name: _int(f"iterations.{name}", iterations.get(name, budget.iterations[name])) for name in learners}
    else:
        iterations = {name: _int("iterations", iterations) for name in learners}

    hparams = given.get("hparams", {})
    if not isinstance(hparams, Mapping):
        raise ConfigError("hparams must be a table of [hparams.<learner>] tables, e.g. [hparams.maml] inner_lr = 0.4")
    for name, overrides in hparams.items():
        if name not in LEARNERS:
            raise ConfigError(f"hyperparameters given for unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
        learner_config(name, overrides)  # validates names and types

    seeds = given.get("seeds", (0,))
    if isinstance(seeds, str):
        seeds = [s for s in seeds.split(",") if s.strip()]
    elif not isinstance(seeds, (list, tuple)):
        seeds = [seeds]
    config = RunConfig(
        dataset=dataset,
        split=split,
        ways=_int("ways", given.get("ways", RunConfig.ways)),
        shots=_int("shots", given.get("shots", RunConfig.shots)),
        queries=_int("queries", given.get("queries", RunConfig.queries)),
        learners=learners,
        budget=budget_name,
        iterations=iterations,
        test_episodes=_int("test_episodes", given.get("test_episodes", budget.test_episodes)),
        val_episodes=_int("val_episodes", given.get("val_episodes", budget.val_episodes)),
        curve_points=_int("curve_points", given.get("curve_points", budget.curve_points)),
        seeds=tuple(_int("seeds", s) for s in seeds),
        episode_seed=_int("episode_seed", given.get("episode_seed", RunConfig.episode_seed)),
        device=str(given.get("device", RunConfig.device)),
        data_root=str(given["data_root"]) if "data_root" in given else None,
        download=_bool("download", given.get("download", True)),
        out=str(given["out"]) if "out" in given else None,
        hparams={k: dict(v) for k, v in hparams.items()},
        image_size=_int("image_size", given.get("image_size", RunConfig.image_size)),
        workers=_int("workers", given.get("workers", RunConfig.workers)),
    )
    _check_counts(config)
    return config


def _check_counts(config: RunConfig) -> None:
    """Raise :class:`ConfigError` for non-positive sizes or counts."""
    checks = {
        "--ways": (config.ways, 2), "--shots": (config.shots, 1), "--queries": (config.queries, 1),
        "--test-episodes": (config.test_episodes, 1), "--val-episodes": (config.val_episodes, 0),
        "--curve-points": (config.curve_points, 0), "--image-size": (config.image_size, 16),
        "--workers": (config.workers, 0),
    }
    for flag, (value, low) in checks.items():
        if value < low:
            raise ConfigError(f"{flag} must be at least {low} (got {value})")
    for name, n in config.iterations.items():
        if n < 1:
            raise ConfigError(f"meta-iterations for {name} must be at least 1 (got {n}): raise --iterations")
    if not config.seeds:
        raise ConfigError("no seeds given: pass --seeds with at least one integer")
    if min(config.seeds) < 0 or config.episode_seed < 0:
        raise ConfigError("seeds must be >= 0: fix --seeds / --episode-seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"--seeds lists a seed twice ({','.join(map(str, config.seeds))}): list each once")
