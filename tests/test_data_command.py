"""``metabench data list / download / verify`` on this machine's reference data, the registry
entries it relies on, generated datasets, and scikit-learn's digits (the cross-domain set)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from metabench.cli import main
from metabench.datasets import DATASETS, DatasetInfo, load_split, omniglot
from metabench.errors import ConfigError

if TYPE_CHECKING:
    from conftest import FileServer

# ----------------------------------------------------------------------------- the registry


def test_every_entry_describes_itself() -> None:
    for name, info in DATASETS.items():
        assert info.name == name
        if info.kind == "classification":
            assert set(info.partitions) == set(info.splits) and info.images_per_class > 0
            assert info.load and info.locate and info.download and info.verify
    assert DATASETS["omniglot"].partitions["vinyals"] == tuple(
        omniglot.VINYALS_COUNTS[p] for p in ("train", "val", "test"))
    shapes = {n: (i.channels, i.image_size) for n, i in DATASETS.items()}
    assert shapes.items() >= {"omniglot": (1, 28), "miniimagenet": (3, 84), "cifar-fs": (3, 32),
                              "fc100": (3, 32), "digits": (1, 28)}.items()


def test_omniglot_partitions_match_the_loaded_splits(omniglot_vinyals, omniglot_lake) -> None:
    for split in (omniglot_vinyals, omniglot_lake):
        sizes = (len(split.train), len(split.val), len(split.test))
        assert sizes == DATASETS["omniglot"].partitions[split.name]
        assert split.train.n_per_class == DATASETS["omniglot"].images_per_class


# ----------------------------------------------------------------------------- list


def test_list_on_this_machine(data_root: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METABENCH_DATA", str(data_root))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"data root: {data_root} (METABENCH_DATA)" and lines[1] == ""
    end = lines.index("", 2)
    table = {line.split()[0]: line.split() for line in lines[3:end] if line[0] != " "}
    where = {line.split(":")[0]: line for line in lines[end + 1:]}
    assert set(table) == set(where) == set(DATASETS)
    assert table["omniglot"][-1] == "found" and "4112/688/1692" in table["omniglot"]
    assert "964/0/659" in out and "1x28x28" in table["omniglot"]
    assert table["miniimagenet"][-2:] == ["not", "found"] and "3x84x84" in table["miniimagenet"]
    assert "64/16/20" in table["cifar-fs"] and "60/20/20" in table["fc100"]
    assert table["digits"][-1] == "bundled" and "0/0/10" in table["digits"]
    assert where["omniglot"].startswith(f"omniglot: found: {data_root}/omniglot/images_background")
    assert "no official download" in where["miniimagenet"]
    assert f"split CSVs are already in {data_root}/splits/miniimagenet_ravi" in out
    assert "metabench data download cifar-fs" in where["fc100"]
    assert where["digits"].startswith("digits: bundled: in scikit-learn")


def test_list_with_data_root_flag_and_a_generated_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sinusoid = DatasetInfo("sinusoid", "Sinusoid", "regression", ("finn",), 0, 0,
                           "Finn et al. 2017", None)
    monkeypatch.setitem(DATASETS, "sinusoid", sinusoid)
    assert main(["data", "list", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data root: {tmp_path} (--data-root)")
    row = next(line for line in out.splitlines() if line.startswith("sinusoid "))
    assert row.split() == ["sinusoid", "regression", "finn", "-", "-", "-", "generated"]
    assert "sinusoid: generated, nothing to download" in out
    assert "omniglot: not found: looked in" in out
    assert main(["data", "download", "sinusoid"]) == 0
    assert capsys.readouterr().out.strip() == "sinusoid: generated, nothing to download"
    assert main(["data", "verify", "sinusoid"]) == 0
    assert "nothing to verify" in capsys.readouterr().out


# ----------------------------------------------------------------------------- verify, errors


def test_verify_omniglot_on_the_reference_data(data_root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "omniglot", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("omniglot: ok:") and "Vinyals split files SHA-256 ok" in out
    assert out.count("every CRC ok") + out.count("official MD5") == 2


def test_verify_omniglot_with_a_corrupt_archive(tmp_path: Path, data_root: Path,
                                                one_line_error) -> None:
    folder = tmp_path / "omniglot"
    folder.mkdir()
    data = (data_root / "omniglot" / "images_background.zip").read_bytes()
    (folder / "images_background.zip").write_bytes(data[: len(data) // 2])
    (folder / "images_evaluation.zip").symlink_to(data_root / "omniglot" / "images_evaluation.zip")
    assert main(["data", "verify", "omniglot", "--data-root", str(tmp_path)]) == 2
    one_line_error("images_background.zip", "corrupt")


def test_download_omniglot_from_a_loopback_server(
        tmp_path: Path, data_root: Path, file_server: FileServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The archives and split files served locally (the reference copies, whose MD5s stand in
    for the official ones), fetched by ``metabench data download omniglot``."""
    urls, md5s = {}, {}
    for part in (omniglot.BACKGROUND, omniglot.EVALUATION):
        body = (data_root / "omniglot" / f"{part}.zip").read_bytes()
        file_server.files[f"omniglot/{part}.zip"] = body
        urls[part] = f"{file_server.url}omniglot/{part}.zip"
        md5s[part] = hashlib.md5(body).hexdigest()
    for partition in ("train", "val", "test"):
        file_server.files[f"vinyals/{partition}.txt"] = (
            data_root / "splits" / "omniglot_vinyals" / f"{partition}.txt").read_bytes()
    monkeypatch.setattr(omniglot, "URLS", urls)
    monkeypatch.setattr(omniglot, "MD5", md5s)
    monkeypatch.setattr(omniglot, "VINYALS_BASE_URL", f"{file_server.url}vinyals/")
    assert main(["data", "download", "omniglot", "--data-root", str(tmp_path)]) == 0
    assert "SHA-256 checked" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "omniglot").iterdir()) == [
        "images_background.zip", "images_evaluation.zip"]
    assert main(["data", "verify", "omniglot", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("official MD5") == 2


def test_unknown_dataset_and_missing_name(one_line_error,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "imagenet"]) == 2
    one_line_error("unknown dataset 'imagenet'", *DATASETS)
    with pytest.raises(SystemExit):
        main(["data", "download"])
    assert "NAME" in capsys.readouterr().err


# ----------------------------------------------------------------------------- digits


def test_digits_split_and_preprocessing() -> None:
    from sklearn.datasets import load_digits

    split = load_split("digits", "all")
    assert (len(split.train), len(split.val), len(split.test)) == (0, 0, 10)
    dataset = split.test.dataset
    assert dataset.images.shape == (10, 174, 1, 28, 28) and dataset.images.dtype == np.uint8
    assert split.test.names == tuple("0123456789")
    raw = load_digits()
    counts = np.bincount(raw.target)
    assert counts.min() == 174 == DATASETS["digits"].images_per_class  # digit 8 is the rarest
    for digit, index in ((8, 173), (3, 0), (3, 173)):  # the first 174 of each, in file order
        source = raw.images[np.flatnonzero(raw.target == digit)[index]]
        scaled = np.round(source * 255 / 16).astype(np.uint8)  # ink (16) -> 255
        want = np.asarray(Image.fromarray(scaled).resize((28, 28), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(dataset.images[digit, index, 0], want)
    native = load_split("digits", "all", image_size=8).test.dataset.images
    assert native.max() == 255 and native.min() == 0
    with pytest.raises(ConfigError, match="unknown split .vinyals. of digits"):
        load_split("digits", "vinyals")


def test_digits_verify_and_download(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "digits"]) == 0
    assert capsys.readouterr().out.startswith("digits: ok: 1797 images of 8x8 in 10 classes")
    assert main(["data", "download", "digits"]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_bad_image_sizes_are_config_errors() -> None:
    for dataset, split in (("digits", "all"), ("cifar-fs", "bertinetto"),
                           ("miniimagenet", "ravi")):
        for size in (0, 257, 2.5, True):
            with pytest.raises(ConfigError, match="image_size"):
                load_split(dataset, split, image_size=size, download=False)  # type: ignore[arg-type]


def test_registry_fields_have_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(DatasetInfo)}
    for name in ("partitions", "images_per_class", "locate", "download", "verify"):
        assert fields[name].default is not dataclasses.MISSING or \
            fields[name].default_factory is not dataclasses.MISSING
