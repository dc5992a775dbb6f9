"""Omniglot on the real reference data: counts, pixels, splits, cache, extracted folders, and
the errors a user sees for missing, truncated, corrupt or wrongly structured data."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from metabench.datasets import DATASETS, Split, load_split, omniglot
from metabench.datasets.archives import resolve_cache_dir
from metabench.errors import ConfigError, DataError

ARCHIVES = ("images_background.zip", "images_evaluation.zip")


# ----------------------------------------------------------------------------- helpers


def _reference_decode(png: bytes, size: int = 28) -> np.ndarray:
    """The documented preprocessing, written out independently of the library."""
    image = ImageOps.invert(Image.open(io.BytesIO(png)).convert("L"))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))


def _root_with(tmp_path: Path, data_root: Path, background: bytes | None = None) -> Path:
    """A data root whose evaluation archive links to the real one and whose background archive
    is ``background`` (or the real one when None)."""
    folder = tmp_path / "root" / "omniglot"
    folder.mkdir(parents=True)
    (folder / ARCHIVES[1]).symlink_to(data_root / "omniglot" / ARCHIVES[1])
    if background is None:
        (folder / ARCHIVES[0]).symlink_to(data_root / "omniglot" / ARCHIVES[0])
    else:
        (folder / ARCHIVES[0]).write_bytes(background)
    return folder.parent


def _empty_or_absent(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def _data_error(match: str, *args: object, **kwargs: object) -> str:
    """Run load_omniglot (without downloading) and return its one-line DataError message."""
    kwargs.setdefault("download", False)
    with pytest.raises(DataError, match=match) as info:
        omniglot.load_omniglot(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- the dataset


def test_dataset_counts_shapes_and_polarity(omniglot_vinyals: Split) -> None:
    dataset = omniglot_vinyals.train.dataset
    assert dataset.name == "omniglot"
    assert dataset.images.shape == (1623, 20, 1, 28, 28) and dataset.images.dtype == np.uint8
    assert dataset.images.mean() < 128  # strokes bright on a dark background
    corners = dataset.images[..., 0, 0]
    assert corners.mean() < 1 and dataset.images.max() == 255
    assert len(set(dataset.class_names)) == 1623
    assert all(re.fullmatch(r"[^/]+/character\d\d", n) for n in dataset.class_names)
    mask = omniglot.background_mask(dataset)
    assert mask.sum() == 964 and mask[:964].all()
    background, evaluation = dataset.class_names[:964], dataset.class_names[964:]
    assert list(background) == sorted(background) and list(evaluation) == sorted(evaluation)
    assert len({n.split("/")[0] for n in background}) == 30
    assert len({n.split("/")[0] for n in evaluation}) == 20


def test_pixels_follow_documented_preprocessing(data_root: Path, omniglot_vinyals: Split) -> None:
    dataset = omniglot_vinyals.train.dataset
    for archive, cls, drawer in ((ARCHIVES[0], 0, 0), (ARCHIVES[1], 1622, 19)):
        with zipfile.ZipFile(data_root / "omniglot" / archive) as zf:
            alphabet, character = dataset.class_names[cls].split("/")
            prefix = f"{archive[:-4]}/{alphabet}/{character}/"
            members = sorted(n for n in zf.namelist() if n.startswith(prefix) and n != prefix)
            expected = _reference_decode(zf.read(members[drawer]))
        np.testing.assert_array_equal(dataset.images[cls, drawer, 0], expected)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any PNG decoding fail, so a load that succeeds must have come from the cache.
    (How fast a cached load is is a timing, measured outside the tests: see the README.)"""
    def fail(*args, **kwargs):
        raise AssertionError("images were decoded again instead of read from the cache")
    monkeypatch.setattr(omniglot, "_decode_all", fail)


def test_cached_load_reads_cache_and_is_equal(data_root: Path, omniglot_vinyals: Split,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_decoding(monkeypatch)
    again = omniglot.load_omniglot(data_root, download=False)
    first = omniglot_vinyals.train.dataset
    assert again.class_names == first.class_names
    np.testing.assert_array_equal(again.images, first.images)


def test_corrupt_cache_is_rebuilt(data_root: Path, omniglot_vinyals: Split,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = sorted((resolve_cache_dir() / "compact").glob("omniglot-28px-*.npz"))
    assert written, "the session's first load should have written a cache file"
    cache = tmp_path / "cache"
    (cache / "compact").mkdir(parents=True)
    for path in written:  # truncated copies, under the names the loader looks for
        (cache / "compact" / path.name).write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rebuilt = omniglot.load_omniglot(data_root, download=False, cache_dir=cache)
    np.testing.assert_array_equal(rebuilt.images, omniglot_vinyals.train.dataset.images)
    _forbid_decoding(monkeypatch)  # the rebuilt cache file is valid again
    reread = omniglot.load_omniglot(data_root, download=False, cache_dir=cache)
    np.testing.assert_array_equal(reread.images, rebuilt.images)


def test_image_size_is_validated(data_root: Path) -> None:
    for bad in (0, 106, 28.0, True, "28"):
        with pytest.raises(ConfigError, match="image_size"):
            omniglot.load_omniglot(data_root, image_size=bad, download=False)  # type: ignore


# ----------------------------------------------------------------------------- splits


def test_vinyals_counts_and_disjoint_characters(omniglot_vinyals: Split) -> None:
    split = omniglot_vinyals
    assert (split.dataset, split.name) == ("omniglot", "vinyals")
    assert (len(split.train), len(split.val), len(split.test)) == (4112, 688, 1692)
    characters = {}
    for partition in ("train", "val", "test"):
        pool = split.pool(partition)
        assert len(set(pool.names)) == len(pool)
        for name, base, rot in zip(pool.names, pool.base, pool.rotation, strict=True):
            character, tag = name.rsplit("/", 1)
            assert pool.dataset.class_names[base] == character and tag == f"rot{90 * rot:03d}"
        turns: dict[int, set[int]] = {}
        for base, rot in zip(pool.base.tolist(), pool.rotation.tolist(), strict=True):
            turns.setdefault(base, set()).add(rot)
        assert all(t == {0, 1, 2, 3} for t in turns.values())  # every character, 4 rotations
        characters[partition] = set(turns)
    assert [len(c) for c in characters.values()] == [1028, 172, 423]
    assert not characters["train"] & characters["val"]
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]


def test_rotated_classes_are_counter_clockwise_rotations(omniglot_vinyals: Split) -> None:
    pool = omniglot_vinyals.test
    for k in (1, 2, 3):
        cls = int(np.flatnonzero(pool.rotation == k)[0])
        rotated = pool.images(np.array([cls]), np.array([3]))[0, 0]
        upright = pool.dataset.images[pool.base[cls], 3, 0]
        # Snell et al.'s loader rotates with PIL's Image.rotate(degrees), counter-clockwise.
        expected = np.asarray(Image.fromarray(upright).rotate(90 * k))
        np.testing.assert_array_equal(rotated, expected)
        assert not np.array_equal(rotated, upright)


def test_lake_split(omniglot_lake: Split) -> None:
    split = omniglot_lake
    assert (split.dataset, split.name) == ("omniglot", "lake")
    assert (len(split.train), len(split.val), len(split.test)) == (964, 0, 659)
    np.testing.assert_array_equal(split.train.base, np.arange(964))
    np.testing.assert_array_equal(split.test.base, np.arange(964, 1623))
    assert not split.train.rotation.any() and not split.test.rotation.any()
    assert split.test.names == split.test.dataset.class_names[964:]


def test_split_line_must_name_a_known_character(omniglot_lake: Split) -> None:
    dataset = omniglot_lake.train.dataset
    pool = omniglot.vinyals_pool(dataset, "Angelic/character01/rot270\n\n", "x.txt")
    assert pool.names == ("Angelic/character01/rot270",) and pool.rotation.tolist() == [3]
    with pytest.raises(DataError, match=r"x\.txt line 2 names 'Angelic/character99'"):
        omniglot.vinyals_pool(dataset, "Angelic/character01/rot000\nAngelic/character99/rot000",
                              "x.txt")
    with pytest.raises(DataError, match="line 1"):
        omniglot.vinyals_pool(dataset, "Angelic/character01/rot045", "x.txt")


def test_unknown_names_raise_config_error() -> None:
    assert DATASETS["omniglot"].splits == ("vinyals", "lake")
    assert DATASETS["omniglot"].kind == "classification"
    with pytest.raises(ConfigError, match="unknown dataset 'mnist': choose one of omniglot"):
        load_split("mnist", "vinyals")
    with pytest.raises(ConfigError, match="choose one of vinyals, lake"):
        load_split("omniglot", "ravi")


def test_modified_or_missing_split_files(data_root: Path, tmp_path: Path, closed_url: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root_with(tmp_path, data_root)
    splits = root / "splits" / "omniglot_vinyals"
    monkeypatch.setattr(omniglot, "VINYALS_BASE_URL", closed_url)
    with pytest.raises(DataError, match="--data-root") as info:
        load_split("omniglot", "vinyals", data_root=root)
    assert "failed" in str(info.value) and _empty_or_absent(splits)
    splits.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        shutil.copy(data_root / "splits" / "omniglot_vinyals" / f"{name}.txt", splits)
    with (splits / "val.txt").open("a") as fh:
        fh.write("Angelic/character01/rot000\n")
    with pytest.raises(DataError, match="is not the Vinyals split file"):
        load_split("omniglot", "vinyals", data_root=root, download=False)


# ----------------------------------------------------------------------------- other layouts


def test_extracted_folder_loads_like_archive(data_root: Path, omniglot_vinyals: Split,
                                            tmp_path: Path) -> None:
    # The evaluation half extracted (13,180 files), the background half left as its archive:
    # exercises the folder reader and mixed layouts at half the cost of extracting both.
    root = _root_with(tmp_path, data_root)
    folder = root / "omniglot"
    (folder / ARCHIVES[1]).unlink()
    with zipfile.ZipFile(data_root / "omniglot" / ARCHIVES[1]) as zf:
        zf.extractall(folder)
    extracted = omniglot.load_omniglot(root, download=False)
    first = omniglot_vinyals.train.dataset
    assert extracted.class_names == first.class_names
    np.testing.assert_array_equal(extracted.images, first.images)


# ----------------------------------------------------------------------------- errors


def test_missing_data_with_failing_download(tmp_path: Path, closed_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omniglot, "URLS", {
        omniglot.BACKGROUND: closed_url + ARCHIVES[0],
        omniglot.EVALUATION: closed_url + ARCHIVES[1],
    })
    message = _data_error("--data-root", tmp_path, download=True)
    assert "download from http://127.0.0.1" in message and "METABENCH_DATA" in message
    assert _empty_or_absent(tmp_path / "omniglot")  # no partial file left
    assert "downloading is disabled" in _data_error("--data-root", tmp_path)


def test_truncated_archive(data_root: Path, tmp_path: Path) -> None:
    whole = (data_root / "omniglot" / ARCHIVES[0]).read_bytes()
    root = _root_with(tmp_path, data_root, background=whole[: len(whole) // 2])
    message = _data_error("corrupt", root)
    assert "images_background.zip" in message and "download it again" in message


@pytest.mark.parametrize("where", [0, 0.5])  # deflate header (zlib error), middle (bad CRC)
def test_flipped_byte_in_a_member(data_root: Path, tmp_path: Path, where: float) -> None:
    data = bytearray((data_root / "omniglot" / ARCHIVES[0]).read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        member = [i for i in zf.infolist() if i.filename.endswith(".png")][5000]
    # Local header: 30 fixed bytes, then name and extra field (lengths at offsets 26 and 28).
    name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
    start = member.header_offset + 30 + name_len + extra_len
    data[start + int(member.compress_size * where)] ^= 0xFF
    root = _root_with(tmp_path, data_root, background=bytes(data))
    assert member.filename in _data_error("corrupt", root)


def test_structurally_wrong_archive(data_root: Path, tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("1", (105, 105), 1).save(png, format="PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for alphabet in ("Alpha", "Beta"):
            for drawer in range(1, 21):
                zf.writestr(f"images_background/{alphabet}/character01/0001_{drawer:02d}.png",
                            png.getvalue())
    root = _root_with(tmp_path, data_root, background=buffer.getvalue())
    message = _data_error("has 2 alphabets and 2 characters, expected 30 alphabets and 964", root)
    assert omniglot.URLS[omniglot.BACKGROUND] in message
