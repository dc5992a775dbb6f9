"""Sweep files: the grid of runs a sweep crosses, and the cells it expands to.

A sweep file is TOML (``sweeps/smoke.toml`` and ``sweeps/omniglot-paper.toml`` are examples)::

    name = "smoke"            # optional; default: the file's name without .toml
    group = "learner"         # one cell per learner x seed (default), or "setting": one cell
                              # per combination, all its learners and seeds in one run

    [shared]                  # `metabench run` configuration keys, the same in every cell
    budget = "smoke"          # (the keys of a --config file: dataset, ways, budget, hparams, ...)

    [grid]                    # axes: every combination of their values is crossed
    ways = [5, 20]
    shots = [1, 5]
    learners = ["maml", "protonet"]
    seeds = [0, 1, 2]
    set = [[], ["maml.inner_lr=0.1"]]    # --set overrides; [] is the learners' defaults

    [[settings]]              # optional: keys that go together (dataset with its split, say),
    dataset = "omniglot"      # each table crossed with the grid
    split = "vinyals"

    [resources]               # per cell: CPU threads (torch's) and GPUs
    cpus = 1
    gpus = 0

    [slurm]                   # Slurm parameters, for --engine slurm (submitit)
    partition = "gpu"
    timeout_min = 240
    array_parallelism = 16

Each cell is an ordinary ``metabench run`` configuration (:func:`metabench.config.resolve`); its
key is a SHA-256 of the configuration that defines its results, so a changed cell is a new cell.
Everything here is pure: reading the file and expanding it touch no data and start nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metabench import workdir
from metabench.config import RunConfig, parse_sets, resolve
from metabench.datasets import DATASETS
from metabench.errors import ConfigError

#: Top-level tables and keys of a sweep file.
SECTIONS = ("name", "group", "shared", "grid", "settings", "resources", "slurm")
#: How cells are cut: one learner x seed per cell, or one run per combination of the axes.
GROUPS = ("learner", "setting")
#: ``metabench run`` keys a sweep may not set: the sweep chooses each cell's folder.
RESERVED = ("out", "skipped")
#: Keys of :class:`RunConfig` that say which table column a cell belongs to (its setting).
SETTING_KEYS = ("dataset", "split", "test_dataset", "test_split", "ways", "shots")
#: ``[resources]`` keys and their defaults.
RESOURCES = {"cpus": 1, "gpus": 0}
#: ``[slurm]`` keys: submitit's ``AutoExecutor.update_parameters`` names, with their defaults.
SLURM = {"partition": "", "timeout_min": 240, "array_parallelism": 32, "mem_gb": 8, "constraint": "",
         "account": "", "qos": "", "max_num_timeout": 20}
#: Configuration keys that change no result: left out of a cell's key.
NOT_IN_KEY = frozenset(workdir.NOT_DEFINING | {"workers"})


@dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
        key: the first 12 hex digits of the SHA-256 of the cell's defining configuration
            (:func:`cell_key`).
        name: ``<label>-<key>``, the cell's folder under ``cells/``.
        label: readable: setting, learner(s), seed(s), e.g. ``omniglot-vinyals-5w1s-maml-seed0``.
        variant: the cell's values of the grid axes besides its setting, learners and seeds (e.g.
            ``budget=quick``; ``set`` entries only for the cell's learners), ``""`` for none:
            cells of one setting and one variant share their test episodes.
        values: the flat configuration handed to :func:`metabench.config.resolve` (without ``out``).
        config: the resolved configuration, as :meth:`RunConfig.to_dict` gives it.
    """

    key: str
    name: str
    label: str
    variant: str
    values: Mapping[str, Any]
    config: Mapping[str, Any]

    @property
    def learners(self) -> list[str]:
        """The learners the cell trains."""
        return list(self.config["learners"])

    @property
    def seeds(self) -> list[int]:
        """The training seeds of the cell."""
        return list(self.config["seeds"])


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file.

    Attributes:
        name: the sweep's name. group: ``learner`` or ``setting`` (:data:`GROUPS`).
        shared: configuration keys of every cell. grid: axis -> list of values.
        settings: tables of keys given together, each crossed with the grid (``({},)`` if none).
        resources: ``cpus`` (torch threads per cell) and ``gpus`` per cell.
        slurm: :data:`SLURM` keys for ``--engine slurm``.
        source: the file's text (kept in the sweep directory).
    """

    name: str
    group: str
    shared: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]]
    settings: tuple[Mapping[str, Any], ...]
    resources: Mapping[str, int]
    slurm: Mapping[str, Any]
    source: str

    def canonical(self) -> dict[str, Any]:
        """What defines the sweep, as plain JSON data (the text's comments and layout aside)."""
        return json.loads(json.dumps({"name": self.name, "group": self.group, "shared": self.shared, "grid": self.grid,
                                      "settings": list(self.settings), "resources": self.resources}))


def _run_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - set(RESERVED) | {"set"}


def _check_keys(where: str, table: Mapping[str, Any], varying: bool) -> None:
    """Refuse unknown keys; for tables that vary between cells (``varying``), keys that change no
    result (they would make equal cells); a relative ``data_root`` (workers run elsewhere).

    Raises:
        ConfigError: naming the key and the fix.
    """
    known = _run_keys()
    unknown = sorted(set(table) - known)
    if unknown:
        hint = " (the sweep chooses each cell's folder)" if set(unknown) & set(RESERVED) else ""
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where} of the sweep file{hint}: valid keys are "
                          f"{', '.join(sorted(known))}")
    inert = sorted(set(table) & NOT_IN_KEY)
    if varying and inert:
        raise ConfigError(f"{', '.join(inert)} in {where} of the sweep file changes no result, so it cannot tell cells "
                          "apart: move it to [shared]")
    root = table.get("data_root")
    if root is not None and not Path(str(root)).is_absolute():
        raise ConfigError(f"data_root = {root!r} in {where} of the sweep file is relative, and workers run from other "
                          "folders: give an absolute path, or pass --data-root to `metabench sweep run`")


def parse(text: str, default_name: str, where: str = "the sweep file") -> SweepSpec:
    """Parse a sweep file's TOML text.

    Raises:
        ConfigError: invalid TOML, unknown sections or keys, an axis that is not a non-empty list,
            an unknown ``group``, ``[resources]`` or ``[slurm]`` values of the wrong type.
    """
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML ({exc}): fix the file") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) or key(s) {', '.join(unknown)} in {where}: a sweep file has "
                          f"{', '.join(SECTIONS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"name in {where} must be a non-empty string without '/', got {name!r}")
    group = data.get("group", "learner")
    if group not in GROUPS:
        raise ConfigError(f"group = {group!r} in {where}: choose one of {', '.join(GROUPS)}")
    shared, grid = data.get("shared", {}), data.get("grid", {})
    if not isinstance(shared, dict) or not isinstance(grid, dict):
        raise ConfigError(f"[shared] and [grid] in {where} must be tables")
    _check_keys("[shared]", shared, varying=False)
    _check_keys("[grid]", grid, varying=True)
    for axis, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(f"grid axis {axis} = {values!r} in {where} is not a list: write {axis} = [{values!r}], "
                              "or move a single value to [shared]")
        if not values:
            raise ConfigError(f"grid axis {axis} in {where} is empty, so the grid has no cell: give it at least one value")
    both = set(grid) & set(shared)
    if both:
        raise ConfigError(f"{', '.join(sorted(both))} in both [shared] and [grid] of {where}: keep one")
    settings = data.get("settings", [{}])
    if isinstance(settings, dict) or not all(isinstance(s, dict) for s in settings):
        raise ConfigError(f"settings in {where} must be an array of tables: write [[settings]] above each")
    if not settings:
        raise ConfigError(f"settings in {where} is empty, so the grid has no cell: remove it or add a [[settings]] table")
    for i, s in enumerate(settings):
        _check_keys(f"[[settings]] number {i + 1}", s, varying=True)
        clash = sorted(set(s) & (set(grid) | set(shared)))
        if clash:
            raise ConfigError(f"{', '.join(clash)} in [[settings]] number {i + 1} and in [shared] or [grid] of {where}: keep one")
    resources = {**RESOURCES, **data.get("resources", {})}
    extra = sorted(set(resources) - set(RESOURCES))
    if extra:
        raise ConfigError(f"unknown key(s) {', '.join(extra)} in [resources] of {where}: valid keys are cpus, gpus")
    for key, low in (("cpus", 1), ("gpus", 0)):
        value = resources[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"[resources] {key} in {where} must be a whole number >= {low}, got {value!r}")
    slurm = {**SLURM, **data.get("slurm", {})}
    extra = sorted(set(slurm) - set(SLURM))
    if extra:
        raise ConfigError(f"unknown key(s) {', '.join(extra)} in [slurm] of {where}: valid keys are {', '.join(SLURM)}")
    for key, default in SLURM.items():
        if type(slurm[key]) is not type(default):
            kind = "a whole number" if isinstance(default, int) else "a string"
            raise ConfigError(f"[slurm] {key} in {where} must be {kind}, got {slurm[key]!r}")
    return SweepSpec(name, group, shared, grid, tuple(settings), resources, slurm, text)


def load(path: str | Path) -> SweepSpec:
    """Read and parse the sweep file ``path``.

    Raises:
        ConfigError: the file is missing or invalid (:func:`parse`).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {path} ({exc.strerror or exc}): check the path") from None
    return parse(text, path.name.removesuffix(".toml"), str(path))


def _sets(value: Any, where: str) -> list[str]:
    """A ``set`` value: a list of ``learner.name=value`` strings (one string is a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"set = {value!r} in {where}: give a list of learner.hyperparameter=value strings, "
                          'e.g. ["maml.inner_lr=0.1"]')
    return items


def _merge_hparams(base: Any, sets: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(base, Mapping):
        raise ConfigError("hparams in the sweep file must be a table of [shared.hparams.<learner>] tables")
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for learner, items in parse_sets(sets).items():
        merged.setdefault(learner, {}).update(items)
    return merged


def cell_key(config: Mapping[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of ``config`` (:meth:`RunConfig.to_dict`) without
    the keys that change no result (:data:`NOT_IN_KEY`), as sorted JSON."""
    defining = {k: v for k, v in config.items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _label(config: RunConfig, learners: str, seeds: str) -> str:
    info = DATASETS[config.dataset]
    where = f"{config.dataset}-{config.split}"
    if (config.test_dataset, config.test_split) != (config.dataset, config.split):
        where += f"-to-{config.test_dataset}"
    shape = f"k{config.shots}" if info.kind == "regression" else f"{config.ways}w{config.shots}s"
    protocol = "" if config.protocol in ("episodic", "regression") else f"-{config.protocol}"
    return f"{where}-{shape}{protocol}-{learners}-{seeds}"


#: Keys whose values may be tables by learner name: a cell's variant keeps its learners' entries.
PER_LEARNER = ("iterations", "validate_every", "hparams")


def _variant(varying: Mapping[str, Any], learners: Sequence[str]) -> str:
    """What sets a cell apart besides its setting, learners and seeds: its values of the keys that
    vary (grid axes and ``[[settings]]`` keys), each narrowed to what concerns the cell's learners
    (``set`` entries and per-learner tables of other learners are left out)."""
    parts = []
    for axis, value in varying.items():
        if axis in SETTING_KEYS or axis in ("learners", "seeds"):
            continue
        if axis == "set":
            value = [s for s in _sets(value, "[grid]") if s.partition(".")[0].strip() in learners]
            if value:
                parts.append(" ".join(value))
            continue
        if axis in PER_LEARNER and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k in learners}
            if not value:
                continue
        parts.append(f"{axis}={value if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
    return ", ".join(parts)


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells of ``spec``, in a stable order: ``[[settings]]`` tables, then the grid's axes in
    the file's order (the last varying fastest), then learners and seeds. Cells whose
    configurations are equal (an override that does not concern a cell's learner) appear once.

    Raises:
        ConfigError: a combination that ``metabench run`` would refuse, named by its values, with
            run's one-line message; an empty grid.
    """
    axes = [a for a in spec.grid if a not in ("learners", "seeds")]
    cells: dict[str, Cell] = {}
    for setting in spec.settings:
        for values in itertools.product(*(spec.grid[a] for a in axes)):
            combo = dict(zip(axes, values))
            flat = {**spec.shared, **setting, **combo}
            where = ", ".join(f"{k}={v}" for k, v in {**setting, **combo}.items()) or "the shared settings"
            sets = [*_sets(spec.shared.get("set", []), "[shared]"), *_sets(setting.get("set", []), "[[settings]]"),
                    *_sets(combo.get("set", []), "[grid]")]
            flat.pop("set", None)
            if "learners" in spec.grid:
                flat["learners"] = list(spec.grid["learners"])
            if "seeds" in spec.grid:
                flat["seeds"] = list(spec.grid["seeds"])
            try:
                hparams = _merge_hparams(flat.pop("hparams", {}), sets)
                whole = resolve({**flat, "hparams": hparams})
            except ConfigError as exc:
                raise ConfigError(f"sweep cell with {where}: {exc}") from None
            varying = {**setting, **combo}  # the shared keys are the same in every cell: no variant
            if "set" in setting and "set" in combo:
                varying["set"] = [*_sets(setting["set"], "[[settings]]"), *_sets(combo["set"], "[grid]")]
            if spec.group == "setting":
                units = [(list(whole.learners), list(whole.seeds))]
            else:
                units = [([name], [seed]) for name in whole.learners for seed in whole.seeds]
            for learners, seeds in units:
                mine = {k: v for k, v in hparams.items() if k in learners}
                cell_values = {**flat, "learners": learners, "seeds": seeds, "hparams": mine}
                try:
                    config = resolve(cell_values)
                except ConfigError as exc:  # pragma: no cover - the whole combination resolved
                    raise ConfigError(f"sweep cell with {where}, {'+'.join(learners)}: {exc}") from None
                record = config.to_dict()
                key = cell_key(record)
                if key in cells:
                    continue
                label = _label(config, "+".join(learners) if spec.group == "learner" else "all",
                               f"seed{seeds[0]}" if len(seeds) == 1 else "seeds" + "_".join(map(str, seeds)))
                cells[key] = Cell(key, f"{label}-{key}", label, _variant(varying, learners), cell_values, record)
    if not cells:  # pragma: no cover - parse refuses empty axes
        raise ConfigError("the sweep's grid has no cell: give every axis at least one value")
    return list(cells.values())
