"""metabench.datasets: few-shot datasets, their class splits, and where their files live.

Entry points: :data:`DATASETS` (the registry: one :class:`DatasetInfo` per dataset) and
:func:`load_split`, which returns a :class:`Split` (meta-train / meta-val / meta-test
:class:`ClassPool` over one in-memory :class:`ImageDataset`) for an image dataset. Files are looked
up under the data root (:func:`resolve_data_root`: ``--data-root``, else ``METABENCH_DATA``, else
``~/.cache/metabench``) and downloaded there when missing and downloadable. Regression datasets
(sinusoid) are generated, not loaded: they have no :class:`Split` and ``load`` is None.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from metabench.errors import ConfigError

from . import omniglot
from .archives import resolve_data_root
from .base import ClassPool, ImageDataset, Split

__all__ = [
    "DATASETS",
    "ClassPool",
    "DatasetInfo",
    "ImageDataset",
    "Split",
    "dataset_info",
    "load_split",
    "resolve_data_root",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What the harness needs to know about one dataset.

    Attributes:
        name: command-line name, e.g. ``"omniglot"``.
        title: name in tables, e.g. ``"Omniglot"``.
        kind: ``"classification"`` (N-way K-shot episodes of images) or ``"regression"``
            (K-shot regression tasks, e.g. sinusoids).
        splits: the split names :func:`load_split` accepts, the default first.
        channels: image channels (1 grey, 3 RGB); 0 for non-image data.
        image_size: default side of the square images fed to the networks, in pixels; 0 for
            non-image data.
        citation: where the dataset and its split come from.
        load: ``load(split, data_root, image_size, download) -> Split``; None for generated data.
    """

    name: str
    title: str
    kind: str
    splits: tuple[str, ...]
    channels: int
    image_size: int
    citation: str
    load: Callable[[str, str | os.PathLike[str] | None, int, bool], Split] | None


#: The registry: dataset name -> :class:`DatasetInfo`, in the order ``metabench data list`` shows.
DATASETS: dict[str, DatasetInfo] = {
    "omniglot": DatasetInfo(
        "omniglot", "Omniglot", "classification", omniglot.SPLITS, 1, 28,
        "Lake et al. 2015; splits Vinyals et al. 2016 / Lake et al. 2015", omniglot.omniglot_split,
    ),
    "sinusoid": DatasetInfo(
        "sinusoid", "Sinusoid regression", "regression", ("finn",), 0, 0,
        "Finn et al. 2017, Sec. 5.1 (generated: A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5])", None,
    ),
}


def dataset_info(dataset: str) -> DatasetInfo:
    """The registry entry of ``dataset``.

    Raises:
        ConfigError: for an unknown dataset, naming the known ones.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def load_split(
    dataset: str,
    split: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    download: bool = True,
) -> Split:
    """Load an image dataset and split its classes into meta-train / meta-val / meta-test pools.

    Args:
        dataset: a classification dataset of :data:`DATASETS`.
        split: one of its ``splits`` (``"vinyals"`` or ``"lake"`` for Omniglot).
        data_root: folder holding the raw data; see :func:`resolve_data_root`.
        image_size: side of the (square) images in pixels; None for the dataset's default.
        download: fetch missing files from their official sources.

    Returns:
        The :class:`Split`.

    Raises:
        ConfigError: for an unknown dataset or split, a generated (regression) dataset, or an
            invalid ``image_size``.
        DataError: if the data is missing and cannot be downloaded, or is corrupt.
    """
    info = dataset_info(dataset)
    if info.load is None:
        raise ConfigError(f"{dataset} is generated, not loaded from files: it has no class split")
    if split not in info.splits:
        raise ConfigError(f"unknown split {split!r} of {dataset}: choose one of {', '.join(info.splits)}")
    return info.load(split, data_root, info.image_size if image_size is None else image_size, download)
