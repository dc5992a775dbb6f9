"""Helpers shared by the loaders of array datasets (miniImageNet, CIFAR-100, scikit-learn digits).

* :func:`check_image_size` validates the requested image side;
* :func:`resize_images` turns ``[n, C, H, W]`` uint8 images into ``[n, C, s, s]`` with Pillow's
  Lanczos filter (the filter of Omniglot's preprocessing, so that every dataset is resized alike);
* :func:`load_pickle` reads the pickled arrays that these datasets are distributed as, refusing
  any pickle that would run code other than rebuilding NumPy arrays, lists and dicts;
* :func:`read_cache` / :func:`write_cache` keep decoded datasets as compact ``.npz`` files in the
  cache folder (:func:`~metabench.datasets.archives.resolve_cache_dir`), keyed by a fingerprint
  of the inputs and the preprocessing, written atomically.

Omniglot predates this module and keeps its own equivalents in :mod:`.omniglot`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from metabench.errors import ConfigError, DataError

from .archives import atomic_writer, resolve_cache_dir

__all__ = [
    "MAX_IMAGE_SIZE",
    "cache_file",
    "check_image_size",
    "files_fingerprint",
    "load_pickle",
    "one_line",
    "read_cache",
    "resize_images",
    "text_key",
    "write_cache",
]

#: Largest image side any array dataset accepts, in pixels (upscaling is allowed up to here).
MAX_IMAGE_SIZE = 256

_CACHE_FORMAT = 1  # bump when the layout of the cache files changes


def one_line(exc: BaseException) -> str:
    """An exception's cause on one line, for quoting inside a one-line error message."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def check_image_size(image_size: object, dataset: str, limit: int = MAX_IMAGE_SIZE) -> int:
    """Return ``image_size`` as an int if it is an integer from 1 to ``limit``.

    Args:
        image_size: the requested side of the square images, in pixels.
        dataset: dataset name for the message.
        limit: largest accepted side, in pixels.

    Raises:
        ConfigError: for a non-integer (bools included) or out-of-range value.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ConfigError(f"image_size must be an integer from 1 to {limit}, got {image_size!r}")
    if not 1 <= image_size <= limit:
        raise ConfigError(f"image_size of {dataset} must be from 1 to {limit}, got {image_size}")
    return int(image_size)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize square or rectangular uint8 images to ``size`` x ``size`` with Lanczos filtering.

    Args:
        images: uint8 ``[n, C, H, W]`` with C = 1 (grey) or 3 (RGB).
        size: output side in pixels.

    Returns:
        uint8 ``[n, C, size, size]``; ``images`` itself when it already has that size.

    Raises:
        ValueError: if ``images`` is not uint8 ``[n, 1 or 3, H, W]``.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [n, 1|3, H, W], got {images.dtype} {images.shape}")
    n, channels, height, width = images.shape
    if height == size and width == size:
        return images
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        if channels == 1:
            image = Image.fromarray(images[i, 0])
        else:
            image = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)))
        resized = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
        out[i] = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------- safe pickles

#: The only globals a data pickle may name: what NumPy needs to rebuild arrays, what pickles of
#: byte strings made with protocol 2 need, and ordered dicts. NumPy's internals are written
#: ``numpy.core`` by NumPy 1 and ``numpy._core`` by NumPy 2; both spellings are accepted.
_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
})


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain data (see :data:`_PICKLE_GLOBALS`)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which data never needs")
        try:
            found = importlib.import_module(module)
        except ImportError:  # NumPy 1 without the numpy._core alias
            found = importlib.import_module(module.replace("numpy._core", "numpy.core", 1))
        return getattr(found, name)


#: What a truncated or garbled pickle raises while loading.
_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
    KeyError, ImportError, UnicodeDecodeError, MemoryError, OverflowError,
)


def load_pickle(fh: IO[bytes], label: str, fix: str) -> Any:
    """Unpickle one data file (Python 2 pickles included) without running arbitrary code.

    Byte strings pickled by Python 2 are decoded as Latin-1, as NumPy's own loaders do, so
    arrays come back intact and dict keys come back as ``str``.

    Args:
        fh: the open binary file.
        label: what the file is, for the message, e.g. ``"miniimagenet file /d/x.pkl"``.
        fix: what the user should do, appended to the message.

    Returns:
        The unpickled object (dicts, lists, str, int, NumPy arrays).

    Raises:
        DataError: if the file is truncated, not a pickle, or names any global other than
            NumPy's array constructors (a pickle that would run code is never loaded).
        OSError: if reading fails (the caller names the file).
    """
    try:
        return _DataUnpickler(fh, encoding="latin1").load()
    except _PICKLE_ERRORS as exc:
        raise DataError(f"{label} is not a readable data pickle ({one_line(exc)}): {fix}") from exc


def text_key(value: object) -> object:
    """``value`` decoded as Latin-1 when it is ``bytes`` (keys and names of Python 2 pickles
    read with ``encoding="bytes"``), else unchanged."""
    return value.decode("latin1") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- fingerprints


def files_fingerprint(paths: Iterable[Path], *, contents: bool) -> str:
    """SHA-256 fingerprint of some files: of their bytes (``contents=True``), or of their names,
    sizes and modification times (``contents=False``, for tens of thousands of small images).

    Raises:
        OSError: if a file cannot be read or stat'ed (the caller names the file).
    """
    digest = hashlib.sha256()
    for path in paths:
        if contents:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(f"\0{path.name}\n".encode())
        else:
            stat = os.stat(path)
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- compact cache


def cache_file(dataset: str, image_size: int, key: str, cache_dir: str | os.PathLike[str] | None
               ) -> Path:
    """Path of a decoded-dataset cache: ``<cache>/compact/<dataset>-<size>px-<key[:16]>.npz``."""
    return resolve_cache_dir(cache_dir) / "compact" / f"{dataset}-{image_size}px-{key[:16]}.npz"


def read_cache(path: Path, key: str, shape: tuple[int, ...]
               ) -> tuple[tuple[str, ...], np.ndarray] | None:
    """Return ``(class names, images)`` from a cache file written by :func:`write_cache`.

    Args:
        path: the cache file.
        key: the fingerprint the file must have been written with.
        shape: the expected shape of the uint8 images ``[classes, per_class, C, H, W]``.

    Returns:
        The contents, or None if the file is absent, stale (other key or format), of another
        shape, or unreadable; the caller then rebuilds it.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != f"{_CACHE_FORMAT}:{key}":
                return None
            images = npz["images"]
            names = tuple(str(n) for n in npz["class_names"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if images.dtype != np.uint8 or images.shape != shape or len(names) != shape[0]:
        return None
    return names, images


def write_cache(path: Path, key: str, names: tuple[str, ...], images: np.ndarray) -> None:
    """Write a cache file atomically; warn (do not fail) if the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.savez(fh, key=np.array(f"{_CACHE_FORMAT}:{key}"), images=images,
                     class_names=np.array(names))
    except OSError as exc:
        warnings.warn(
            f"could not write the cache {path} ({one_line(exc)}), so the next load decodes the "
            "data again: set METABENCH_CACHE to a writable folder",
            RuntimeWarning,
            stacklevel=3,
        )
