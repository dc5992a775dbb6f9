"""metabench.datasets: few-shot datasets, their class splits, and where their files live.

Entry point: :func:`load_split` returns a :class:`Split` (meta-train / meta-val / meta-test
:class:`ClassPool` over one in-memory :class:`ImageDataset`). Files are looked up under the data
root (:func:`resolve_data_root`: ``--data-root``, else ``METABENCH_DATA``, else
``~/.cache/metabench``) and downloaded there when missing.
"""

from __future__ import annotations

import os

from metabench.errors import ConfigError

from . import omniglot
from .archives import resolve_data_root
from .base import ClassPool, ImageDataset, Split

__all__ = ["DATASETS", "ClassPool", "ImageDataset", "Split", "load_split", "resolve_data_root"]

#: Dataset name -> the split names :func:`load_split` accepts for it.
DATASETS: dict[str, list[str]] = {"omniglot": list(omniglot.SPLITS)}


def load_split(
    dataset: str,
    split: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = True,
) -> Split:
    """Load a dataset and split its classes into meta-train / meta-val / meta-test pools.

    Args:
        dataset: one of :data:`DATASETS` (``"omniglot"``).
        split: one of ``DATASETS[dataset]`` (``"vinyals"`` or ``"lake"`` for Omniglot).
        data_root: folder holding the raw data; see :func:`resolve_data_root`.
        image_size: side of the (square) images in pixels.
        download: fetch missing files from their official sources.

    Returns:
        The :class:`Split`.

    Raises:
        ConfigError: for an unknown dataset or split, or an invalid ``image_size``.
        DataError: if the data is missing and cannot be downloaded, or is corrupt.
    """
    if dataset != "omniglot":
        raise ConfigError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return omniglot.omniglot_split(split, data_root, image_size, download)
