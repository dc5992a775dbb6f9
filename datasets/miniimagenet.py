"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017).

100 classes of ImageNet (ILSVRC-2012) x 600 images, 84x84 RGB, split into 64 meta-train, 16
meta-validation and 20 meta-test classes. The split is defined by three CSV files of
``filename,label`` rows (``n0153282900000005.jpg,n01532829``), published with Ravi & Larochelle's
code (https://github.com/twitter/meta-learning-lstm, ``data/miniImagenet/``) and redistributed
with Snell et al.'s Prototypical Networks (MIT, (c) 2017 Jake Snell). :data:`RAVI_CLASSES` lists
their classes (in file order, which is sorted) and :data:`RAVI_CSV_SHA256` fingerprints their
rows, so any copy of the CSVs (whatever its line endings or row order) is checked row for row.

There is no official download of the images: they are ImageNet's, under ImageNet's terms. Users
have them in one of three on-disk formats, all accepted under ``<data root>/miniimagenet/`` (the
first format present wins, in this order):

``images``
    ``images/<filename>`` for every row of ``train.csv``, ``val.csv`` and ``test.csv``; the CSVs
    in ``miniimagenet/`` itself or in ``<data root>/splits/miniimagenet_ravi/``. The images may be
    of any size (84x84 in the common copies; full-size when built from ImageNet).
``cache``
    ``mini-imagenet-cache-{train,val,test}.pkl``: a dict with ``image_data`` (uint8
    ``[N, 84, 84, 3]``) and ``class_dict`` (wnid -> list of row indices into ``image_data``), the
    layout read by e.g. learn2learn's ``MiniImagenet`` and many JAX/PyTorch loaders.
``metaoptnet``
    ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``: a dict with ``data``
    (uint8 ``[N, 84, 84, 3]``), ``labels`` (N ints) and ``catname2label`` (wnid -> label),
    written by Python 2 for Gidaris & Komodakis (2018) and used by MetaOptNet (Lee et al. 2019),
    read as Latin-1 as their code does.

Pickles are read by :func:`~metabench.datasets.arrays.load_pickle`, which refuses any pickle that
would run code. Every format is checked for the split's classes and 600 images per class.

Preprocessing: images are decoded with Pillow, converted to RGB and resized to ``image_size``
with Lanczos filtering when they are not already that size (raw ImageNet images are squashed to
a square, as the usual conversion scripts do). Within a class, images keep their order in the CSV
(``images``), in ``class_dict`` (``cache``) or in the file (``metaoptnet``); the formats may order
a class's images differently, so runs on different formats do not share their test episodes'
images. The decoded array (1.27 GB at 84x84) is cached as an ``.npz`` in the cache folder, keyed
by the format, the CSV rows, the names, sizes and modification times of the input files, and
``image_size``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from tqdm import tqdm

from metabench.errors import ConfigError, DataError

from .archives import resolve_data_root
from .arrays import (
    cache_file,
    check_image_size,
    files_fingerprint,
    load_pickle,
    one_line,
    read_cache,
    resize_images,
    text_key,
    write_cache,
)
from .base import ImageDataset, Located, Split, split_by_index

__all__ = [
    "CACHE_FILES",
    "FOLDER",
    "IMAGES_PER_CLASS",
    "METAOPTNET_FILES",
    "NATIVE_SIZE",
    "PARTITIONS",
    "RAVI_CLASSES",
    "RAVI_CSV_SHA256",
    "SPLITS",
    "csv_rows_sha256",
    "download_miniimagenet",
    "load_miniimagenet",
    "locate_miniimagenet",
    "miniimagenet_split",
    "read_ravi_csv",
    "verify_miniimagenet",
]

FOLDER = "miniimagenet"  # under the data root
SPLITS = ("ravi",)
PARTITIONS = ("train", "val", "test")
NATIVE_SIZE = 84  # side of the images in the pickled formats, in pixels
IMAGES_PER_CLASS = 600  # tests monkeypatch this (and RAVI_CLASSES, RAVI_CSV_SHA256) down

#: Classes of the Ravi & Larochelle split, per partition, in CSV order (64 / 16 / 20 wnids).
RAVI_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383",
        "n01910747", "n02074367", "n02089867", "n02091831", "n02101006", "n02105505",
        "n02108089", "n02108551", "n02108915", "n02111277", "n02113712", "n02120079",
        "n02165456", "n02457408", "n02606052", "n02687172", "n02747177", "n02795169",
        "n02823428", "n02966193", "n03017168", "n03047690", "n03062245", "n03207743",
        "n03220513", "n03337140", "n03347037", "n03400231", "n03476684", "n03527444",
        "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548",
        "n04296562", "n04389033", "n04435653", "n04443257", "n04509417", "n04515003",
        "n04596742", "n04604644", "n04612504", "n06794110", "n07584110", "n07697537",
        "n07747607", "n09246464", "n13054560", "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826",
        "n02971356", "n02981792", "n03075370", "n03417042", "n03535780", "n03584254",
        "n03770439", "n03773504", "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738",
        "n02129165", "n02219486", "n02443484", "n02871525", "n03127925", "n03146219",
        "n03272010", "n03544143", "n03775546", "n04146614", "n04149813", "n04418357",
        "n04522168", "n07613480",
    ),
})

#: SHA-256 of each split CSV's rows, as computed by :func:`csv_rows_sha256` (38,400 / 9,600 /
#: 12,000 rows): independent of line endings, quoting and row order.
RAVI_CSV_SHA256: Mapping[str, str] = MappingProxyType({
    "train": "0416d430c1d80699ce924c6cd19b5f83e1bc18634ce3b559fa855bcafb822203",
    "val": "9089c928049271cdebe9bb50f599c5d39fdcf82e895d6c435560ada8ce3adb4c",
    "test": "49db34528c185d7014bb43e329f3ae36a16a6b8dc22ba177c4ed5fdeb2c37a55",
})

#: File names of the two pickled formats, per partition.
CACHE_FILES: Mapping[str, str] = MappingProxyType(
    {p: f"mini-imagenet-cache-{p}.pkl" for p in PARTITIONS}
)
METAOPTNET_FILES: Mapping[str, str] = MappingProxyType({
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
})

_SPLIT_CSV_URL = "github.com/twitter/meta-learning-lstm (data/miniImagenet)"


def _how_to_get(folder: Path) -> str:
    """The one-line instructions for a user without miniImageNet."""
    return (
        "there is no official download (its images are ImageNet's, under ImageNet's "
        "terms): build it from ILSVRC-2012 with the Ravi & Larochelle split CSVs from "
        f"{_SPLIT_CSV_URL}, or copy it from a colleague, and put it in {folder} as "
        "images/<filename> plus train.csv, val.csv and test.csv, or as "
        "mini-imagenet-cache-{train,val,test}.pkl, or as "
        "miniImageNet_category_split_{train_phase_train,val,test}.pickle; or pass --data-root / "
        f"set METABENCH_DATA to a folder whose {FOLDER}/ has them"
    )


_REPLACE = ("replace it with an intact copy of miniImageNet with the Ravi & Larochelle split "
            "(see `metabench data list`)")


# --------------------------------------------------------------------------- split CSVs


def csv_rows_sha256(rows: Sequence[tuple[str, str]]) -> str:
    """Fingerprint of a split CSV's ``(filename, label)`` rows (header excluded).

    Returns:
        SHA-256 (hex) of the rows sorted, each written as ``filename,label\\n`` in UTF-8.
    """
    text = "".join(f"{filename},{label}\n" for filename, label in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def read_ravi_csv(path: Path, partition: str) -> dict[str, list[str]]:
    """Read and check one split CSV of the Ravi & Larochelle split.

    Args:
        path: the CSV file, header ``filename,label``.
        partition: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        wnid -> its image file names in file order, for the partition's classes in
        :data:`RAVI_CLASSES` order.

    Raises:
        DataError: if the file cannot be read, is malformed, or its rows are not the published
            ones (other classes, not :data:`IMAGES_PER_CLASS` rows per class, other files).
    """
    fix = f"replace it with {partition}.csv of the Ravi & Larochelle split from {_SPLIT_CSV_URL}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM is tolerated
            table = [row for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({one_line(exc)}): {fix}") from exc
    if not table or [c.strip() for c in table[0]] != ["filename", "label"]:
        raise DataError(f"{path} does not start with the header filename,label: {fix}")
    rows = []
    for lineno, row in enumerate(table[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path} row {lineno} is not filename,label: {fix}")
        rows.append((row[0].strip(), row[1].strip()))
    by_class: dict[str, list[str]] = {}
    for filename, label in rows:
        by_class.setdefault(label, []).append(filename)
    want = RAVI_CLASSES[partition]
    if set(by_class) != set(want):
        raise DataError(f"{path} has {len(by_class)} classes that are not the {len(want)} "
                        f"{partition} classes of the Ravi & Larochelle split: {fix}")
    short = [c for c in want if len(by_class[c]) != IMAGES_PER_CLASS]
    if short:
        raise DataError(f"{path} has {len(by_class[short[0]])} rows of class {short[0]}, "
                        f"expected {IMAGES_PER_CLASS}: {fix}")
    if csv_rows_sha256(rows) != RAVI_CSV_SHA256[partition]:
        raise DataError(f"{path} lists other image files than the published {partition}.csv: "
                        f"{fix}")
    return {c: by_class[c] for c in want}


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class _Found:
    """One complete format on disk: its name and, per partition, the file(s) it reads."""

    format: str  # "images", "cache" or "metaoptnet"
    folder: Path
    files: Mapping[str, Path]  # partition -> pickle, or -> split CSV for "images"

    @property
    def images(self) -> Path:
        return self.folder / "images"

    def describe(self) -> str:
        if self.format == "images":
            csv_dirs = sorted({str(p.parent) for p in self.files.values()})
            return f"{self.images}/ (images) with the split CSVs in {', '.join(csv_dirs)}"
        return f"{', '.join(str(self.files[p]) for p in PARTITIONS)} ({self.format} pickles)"


def _csv_path(root: Path, partition: str) -> Path | None:
    for candidate in (root / FOLDER / f"{partition}.csv",
                      root / "splits" / "miniimagenet_ravi" / f"{partition}.csv"):
        if candidate.is_file():
            return candidate
    return None


def _find(root: Path) -> _Found | None:
    """The first format present under ``<root>/miniimagenet``, checked for completeness; None
    if no format is present at all.

    Raises:
        DataError: if the first present format lacks files.
    """
    folder = root / FOLDER
    if (folder / "images").is_dir():
        csvs = {p: _csv_path(root, p) for p in PARTITIONS}
        missing = [f"{p}.csv" for p, path in csvs.items() if path is None]
        if missing:
            raise DataError(
                f"miniImageNet images found in {folder / 'images'} but not the split file(s) "
                f"{', '.join(missing)}: put train.csv, val.csv and test.csv of the Ravi & "
                f"Larochelle split ({_SPLIT_CSV_URL}) in {folder}"
            )
        return _Found("images", folder, {p: path for p, path in csvs.items() if path})
    for name, files in (("cache", CACHE_FILES), ("metaoptnet", METAOPTNET_FILES)):
        paths = {p: folder / files[p] for p in PARTITIONS}
        present = [p for p, path in paths.items() if path.is_file()]
        if present and len(present) < len(PARTITIONS):
            absent = ", ".join(paths[p].name for p in PARTITIONS if p not in present)
            raise DataError(f"miniImageNet in {folder} has {paths[present[0]].name} but not "
                            f"{absent}: put all three files there")
        if present:
            return _Found(name, folder, paths)
    return None


def _require(root: Path) -> _Found:
    """:func:`_find`, raising DataError (with how to get it) when nothing is there."""
    found = _find(root)
    if found is None:
        raise DataError(f"miniImageNet not found in {root / FOLDER}: {_how_to_get(root / FOLDER)}")
    return found


def locate_miniimagenet(data_root: str | os.PathLike[str] | None = None) -> Located:
    """Where miniImageNet is under the data root, without reading it.

    Returns:
        ``Located("found", <paths and format>)``, or ``Located("missing", <what is there and
        how to get it>)``.
    """
    root = resolve_data_root(data_root)
    try:
        found = _find(root)
    except DataError as exc:  # an incomplete copy
        return Located("missing", str(exc))
    if found is not None:
        return Located("found", found.describe())
    csvs = [p for p in PARTITIONS if _csv_path(root, p)]
    note = (f" (the split CSVs are already in {_csv_path(root, 'train').parent})"
            if len(csvs) == len(PARTITIONS) else "")
    return Located("missing", f"looked in {root / FOLDER}; {_how_to_get(root / FOLDER)}{note}")


def download_miniimagenet(data_root: str | os.PathLike[str] | None = None) -> str:
    """miniImageNet cannot be downloaded: always raises.

    Raises:
        DataError: saying where to get it and which folder layouts metabench reads.
    """
    folder = resolve_data_root(data_root) / FOLDER
    raise DataError(f"miniImageNet cannot be downloaded: {_how_to_get(folder)}")


# --------------------------------------------------------------------------- reading


def _check_array(array: object, label: str) -> np.ndarray:
    """``array`` if it is uint8 ``[N, H, W, 3]``, else DataError."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 \
            or array.shape[3] != 3:
        got = (f"{array.dtype} {tuple(array.shape)}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise DataError(f"{label} holds {got} images, expected uint8 [N, H, W, 3]: {_REPLACE}")
    return array


def _load_dict(path: Path, keys: Sequence[str], label: str) -> dict[str, object]:
    """Unpickle ``path`` safely; return its dict (keys as str) if it has ``keys``."""
    try:
        with open(path, "rb") as fh:
            obj = load_pickle(fh, label, _REPLACE)
    except OSError as exc:
        raise DataError(f"cannot read {label} ({one_line(exc)}): make it readable, or "
                        f"{_REPLACE}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{label} holds a {type(obj).__name__}, not a dict: {_REPLACE}")
    obj = {text_key(k): v for k, v in obj.items()}
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{label} has no {missing[0]!r} entry (it has "
                        f"{', '.join(map(repr, sorted(map(str, obj))))}): {_REPLACE}")
    return obj


def _class_indices(found: _Found, partition: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read one pickle: its images and, per class of the partition, the rows of its images."""
    path = found.files[partition]
    label = f"miniimagenet file {path}"
    want = RAVI_CLASSES[partition]
    if found.format == "cache":
        obj = _load_dict(path, ("image_data", "class_dict"), label)
        images = _check_array(obj["image_data"], label)
        table = obj["class_dict"]
        if not isinstance(table, dict):
            raise DataError(f"{label}: class_dict is a {type(table).__name__}, not a dict: "
                            f"{_REPLACE}")
        try:
            rows = {text_key(k): np.asarray(v, dtype=np.int64).reshape(-1)
                    for k, v in table.items()}
        except (TypeError, ValueError) as exc:
            raise DataError(f"{label}: class_dict values are not lists of image indices "
                            f"({one_line(exc)}): {_REPLACE}") from exc
    else:
        obj = _load_dict(path, ("data", "labels", "catname2label"), label)
        images = _check_array(obj["data"], label)
        try:
            labels = np.asarray(obj["labels"], dtype=np.int64).reshape(-1)
            table = {text_key(k): int(v) for k, v in dict(obj["catname2label"]).items()}
        except (TypeError, ValueError) as exc:
            raise DataError(f"{label}: labels / catname2label are not integers "
                            f"({one_line(exc)}): {_REPLACE}") from exc
        if len(labels) != len(images):
            raise DataError(f"{label} has {len(labels)} labels for {len(images)} images: "
                            f"{_REPLACE}")
        rows = {wnid: np.flatnonzero(labels == value) for wnid, value in table.items()}
    if set(rows) != set(want):
        raise DataError(f"{label} has {len(rows)} classes that are not the {len(want)} "
                        f"{partition} classes of the Ravi & Larochelle split: {_REPLACE}")
    for wnid in want:
        index = rows[wnid]
        if len(index) != IMAGES_PER_CLASS:
            raise DataError(f"{label} has {len(index)} images of class {wnid}, expected "
                            f"{IMAGES_PER_CLASS}: {_REPLACE}")
        if index.min() < 0 or index.max() >= len(images):
            raise DataError(f"{label}: class {wnid} indexes image {index.max()} of "
                            f"{len(images)}: {_REPLACE}")
    return images, {wnid: rows[wnid] for wnid in want}


def _decode_file(path: Path, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 ``[3, s, s]`` (``size`` None: check only, native size).

    Raises:
        DataError: if the file is missing or cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"miniImageNet image {path} is missing (it is listed in the split "
                        f"CSVs): {_REPLACE}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"miniImageNet image {path} is corrupt ({one_line(exc)}): "
                        f"{_REPLACE}") from exc
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _read(found: _Found, size: int | None, out: np.ndarray | None) -> tuple[str, ...]:
    """Read every image of ``found`` into ``out[class, image]`` (or only check them when
    ``out`` is None), classes in :data:`RAVI_CLASSES` order; return the class names.

    Raises:
        DataError: on any missing, unreadable, corrupt or wrongly structured input.
    """
    names: list[str] = []
    total = sum(len(RAVI_CLASSES[p]) for p in PARTITIONS) * IMAGES_PER_CLASS
    with tqdm(total=total, unit="img", leave=False, disable=None,
              desc="reading miniImageNet" + (" (once; cached afterwards)" if out is not None
                                             else "")) as bar:
        for partition in PARTITIONS:
            if found.format == "images":
                listing = read_ravi_csv(found.files[partition], partition)
                for wnid, filenames in listing.items():
                    for i, filename in enumerate(filenames):
                        image = _decode_file(found.images / filename, size)
                        if out is not None:
                            out[len(names), i] = image
                    names.append(wnid)
                    bar.update(len(filenames))
                continue
            images, rows = _class_indices(found, partition)
            for wnid, index in rows.items():
                if out is not None:
                    chosen = np.ascontiguousarray(images[index].transpose(0, 3, 1, 2))
                    out[len(names)] = resize_images(chosen, out.shape[-1])
                names.append(wnid)
                bar.update(len(index))
            del images
    return tuple(names)


def _fingerprint(found: _Found) -> str:
    """Fingerprint of the inputs: split CSV bytes and image file stats, or pickle file stats."""
    try:
        if found.format != "images":
            return files_fingerprint([found.files[p] for p in PARTITIONS], contents=False)
        listing = [read_ravi_csv(found.files[p], p) for p in PARTITIONS]
        files = [found.images / f for classes in listing for fs in classes.values() for f in fs]
        return files_fingerprint([found.files[p] for p in PARTITIONS], contents=True) + \
            files_fingerprint(files, contents=False)
    except FileNotFoundError as exc:
        raise DataError(f"miniImageNet file {exc.filename} is missing: {_REPLACE}") from exc
    except OSError as exc:
        raise DataError(f"cannot read miniImageNet in {found.folder} ({one_line(exc)}): make it "
                        "readable") from exc


def load_miniimagenet(
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load all 100 miniImageNet classes of the Ravi & Larochelle split as one uint8 array.

    The first call for given inputs and ``image_size`` reads and checks everything (measured on
    2 cores: 18 s for 60,000 84x84 JPEGs, 7 s for the pickles) and writes ``<cache_dir>/compact/miniimagenet-<size>px-<key>
    .npz``; later calls read that file.

    Args:
        data_root: folder holding ``miniimagenet/`` (see :func:`resolve_data_root`).
        image_size: side of the output images in pixels, 1..256.
        cache_dir: folder for the decoded cache (see
            :func:`~metabench.datasets.archives.resolve_cache_dir`).

    Returns:
        ``ImageDataset(name="miniimagenet")`` with images uint8 ``[100, 600, 3, size, size]``
        and class names the wnids: the 64 train, then 16 val, then 20 test classes, each in
        :data:`RAVI_CLASSES` order.

    Raises:
        ConfigError: for a bad ``image_size``.
        DataError: if no format is found or the data is unreadable, corrupt or not the split.
    """
    size = check_image_size(image_size, "miniimagenet")
    found = _require(resolve_data_root(data_root))
    key = hashlib.sha256(f"miniimagenet|{found.format}|size={size}|lanczos|"
                         f"{_fingerprint(found)}".encode()).hexdigest()
    n_classes = sum(len(RAVI_CLASSES[p]) for p in PARTITIONS)
    shape = (n_classes, IMAGES_PER_CLASS, 3, size, size)
    path = cache_file("miniimagenet", size, key, cache_dir)
    cached = read_cache(path, key, shape)
    if cached is None:
        images = np.empty(shape, dtype=np.uint8)
        names = _read(found, size, images)
        write_cache(path, key, names, images)
        cached = names, images
    return ImageDataset(name="miniimagenet", images=cached[1], class_names=cached[0])


def verify_miniimagenet(data_root: str | os.PathLike[str] | None = None) -> str:
    """Check miniImageNet completely: the split CSVs against the published rows and every
    image decodable (``images``), or every pickle's structure, classes and counts.

    Returns:
        A one-line summary of what was checked.

    Raises:
        DataError: naming the first problem found.
    """
    found = _require(resolve_data_root(data_root))
    _read(found, None, None)
    n = sum(len(RAVI_CLASSES[p]) for p in PARTITIONS)
    return (f"miniimagenet: ok: {n} classes x {IMAGES_PER_CLASS} images of the Ravi & "
            f"Larochelle split in {found.describe()}")


def miniimagenet_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = NATIVE_SIZE,
    download: bool = True,
) -> Split:
    """Load miniImageNet and split its classes (Ravi & Larochelle 2017: 64 / 16 / 20).

    Args:
        name: ``"ravi"``.
        data_root: folder with ``miniimagenet/`` (see :func:`resolve_data_root`).
        image_size: image side in pixels, 1..256 (84 in the papers).
        download: ignored: there is nothing to download (the error says where to get it).

    Returns:
        The :class:`Split`; pool class names are the wnids.

    Raises:
        ConfigError: for an unknown split name or a bad ``image_size``.
        DataError: as :func:`load_miniimagenet`.
    """
    if name not in SPLITS:
        raise ConfigError(f"unknown miniimagenet split {name!r}: choose one of {', '.join(SPLITS)}")
    dataset = load_miniimagenet(data_root, image_size)
    index = {wnid: i for i, wnid in enumerate(dataset.class_names)}
    return split_by_index(dataset, "miniimagenet", name, {
        p: [index[wnid] for wnid in classes] for p, classes in RAVI_CLASSES.items()})
