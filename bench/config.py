"""Run configuration: what to benchmark, on which episodes, for how long.

A :class:`RunConfig` is resolved from defaults, an optional TOML file and command-line flags (in
that order of precedence, later wins) and is stored verbatim in the run directory
(``config.json``), so a run can be repeated from its own record.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metabench.algorithms import LEARNERS, META_LEARNERS, learner_config
from metabench.datasets import DATASETS, check_split
from metabench.errors import ConfigError
from metabench.protocols import check_query_batch, protocol_class, standard

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Budget:
    """How long each learner trains and how much evaluation a run does.

    The meta-iterations of a learner come from the learner's class (``ITERATIONS`` for
    classification, ``REGRESSION_ITERATIONS`` for regression, keyed by ``preset``), so that a
    new learner brings its own budgets.

    Attributes:
        preset: the key of the learners' iteration tables (``quick``, ``paper``).
        test_episodes: test episodes shared by all learners (600 unless a preset says otherwise).
        val_episodes: validation episodes per validation.
        curve_points: validations during training, evenly spaced, the last at the end (unless
            ``converge``).
        converge: train to convergence: validate every ``VALIDATE_EVERY`` iterations of the
            learner's class, keep the best-validation weights, stop after ``patience``
            validations without improvement or at the learner's ``paper`` count, and test the
            best weights (early stopping on validation, as Snell et al. 2017 did).
        patience: validations without improvement before stopping (``converge`` only).
        fixed: meta-iterations for every learner instead of the learners' tables (``smoke``).
    """

    preset: str
    test_episodes: int = 600
    val_episodes: int = 20
    curve_points: int = 5
    converge: bool = False
    patience: int = 0
    fixed: int | None = None

    def iterations(self, name: str, kind: str) -> int:
        """Meta-iterations of learner ``name`` on a dataset of ``kind``.

        Raises:
            ConfigError: if the learner's class has no count for this preset and kind.
        """
        if self.fixed is not None:
            return self.fixed
        cls = LEARNERS[name]
        table = cls.REGRESSION_ITERATIONS if kind == "regression" else cls.ITERATIONS
        if self.preset not in table:
            raise ConfigError(f"{cls.title} ({name}) has no {self.preset!r} budget for {kind}: give --iterations, "
                              f"or add {self.preset!r} to {cls.__name__}.{'REGRESSION_' if kind == 'regression' else ''}ITERATIONS")
        return table[self.preset]

    def settings(self, name: str, kind: str) -> dict[str, Any]:
        """Hyperparameters this preset sets for learner ``name`` on a dataset of ``kind`` (the
        class's ``BUDGET_SETTINGS``; image datasets only), under the user's overrides."""
        if kind == "regression" or self.fixed is not None:
            return {}
        return dict(LEARNERS[name].BUDGET_SETTINGS.get(self.preset, {}))


#: Validation episodes when training to convergence. Why 1000: two checkpoints' validation
#: accuracies must differ by 0.5 points to be told apart. Per-episode accuracies of 5-way 1-shot
#: Omniglot episodes (15 queries per class) have a standard deviation of at most 4.5 points at
#: 96% and above (the quick run's Prototypical Networks: 96.4 +- 0.36 over 600 episodes); two
#: means over the same 1000 episodes, even treated as independent, then have a difference with a
#: 95% interval of 1.96 * 4.5 * sqrt(2 / 1000) = 0.39 points, below 0.5 (600 episodes: 0.51).
CONVERGE_VAL_EPISODES = 1000

#: Validations without improvement before a converging training stops. With validations 2-20
#: minutes of training apart (``VALIDATE_EVERY``), 10 of them span 10-50% of the paper's schedule.
CONVERGE_PATIENCE = 10

#: Budget presets for image (classification) datasets. ``quick`` is sized so that all five
#: learners train and test on 600 episodes in about 12 minutes on 2 CPU cores (at most 14 on any
#: 2-core x86 machine), its iteration counts chosen on validation accuracy (the sizing run in
#: ``results/omniglot-vinyals-5w1s-quick-sizing``; see docs/results.md). ``paper`` is the papers'
#: schedule (the learners' ``ITERATIONS`` document their counts); ``converge`` trains to
#: convergence on validation within it.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", test_episodes=10, val_episodes=2, curve_points=1, fixed=2),
    "quick": Budget("quick", test_episodes=600, val_episodes=10, curve_points=3),
    "paper": Budget("paper", test_episodes=600, val_episodes=100, curve_points=20),
    "converge": Budget("paper", test_episodes=600, val_episodes=CONVERGE_VAL_EPISODES, converge=True,
                       patience=CONVERGE_PATIENCE),
}

#: Budget presets for regression datasets (sinusoid). ``quick`` fits all four regression learners
#: in a few minutes on 2 CPU cores (docs/results.md gives the measured run); ``paper`` is the papers'
#: schedule (see the learners' ``REGRESSION_ITERATIONS``). Validation tasks also tune the
#: pretrained baseline's fine-tuning step size.
REGRESSION_BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", test_episodes=10, val_episodes=2, curve_points=1, fixed=2),
    "quick": Budget("quick", test_episodes=600, val_episodes=100, curve_points=5),
    "paper": Budget("paper", test_episodes=600, val_episodes=100, curve_points=20),
    "converge": Budget("paper", test_episodes=600, val_episodes=CONVERGE_VAL_EPISODES, converge=True,
                       patience=CONVERGE_PATIENCE),
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
        validate_every: per learner, meta-iterations between validations (empty: validate at
            ``curve_points`` evenly spaced iterations instead); the ``converge`` budget sets the
            learners' ``VALIDATE_EVERY``.
        patience: stop a learner's training after this many validations without improvement
            of the validation accuracy (regression: MSE); 0 never stops early.
        keep_best: test the weights of the best validation instead of the last ones.
        checkpoint_minutes: wall-clock minutes between checkpoints of a training (0: after every
            meta-iteration); does not change any result.
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
        protocol: how the trained learners are tested (:mod:`metabench.protocols`): ``episodic``
            or ``regression`` (the dataset kind's standard protocol, the default), ``active`` or
            ``interactive``.
        protocol_settings: the protocol's settings, every field of its ``Settings`` (defaults
            filled in), e.g. ``{"pool": 10, "budget": 20, ...}`` for ``active``.
    """

    dataset: str = "omniglot"
    split: str = "vinyals"
    test_dataset: str = "omniglot"
    test_split: str = "vinyals"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    learners: tuple[str, ...] = META_LEARNERS
    skipped: Mapping[str, str] = field(default_factory=dict)
    budget: str = "quick"
    iterations: Mapping[str, int] = field(default_factory=dict)
    test_episodes: int = 600
    val_episodes: int = 20
    curve_points: int = 5
    validate_every: Mapping[str, int] = field(default_factory=dict)
    patience: int = 0
    keep_best: bool = False
    checkpoint_minutes: float = 2.0
    seeds: tuple[int, ...] = (0,)
    episode_seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    download: bool = True
    out: str | None = None
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    image_size: int = 28
    workers: int = 0
    protocol: str = "episodic"
    protocol_settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for ``config.json``)."""
        d = dataclasses.asdict(self)
        d["learners"] = list(self.learners)
        d["seeds"] = list(self.seeds)
        d["iterations"] = dict(self.iterations)
        d["validate_every"] = dict(self.validate_every)
        d["skipped"] = dict(self.skipped)
        d["hparams"] = {k: dict(v) for k, v in self.hparams.items()}
        d["protocol_settings"] = json.loads(json.dumps(dict(self.protocol_settings)))  # tuples as JSON lists
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


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["maml.inner_lr=0.1", ...]`` (``--set`` items) -> ``{"maml": {"inner_lr": "0.1"}}``.

    Raises:
        ConfigError: for an item not of the form ``learner.name=value``.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        learner, dot, name = key.partition(".")
        if not sep or not dot or not learner or not name:
            raise ConfigError(f"--set {item!r} is not of the form learner.hyperparameter=value (e.g. maml.inner_lr=0.1)")
        out.setdefault(learner.strip(), {})[name.strip()] = value.strip()
    return out


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
            classes, a cross-domain pair of different kinds or channels, no learner left to run,
            or a learner's ``query_batch`` outside the episodic protocol
            (:func:`~metabench.protocols.check_query_batch`).
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
    check_split(dataset, split, "--split")
    if info.partitions.get(split, (1, 1, 1))[0] == 0:
        raise ConfigError(f"{dataset} has no meta-training classes (its {split} split is meta-test only): meta-train on "
                          f"another dataset and test on it with --test-dataset {dataset}")
    test_dataset = given.get("test_dataset", dataset)
    if test_dataset not in DATASETS:
        raise ConfigError(f"unknown test dataset {test_dataset!r}: choose one of {', '.join(DATASETS)}")
    test_info = DATASETS[test_dataset]
    test_split = given.get("test_split", split if test_dataset == dataset else test_info.splits[0])
    check_split(test_dataset, test_split, "--test-split")
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
    iterations = _per_learner("iterations", given.get("iterations"), learners,
                              lambda name: budget.iterations(name, info.kind))
    validate_every = _per_learner("validate_every", given.get("validate_every"), learners,
                                  lambda name: LEARNERS[name].VALIDATE_EVERY if budget.converge else 0)
    validate_every = {name: v for name, v in validate_every.items() if v}

    hparams = given.get("hparams", {})
    if not isinstance(hparams, Mapping):
        raise ConfigError("hparams must be a table of [hparams.<learner>] tables, e.g. [hparams.maml] inner_lr = 0.4")
    for name, overrides in hparams.items():
        if name not in LEARNERS:
            raise ConfigError(f"hyperparameters given for unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
        learner_config(name, overrides, info.kind)  # validates names and types
    # The preset's settings first, the user's overrides over them: config.json and the kept
    # weights record what the learners were built with.
    hparams = {**hparams, **{name: merged for name in learners
                             if (merged := {**budget.settings(name, info.kind), **hparams.get(name, {})})}}

    protocol_cls = protocol_class(str(given.get("protocol", standard(info.kind))), info.kind)
    settings = given.get("protocol_settings", {})
    if not isinstance(settings, Mapping):
        raise ConfigError("protocol_settings must be a table, e.g. [protocol_settings] pool = 10")
    protocol_settings = dataclasses.asdict(protocol_cls.make_settings(dict(settings)))
    for name in learners:
        why = protocol_cls.check_learner(LEARNERS[name])
        if why:
            raise ConfigError(f"{LEARNERS[name].title} cannot run the {protocol_cls.name} protocol ({why}): "
                              f"drop it from --learners")
    check_query_batch(protocol_cls.name, {name: learner_config(name, hparams.get(name, {}), info.kind) for name in learners})
    default_episodes = min(budget.test_episodes, protocol_cls.DEFAULT_EPISODES or budget.test_episodes)

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
        test_episodes=_int("test_episodes", given.get("test_episodes", default_episodes)),
        val_episodes=_int("val_episodes", given.get("val_episodes", budget.val_episodes)),
        curve_points=_int("curve_points", given.get("curve_points", budget.curve_points)),
        validate_every=validate_every,
        patience=_int("patience", given.get("patience", budget.patience)),
        keep_best=_bool("keep_best", given.get("keep_best", budget.converge)),
        checkpoint_minutes=_minutes(given.get("checkpoint_minutes", RunConfig.checkpoint_minutes)),
        seeds=tuple(_int("seeds", s) for s in seeds),
        episode_seed=_int("episode_seed", given.get("episode_seed", RunConfig.episode_seed)),
        device=str(given.get("device", RunConfig.device)),
        data_root=str(given["data_root"]) if "data_root" in given else None,
        download=_bool("download", given.get("download", True)),
        out=str(given["out"]) if "out" in given else None,
        hparams={k: dict(v) for k, v in hparams.items()},
        image_size=_int("image_size", given.get("image_size", info.image_size)),
        workers=_int("workers", given.get("workers", RunConfig.workers)),
        protocol=protocol_cls.name,
        protocol_settings=protocol_settings,
    )
    _check_counts(config, info.kind)
    return config


def _per_learner(key: str, value: Any, learners: tuple[str, ...], default: Callable[[str], int]) -> dict[str, int]:
    """A per-learner count from a scalar (every learner), a table by learner name (the others
    take ``default(name)``) or nothing (``default`` for all).

    Raises:
        ConfigError: for a learner name not in the registry or a value that is not a whole number.
    """
    if value is None:
        return {name: default(name) for name in learners}
    if isinstance(value, Mapping):
        for name in value:
            if name not in LEARNERS:
                raise ConfigError(f"{key} given for unknown learner {name!r}: choose from {', '.join(LEARNERS)}")
        return {name: _int(f"{key}.{name}", value[name]) if name in value else default(name) for name in learners}
    return {name: _int(key, value) for name in learners}


def _minutes(value: Any) -> float:
    """``checkpoint_minutes`` as a non-negative float.

    Raises:
        ConfigError: for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"checkpoint_minutes must be a number of minutes, got {value!r}")
    try:
        minutes = float(value)
    except ValueError:
        raise ConfigError(f"checkpoint_minutes must be a number of minutes, got {value!r}") from None
    if not minutes >= 0:
        raise ConfigError(f"--checkpoint-minutes must be at least 0 (got {value})")
    return minutes


def _check_counts(config: RunConfig, kind: str) -> None:
    """Raise :class:`ConfigError` for non-positive sizes or counts."""
    checks = {
        "--ways": (config.ways, 1 if kind == "regression" else 2), "--shots": (config.shots, 1),
        "--queries": (config.queries, 1),
        "--test-episodes": (config.test_episodes, 1), "--val-episodes": (config.val_episodes, 0),
        "--curve-points": (config.curve_points, 0), "--image-size": (config.image_size, 0 if kind == "regression" else 16),
        "--workers": (config.workers, 0), "--patience": (config.patience, 0),
    }
    for flag, (value, low) in checks.items():
        if value < low:
            raise ConfigError(f"{flag} must be at least {low} (got {value})")
    for name, n in config.iterations.items():
        if n < 1:
            raise ConfigError(f"meta-iterations for {name} must be at least 1 (got {n}): raise --iterations")
    for name, n in config.validate_every.items():
        if n < 0:
            raise ConfigError(f"--validate-every for {name} must be at least 1 (got {n})")
    if (config.patience or config.keep_best) and config.val_episodes == 0:
        raise ConfigError("--patience and keep_best need validation episodes: raise --val-episodes or use another budget")
    if not config.seeds:
        raise ConfigError("no seeds given: pass --seeds with at least one integer")
    if min(config.seeds) < 0 or config.episode_seed < 0:
        raise ConfigError("seeds must be >= 0: fix --seeds / --episode-seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"--seeds lists a seed twice ({','.join(map(str, config.seeds))}): list each once")
