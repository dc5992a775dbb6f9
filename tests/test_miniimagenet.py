"""miniImageNet on fixtures generated in each real on-disk format (image folder + split CSVs,
``mini-imagenet-cache-*.pkl``, MetaOptNet's ``miniImageNet_category_split_*.pickle``), loaded
through ``load_split`` and ``metabench data verify``; corrupt and incomplete copies; the real
Ravi & Larochelle CSVs from the reference data.

Sizes: the fixtures keep the real wnids and formats but use 3 / 2 / 2 classes of 4 images, so
``RAVI_CLASSES`` is monkeypatched to the first 3 / 2 / 2 real classes of each partition,
``IMAGES_PER_CLASS`` to 4, and ``RAVI_CSV_SHA256`` to the fingerprints of the fixture CSVs
(computed here independently of the library).
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metabench.cli import main
from metabench.datasets import DATASETS, load_split, miniimagenet
from metabench.errors import DataError

REAL = miniimagenet.RAVI_CLASSES
CLASSES = {"train": REAL["train"][:3], "val": REAL["val"][:2], "test": REAL["test"][:2]}
PER_CLASS = 4
ORDER = [w for p in ("train", "val", "test") for w in CLASSES[p]]


def _rows(partition: str) -> list[tuple[str, str]]:
    return [(f"{w}{i:08d}.jpg", w) for w in CLASSES[partition] for i in range(1, PER_CLASS + 1)]


def _image(c: int, i: int, size: tuple[int, int] = (84, 84)) -> np.ndarray:
    """A smooth RGB test image (uint8 [H, W, 3]) distinct for each class and index."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 3 + c * 40) % 256, (y * 3 + i * 50) % 256,
                     (x + y + 17 * c + 5 * i) % 256], axis=-1).astype(np.uint8)


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the split to the fixtures' 3 / 2 / 2 classes x 4 images (see the module doc)."""
    monkeypatch.setattr(miniimagenet, "RAVI_CLASSES", CLASSES)
    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", PER_CLASS)
    digests = {}
    for partition in CLASSES:
        text = "".join(f"{f},{label}\n" for f, label in sorted(_rows(partition)))
        digests[partition] = hashlib.sha256(text.encode()).hexdigest()
    monkeypatch.setattr(miniimagenet, "RAVI_CSV_SHA256", digests)


def _write_csvs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for partition in CLASSES:
        with open(folder / f"{partition}.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")  # Windows line ends are accepted
            writer.writerow(["filename", "label"])
            writer.writerows(_rows(partition))


def _images_format(root: Path, csv_folder: Path | None = None) -> Path:
    """``<root>/miniimagenet/images/*.jpg`` (class 0 at 120x100, the rest 84x84) + CSVs."""
    images = root / "miniimagenet" / "images"
    images.mkdir(parents=True)
    c = 0
    for wnids in CLASSES.values():
        for wnid in wnids:
            for i in range(PER_CLASS):
                size = (100, 120) if c == 0 else (84, 84)
                Image.fromarray(_image(c, i, size)).save(images / f"{wnid}{i + 1:08d}.jpg",
                                                         quality=95)
            c += 1
    _write_csvs(csv_folder or root / "splits" / "miniimagenet_ravi")
    return root


def _expected_pickled(seed: int, file_order: bool) -> tuple[dict[str, dict], np.ndarray]:
    """Per partition: images in a shuffled row order and, per class, its rows in the order a
    loader must keep (``file_order``: ascending, as for MetaOptNet's labels; else as listed,
    as for ``class_dict``); returns (layout per partition, expected [7, 4, 3, 84, 84])."""
    rng = np.random.default_rng(seed)
    expected = np.empty((len(ORDER), PER_CLASS, 3, 84, 84), dtype=np.uint8)
    layout = {}
    c = 0
    for partition, wnids in CLASSES.items():
        n = len(wnids) * PER_CLASS
        slots = rng.permutation(n)  # where each (class, image) goes in the file
        data = np.empty((n, 84, 84, 3), dtype=np.uint8)
        rows = {}
        for k, wnid in enumerate(wnids):
            chosen = [int(s) for s in slots[k * PER_CLASS:(k + 1) * PER_CLASS]]
            rows[wnid] = sorted(chosen) if file_order else chosen
            for i, slot in enumerate(rows[wnid]):
                data[slot] = _image(c + k, i)
                expected[c + k, i] = _image(c + k, i).transpose(2, 0, 1)
        layout[partition] = {"data": data, "rows": rows}
        c += len(wnids)
    return layout, expected


def _cache_format(root: Path) -> np.ndarray:
    folder = root / "miniimagenet"
    folder.mkdir(parents=True)
    layout, expected = _expected_pickled(1, file_order=False)
    for partition, part in layout.items():
        with open(folder / f"mini-imagenet-cache-{partition}.pkl", "wb") as fh:
            pickle.dump({"image_data": part["data"], "class_dict": part["rows"]}, fh, protocol=4)
    return expected


def _metaoptnet_format(root: Path) -> np.ndarray:
    """As Gidaris & Komodakis's files: labels global over the split, protocol-2 pickles."""
    folder = root / "miniimagenet"
    folder.mkdir(parents=True)
    layout, expected = _expected_pickled(2, file_order=True)
    names = {"train": "train_phase_train", "val": "val", "test": "test"}
    offset = 0
    for partition, part in layout.items():
        catname2label = {w: offset + k for k, w in enumerate(CLASSES[partition])}
        labels = [0] * len(part["data"])
        for wnid, rows in part["rows"].items():
            for row in rows:
                labels[row] = catname2label[wnid]
        obj = {"data": part["data"], "labels": labels, "catname2label": catname2label}
        with open(folder / f"miniImageNet_category_split_{names[partition]}.pickle", "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
        offset += len(CLASSES[partition])
    return expected


def _reference(path: Path, size: int) -> np.ndarray:
    """The documented preprocessing, written out independently: RGB, Lanczos to size x size."""
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image).transpose(2, 0, 1)


def _data_error(root: Path, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_split("miniimagenet", "ravi", data_root=root, download=False)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("size", [84, 40])
def test_images_format_with_shared_csv_layout(tmp_path: Path, small: None, size: int) -> None:
    root = _images_format(tmp_path)
    split = load_split("miniimagenet", "ravi", data_root=root, image_size=size, download=False)
    dataset = split.train.dataset
    assert dataset.name == "miniimagenet" and dataset.class_names == tuple(ORDER)
    assert dataset.images.shape == (7, PER_CLASS, 3, size, size)
    assert [len(split.train), len(split.val), len(split.test)] == [3, 2, 2]
    assert split.test.names == CLASSES["test"] and (split.test.rotation == 0).all()
    for c, wnid in enumerate(ORDER):
        for i in range(PER_CLASS):
            want = _reference(root / "miniimagenet" / "images" / f"{wnid}{i + 1:08d}.jpg", size)
            np.testing.assert_array_equal(dataset.images[c, i], want)
    assert DATASETS["miniimagenet"].locate(root).status == "found"


def test_images_format_with_csvs_beside_the_images(tmp_path: Path, small: None) -> None:
    root = _images_format(tmp_path, csv_folder=tmp_path / "miniimagenet")
    split = load_split("miniimagenet", "ravi", data_root=root, download=False)
    assert split.val.names == CLASSES["val"]
    assert "(images)" in DATASETS["miniimagenet"].locate(root).detail


@pytest.mark.parametrize("build", [_cache_format, _metaoptnet_format], ids=["cache", "metaoptnet"])
def test_pickled_formats_keep_pixels_and_order(tmp_path: Path, small: None,
                                               build: Callable[[Path], np.ndarray]) -> None:
    expected = build(tmp_path)
    split = load_split("miniimagenet", "ravi", data_root=tmp_path, download=False)
    np.testing.assert_array_equal(split.train.dataset.images, expected)
    assert split.train.dataset.class_names == tuple(ORDER)
    small_split = load_split("miniimagenet", "ravi", data_root=tmp_path, image_size=21,
                             download=False)
    want = np.asarray(Image.fromarray(expected[5, 2].transpose(1, 2, 0))
                      .resize((21, 21), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    np.testing.assert_array_equal(small_split.train.dataset.images[5, 2], want)


def test_images_format_wins_over_pickles(tmp_path: Path, small: None) -> None:
    _cache_format(tmp_path)
    _images_format(tmp_path)
    assert "(images)" in DATASETS["miniimagenet"].locate(tmp_path).detail


def test_second_load_reads_the_cache(tmp_path: Path, small: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _cache_format(tmp_path)
    load_split("miniimagenet", "ravi", data_root=tmp_path, download=False)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(miniimagenet, "_read", fail)
    again = load_split("miniimagenet", "ravi", data_root=tmp_path, download=False)
    np.testing.assert_array_equal(again.train.dataset.images, expected)


# ----------------------------------------------------------------------------- errors


def test_missing_everywhere_says_how_to_get_it(tmp_path: Path, one_line_error) -> None:
    message = _data_error(tmp_path, "no official download")
    for fragment in ("images/<filename>", "mini-imagenet-cache-", "miniImageNet_category_split_",
                     "--data-root", "METABENCH_DATA", str(tmp_path / "miniimagenet")):
        assert fragment in message
    assert main(["data", "download", "miniimagenet", "--data-root", str(tmp_path)]) == 2
    one_line_error("cannot be downloaded", "no official download", "github.com/twitter")
    assert DATASETS["miniimagenet"].locate(tmp_path).status == "missing"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_images(root: Path) -> str:
    _images_format(root)
    _truncate(root / "miniimagenet" / "images" / f"{ORDER[3]}00000002.jpg")
    return "is corrupt"


def _missing_image(root: Path) -> str:
    _images_format(root)
    (root / "miniimagenet" / "images" / f"{ORDER[6]}00000004.jpg").unlink()
    return "is missing"


def _other_csv_rows(root: Path) -> str:
    _images_format(root)
    path = root / "splits" / "miniimagenet_ravi" / "val.csv"
    path.write_text(path.read_text().replace("00000004.jpg", "00000009.jpg"))
    return "lists other image files"


def _csv_absent(root: Path) -> str:
    _images_format(root)
    (root / "splits" / "miniimagenet_ravi" / "test.csv").unlink()
    return "not the split file.*test.csv"


def _truncated_pickle(root: Path) -> str:
    _cache_format(root)
    _truncate(root / "miniimagenet" / "mini-imagenet-cache-val.pkl")
    return "not a readable data pickle"


def _class_missing(root: Path) -> str:
    _cache_format(root)
    path = root / "miniimagenet" / "mini-imagenet-cache-test.pkl"
    obj = pickle.loads(path.read_bytes())
    del obj["class_dict"][CLASSES["test"][1]]
    path.write_bytes(pickle.dumps(obj))
    return "1 classes that are not the 2 test classes"


def _class_short(root: Path) -> str:
    _metaoptnet_format(root)
    path = root / "miniimagenet" / "miniImageNet_category_split_train_phase_train.pickle"
    obj = pickle.loads(path.read_bytes())
    obj["labels"][obj["labels"].index(1)] = 2  # one image of class 1 relabelled as class 2
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return f"has 3 images of class {CLASSES['train'][1]}, expected 4"


def _pickle_incomplete(root: Path) -> str:
    _metaoptnet_format(root)
    (root / "miniimagenet" / "miniImageNet_category_split_val.pickle").unlink()
    return "but not miniImageNet_category_split_val.pickle"


@pytest.mark.parametrize("damage", [_corrupt_images, _missing_image, _other_csv_rows, _csv_absent,
                                    _truncated_pickle, _class_missing, _class_short,
                                    _pickle_incomplete])
def test_damaged_copies_fail_load_and_verify(tmp_path: Path, small: None, one_line_error,
                                             damage: Callable[[Path], str]) -> None:
    match = damage(tmp_path)
    _data_error(tmp_path, match)
    assert main(["data", "verify", "miniimagenet", "--data-root", str(tmp_path)]) == 2
    one_line_error()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path, small: None) -> None:
    _cache_format(tmp_path)
    marker = tmp_path / "ran"
    payload = pickle.dumps({"image_data": _RunsCode(marker), "class_dict": {}})
    (tmp_path / "miniimagenet" / "mini-imagenet-cache-train.pkl").write_bytes(payload)
    message = _data_error(tmp_path, "not a readable data pickle")
    assert "system" in message and not marker.exists()


def test_verify_command_on_intact_copies(tmp_path: Path, small: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _metaoptnet_format(tmp_path / "a")
    _images_format(tmp_path / "b")
    for root, kind in ((tmp_path / "a", "metaoptnet pickles"), (tmp_path / "b", "(images)")):
        assert main(["data", "verify", "miniimagenet", "--data-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("miniimagenet: ok: 7 classes x 4 images") and kind in out


# ----------------------------------------------------------------------------- the real split


def test_real_ravi_csvs_match_the_split(data_root: Path) -> None:
    folder = data_root / "splits" / "miniimagenet_ravi"
    counts = []
    for partition in ("train", "val", "test"):
        listing = miniimagenet.read_ravi_csv(folder / f"{partition}.csv", partition)
        assert tuple(listing) == REAL[partition]
        assert {len(files) for files in listing.values()} == {600}
        assert all(f.startswith(w) and f.endswith(".jpg") for w, fs in listing.items() for f in fs)
        counts.append(len(listing))
    assert counts == [64, 16, 20] == list(DATASETS["miniimagenet"].partitions["ravi"])
    assert len({w for p in REAL.values() for w in p}) == 100


def test_csv_fingerprint_ignores_order_and_line_ends() -> None:
    rows = [("b.jpg", "n2"), ("a.jpg", "n1")]
    text = "a.jpg,n1\nb.jpg,n2\n"
    assert miniimagenet.csv_rows_sha256(rows) == hashlib.sha256(text.encode()).hexdigest()
    assert miniimagenet.csv_rows_sha256(rows[::-1]) == miniimagenet.csv_rows_sha256(rows)


def test_pickled_image_of_wrong_type(tmp_path: Path, small: None) -> None:
    _cache_format(tmp_path)
    path = tmp_path / "miniimagenet" / "mini-imagenet-cache-val.pkl"
    obj = pickle.loads(path.read_bytes())
    obj["image_data"] = obj["image_data"].astype(np.float32)
    path.write_bytes(pickle.dumps(obj))
    _data_error(tmp_path, r"holds float32 \(8, 84, 84, 3\) images, expected uint8")


def test_bytes_keys_and_numpy1_module_names(tmp_path: Path, small: None) -> None:
    """Pickles whose dict keys are byte strings, and whose arrays name NumPy 1's
    ``numpy.core.multiarray`` (as files written before NumPy 2 do), load too."""
    expected = _metaoptnet_format(tmp_path)
    for path in (tmp_path / "miniimagenet").iterdir():
        obj = pickle.loads(path.read_bytes())
        obj = {k.encode(): v for k, v in obj.items()}
        obj[b"catname2label"] = {k.encode(): v for k, v in obj[b"catname2label"].items()}
        payload = pickle.dumps(obj, protocol=2)  # protocol 2 writes globals as text lines
        assert b"cnumpy._core.multiarray\n_reconstruct\n" in payload
        path.write_bytes(payload.replace(b"cnumpy._core.multiarray\n",
                                         b"cnumpy.core.multiarray\n"))
    split = load_split("miniimagenet", "ravi", data_root=tmp_path, download=False)
    np.testing.assert_array_equal(split.train.dataset.images, expected)
