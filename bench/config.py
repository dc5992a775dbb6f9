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

#: Budget presets for regression datasets (sinusoid). ``quick`` fits all four regression learners
#: in a few minutes on 2 CPU cores (the README gives the measured run). ``paper``: Finn et al.'s
#: released code (github.com/cbfinn/maml, README commands) trains MAML and the pretrained
#: baseline on sinusoids for 70,000 meta-iterations of 25 tasks; Reptile's sine-wave
#: demonstration (Nichol & Schulman 2018) takes 30,000 one-task iterations. Validation tasks also
#: tune the pretrained baseline's fine-tuning step size.
REGRESSION_BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        iterations={name: 2 for name in LEARNERS}, test_episodes=10, val_episodes=2, curve_points=1
    ),
    "quick": Budget(
        iterations={"maml": 6000, "fomaml": 6000, "reptile": 15000, "pretrained": 6000},
        test_episodes=600, val_episodes=100, curve_points=5,
    ),
    "paper": Budget(
        iterations={"maml": 70000, "fomaml": 70000, "reptile": 30000, "pretrained": 70000},
        test_episodes=600, val_episodes=100, curve_points=20,
    ),
}


def budget_for(name: str, kind: str) -> Budget:
    """The budget preset ``name`` for a dataset of ``kind`` (``"classification"`` or
    ``"regression"``).

    Raises:
        ConfigError: for an unknown preset.
    """
    table = REGRESSION_BUDGETS if kind == "regression" else BUDGETS
    if name not in table:
        raise ConfigError(f"unknown budget {name!r}: choose one of {', '.join(table)}")
    return table[name]


def learners_for(kind: str) -> tuple[str, ...]:
    """The learners defined for a dataset of ``kind``, in registry order (the default
    ``--learners``)."""
    return tuple(name for name, cls in LEARNERS.items() if kind in cls.KINDS)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a benchmark run.

    Attributes:
        dataset, split: data to use (see ``metabench.datasets.DATASETS``); meta-training and
            validation use this dataset's train and val partitions.
        test_dataset, test_split: where the test episodes come from (its test partition); the
            same as ``dataset``/``split`` unless a cross-domain run names another (e.g. meta-train
            on Omniglot, test on scikit-learn's digits). Images of both are resized to
            ``image_size`` and must have the same channels.
        ways, shots, queries: N-way K-shot test episodes with Q queries per class. For
            regression, ``ways`` is 1 (one output), ``shots`` the K support points and ``queries``
            the query points per task.
        learners: learner names, in the order they run (default: every learner defined for the
            dataset's kind).
        skipped: learners asked for but not defined for the dataset's kind (for regression: the
            metric learners), with the reason; they are reported, not run.
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
        image_size: side of the square images fed to the networks, in pixels (default: the
            dataset's, e.g. 28 for Omniglot; 0 for regression).
        workers: processes for the test evaluation (0: one per torch CPU thread on CPU, one on
            CUDA; see :func:`metabench.evaluation.default_workers`).
    """

    dataset: str = "omniglot"
    split: str = "vinyals"
    test_dataset: str = "omniglot"
    test_split: str = "vinyals"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    learners: tuple[str, ...] = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
    skipped: Mapping[str, str] = field(default_factory=dict)
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
        d["skipped"] = dict(self.skipped)
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

    Keys that are absent or ``None`` take the defaults, some of which depend on the dataset: its
    first split, its image size, and for regression (sinusoid) ``ways`` 1, ``shots`` 10 and 100
    query points. The budget preset (per dataset kind, :func:`budget_for`) fills ``iterations``,
    ``test_episodes``, ``val_episodes`` and ``curve_points`` unless they are given. A scalar
    ``iterations`` applies to every learner. Learners not defined for the dataset's kind are
    moved to ``skipped`` with the reason (the run reports them instead of failing).

    Raises:
        ConfigError: for unknown keys, learners, datasets, splits, budgets, hyperparameters,
            non-positive counts, ``ways`` given for regression, a dataset without meta-training
            classes, a cross-domain pair of different kinds or channels, or no learner left to run.
    """
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"skipped"}
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(known))}")

    dataset = given.get("dataset", RunConfig.dataset)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    split = given.get("split", info.splits[0])
    if split not in info.splits:
        raise ConfigError(f"unknown split {split!r} of {dataset}: choose one of {', '.join(info.splits)}")
    if info.partitions.get(split, (1, 1, 1))[0] == 0:
        raise ConfigError(f"{dataset} has no meta-training classes (its {split} split is meta-test only): meta-train on "
                          f"another dataset and test on it with --test-dataset {dataset}")
    test_dataset = given.get("test_dataset", dataset)
    if test_dataset not in DATASETS:
        raise ConfigError(f"unknown test dataset {test_dataset!r}: choose one of {', '.join(DATASETS)}")
    test_info = DATASETS[test_dataset]
    test_split = given.get("test_split", split if test_dataset == dataset else test_info.splits[0])
    if test_split not in test_info.splits:
        raise ConfigError(f"unknown split {test_split!r} of {test_dataset}: choose one of {', '.join(test_info.splits)}")
    if test_info.kind != info.kind or test_info.channels != info.channels:
        raise ConfigError(
            f"cannot test on {test_dataset} after meta-training on {dataset}: they differ in "
            f"{'kind' if test_info.kind != info.kind else 'image channels'} ({test_info.kind} "
            f"{test_info.channels}-channel vs {info.kind} {info.channels}-channel): pick a --test-dataset like {dataset}"
        )
    regression = info.kind == "regression"
    if regression and "ways" in given and _int("ways", given["ways"]) != 1:
        raise ConfigError(f"{dataset} is a regression dataset and has no classes: drop --ways")

    skipped: dict[str, str] = {}
    learners = given.get("learners", learners_for(info.kind))
    if isinstance(learners, str):
        learners = [s.strip() for s in learners.split(",") if s.strip()]
    learners = tuple(learners)
    for name in learners:
        if name not in LEARNERS:
            raise ConfigError(f"unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
    if len(set(learners)) != len(learners):
        raise ConfigError("a learner is listed twice in --learners: list each once")
    for name in learners:
        if info.kind not in LEARNERS[name].KINDS:
            skipped[name] = f"{LEARNERS[name].title} is not defined for {info.kind}: {LEARNERS[name].WHY_NOT}"
    learners = tuple(name for name in learners if name not in skipped)
    if not learners:
        raise ConfigError(f"no learner left to run on {dataset} ({info.kind}): pass --learners with at least one of "
                          + ", ".join(learners_for(info.kind)))

    budget_name = given.get("budget", RunConfig.budget)
    budget = budget_for(budget_name, info.kind)
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
        learner_config(name, overrides, info.kind)  # validates names and types

    seeds = given.get("seeds", (0,))
    if isinstance(seeds, str):
        seeds = [s for s in seeds.split(",") if s.strip()]
    elif not isinstance(seeds, (list, tuple)):
        seeds = [seeds]
    config = RunConfig(
        dataset=dataset,
        split=split,
        test_dataset=test_dataset,
        test_split=test_split,
        ways=1 if regression else _int("ways", given.get("ways", RunConfig.ways)),
        shots=_int("shots", given.get("shots", 10 if regression else RunConfig.shots)),
        queries=_int("queries", given.get("queries", 100 if regression else RunConfig.queries)),
        learners=learners,
        skipped=skipped,
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
        image_size=_int("image_size", given.get("image_size", info.image_size)),
        workers=_int("workers", given.get("workers", RunConfig.workers)),
    )
    _check_counts(config, info.kind)
    return config


def _check_counts(config: RunConfig, kind: str) -> None:
    """Raise :class:`ConfigError` for non-positive sizes or counts."""
    checks = {
        "--ways": (config.ways, 1 if kind == "regression" else 2), "--shots": (config.shots, 1),
        "--queries": (config.queries, 1),
        "--test-episodes": (config.test_episodes, 1), "--val-episodes": (config.val_episodes, 0),
        "--curve-points": (config.curve_points, 0), "--image-size": (config.image_size, 0 if kind == "regression" else 16),
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
