"""metabench.datasets: few-shot datasets, their class splits, and where their files live.

Entry points: :data:`DATASETS` (the registry: one :class:`DatasetInfo` per dataset) and
:func:`load_split`, which returns a :class:`Split` (meta-train / meta-val / meta-test
:class:`ClassPool` over one in-memory :class:`ImageDataset`) for an image dataset. Files are looked
up under the data root (:func:`resolve_data_root`: ``--data-root``, else ``METABENCH_DATA``, else
``~/.cache/metabench``) and downloaded there when missing and downloadable. Regression datasets
(sinusoid) are generated, not loaded: they have no :class:`Split` and ``load`` is None.

Each file-backed entry also says where its files are (``locate``), how to fetch them
(``download``) and how to check them (``verify``): ``metabench data list / download / verify``
(:mod:`metabench.data`) is built on these alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from metabench.errors import ConfigError

from . import cifar100, digits, miniimagenet, omniglot
from .archives import resolve_data_root
from .base import ClassPool, ImageDataset, Located, Split

__all__ = [
    "DATASETS",
    "ClassPool",
    "DatasetInfo",
    "ImageDataset",
    "Located",
    "Split",
    "check_split",
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
        partitions: split name -> number of (train, val, test) classes, for ``metabench data
            list``; empty for generated data.
        images_per_class: images of every class (the same for all classes); 0 for generated data.
        locate: ``locate(data_root) -> Located``: where the files are on this machine, without
            reading them; None for generated data.
        download: ``download(data_root) -> str``: fetch whatever is missing (checksums verified)
            and return a one-line summary, or raise :class:`~metabench.errors.DataError` saying
            why not and how to get the data; None for generated data.
        verify: ``verify(data_root) -> str``: check checksums and structure (never downloads)
            and return a one-line summary, or raise DataError naming the problem; None for
            generated data.
    """

    name: str
    title: str
    kind: str
    splits: tuple[str, ...]
    channels: int
    image_size: int
    citation: str
    load: Callable[[str, str | os.PathLike[str] | None, int, bool], Split] | None
    partitions: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    images_per_class: int = 0
    locate: Callable[[str | os.PathLike[str] | None], Located] | None = None
    download: Callable[[str | os.PathLike[str] | None], str] | None = None
    verify: Callable[[str | os.PathLike[str] | None], str] | None = None


#: The registry: dataset name -> :class:`DatasetInfo`, in the order ``metabench data list`` shows.
DATASETS: dict[str, DatasetInfo] = {
    "omniglot": DatasetInfo(
        "omniglot", "Omniglot", "classification", omniglot.SPLITS, 1, 28,
        "Lake et al. 2015; splits Vinyals et al. 2016 / Lake et al. 2015", omniglot.omniglot_split,
        partitions={"vinyals": (4112, 688, 1692), "lake": (964, 0, 659)},
        images_per_class=omniglot.N_DRAWERS, locate=omniglot.locate_omniglot,
        download=omniglot.download_omniglot, verify=omniglot.verify_omniglot,
    ),
    "miniimagenet": DatasetInfo(
        "miniimagenet", "miniImageNet", "classification", miniimagenet.SPLITS, 3, 84,
        "Vinyals et al. 2016; split Ravi & Larochelle 2017", miniimagenet.miniimagenet_split,
        partitions={"ravi": (64, 16, 20)}, images_per_class=600,
        locate=miniimagenet.locate_miniimagenet, download=miniimagenet.download_miniimagenet,
        verify=miniimagenet.verify_miniimagenet,
    ),
    "cifar-fs": DatasetInfo(
        "cifar-fs", "CIFAR-FS", "classification", cifar100.CIFAR_FS_SPLITS, 3, 32,
        "Krizhevsky 2009 (CIFAR-100); split Bertinetto et al. 2019", cifar100.cifar_fs_split,
        partitions={"bertinetto": (64, 16, 20)}, images_per_class=600,
        locate=cifar100.locate_cifar100, download=cifar100.download_cifar100,
        verify=cifar100.verify_cifar100,
    ),
    "fc100": DatasetInfo(
        "fc100", "FC100", "classification", cifar100.FC100_SPLITS, 3, 32,
        "Krizhevsky 2009 (CIFAR-100); split Oreshkin et al. 2018", cifar100.fc100_split,
        partitions={"oreshkin": (60, 20, 20)}, images_per_class=600,
        locate=cifar100.locate_cifar100, download=cifar100.download_cifar100,
        verify=cifar100.verify_cifar100,
    ),
    "digits": DatasetInfo(
        "digits", "Digits (scikit-learn)", "classification", digits.SPLITS, 1, 28,
        "Alpaydin & Kaynak 1998 (UCI optical digits, bundled with scikit-learn); meta-test only",
        digits.digits_split, partitions={"all": (0, 0, 10)}, images_per_class=174,
        locate=digits.locate_digits, download=digits.download_digits, verify=digits.verify_digits,
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


def check_split(dataset: str, split: str, option: str = "--split") -> DatasetInfo:
    """The registry entry of ``dataset`` after checking that ``split`` is one of its splits.

    Args:
        dataset: a name of :data:`DATASETS`.
        split: the split name to check.
        option: the command-line option that sets it, named in the error (``--test-split``...).

    Raises:
        ConfigError: for an unknown dataset or split, naming the known ones.
    """
    info = dataset_info(dataset)
    if split not in info.splits:
        raise ConfigError(f"unknown split {split!r} of {dataset}: choose one of {', '.join(info.splits)} ({option})")
    return info


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
    check_split(dataset, split)
    return info.load(split, data_root, info.image_size if image_size is None else image_size, download)
