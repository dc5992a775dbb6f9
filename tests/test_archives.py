"""metabench.datasets.archives: locations, checksums, atomic writes, and download() against a
local HTTP server (success, checksum mismatch, interrupted transfer, HTTP error, refused)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from metabench.datasets.archives import (
    atomic_writer,
    download,
    md5_of,
    resolve_cache_dir,
    resolve_data_root,
    sha256_of,
)
from metabench.errors import DataError

if TYPE_CHECKING:
    from conftest import FileServer

PAYLOAD = bytes(range(256)) * 10_000  # 2.5 MB: several 1 MiB chunks
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def server(file_server: FileServer) -> str:
    """Base URL of the loopback server, serving the payload as ``data.bin`` (and its first
    half, announced as complete, as ``short/data.bin``)."""
    file_server.files["data.bin"] = PAYLOAD
    return file_server.url


def _failing_download(url: str, dest: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        download(url, dest, timeout=10, progress=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(dest) in message
    return info.value


def test_download_success_verifies_md5_and_sha256(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "data.bin"  # missing folders are created
    got = download(server + "data.bin", dest, md5=MD5.upper(), sha256=SHA256, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["data.bin"]


def test_md5_mismatch_leaves_nothing_and_keeps_old_file(server: str, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.bin"
    error = _failing_download(server + "data.bin", fresh, md5="0" * 32)
    assert "md5" in str(error) and MD5 in str(error)
    old = tmp_path / "old.bin"
    old.write_bytes(b"previous")
    _failing_download(server + "data.bin", old, sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.bin"]
    assert old.read_bytes() == b"previous"


def test_interrupted_transfer_leaves_nothing(server: str, tmp_path: Path) -> None:
    error = _failing_download(server + "short/data.bin", tmp_path / "short.bin")
    assert "interrupted" in str(error) and f"of {len(PAYLOAD)} bytes" in str(error)
    assert list(tmp_path.iterdir()) == []


def test_http_error(server: str, tmp_path: Path) -> None:
    error = _failing_download(server + "missing.bin", tmp_path / "missing.bin")
    assert "HTTP 404" in str(error) and error.reason.startswith("HTTP 404")
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(closed_url: str, tmp_path: Path) -> None:
    error = _failing_download(closed_url + "data.bin", tmp_path / "data.bin")
    assert "refused" in error.reason.lower()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(server: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")  # a file where the destination folder should be
    error = _failing_download(server + "data.bin", blocker / "data.bin")
    assert "cannot write" in error.reason


def test_checksums_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "payload"
    path.write_bytes(PAYLOAD)
    assert md5_of(path) == MD5
    assert sha256_of(path) == SHA256


def test_atomic_writer(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(dest) as fh:
        fh.write(b"half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and dest.read_bytes() == b"old"
    with atomic_writer(dest) as fh:
        fh.write(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and dest.read_bytes() == b"new"


def test_resolve_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METABENCH_DATA", raising=False)
    monkeypatch.delenv("METABENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root() == tmp_path / "xdg" / "metabench"
    assert resolve_cache_dir() == tmp_path / "xdg" / "metabench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "metabench"
    monkeypatch.setenv("METABENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("METABENCH_CACHE", str(tmp_path / "cache"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_cache_dir() == tmp_path / "cache"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("relative") == tmp_path / "relative"
