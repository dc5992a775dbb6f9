"""The 8x8 handwritten digits bundled with scikit-learn, as a cross-domain meta-test set.

Source: :func:`sklearn.datasets.load_digits`, the test set of the UCI "Optical Recognition of
Handwritten Digits" data (Alpaydin & Kaynak 1998): 1797 images of 8x8 blocks, each pixel the
number of ink pixels (0..16) in a 4x4 cell of a 32x32 bitmap; 174 to 183 images per digit.
It ships inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``), so there is nothing to
download.

Use: meta-train on Omniglot, meta-test on digits (a small domain shift that runs on a laptop).
All 10 classes form the **test** pool of the only split, ``"all"``; the train and val pools are
empty.

Preprocessing: each class is truncated to the smallest class's count (174, digit 8) so that every
class has as many images, keeping the first images of each class in file order; values are scaled
from 0..16 to 0..255 (``round(v * 255 / 16)``: ink bright on a dark background, as in Omniglot's
preprocessing); images are resized to ``image_size`` with Pillow's Lanczos filter. No cache:
this takes well under a second.
"""

from __future__ import annotations

import os

import numpy as np

from metabench.errors import ConfigError, DataError

from .arrays import check_image_size, resize_images
from .base import ImageDataset, Located, Split, split_by_index

__all__ = [
    "N_CLASSES",
    "RAW_SIZE",
    "SPLITS",
    "digits_split",
    "download_digits",
    "load_digits",
    "locate_digits",
    "verify_digits",
]

SPLITS = ("all",)
N_CLASSES = 10
RAW_SIZE = 8  # side of the bundled images, in pixels
_MAX_VALUE = 16  # ink count of a fully inked 4x4 cell


def _raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled images (float ``[1797, 8, 8]``, 0..16) and labels (int ``[1797]``).

    Raises:
        DataError: if scikit-learn is missing or its bundled file cannot be read.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DataError("the digits dataset needs scikit-learn, which is not installed: "
                        "pip install scikit-learn") from exc
    try:
        bunch = sklearn_digits()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"scikit-learn's bundled digits cannot be read ({exc}): reinstall "
                        "scikit-learn") from exc
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _check(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class image counts, after checking shapes, labels and value range.

    Raises:
        DataError: if the bundled data is not 8x8 images of 10 digits with values 0..16.
    """
    if images.ndim != 3 or images.shape[1:] != (RAW_SIZE, RAW_SIZE) \
            or labels.shape != (len(images),) or not len(images) \
            or images.min() < 0 or images.max() > _MAX_VALUE \
            or not np.array_equal(images, np.round(images)) \
            or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError("scikit-learn's bundled digits are not 8x8 images of the digits 0-9 with "
                        "values 0..16: reinstall scikit-learn")
    counts = np.bincount(labels, minlength=N_CLASSES)
    if (counts == 0).any():
        raise DataError("scikit-learn's bundled digits lack some digit: reinstall scikit-learn")
    return counts


def load_digits(image_size: int = 28) -> ImageDataset:
    """Load the digits, equal images per class, scaled to 0..255 and resized.

    Args:
        image_size: side of the output images in pixels, 1..256.

    Returns:
        ``ImageDataset(name="digits")`` with images uint8 ``[10, 174, 1, size, size]`` (ink
        high, background 0) and class names ``"0"`` .. ``"9"``.

    Raises:
        ConfigError: for a bad ``image_size``.
        DataError: if scikit-learn or its bundled data is missing or malformed.
    """
    size = check_image_size(image_size, "digits")
    images, labels = _raw()
    per_class = int(_check(images, labels).min())
    scaled = np.round(images * (255.0 / _MAX_VALUE)).astype(np.uint8)
    out = np.empty((N_CLASSES, per_class, 1, size, size), dtype=np.uint8)
    for digit in range(N_CLASSES):
        chosen = scaled[np.flatnonzero(labels == digit)[:per_class]]
        out[digit] = resize_images(chosen[:, None], size)
    return ImageDataset(name="digits", images=out,
                        class_names=tuple(str(d) for d in range(N_CLASSES)))


def digits_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = True,
) -> Split:
    """The digits as a meta-test-only split: 0 train, 0 val and 10 test classes.

    Args:
        name: ``"all"``.
        data_root, download: ignored (the data is bundled with scikit-learn).
        image_size: image side in pixels (28 matches Omniglot for cross-domain tests).

    Returns:
        ``Split("digits", "all")`` with empty train and val pools.

    Raises:
        ConfigError: for an unknown split name or a bad ``image_size``.
        DataError: as :func:`load_digits`.
    """
    if name not in SPLITS:
        raise ConfigError(f"unknown digits split {name!r}: choose one of {', '.join(SPLITS)}")
    return split_by_index(load_digits(image_size), "digits", name, {"test": range(N_CLASSES)})


def locate_digits(data_root: str | os.PathLike[str] | None = None) -> Located:
    """Where the digits are: inside the installed scikit-learn (``data_root`` is ignored).

    Returns:
        ``Located("bundled", ...)``, or ``Located("missing", ...)`` without scikit-learn.
    """
    try:
        import sklearn
    except ImportError:
        return Located("missing", "scikit-learn is not installed: pip install scikit-learn")
    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data")
    return Located("bundled", f"in scikit-learn {sklearn.__version__} "
                              f"({os.path.join(folder, 'digits.csv.gz')})")


def download_digits(data_root: str | os.PathLike[str] | None = None) -> str:
    """Nothing to download: the digits ship with scikit-learn (``data_root`` is ignored).

    Returns:
        A one-line summary saying where they are.

    Raises:
        DataError: if scikit-learn is not installed.
    """
    located = locate_digits(data_root)
    if located.status != "bundled":
        raise DataError(f"digits: {located.detail}")
    return f"digits: nothing to download: bundled {located.detail}"


def verify_digits(data_root: str | os.PathLike[str] | None = None) -> str:
    """Check the bundled digits: 8x8 images, values 0..16, all ten digits present.

    Returns:
        A one-line summary with the per-class counts and how many images are used per class.

    Raises:
        DataError: if scikit-learn or its data is missing or malformed.
    """
    counts = _check(*_raw())
    return (f"digits: ok: {int(counts.sum())} images of 8x8 in 10 classes ({int(counts.min())}"
            f"..{int(counts.max())} per class; the first {int(counts.min())} of each are used)")
