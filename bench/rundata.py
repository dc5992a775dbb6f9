"""Where a run's episodes come from: the training, validation and test samplers of a configuration.

Part of the code fingerprint of a working folder (:mod:`metabench.workdir`): the episodes a run
trains, validates and tests on are decided here and in :mod:`metabench.datasets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from metabench.config import RunConfig
from metabench.datasets import DATASETS, load_split
from metabench.datasets import sinusoid as sinusoid_tasks
from metabench.datasets.base import Split
from metabench.datasets.sampler import EpisodeSampler, fingerprint
from metabench.datasets.sinusoid import SinusoidSampler

Sampler = EpisodeSampler | SinusoidSampler


@dataclass(frozen=True)
class RunData:
    """Where a run's episodes come from.

    Attributes:
        input_shape: ``(channels, H, W)`` of images, or ``(1,)`` for sinusoid inputs.
        test, val: the shared test sampler and the validation sampler (None without validation
            classes).
        train_sampler: ``(shape, seed, what) -> sampler`` of training episodes; ``what`` names them
            in error messages. Raises ConfigError if the shape does not fit the training data.
        fingerprint: ``(test indices) -> sha256`` identifying the test episodes.
    """

    input_shape: tuple[int, ...]
    test: Sampler
    val: Sampler | None
    train_sampler: Callable[..., Sampler]
    fingerprint: Callable[[list], str]


def data_for(config: RunConfig) -> RunData:
    """The samplers of a run: sinusoid tasks, or episodes of the (train and test) image splits."""
    if DATASETS[config.dataset].kind == "regression":
        return RunData(
            input_shape=(1,),
            test=SinusoidSampler(config.shots, config.queries, config.episode_seed, "test"),
            val=SinusoidSampler(config.shots, config.queries, config.episode_seed, "val") if config.val_episodes > 0 else None,
            train_sampler=lambda shape, seed, what="": SinusoidSampler(shape.shots, shape.queries, seed, "train"),
            fingerprint=sinusoid_tasks.fingerprint,
        )
    split = load_split(config.dataset, config.split, config.data_root, config.image_size, config.download)
    test_split = split
    if (config.test_dataset, config.test_split) != (config.dataset, config.split):
        test_split = load_split(config.test_dataset, config.test_split, config.data_root, config.image_size, config.download)
    test, val = _eval_samplers(config, split, test_split)
    where = f"{config.dataset}/{config.split}"

    def train_sampler(shape, seed: int, what: str = "") -> EpisodeSampler:
        return EpisodeSampler(split.train, shape.ways, shape.shots, shape.queries, seed, stream="train",
                              description=f"train split of {where} {what}".rstrip())

    return RunData(split.train.dataset.image_shape, test, val, train_sampler,
                 lambda ids: fingerprint(test_split.test, ids))


def _eval_samplers(config: RunConfig, split: Split, test_split: Split) -> tuple[EpisodeSampler, EpisodeSampler | None]:
    """The shared test sampler (test partition of ``test_split``) and, if ``split`` has
    validation classes, the validation sampler."""
    test = EpisodeSampler(
        test_split.test, config.ways, config.shots, config.queries, config.episode_seed, "test",
        description=f"test split of {config.test_dataset}/{config.test_split}",
    )
    val = None
    if len(split.val) > 0 and config.val_episodes > 0:
        val = EpisodeSampler(
            split.val, min(config.ways, len(split.val)), config.shots, config.queries,
            config.episode_seed, "val", description=f"validation split of {config.dataset}/{config.split}",
        )
    return test, val
