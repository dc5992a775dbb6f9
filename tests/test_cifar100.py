"""CIFAR-FS and FC100 on a fixture in the CIFAR-100 python format (a ``.tar.gz`` holding the
``train`` / ``test`` / ``meta`` pickles), loaded through ``load_split`` and ``metabench data``;
re-packed, modified, truncated and extracted copies; downloads from a loopback HTTP server
(checksum match, mismatch, interrupted transfer).

Sizes: the fixture has the real 100 class names, the real 20 superclasses and the real CIFAR-FS
and FC100 split lists, but 3 ``train`` + 1 ``test`` images per class instead of 500 + 100, so
``TRAIN_PER_CLASS`` / ``TEST_PER_CLASS`` are monkeypatched to 3 / 1 and the checksums ``MD5`` /
``MEMBER_MD5`` (and for downloads ``URL``) to the fixture's.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from metabench.cli import main
from metabench.datasets import DATASETS, cifar100, load_split
from metabench.errors import DataError

if TYPE_CHECKING:
    from conftest import FileServer

#: The CIFAR-100 superclasses and their classes (Krizhevsky 2009, the table on
#: https://www.cs.toronto.edu/~kriz/cifar.html), written out here independently of the library.
HIERARCHY = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE = list(HIERARCHY)  # the meta file lists both in alphabetical order
FINE = sorted(c for classes in HIERARCHY.values() for c in classes)
SUPER_OF = {c: s for s, classes in HIERARCHY.items() for c in classes}
TRAIN, TEST = 3, 1


def _vector(c: int, j: int) -> np.ndarray:
    """Image j of class c as CIFAR stores it: 1024 red, 1024 green, 1024 blue, row-major."""
    y, x = np.mgrid[0:32, 0:32]
    red = np.full((32, 32), c * 2, dtype=np.uint8)
    green = ((x * 8 + j * 30) % 256).astype(np.uint8)
    blue = ((y * 8 + c) % 256).astype(np.uint8)
    return np.concatenate([red.ravel(), green.ravel(), blue.ravel()])


def _batch(per_class: int, first: int, seed: int) -> tuple[bytes, np.ndarray]:
    """A ``train`` / ``test`` pickle (images of image numbers first.. of every class, classes
    shuffled as in the real files) and the per-class images in file order [100, n, 3072]."""
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(100), per_class))
    seen = np.zeros(100, dtype=int)
    data = np.empty((len(labels), 3072), dtype=np.uint8)
    grouped = np.empty((100, per_class, 3072), dtype=np.uint8)
    for k, c in enumerate(labels):
        data[k] = grouped[c, seen[c]] = _vector(int(c), first + seen[c])
        seen[c] += 1
    obj = {b"batch_label": b"training batch 1 of 1", b"filenames": [b"x.png"] * len(labels),
           b"fine_labels": [int(c) for c in labels],
           b"coarse_labels": [COARSE.index(SUPER_OF[FINE[c]]) for c in labels], b"data": data}
    return pickle.dumps(obj, protocol=2), grouped  # bytes keys, like Python 2 str read as bytes


def _tar(members: dict[str, bytes], order: tuple[str, ...] = ("meta", "train", "test"),
         level: int = 9) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=level) as tar:
        for name in (*order, "file.txt~"):
            body = members.get(name, b"")
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.fixture(scope="module")
def fixture() -> dict[str, object]:
    """The members, the archive, and the expected images [100, 4, 3, 32, 32]."""
    train, train_images = _batch(TRAIN, 0, seed=0)
    test, test_images = _batch(TEST, TRAIN, seed=1)
    meta = pickle.dumps({b"fine_label_names": [n.encode() for n in FINE],
                         b"coarse_label_names": [n.encode() for n in COARSE]}, protocol=2)
    members = {"train": train, "test": test, "meta": meta}
    flat = np.concatenate([train_images, test_images], axis=1)
    return {"members": members, "archive": _tar(members),
            "expected": flat.reshape(100, TRAIN + TEST, 3, 32, 32)}


@pytest.fixture
def small(fixture: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Patch the per-class counts and the checksums to the fixture's (see the module doc)."""
    monkeypatch.setattr(cifar100, "TRAIN_PER_CLASS", TRAIN)
    monkeypatch.setattr(cifar100, "TEST_PER_CLASS", TEST)
    monkeypatch.setattr(cifar100, "MD5", hashlib.md5(fixture["archive"]).hexdigest())
    monkeypatch.setattr(cifar100, "MEMBER_MD5", {
        name: hashlib.md5(body).hexdigest() for name, body in fixture["members"].items()})
    return fixture


def _root(tmp_path: Path, archive: bytes) -> Path:
    folder = tmp_path / "cifar100"
    folder.mkdir(parents=True)
    (folder / "cifar-100-python.tar.gz").write_bytes(archive)
    return tmp_path


def _data_error(root: Path, match: str, dataset: str = "cifar-fs") -> str:
    split = DATASETS[dataset].splits[0]
    with pytest.raises(DataError, match=match) as info:
        load_split(dataset, split, data_root=root, download=False)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- the splits


def test_split_lists_are_the_published_sizes() -> None:
    fs = cifar100.CIFAR_FS_CLASSES
    assert [len(fs[p]) for p in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE  # disjoint, all 100 classes
    fc = cifar100.FC100_SUPERCLASSES
    assert [len(fc[p]) for p in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == list(range(20))
    assert list(cifar100.COARSE_LABEL_NAMES) == COARSE
    assert [COARSE[s] for s in fc["test"]] == ["aquatic_mammals", "insects", "medium_mammals",
                                               "people"]
    assert DATASETS["cifar-fs"].partitions == {"bertinetto": (64, 16, 20)}
    assert DATASETS["fc100"].partitions == {"oreshkin": (60, 20, 20)}


def test_cifar_fs_from_the_archive(tmp_path: Path, small: dict) -> None:
    root = _root(tmp_path, small["archive"])
    split = load_split("cifar-fs", "bertinetto", data_root=root, download=False)
    dataset = split.train.dataset
    assert dataset.name == "cifar100" and dataset.images.shape == (100, 4, 3, 32, 32)
    assert dataset.class_names == tuple(f"{SUPER_OF[c]}/{c}" for c in FINE)
    np.testing.assert_array_equal(dataset.images, small["expected"])
    # the channel planes: red is 2 * class everywhere, green and blue are the gradients
    assert (dataset.images[7, :, 0] == 14).all()
    np.testing.assert_array_equal(dataset.images[7, 2, 1, 5], (np.arange(32) * 8 + 60) % 256)
    np.testing.assert_array_equal(dataset.images[7, 2, 2, :, 5], (np.arange(32) * 8 + 7) % 256)
    for partition in ("train", "val", "test"):
        pool = split.pool(partition)
        assert [n.split("/")[1] for n in pool.names] == list(cifar100.CIFAR_FS_CLASSES[partition])
        assert [FINE[b] for b in pool.base] == list(cifar100.CIFAR_FS_CLASSES[partition])
    assert (split.test.rotation == 0).all()


@pytest.mark.slow
def test_run_meta_trains_on_cifar_fs_and_tests_on_fc100(tmp_path: Path, small: dict) -> None:
    """`metabench run` end to end on the fixture: Conv4 takes 3x32x32 images (MAML's head on a
    64 * 2 * 2 embedding), and a cross-domain run tests on FC100's test classes."""
    import json

    root = _root(tmp_path, small["archive"])
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--dataset", "cifar-fs", "--test-dataset", "fc100", "--budget", "smoke",
                 "--learners", "maml,protonet", "--set", "protonet.train_queries=3", "--queries", "3",
                 "--test-episodes", "2", "--val-episodes", "1", "--device", "cpu", "--data-root", str(root),
                 "--no-download", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 32 and (config["dataset"], config["test_dataset"]) == ("cifar-fs", "fc100")
    assert json.loads((out / "run.json").read_text())["test_pool"] == "fc100/oreshkin/test"
    assert "cifar-fs (bertinetto split) → fc100 (oreshkin split), 5-way 1-shot" in (out / "summary.md").read_text()


def test_fc100_from_the_archive(tmp_path: Path, small: dict) -> None:
    root = _root(tmp_path, small["archive"])
    split = load_split("fc100", "oreshkin", data_root=root, download=False)
    assert [len(split.train), len(split.val), len(split.test)] == [60, 20, 20]
    supers = {p: {n.split("/")[0] for n in split.pool(p).names} for p in ("train", "val", "test")}
    assert supers["test"] == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert supers["val"] == {"large_carnivores", "large_omnivores_and_herbivores",
                             "non-insect_invertebrates", "small_mammals"}
    assert len(supers["train"]) == 12 and not supers["train"] & (supers["val"] | supers["test"])
    people = [n for n in split.test.names if n.startswith("people/")]
    assert people == [f"people/{c}" for c in ("baby", "boy", "girl", "man", "woman")]
    np.testing.assert_array_equal(split.test.images(np.array([0]), np.array([3])),
                                  small["expected"][split.test.base[:1], 3])


def test_resized_with_lanczos(tmp_path: Path, small: dict) -> None:
    root = _root(tmp_path, small["archive"])
    split = load_split("cifar-fs", "bertinetto", data_root=root, image_size=20, download=False)
    image = small["expected"][42, 1].transpose(1, 2, 0)
    want = np.asarray(Image.fromarray(image).resize((20, 20), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(split.train.dataset.images[42, 1], want.transpose(2, 0, 1))


def test_extracted_folder_and_repacked_archive(tmp_path: Path, small: dict) -> None:
    folder = tmp_path / "a" / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, body in small["members"].items():
        (folder / name).write_bytes(body)
    split = load_split("fc100", "oreshkin", data_root=tmp_path / "a", download=False)
    np.testing.assert_array_equal(split.train.dataset.images, small["expected"])
    repacked = _tar(small["members"], order=("train", "test", "meta"), level=1)
    assert hashlib.md5(repacked).hexdigest() != cifar100.MD5
    root = _root(tmp_path / "b", repacked)
    split = load_split("cifar-fs", "bertinetto", data_root=root, download=False)
    np.testing.assert_array_equal(split.train.dataset.images, small["expected"])
    assert main(["data", "verify", "cifar-fs", "--data-root", str(root)]) == 0


def test_second_load_reads_the_cache(tmp_path: Path, small: dict,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path, small["archive"])
    load_split("cifar-fs", "bertinetto", data_root=root, download=False)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cifar100, "_decode", fail)
    split = load_split("fc100", "oreshkin", data_root=root, download=False)
    np.testing.assert_array_equal(split.train.dataset.images, small["expected"])


# ----------------------------------------------------------------------------- damaged copies


def test_modified_member_is_rejected(tmp_path: Path, small: dict, one_line_error) -> None:
    members = dict(small["members"])
    train = bytearray(members["train"])
    train[-200] ^= 0xFF  # one pixel
    members["train"] = bytes(train)
    root = _root(tmp_path, _tar(members))
    message = _data_error(root, "is not the official file")
    assert "cifar-100-python/train" in message and cifar100.MEMBER_MD5["train"] in message
    assert main(["data", "verify", "fc100", "--data-root", str(root)]) == 2
    one_line_error("is not the official file", "metabench data download cifar-fs")


def test_truncated_archive_is_corrupt(tmp_path: Path, small: dict, one_line_error) -> None:
    root = _root(tmp_path, small["archive"][: len(small["archive"]) // 2])
    _data_error(root, "is corrupt")
    assert main(["data", "verify", "cifar-fs", "--data-root", str(root)]) == 2
    one_line_error("CIFAR-100 archive", "is corrupt")


def test_missing_member_in_folder(tmp_path: Path, small: dict) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(small["members"]["train"])
    _data_error(tmp_path, "has no test file")


def test_wrong_structure_is_rejected(tmp_path: Path, small: dict,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Even official-looking checksums do not let a malformed member through."""
    obj = pickle.loads(small["members"]["test"])
    obj[b"fine_labels"][0] = (obj[b"fine_labels"][0] + 1) % 100  # one class 2 images, one 0
    members = {**small["members"], "test": pickle.dumps(obj, protocol=2)}
    monkeypatch.setitem(cifar100.MEMBER_MD5, "test", hashlib.md5(members["test"]).hexdigest())
    root = _root(tmp_path, _tar(members))
    _data_error(root, "does not have 1 images of each of 100 classes")


def test_missing_without_download(tmp_path: Path, one_line_error) -> None:
    message = _data_error(tmp_path, "downloading is disabled", dataset="fc100")
    assert "metabench data download cifar-fs" in message and cifar100.URL in message
    assert main(["data", "verify", "fc100", "--data-root", str(tmp_path)]) == 2
    one_line_error("CIFAR-100 not found in", str(tmp_path / "cifar100"))


# ----------------------------------------------------------------------------- downloads


def _serve(file_server: FileServer, monkeypatch: pytest.MonkeyPatch, archive: bytes,
           short: bool = False) -> str:
    file_server.files["cifar-100-python.tar.gz"] = archive
    url = file_server.url + ("short/" if short else "") + "cifar-100-python.tar.gz"
    monkeypatch.setattr(cifar100, "URL", url)
    return url


def test_download_command_checks_md5(tmp_path: Path, small: dict, file_server: FileServer,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = _serve(file_server, monkeypatch, small["archive"])
    assert main(["data", "download", "cifar-fs", "--data-root", str(tmp_path)]) == 0
    assert f"downloaded {url}" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cifar100").iterdir()] == ["cifar-100-python.tar.gz"]
    assert (tmp_path / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == small["archive"]
    assert main(["data", "verify", "fc100", "--data-root", str(tmp_path)]) == 0
    assert "archive md5 matches" in capsys.readouterr().out
    monkeypatch.setattr(cifar100, "URL", "http://127.0.0.1:9/unreachable")  # must not be used
    assert main(["data", "download", "fc100", "--data-root", str(tmp_path)]) == 0
    assert "already in" in capsys.readouterr().out


def test_download_replaces_a_bad_archive(tmp_path: Path, small: dict, file_server: FileServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(file_server, monkeypatch, small["archive"])
    root = _root(tmp_path, b"not an archive")
    assert main(["data", "download", "fc100", "--data-root", str(root)]) == 0
    assert (root / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == small["archive"]


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, small: dict,
                                              file_server: FileServer,
                                              monkeypatch: pytest.MonkeyPatch,
                                              one_line_error) -> None:
    _serve(file_server, monkeypatch, small["archive"])
    monkeypatch.setattr(cifar100, "MD5", "0" * 32)
    assert main(["data", "download", "cifar-fs", "--data-root", str(tmp_path)]) == 2
    one_line_error("md5 of the downloaded file", "expected " + "0" * 32)
    assert not any((tmp_path / "cifar100").iterdir())


def test_interrupted_download_leaves_nothing(tmp_path: Path, small: dict,
                                             file_server: FileServer,
                                             monkeypatch: pytest.MonkeyPatch,
                                             one_line_error) -> None:
    _serve(file_server, monkeypatch, small["archive"], short=True)
    assert main(["data", "download", "cifar-fs", "--data-root", str(tmp_path)]) == 2
    one_line_error("transfer interrupted", f"of {len(small['archive'])} bytes")
    assert not any((tmp_path / "cifar100").iterdir())


def test_load_split_downloads_when_allowed(tmp_path: Path, small: dict, file_server: FileServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(file_server, monkeypatch, small["archive"])
    split = load_split("fc100", "oreshkin", data_root=tmp_path, download=True)
    np.testing.assert_array_equal(split.train.dataset.images, small["expected"])
    assert (tmp_path / "cifar100" / "cifar-100-python.tar.gz").is_file()
