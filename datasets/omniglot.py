"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): loading, verification, caching and splits.

Source: https://github.com/brendenlake/omniglot (MIT, (c) 2015 Brenden Lake), two archives:
``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters), each character drawn once by 20 people as a 105x105 1-bit PNG.

Layout under a data root (see :func:`~metabench.datasets.archives.resolve_data_root`)::

    <root>/omniglot/images_background.zip  or  <root>/omniglot/images_background/<alph>/<char>/*.png
    <root>/omniglot/images_evaluation.zip  or  <root>/omniglot/images_evaluation/<alph>/<char>/*.png
    <root>/splits/omniglot_vinyals/{train,val,test}.txt

Missing archives and split files are downloaded there (checksums verified). An archive is
accepted if its MD5 is the official one, or else if it passes a structural check (every member's
CRC, alphabet / character / drawer counts), so re-packed copies of the original PNGs load too.

Preprocessing: each PNG is decoded with Pillow, converted to 8-bit grey, inverted (strokes 255,
background 0) and resized to ``image_size`` with Lanczos filtering, the filter named in Finn et
al.'s (2017) MAML data preparation (``resize_images.py``). Note that Pillow silently resizes
1-bit images with nearest-neighbour whatever filter is asked, so that script (which resizes the
1-bit PNGs directly) produced binary images; we convert to grey first, so the filter really is
Lanczos and the images are anti-aliased. The decoded array (about 25 MB at 28x28) is cached as
an ``.npz`` in the cache folder, keyed by the archives' SHA-256 and ``image_size``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from tqdm import tqdm

from metabench.errors import ConfigError, DataError

from . import archives
from .archives import (
    DownloadError,
    atomic_writer,
    md5_of,
    resolve_cache_dir,
    resolve_data_root,
    sha256_of,
)
from .base import ClassPool, ImageDataset, Located, Split

__all__ = [
    "BACKGROUND",
    "EVALUATION",
    "MD5",
    "N_ALPHABETS",
    "N_CHARACTERS",
    "N_DRAWERS",
    "RAW_SIZE",
    "SPLITS",
    "URLS",
    "VINYALS_BASE_URL",
    "VINYALS_COUNTS",
    "VINYALS_SHA256",
    "background_mask",
    "decode_png",
    "download_omniglot",
    "lake_split",
    "load_omniglot",
    "locate_omniglot",
    "omniglot_split",
    "resolve_data_root",
    "verify_omniglot",
    "vinyals_pool",
    "vinyals_split_files",
]

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
_PARTS = (BACKGROUND, EVALUATION)

#: Official archives (Lake et al. 2015). Tests may monkeypatch this mapping.
URLS: Mapping[str, str] = MappingProxyType({
    BACKGROUND: "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    EVALUATION: "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
})
#: MD5 of the official archives.
MD5: Mapping[str, str] = MappingProxyType({
    BACKGROUND: "68d2efa1b9178cc56df9314c21c6e718",
    EVALUATION: "6b91aef0f799c5bb55b94e3f2daec811",
})
N_ALPHABETS: Mapping[str, int] = MappingProxyType({BACKGROUND: 30, EVALUATION: 20})
N_CHARACTERS: Mapping[str, int] = MappingProxyType({BACKGROUND: 964, EVALUATION: 659})
N_DRAWERS = 20  # images per character, one per drawer
RAW_SIZE = 105  # side of the original PNGs, in pixels

#: Vinyals et al. (2016) split as distributed with the Prototypical Networks code
#: (Snell et al. 2017, MIT, (c) 2017 Jake Snell). Tests may monkeypatch this base URL.
VINYALS_BASE_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
    "data/omniglot/splits/vinyals/"
)
VINYALS_SHA256: Mapping[str, str] = MappingProxyType({
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
    "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
})
#: Rotated classes per partition: 1028 / 172 / 423 characters x 4 rotations.
VINYALS_COUNTS: Mapping[str, int] = MappingProxyType(
    {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
)
SPLITS = ("vinyals", "lake")

_CACHE_FORMAT = 1  # bump when the preprocessing changes, so that old caches are not reused
_ROT = re.compile(r"rot(000|090|180|270)")


@dataclass(frozen=True)
class _Source:
    """One half of Omniglot on disk: a zip archive or its extracted folder."""

    part: str  # BACKGROUND or EVALUATION
    path: Path
    is_zip: bool

    @property
    def label(self) -> str:
        return f"omniglot {'archive' if self.is_zip else 'folder'} {self.path}"

    @property
    def fix(self) -> str:
        if self.is_zip:
            return (
                "delete it and rerun to download it again, or replace it with the official file "
                f"from {URLS[self.part]}"
            )
        return (
            f"replace it with the extracted official archive {URLS[self.part]}, or delete it and "
            "rerun to download the archive"
        )


def _check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is an int in 1..105, else raise ConfigError."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ConfigError(f"image_size must be an integer from 1 to {RAW_SIZE}, got {image_size!r}")
    if not 1 <= image_size <= RAW_SIZE:
        raise ConfigError(
            f"image_size must be from 1 to {RAW_SIZE} (Omniglot's native size), got {image_size}"
        )
    return int(image_size)


def decode_png(data: bytes, image_size: int) -> np.ndarray:
    """Decode one Omniglot PNG to the library's format.

    Steps: decode with Pillow, convert to 8-bit grey, invert (strokes 255, background 0),
    resize to ``image_size`` x ``image_size`` with Lanczos filtering (skipped at 105).

    Args:
        data: the PNG file's bytes; the image must be 105x105.
        image_size: output side in pixels.

    Returns:
        uint8 ``[image_size, image_size]``.

    Raises:
        OSError, ValueError, SyntaxError: if the bytes are not a decodable 105x105 image
            (callers turn these into a DataError naming the file).
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.size != (RAW_SIZE, RAW_SIZE):
            raise ValueError(f"image is {image.size[0]}x{image.size[1]}, expected 105x105")
        inverted = 255 - np.asarray(image.convert("L"), dtype=np.uint8)  # as ImageOps.invert
    if image_size == RAW_SIZE:
        return inverted
    resized = Image.fromarray(inverted).resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


# --------------------------------------------------------------------------- locating sources


def _missing_message(folder: Path, cause: str) -> str:
    return (
        f"Omniglot not found under {folder} and {cause}: put {BACKGROUND}.zip and "
        f"{EVALUATION}.zip there, or pass --data-root / set METABENCH_DATA to a folder that "
        "has them"
    )


def _locate(root: Path, allow_download: bool) -> tuple[_Source, ...]:
    """Find both halves under ``<root>/omniglot`` (zip preferred over folder), downloading any
    missing archive when allowed.

    Raises:
        DataError: if a half is missing and cannot be downloaded.
    """
    folder = root / "omniglot"
    sources = []
    for part in _PARTS:
        zip_path, extracted = folder / f"{part}.zip", folder / part
        if zip_path.is_file():
            sources.append(_Source(part, zip_path, True))
        elif extracted.is_dir():
            sources.append(_Source(part, extracted, False))
        elif not allow_download:
            raise DataError(_missing_message(folder, "downloading is disabled"))
        else:
            try:
                archives.download(URLS[part], zip_path, md5=MD5[part])
            except DownloadError as exc:
                cause = f"the download from {exc.url} failed ({exc.reason})"
                raise DataError(_missing_message(folder, cause)) from exc
            sources.append(_Source(part, zip_path, True))
    return tuple(sources)


def _why(exc: BaseException) -> str:
    """An exception's cause on one line, for quoting inside a one-line error message."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def _unreadable(source: _Source, exc: OSError) -> DataError:
    return DataError(f"cannot read {source.label} ({_why(exc)}): make it readable, or {source.fix}")


def _folder_members(source: _Source) -> list[str]:
    """PNGs of an extracted folder as sorted member names ``<part>/<alphabet>/<character>/<f>``
    (the names they have in the archive), found with :func:`os.scandir` (much faster than
    :meth:`Path.glob` on 32k files)."""

    def subdirs(path: str) -> list[os.DirEntry[str]]:
        with os.scandir(path) as entries:
            return [e for e in entries if e.is_dir()]

    members = []
    try:
        for alphabet in subdirs(source.path):
            for character in subdirs(alphabet.path):
                with os.scandir(character.path) as files:
                    members += [
                        f"{source.part}/{alphabet.name}/{character.name}/{f.name}"
                        for f in files if f.name.lower().endswith(".png") and f.is_file()
                    ]
    except OSError as exc:
        raise _unreadable(source, exc) from exc
    return sorted(members)


def _fingerprint(source: _Source) -> str:
    """SHA-256 of an archive; for a folder, of its PNGs' names, sizes and modification times."""
    try:
        if source.is_zip:
            return sha256_of(source.path)
        digest = hashlib.sha256()
        for member in _folder_members(source):
            stat = os.stat(source.path.parent / member)
            digest.update(f"{member}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    except OSError as exc:
        raise _unreadable(source, exc) from exc


# --------------------------------------------------------------------------- verify and decode


def _index_members(names: Sequence[str], part: str) -> dict[str, list[str]]:
    """Map ``"<alphabet>/<character>"`` to its sorted PNG members ``<part>/<a>/<c>/<file>.png``;
    other members (folders, stray files) are ignored. Keys come out sorted."""
    index: dict[str, list[str]] = {}
    for name in names:
        pieces = name.split("/")
        if len(pieces) == 4 and pieces[0] == part and pieces[3].lower().endswith(".png"):
            index.setdefault(f"{pieces[1]}/{pieces[2]}", []).append(name)
    return {key: sorted(members) for key, members in sorted(index.items())}


def _check_structure(index: Mapping[str, Sequence[object]], source: _Source) -> None:
    """Raise DataError unless ``index`` has the official alphabet, character and drawer counts."""
    alphabets = {key.split("/")[0] for key in index}
    wrong = [key for key, files in index.items() if len(files) != N_DRAWERS]
    want_a, want_c = N_ALPHABETS[source.part], N_CHARACTERS[source.part]
    if len(alphabets) == want_a and len(index) == want_c and not wrong:
        return
    found = f"{len(alphabets)} alphabets and {len(index)} characters"
    if wrong:
        found += f" ({len(wrong)} without exactly {N_DRAWERS} PNGs, e.g. {wrong[0]})"
    raise DataError(
        f"{source.label} has {found}, expected {want_a} alphabets and {want_c} characters of "
        f"{N_DRAWERS} PNGs each: {source.fix}"
    )


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, zipfile.BadZipFile)


def _decode_index(
    index: Mapping[str, Sequence[str]],
    read: Callable[[str], bytes],
    image_size: int,
    source: _Source,
    out: np.ndarray,
    bar: tqdm,
) -> None:
    """Decode every image of ``index`` (already structure-checked) into ``out[c, i, 0]``."""
    for c, files in enumerate(index.values()):
        for i, file in enumerate(files):
            try:
                out[c, i, 0] = decode_png(read(file), image_size)
            except _DECODE_ERRORS as exc:
                raise DataError(
                    f"{source.label} is corrupt (cannot decode {file}: {_why(exc)}): {source.fix}"
                ) from exc
        bar.update(len(files))


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)
# RuntimeError: encrypted member; NotImplementedError: unknown compression method


def _first_bad_member(zf: zipfile.ZipFile) -> str | None:
    """Read every member, checking its CRC-32, like :meth:`zipfile.ZipFile.testzip`; unlike it,
    also name the member when decompression itself fails. Returns the problem, or None."""
    for info in zf.infolist():
        try:
            with zf.open(info) as fh:
                while fh.read(1 << 20):
                    pass
        except zipfile.BadZipFile as exc:
            if "CRC" in str(exc):
                return f"bad CRC in {info.filename}"
            return f"{info.filename}: {_why(exc)}"
        except _ZIP_ERRORS as exc:
            return f"{info.filename}: {_why(exc)}"
    return None


def _read_source(source: _Source, image_size: int, bar: tqdm) -> tuple[list[str], np.ndarray]:
    """Verify one half and decode it.

    Returns:
        (class names ``"<alphabet>/<character>"`` sorted, uint8 ``[n, 20, 1, size, size]``).

    Raises:
        DataError: unreadable, corrupt (bad zip, bad CRC, undecodable PNG) or wrong structure.
    """
    shape = (N_CHARACTERS[source.part], N_DRAWERS, 1, image_size, image_size)
    out = np.empty(shape, dtype=np.uint8)
    if not source.is_zip:
        index = _index_members(_folder_members(source), source.part)
        _check_structure(index, source)
        top = source.path.parent  # member names start with the folder's own name
        _decode_index(index, lambda m: (top / m).read_bytes(), image_size, source, out, bar)
        return list(index), out
    try:
        official = md5_of(source.path) == MD5[source.part]
    except OSError as exc:
        raise _unreadable(source, exc) from exc
    try:
        with zipfile.ZipFile(source.path) as zf:
            index = _index_members(zf.namelist(), source.part)
            _check_structure(index, source)
            if not official:  # re-packed copy: check every member's CRC before trusting it
                bad = _first_bad_member(zf)
                if bad is not None:
                    raise DataError(f"{source.label} is corrupt ({bad}): {source.fix}")
            _decode_index(index, zf.read, image_size, source, out, bar)
    except _ZIP_ERRORS as exc:
        raise DataError(f"{source.label} is corrupt ({_why(exc)}): {source.fix}") from exc
    return list(index), out


def _decode_all(sources: Sequence[_Source], image_size: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Decode both halves, background first; return (class names, images)."""
    names: list[str] = []
    arrays = []
    total = sum(N_CHARACTERS[s.part] for s in sources) * N_DRAWERS
    with tqdm(total=total, unit="img", desc="decoding Omniglot (once; cached afterwards)",
              disable=None, leave=False) as bar:
        for source in sources:
            part_names, images = _read_source(source, image_size, bar)
            names += part_names
            arrays.append(images)
    if len(set(names)) != len(names):
        raise DataError(
            f"{sources[0].label} and {sources[1].label} share alphabet names, so they are not the "
            f"official halves: {sources[1].fix}"
        )
    return tuple(names), np.concatenate(arrays)


# --------------------------------------------------------------------------- compact cache


def _read_cache(path: Path, key: str, image_size: int) -> tuple[tuple[str, ...], np.ndarray] | None:
    """Return (class names, images) from a cache file, or None if absent, stale or unreadable."""
    n_classes = sum(N_CHARACTERS.values())
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            images = npz["images"]
            names = tuple(str(n) for n in npz["class_names"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # missing or corrupt: the caller rebuilds it
    if images.dtype != np.uint8 or images.shape != (
        n_classes, N_DRAWERS, 1, image_size, image_size
    ) or len(names) != n_classes:
        return None
    return names, images


def _write_cache(path: Path, key: str, names: tuple[str, ...], images: np.ndarray) -> None:
    """Write the cache atomically; warn (do not fail) if the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.savez(fh, key=np.array(key), images=images, class_names=np.array(names))
    except OSError as exc:
        warnings.warn(
            f"could not write the Omniglot cache {path} ({_why(exc)}), so the next load "
            "decodes the images again: set METABENCH_CACHE to a writable folder",
            RuntimeWarning,
            stacklevel=3,
        )


def load_omniglot(
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load all 1623 Omniglot characters as one uint8 array.

    The first call for given archives and ``image_size`` verifies and decodes 32,460 PNGs
    (a few seconds) and writes ``<cache_dir>/compact/omniglot-<size>px-<key>.npz``; later calls
    hash the archives and read that file (well under a second). A corrupt cache is rebuilt.

    Args:
        data_root: folder holding ``omniglot/`` (see :func:`resolve_data_root`).
        image_size: side of the output images in pixels, 1..105 (28 in most papers).
        download: fetch missing archives from :data:`URLS` into ``<data_root>/omniglot``.
        cache_dir: folder for the decoded cache (see
            :func:`~metabench.datasets.archives.resolve_cache_dir`).

    Returns:
        ``ImageDataset(name="omniglot")`` with images uint8 ``[1623, 20, 1, size, size]``,
        strokes 255 on a 0 background, drawers in file-name order, and class names
        ``"<alphabet>/<character>"``: the 964 background characters first (sorted), then the
        659 evaluation characters (sorted); see :func:`background_mask`.

    Raises:
        ConfigError: if ``image_size`` is not an integer in 1..105.
        DataError: if the data is missing and cannot be downloaded, unreadable, corrupt, or
            not structured like the official archives.
    """
    size = _check_image_size(image_size)
    sources = _locate(resolve_data_root(data_root), download)
    fingerprints = [f"{s.part}:{'zip' if s.is_zip else 'dir'}:{_fingerprint(s)}" for s in sources]
    key = hashlib.sha256(
        f"omniglot|format={_CACHE_FORMAT}|size={size}|lanczos|{'|'.join(fingerprints)}".encode()
    ).hexdigest()
    cache = resolve_cache_dir(cache_dir) / "compact" / f"omniglot-{size}px-{key[:16]}.npz"
    cached = _read_cache(cache, key, size)
    if cached is None:
        cached = _decode_all(sources, size)
        _write_cache(cache, key, *cached)
    names, images = cached
    return ImageDataset(name="omniglot", images=images, class_names=names)


def background_mask(dataset: ImageDataset) -> np.ndarray:
    """Which classes of a :func:`load_omniglot` dataset come from ``images_background``.

    Returns:
        bool ``[1623]``: True for the first 964 classes (background set), False for the 659
        evaluation-set classes.

    Raises:
        ValueError: if ``dataset`` is not a full Omniglot dataset.
    """
    total = sum(N_CHARACTERS.values())
    if dataset.name != "omniglot" or dataset.n_classes != total:
        raise ValueError(f"expected the {total}-class omniglot dataset, got {dataset.name!r} "
                         f"with {dataset.n_classes} classes")
    return np.arange(total) < N_CHARACTERS[BACKGROUND]


# --------------------------------------------------------------------------- splits


def _pool(dataset: ImageDataset, base: Sequence[int], rotation: Sequence[int],
          names: Sequence[str]) -> ClassPool:
    return ClassPool(dataset, np.asarray(base, dtype=np.int64).reshape(-1),
                     np.asarray(rotation, dtype=np.int64).reshape(-1), tuple(names))


def lake_split(dataset: ImageDataset) -> Split:
    """Lake et al.'s (2015) split: background characters for meta-training, evaluation
    characters for meta-testing, no rotations, no validation classes.

    Args:
        dataset: the dataset from :func:`load_omniglot`.

    Returns:
        ``Split("omniglot", "lake")`` with 964 train, 0 val and 659 test classes; pool class
        names are the dataset's class names.
    """
    mask = background_mask(dataset)
    train, test = np.flatnonzero(mask), np.flatnonzero(~mask)
    names = dataset.class_names
    return Split(
        dataset="omniglot",
        name="lake",
        train=_pool(dataset, train, np.zeros_like(train), [names[i] for i in train]),
        val=_pool(dataset, [], [], []),
        test=_pool(dataset, test, np.zeros_like(test), [names[i] for i in test]),
    )


def vinyals_pool(dataset: ImageDataset, text: str, source: str = "<split file>") -> ClassPool:
    """Parse a Vinyals split file (one ``<alphabet>/<character>/rotNNN`` per line) into a pool.

    ``rotNNN`` (000, 090, 180, 270) becomes ``NNN / 90`` counter-clockwise quarter turns. This
    matches Snell et al.'s loader, which rotates with PIL's ``Image.rotate(NNN)``, also
    counter-clockwise; :class:`ClassPool` turns images with ``np.rot90``, counter-clockwise for
    an image drawn with row 0 at the top. (Snell's loader also transposes every image after
    rotating, i.e. mirrors all of Omniglot; we do not, which changes no class membership.)

    Args:
        dataset: the dataset from :func:`load_omniglot`.
        text: the file's contents; blank lines are ignored.
        source: file name for error messages.

    Returns:
        A :class:`ClassPool` with one class per line, in file order, named as in the file.

    Raises:
        DataError: on a malformed line or a character that is not in ``dataset``.
    """
    index = {name: i for i, name in enumerate(dataset.class_names)}
    fix = f"replace it with the Vinyals split file from {VINYALS_BASE_URL}"
    base, rotation, names = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        pieces = line.split("/")
        if len(pieces) != 3 or not _ROT.fullmatch(pieces[2]):
            raise DataError(f"{source} line {lineno}: {line!r} is not "
                            f"'<alphabet>/<character>/rot000|rot090|rot180|rot270': {fix}")
        character = f"{pieces[0]}/{pieces[1]}"
        if character not in index:
            raise DataError(f"{source} line {lineno} names {character!r}, which is not an "
                            f"Omniglot character of the loaded archives: {fix}")
        base.append(index[character])
        rotation.append(int(pieces[2][3:]) // 90)
        names.append(line)
    return _pool(dataset, base, rotation, names)


def vinyals_split_files(
    data_root: str | os.PathLike[str] | None = None, download: bool = True
) -> dict[str, Path]:
    """Find (or download) the Vinyals split files and check their SHA-256.

    Args:
        data_root: folder holding ``splits/omniglot_vinyals/`` (see :func:`resolve_data_root`).
        download: fetch missing files from :data:`VINYALS_BASE_URL` into that folder.

    Returns:
        ``{"train": path, "val": path, "test": path}``.

    Raises:
        DataError: if a file is missing and cannot be downloaded, or is not the published file
            (SHA-256 differs).
    """
    folder = resolve_data_root(data_root) / "splits" / "omniglot_vinyals"
    found = {}
    for partition in ("train", "val", "test"):
        path, url = folder / f"{partition}.txt", VINYALS_BASE_URL + f"{partition}.txt"
        want = VINYALS_SHA256[partition]
        fix = f"delete it and rerun to download it again, or replace it with {url}"
        if not path.is_file():
            if not download:
                raise DataError(f"Vinyals split file {path} not found and downloading is disabled: "
                                f"put train.txt, val.txt and test.txt from {VINYALS_BASE_URL} "
                                "there, or pass --data-root / set METABENCH_DATA to a folder "
                                "that has them")
            try:
                archives.download(url, path, sha256=want, progress=False)
            except DownloadError as exc:
                raise DataError(
                    f"Vinyals split file {path} not found and the download from {url} failed "
                    f"({exc.reason}): put train.txt, val.txt and test.txt from {VINYALS_BASE_URL} "
                    "there, or pass --data-root / set METABENCH_DATA to a folder that has them"
                ) from exc
        try:
            got = sha256_of(path)
        except OSError as exc:
            raise DataError(
                f"cannot read {path} ({_why(exc)}): make it readable, or {fix}"
            ) from exc
        if got != want:
            raise DataError(f"{path} is not the Vinyals split file (sha256 {got[:12]}..., "
                            f"expected {want[:12]}...): {fix}")
        found[partition] = path
    return found


def omniglot_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = True,
) -> Split:
    """Load Omniglot and split its classes.

    Splits:
        ``"vinyals"``: Vinyals et al. (2016) as distributed by Snell et al. (2017): 4112 train,
        688 val, 1692 test classes, each a character at one of four rotations (1028 / 172 / 423
        characters, disjoint). ``"lake"``: Lake et al. (2015), see :func:`lake_split`.

    Args:
        name: ``"vinyals"`` or ``"lake"``.
        data_root: folder with ``omniglot/`` and ``splits/`` (see :func:`resolve_data_root`).
        image_size: image side in pixels, 1..105.
        download: fetch missing archives and split files.

    Returns:
        The :class:`Split`; its pools share one :class:`ImageDataset`.

    Raises:
        ConfigError: for an unknown split name or a bad ``image_size``.
        DataError: as :func:`load_omniglot` and :func:`vinyals_split_files`.
    """
    if name not in SPLITS:
        raise ConfigError(f"unknown omniglot split {name!r}: choose one of {', '.join(SPLITS)}")
    _check_image_size(image_size)
    files = vinyals_split_files(data_root, download) if name == "vinyals" else {}
    dataset = load_omniglot(data_root, image_size, download)
    if name == "lake":
        return lake_split(dataset)
    pools = {}
    for partition, path in files.items():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path} ({_why(exc)}): replace it with "
                            f"{VINYALS_BASE_URL}{partition}.txt") from exc
        pools[partition] = vinyals_pool(dataset, text, str(path))
    return Split(dataset="omniglot", name="vinyals", **pools)


# --------------------------------------------------------------------------- metabench data


def locate_omniglot(data_root: str | os.PathLike[str] | None = None) -> Located:
    """Where Omniglot's two halves and the Vinyals split files are, without reading them.

    Returns:
        ``Located("found", <paths>)`` when both halves are there (archive or extracted folder),
        else ``Located("missing", <where and how to get them>)``.
    """
    root = resolve_data_root(data_root)
    folder = root / "omniglot"
    found = []
    for part in _PARTS:
        zip_path, extracted = folder / f"{part}.zip", folder / part
        if zip_path.is_file():
            found.append(str(zip_path))
        elif extracted.is_dir():
            found.append(f"{extracted}/")
        else:
            return Located("missing", f"looked in {folder}; run `metabench data download omniglot` "
                           f"(official archives, MD5 checked) or put {BACKGROUND}.zip and "
                           f"{EVALUATION}.zip there, or pass --data-root / set METABENCH_DATA to a "
                           "folder that has them")
    splits = root / "splits" / "omniglot_vinyals"
    have = all((splits / f"{p}.txt").is_file() for p in ("train", "val", "test"))
    found.append(f"Vinyals split files in {splits}" if have else
                 "Vinyals split files not there yet (downloaded on first use)")
    return Located("found", ", ".join(found))


def download_omniglot(data_root: str | os.PathLike[str] | None = None) -> str:
    """Download whatever is missing of Omniglot's archives and the Vinyals split files.

    Returns:
        A one-line summary.

    Raises:
        DataError: as :func:`load_omniglot` and :func:`vinyals_split_files` when downloading.
    """
    root = resolve_data_root(data_root)
    sources = _locate(root, allow_download=True)
    files = vinyals_split_files(root, download=True)
    return (f"Omniglot is in {', '.join(str(s.path) for s in sources)}; Vinyals split files in "
            f"{files['train'].parent} (SHA-256 checked)")


def verify_omniglot(data_root: str | os.PathLike[str] | None = None) -> str:
    """Check Omniglot without decoding it into the cache: each archive's MD5 (or, for a
    re-packed archive, every member's CRC), the alphabet / character / drawer counts, every
    PNG of an extracted folder decodable, and the Vinyals split files' SHA-256.

    Returns:
        A one-line summary of what was checked.

    Raises:
        DataError: naming the first problem; never downloads.
    """
    root = resolve_data_root(data_root)
    notes = []
    for source in _locate(root, allow_download=False):
        if not source.is_zip:
            index = _index_members(_folder_members(source), source.part)
            _check_structure(index, source)
            top = source.path.parent
            scratch = np.empty((len(index), N_DRAWERS, 1, 1, 1), dtype=np.uint8)  # 1x1 decodes
            with tqdm(total=len(index) * N_DRAWERS, disable=None, leave=False,
                      desc=f"checking {source.part}") as bar:
                _decode_index(index, lambda m, top=top: (top / m).read_bytes(), 1, source,
                              scratch, bar)
            notes.append(f"{source.path}/ (every PNG decodes)")
            continue
        try:
            official = md5_of(source.path) == MD5[source.part]
            with zipfile.ZipFile(source.path) as zf:
                _check_structure(_index_members(zf.namelist(), source.part), source)
                bad = None if official else _first_bad_member(zf)
        except OSError as exc:
            raise _unreadable(source, exc) from exc
        except _ZIP_ERRORS as exc:
            raise DataError(f"{source.label} is corrupt ({_why(exc)}): {source.fix}") from exc
        if bad is not None:
            raise DataError(f"{source.label} is corrupt ({bad}): {source.fix}")
        notes.append(f"{source.path} ({'official MD5' if official else 're-packed: every CRC ok'})")
    vinyals_split_files(root, download=False)
    return (f"omniglot: ok: {'; '.join(notes)}; {sum(N_CHARACTERS.values())} characters x "
            f"{N_DRAWERS} drawers; Vinyals split files SHA-256 ok")
