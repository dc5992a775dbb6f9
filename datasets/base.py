"""The types every dataset loader produces: an image dataset, and a split of its classes.

Data flow (see the design): archive on disk -> :class:`ImageDataset` -> :class:`Split` (which
classes are meta-train / meta-validation / meta-test) -> :class:`ClassPool` -> episode sampler.
This layer knows nothing about learners.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageDataset:
    """A few-shot image dataset held in memory as one uint8 array.

    Attributes:
        name: dataset name, e.g. ``"omniglot"``.
        images: uint8 array ``[n_classes, n_per_class, channels, height, width]``, values 0..255.
            (The design sketches ``[C_classes, n_per_class, H, W]``; the channel axis is kept
            so that RGB datasets share the same type.)
        class_names: ``n_classes`` unique names, e.g. ``"Angelic/character01"`` for Omniglot.

    Raises:
        ValueError: if ``images`` is not a 5-D uint8 array or the names do not match its classes.
    """

    name: str
    images: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 5:
            raise ValueError(
                f"images must be uint8 [classes, per_class, channels, H, W], got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.class_names) != self.images.shape[0]:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.images.shape[0]} classes"
            )

    @property
    def n_classes(self) -> int:
        """Number of classes (characters for Omniglot)."""
        return int(self.images.shape[0])

    @property
    def n_per_class(self) -> int:
        """Number of images of every class (20 drawers for Omniglot)."""
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        return tuple(int(s) for s in self.images.shape[2:])  # type: ignore[return-value]


@dataclass(frozen=True)
class ClassPool:
    """The classes of one partition of a split (e.g. Omniglot meta-test classes).

    A class of the pool is a class of the dataset turned by a multiple of 90 degrees: Vinyals
    et al. (2016, Sec. 4.1.1) and Santoro et al. (2016) augment Omniglot by treating each
    rotation of a character as a new class.

    Attributes:
        dataset: the :class:`ImageDataset` the images come from.
        base: int64 ``[n]``, index of each pool class in ``dataset.images``.
        rotation: int64 ``[n]``, counter-clockwise quarter turns (0..3) of each pool class.
        names: ``n`` names, e.g. ``"Angelic/character01/rot090"``.

    Raises:
        ValueError: if the arrays disagree in length or index outside the dataset.
    """

    dataset: ImageDataset
    base: np.ndarray
    rotation: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.base.shape != (n,) or self.rotation.shape != (n,):
            raise ValueError(f"base {self.base.shape} and rotation {self.rotation.shape} must be ({n},)")
        if n and (self.base.min() < 0 or self.base.max() >= self.dataset.n_classes):
            raise ValueError("class index outside the dataset")
        if n and (self.rotation.min() < 0 or self.rotation.max() > 3):
            raise ValueError("rotation must be 0..3 quarter turns")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_per_class(self) -> int:
        """Images available per class."""
        return self.dataset.n_per_class

    def images(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Gather images of pool classes.

        Args:
            classes: int ``[m]`` pool class of each wanted image.
            indices: int ``[m]`` image index within its class (0..n_per_class-1).

        Returns:
            uint8 ``[m, channels, H, W]``, each image rotated by its class's quarter turns.
        """
        out = self.dataset.images[self.base[classes], indices]
        turns = self.rotation[classes]
        if turns.any():
            out = out.copy()
            for k in (1, 2, 3):
                mask = turns == k
                if mask.any():
                    out[mask] = np.rot90(out[mask], k=k, axes=(-2, -1))
        return out


@dataclass(frozen=True)
class Split:
    """A split of a dataset's classes into meta-train, meta-validation and meta-test pools.

    Attributes:
        dataset: dataset name.
        name: split name, e.g. ``"vinyals"`` or ``"lake"``.
        train, val, test: the three :class:`ClassPool`; ``val`` may be empty (``len == 0``)
            where the split defines no validation classes (Lake et al.'s background/evaluation).
    """

    dataset: str
    name: str
    train: ClassPool
    val: ClassPool
    test: ClassPool

    def pool(self, partition: str) -> ClassPool:
        """Return the pool named ``"train"``, ``"val"`` or ``"test"``.

        Raises:
            KeyError: for any other name.
        """
        if partition not in ("train", "val", "test"):
            raise KeyError(f"unknown partition {partition!r}: use train, val or test")
        return getattr(self, partition)


@dataclass(frozen=True)
class Located:
    """Where a dataset's files are on this machine, as ``metabench data list`` reports it.

    Attributes:
        status: ``"found"`` (the files a loader needs are present; their checksums are checked
            by ``metabench data verify`` and on loading), ``"missing"``, ``"bundled"`` (shipped
            inside an installed Python package) or ``"generated"`` (nothing to find).
        detail: one line: the paths found (and which on-disk format they are in); for
            ``"missing"``, where they were looked for and how to get them.
    """

    status: str
    detail: str

    def __post_init__(self) -> None:
        if self.status not in ("found", "missing", "bundled", "generated"):
            raise ValueError(f"unknown status {self.status!r}")


def split_by_index(dataset: ImageDataset, dataset_name: str, split_name: str,
                   partitions: Mapping[str, Sequence[int]]) -> Split:
    """A split without rotations: each partition a list of the dataset's class indices.

    Args:
        dataset: the images all pools share.
        dataset_name: the split's dataset name (e.g. ``"cifar-fs"``, which may differ from
            ``dataset.name``, e.g. ``"cifar100"``).
        split_name: e.g. ``"bertinetto"``.
        partitions: ``"train"``, ``"val"``, ``"test"`` -> class indices in pool order (a
            missing or empty list gives an empty pool).

    Returns:
        The :class:`Split`; pool class names are the dataset's class names.

    Raises:
        ValueError: for an index outside the dataset.
    """
    pools = {}
    for partition in ("train", "val", "test"):
        base = np.asarray(partitions.get(partition, ()), dtype=np.int64).reshape(-1)
        pools[partition] = ClassPool(dataset, base, np.zeros_like(base),
                                     tuple(dataset.class_names[i] for i in base))
    return Split(dataset=dataset_name, name=split_name, **pools)
