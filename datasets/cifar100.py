"""CIFAR-FS and FC100: two few-shot splits of CIFAR-100, built from the official python archive.

CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): 100 classes ("fine
labels") grouped into 20 superclasses ("coarse labels") of 5, each class with 500 training and 100
test images of 32x32 RGB. Few-shot learning uses all 600 images of a class (the ``train`` and
``test`` files merged) and splits the *classes*:

* **CIFAR-FS** (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"):
  64 / 16 / 20 classes picked at random. :data:`CIFAR_FS_CLASSES` lists them as in the split files
  of the authors' code (github.com/bertinetto/r2d2, ``data/cifar-fs/splits/bertinetto/``), read
  here from their copy in Torchmeta (Deleu et al. 2019, MIT;
  ``torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json``).
* **FC100** (Oreshkin et al. 2018, "TADAM", Sec. 4): split by superclass so that meta-train and
  meta-test classes are semantically far apart: 12 / 4 / 4 superclasses = 60 / 20 / 20 classes.
  :data:`FC100_SUPERCLASSES` holds the coarse-label indices, train {1, 2, 3, 4, 5, 6, 9, 10, 15,
  17, 18, 19}, val {8, 11, 13, 16}, test {0, 7, 12, 14}; the names of the train and test
  superclasses agree with Torchmeta's ``fc100/{train,test}.json``, and val is the remaining four.

Layout under a data root (see :func:`~metabench.datasets.archives.resolve_data_root`)::

    <root>/cifar100/cifar-100-python.tar.gz     (downloaded there when missing)
    or <root>/cifar100/cifar-100-python/{train,test,meta}   (the extracted archive)

Checksums: the archive's MD5 is :data:`MD5`; an archive with another MD5 (re-packed) or an
extracted folder is accepted only if its three members have the MD5s of the official files,
:data:`MEMBER_MD5` (the values torchvision's ``CIFAR100`` checks). The members are Python 2
pickles: ``train`` / ``test`` hold ``data`` (uint8 ``[N, 3072]``: 1024 red, then 1024 green, then
1024 blue values, each plane row-major), ``fine_labels`` and ``coarse_labels`` (N ints);
``meta`` holds ``fine_label_names`` and ``coarse_label_names``. They are read by
:func:`~metabench.datasets.arrays.load_pickle`, which refuses any pickle that would run code.

Preprocessing: none at 32x32; other sizes are resized with Pillow's Lanczos filter. The decoded
array (184 MB at 32x32) is cached as an ``.npz`` in the cache folder, keyed by the checksums of the
inputs and ``image_size``; both splits share it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from metabench.errors import ConfigError, DataError

from . import archives
from .archives import DownloadError, md5_of, resolve_data_root
from .arrays import (
    cache_file,
    check_image_size,
    load_pickle,
    one_line,
    read_cache,
    resize_images,
    text_key,
    write_cache,
)
from .base import ImageDataset, Located, Split, split_by_index

__all__ = [
    "ARCHIVE",
    "CIFAR_FS_CLASSES",
    "CIFAR_FS_SPLITS",
    "COARSE_LABEL_NAMES",
    "EXTRACTED",
    "FC100_SPLITS",
    "FC100_SUPERCLASSES",
    "FOLDER",
    "MD5",
    "MEMBER_MD5",
    "NATIVE_SIZE",
    "TEST_PER_CLASS",
    "TRAIN_PER_CLASS",
    "URL",
    "cifar_fs_split",
    "download_cifar100",
    "fc100_split",
    "load_cifar100",
    "locate_cifar100",
    "verify_cifar100",
]

FOLDER = "cifar100"  # under the data root
ARCHIVE = "cifar-100-python.tar.gz"
EXTRACTED = "cifar-100-python"  # the archive's top folder, and the extracted folder's name
#: Official archive (Krizhevsky 2009). Tests monkeypatch the URL and the checksums.
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
MEMBER_MD5: Mapping[str, str] = MappingProxyType({
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
})
_MEMBERS = ("train", "test", "meta")
NATIVE_SIZE = 32
TRAIN_PER_CLASS = 500  # images per class in the ``train`` member; tests monkeypatch both down
TEST_PER_CLASS = 100  # images per class in the ``test`` member
N_CLASSES = 100

#: The 20 superclasses, in coarse-label order (as in the archive's ``meta``).
COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

#: CIFAR-FS (Bertinetto et al. 2019): class names per partition, 64 / 16 / 20.
CIFAR_FS_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip",
        "bottle", "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock",
        "keyboard", "chair", "couch", "bee", "caterpillar", "cockroach", "bear", "lion",
        "tiger", "wolf", "bridge", "castle", "house", "road", "skyscraper", "cloud", "forest",
        "mountain", "elephant", "kangaroo", "porcupine", "possum", "raccoon", "skunk",
        "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle", "hamster",
        "mouse", "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree", "pine_tree",
        "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank",
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
        "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
        "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
        "bicycle", "pickup_truck", "rocket",
    ),
})

#: FC100 (Oreshkin et al. 2018): coarse-label indices per partition, 12 / 4 / 4.
FC100_SUPERCLASSES: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
})

CIFAR_FS_SPLITS = ("bertinetto",)
FC100_SPLITS = ("oreshkin",)


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class _Source:
    """CIFAR-100 on disk: the archive or its extracted folder."""

    path: Path
    is_archive: bool

    @property
    def label(self) -> str:
        return f"CIFAR-100 {'archive' if self.is_archive else 'folder'} {self.path}"

    @property
    def fix(self) -> str:
        if self.is_archive:
            return (f"delete it and run `metabench data download cifar-fs` to download it again, "
                    f"or replace it with {URL}")
        return (f"replace it with the extracted official archive {URL}, or delete it and run "
                "`metabench data download cifar-fs`")


def _how_to_get(folder: Path) -> str:
    return (f"run `metabench data download cifar-fs` (or fc100) to download {URL} (169 MB) "
            f"there, or put {ARCHIVE} there, or pass --data-root / set METABENCH_DATA to a "
            f"folder whose {FOLDER}/ has it")


def _existing(root: Path) -> _Source | None:
    folder = root / FOLDER
    if (folder / ARCHIVE).is_file():
        return _Source(folder / ARCHIVE, True)
    if (folder / EXTRACTED).is_dir():
        return _Source(folder / EXTRACTED, False)
    return None


def _locate(root: Path, allow_download: bool) -> _Source:
    """Find the archive (preferred) or the extracted folder; download the archive if allowed.

    Raises:
        DataError: if neither is there and it cannot (or may not) be downloaded.
    """
    source = _existing(root)
    if source is not None:
        return source
    folder = root / FOLDER
    if not allow_download:
        raise DataError(f"CIFAR-100 not found in {folder} and downloading is disabled: "
                        f"{_how_to_get(folder)}")
    try:
        archives.download(URL, folder / ARCHIVE, md5=MD5)
    except DownloadError as exc:
        raise DataError(f"CIFAR-100 not found in {folder} and the download from {exc.url} failed "
                        f"({exc.reason}): {_how_to_get(folder)}") from exc
    return _Source(folder / ARCHIVE, True)


def locate_cifar100(data_root: str | os.PathLike[str] | None = None) -> Located:
    """Where CIFAR-100 is under the data root, without reading it.

    Returns:
        ``Located("found", <path>)`` or ``Located("missing", <where and how to get it>)``.
    """
    root = resolve_data_root(data_root)
    source = _existing(root)
    if source is None:
        return Located("missing", f"looked in {root / FOLDER}; {_how_to_get(root / FOLDER)}")
    return Located("found", str(source.path))


# --------------------------------------------------------------------------- reading


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)  # gzip.BadGzipFile is an OSError


def _read_members(source: _Source) -> dict[str, bytes]:
    """The bytes of ``train``, ``test`` and ``meta``.

    Raises:
        DataError: if the archive is corrupt or a member is missing or unreadable.
    """
    out = {}
    if not source.is_archive:
        for member in _MEMBERS:
            path = source.path / member
            try:
                out[member] = path.read_bytes()
            except FileNotFoundError as exc:
                raise DataError(f"{source.label} has no {member} file: {source.fix}") from exc
            except OSError as exc:
                raise DataError(f"cannot read {path} ({one_line(exc)}): {source.fix}") from exc
        return out
    try:
        with tarfile.open(source.path, "r:gz") as tar:
            for member in _MEMBERS:
                try:
                    info = tar.getmember(f"{EXTRACTED}/{member}")
                except KeyError:
                    raise DataError(f"{source.label} has no member {EXTRACTED}/{member}: "
                                    f"{source.fix}") from None
                fh = tar.extractfile(info)
                if fh is None:
                    raise DataError(f"{source.label}: {EXTRACTED}/{member} is not a file: "
                                    f"{source.fix}")
                out[member] = fh.read()
    except _TAR_ERRORS as exc:
        raise DataError(f"{source.label} is corrupt ({one_line(exc)}): {source.fix}") from exc
    return out


def _checked_members(source: _Source) -> tuple[str, dict[str, bytes] | None]:
    """Check the checksums; return a fingerprint of the inputs and, if they had to be read for
    the check, the members' bytes.

    An archive with the official MD5 is trusted as is (its members are not read here); any
    other archive, and an extracted folder, must have members with the official MD5s.

    Raises:
        DataError: if the source cannot be read, is corrupt, or a checksum differs.
    """
    if source.is_archive:
        try:
            digest = md5_of(source.path)
        except OSError as exc:
            raise DataError(f"cannot read {source.label} ({one_line(exc)}): make it readable, "
                            f"or {source.fix}") from exc
        if digest == MD5:
            return f"archive:{digest}", None
    members = _read_members(source)
    for member in _MEMBERS:
        got = hashlib.md5(members[member]).hexdigest()
        if got != MEMBER_MD5[member]:
            where = f"{EXTRACTED}/{member} in" if source.is_archive else f"{member} of"
            raise DataError(f"{where} {source.label} is not the official file (md5 {got}, "
                            f"expected {MEMBER_MD5[member]}): {source.fix}")
    return "members:" + ",".join(MEMBER_MD5[m] for m in _MEMBERS), members


def _unpickle(members: Mapping[str, bytes], member: str, source: _Source) -> dict[str, object]:
    label = f"{member} of {source.label}"
    obj = load_pickle(io.BytesIO(members[member]), label, source.fix)
    if not isinstance(obj, dict):
        raise DataError(f"{label} holds a {type(obj).__name__}, not a dict: {source.fix}")
    return {str(text_key(k)): v for k, v in obj.items()}


def _batch(members: Mapping[str, bytes], member: str, per_class: int, source: _Source
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``train`` or ``test``: (images uint8 [N, 3, 32, 32], fine [N], coarse [N]).

    Raises:
        DataError: if an entry is missing or of the wrong type, shape or range, or a class does
            not have ``per_class`` images.
    """
    label = f"{member} of {source.label}"
    obj = _unpickle(members, member, source)
    try:
        data, fine, coarse = obj["data"], obj["fine_labels"], obj["coarse_labels"]
    except KeyError as exc:
        raise DataError(f"{label} has no {exc.args[0]!r} entry: {source.fix}") from None
    n = N_CLASSES * per_class
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (n, 3072):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{label}: data is {got}, expected uint8 ({n}, 3072): {source.fix}")
    try:
        fine = np.asarray(fine, dtype=np.int64).reshape(-1)
        coarse = np.asarray(coarse, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{label}: labels are not integers ({one_line(exc)}): "
                        f"{source.fix}") from exc
    counts = np.bincount(fine, minlength=N_CLASSES) if len(fine) and fine.min() >= 0 else None
    if len(fine) != n or len(coarse) != n or counts is None or len(counts) != N_CLASSES \
            or (counts != per_class).any() or coarse.min() < 0 or coarse.max() >= 20:
        raise DataError(f"{label} does not have {per_class} images of each of {N_CLASSES} classes "
                        f"with superclasses 0..19: {source.fix}")
    return data.reshape(n, 3, NATIVE_SIZE, NATIVE_SIZE), fine, coarse


def _decode(source: _Source, members: Mapping[str, bytes], size: int | None
            ) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Check the pickles' structure and build the dataset.

    Returns:
        (class names ``"<superclass>/<class>"`` in fine-label order, images uint8
        ``[100, 600, 3, size, size]``; None when ``size`` is None, for checking only).

    Raises:
        DataError: on any structural problem.
    """
    meta = _unpickle(members, "meta", source)
    fine_names = [str(text_key(n)) for n in meta.get("fine_label_names", ())]
    coarse_names = [str(text_key(n)) for n in meta.get("coarse_label_names", ())]
    known = {c for partition in CIFAR_FS_CLASSES.values() for c in partition}
    if len(fine_names) != N_CLASSES or set(fine_names) != known \
            or tuple(coarse_names) != COARSE_LABEL_NAMES:
        raise DataError(f"meta of {source.label} does not name the 100 CIFAR-100 classes and "
                        f"20 superclasses: {source.fix}")
    parts = [_batch(members, "train", TRAIN_PER_CLASS, source),
             _batch(members, "test", TEST_PER_CLASS, source)]
    superclass = np.full(N_CLASSES, -1, dtype=np.int64)
    for _, fine, coarse in parts:
        for c in range(N_CLASSES):
            got = np.unique(coarse[fine == c])
            if len(got) != 1 or superclass[c] not in (-1, got[0]):
                raise DataError(f"{source.label}: class {fine_names[c]} is in more than one "
                                f"superclass: {source.fix}")
            superclass[c] = got[0]
    if (np.bincount(superclass, minlength=20) != N_CLASSES // 20).any():
        raise DataError(f"{source.label}: superclasses do not have 5 classes each: {source.fix}")
    names = tuple(f"{coarse_names[superclass[c]]}/{fine_names[c]}" for c in range(N_CLASSES))
    if size is None:
        return names, None
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    images = np.empty((N_CLASSES, per_class, 3, size, size), dtype=np.uint8)
    offset = 0
    for data, fine, _ in parts:
        order = np.argsort(fine, kind="stable")  # by class, file order within a class
        grouped = data[order].reshape(N_CLASSES, -1, 3, NATIVE_SIZE, NATIVE_SIZE)
        count = grouped.shape[1]
        for c in range(N_CLASSES):
            images[c, offset:offset + count] = resize_images(grouped[c], size)
        offset += count
    return names, images


def load_cifar100(
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load all 100 CIFAR-100 classes with all 600 images each, as one uint8 array.

    The first call for given inputs and ``image_size`` checks and decodes the archive (6 s on 2
    cores at 32x32) and writes ``<cache_dir>/compact/cifar100-<size>px-<key>.npz``; later calls
    check the archive's MD5 and read that file (0.6 s).

    Args:
        data_root: folder holding ``cifar100/`` (see :func:`resolve_data_root`).
        image_size: side of the output images in pixels, 1..256 (32 is the native size).
        download: fetch the archive from :data:`URL` into ``<data_root>/cifar100`` when missing.
        cache_dir: folder for the decoded cache (see
            :func:`~metabench.datasets.archives.resolve_cache_dir`).

    Returns:
        ``ImageDataset(name="cifar100")`` with images uint8 ``[100, 600, 3, size, size]`` (per
        class: the 500 ``train`` images, then the 100 ``test`` images, each in file order) and
        class names ``"<superclass>/<class>"`` in fine-label order, e.g. ``"fish/aquarium_fish"``.

    Raises:
        ConfigError: for a bad ``image_size``.
        DataError: if the data is missing and cannot be downloaded, unreadable, corrupt, not the
            official files, or not structured like CIFAR-100.
    """
    size = check_image_size(image_size, "CIFAR-100")
    source = _locate(resolve_data_root(data_root), download)
    fingerprint, members = _checked_members(source)
    key = hashlib.sha256(f"cifar100|size={size}|lanczos|{fingerprint}".encode()).hexdigest()
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    shape = (N_CLASSES, per_class, 3, size, size)
    path = cache_file("cifar100", size, key, cache_dir)
    cached = read_cache(path, key, shape)
    if cached is None:
        names, images = _decode(source, members or _read_members(source), size)
        assert images is not None
        write_cache(path, key, names, images)
        cached = names, images
    return ImageDataset(name="cifar100", images=cached[1], class_names=cached[0])


def download_cifar100(data_root: str | os.PathLike[str] | None = None) -> str:
    """Make sure the official CIFAR-100 archive (or its extracted folder) is there.

    Downloads :data:`URL` into ``<data_root>/cifar100/`` (MD5 checked, written atomically) when
    neither the archive nor the extracted folder exists, or when the archive there has another
    MD5 and its members are not the official files either (the bad copy is replaced only once a
    good one has arrived).

    Returns:
        A one-line summary.

    Raises:
        DataError: if the download fails (nothing is left behind) or an existing extracted
            folder is not the official files.
    """
    root = resolve_data_root(data_root)
    source = _existing(root)
    if source is not None:
        try:
            _checked_members(source)
            return f"CIFAR-100 is already in {source.path} (checksums match)"
        except DataError:
            if not source.is_archive:
                raise
    folder = root / FOLDER
    try:
        archives.download(URL, folder / ARCHIVE, md5=MD5)
    except DownloadError as exc:
        raise DataError(f"the download of CIFAR-100 from {exc.url} failed ({exc.reason}): check "
                        f"the network connection and rerun, or put {ARCHIVE} from {URL} in "
                        f"{folder}") from exc
    return f"downloaded {URL} to {folder / ARCHIVE} (md5 {MD5} verified)"


def verify_cifar100(data_root: str | os.PathLike[str] | None = None) -> str:
    """Check CIFAR-100 completely: checksums, then every member's structure (classes,
    superclasses, 500 + 100 images per class), without decoding into the cache.

    Returns:
        A one-line summary of what was checked.

    Raises:
        DataError: if it is missing (never downloads), unreadable, corrupt or not official.
    """
    root = resolve_data_root(data_root)
    source = _existing(root)
    if source is None:
        raise DataError(f"CIFAR-100 not found in {root / FOLDER}: {_how_to_get(root / FOLDER)}")
    fingerprint, members = _checked_members(source)
    _decode(source, members or _read_members(source), None)
    how = "archive md5 matches" if fingerprint.startswith("archive:") else "member md5s match"
    return (f"CIFAR-100: ok: {source.path} ({how}; 100 classes in 20 superclasses, "
            f"{TRAIN_PER_CLASS} + {TEST_PER_CLASS} images per class)")


# --------------------------------------------------------------------------- splits


def cifar_fs_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    download: bool = True,
) -> Split:
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes.

    Args:
        name: ``"bertinetto"``.
        data_root, image_size, download: as :func:`load_cifar100`.

    Returns:
        The :class:`Split`; pools list their classes in :data:`CIFAR_FS_CLASSES` order, named
        ``"<superclass>/<class>"``.

    Raises:
        ConfigError: for an unknown split name or a bad ``image_size``.
        DataError: as :func:`load_cifar100`.
    """
    if name not in CIFAR_FS_SPLITS:
        raise ConfigError(f"unknown cifar-fs split {name!r}: choose one of "
                          f"{', '.join(CIFAR_FS_SPLITS)}")
    dataset = load_cifar100(data_root, image_size, download)
    index = {n.split("/", 1)[1]: i for i, n in enumerate(dataset.class_names)}
    return split_by_index(dataset, "cifar-fs", name, {
        p: [index[c] for c in classes] for p, classes in CIFAR_FS_CLASSES.items()})


def fc100_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    download: bool = True,
) -> Split:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60 / 20 / 20 classes.

    Args:
        name: ``"oreshkin"``.
        data_root, image_size, download: as :func:`load_cifar100`.

    Returns:
        The :class:`Split`; pools list their classes in fine-label order, named
        ``"<superclass>/<class>"``.

    Raises:
        ConfigError: for an unknown split name or a bad ``image_size``.
        DataError: as :func:`load_cifar100`.
    """
    if name not in FC100_SPLITS:
        raise ConfigError(f"unknown fc100 split {name!r}: choose one of {', '.join(FC100_SPLITS)}")
    dataset = load_cifar100(data_root, image_size, download)
    superclass = [COARSE_LABEL_NAMES.index(n.split("/", 1)[0]) for n in dataset.class_names]
    return split_by_index(dataset, "fc100", name, {
        p: [i for i, s in enumerate(superclass) if s in supers]
        for p, supers in FC100_SUPERCLASSES.items()})
