"""Generic file helpers for dataset loaders: where data lives, checksums, downloads, atomic writes.

Nothing here knows about a particular dataset. Every function either succeeds or leaves the
file system as it found it: downloads stream into ``<dest>.part`` and are moved into place with
:func:`os.replace` only once complete and verified; :func:`atomic_writer` does the same for
files the library writes itself (caches).

Locations (environment variables are read at call time, never cached):

* data root: ``--data-root`` / ``data_root`` argument, else ``METABENCH_DATA``, else the
  per-user cache folder (``$XDG_CACHE_HOME/metabench`` or ``~/.cache/metabench``);
* cache folder for derived files: ``METABENCH_CACHE``, else the same per-user cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from tqdm import tqdm

from metabench.errors import DataError

__all__ = [
    "DownloadError",
    "atomic_writer",
    "download",
    "md5_of",
    "resolve_cache_dir",
    "resolve_data_root",
    "sha256_of",
]

_CHUNK = 1 << 20  # bytes read per step when hashing or downloading


def _user_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/metabench`` if that is set and non-empty, else
    ``~/.cache/metabench``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metabench"


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory (not resolved)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds (or will receive) the raw datasets.

    Args:
        data_root: explicit folder (the ``--data-root`` option); wins over everything else.

    Returns:
        An absolute path: ``data_root`` if given, else ``$METABENCH_DATA`` if set and non-empty,
        else ``$XDG_CACHE_HOME/metabench`` or ``~/.cache/metabench``. The folder need not exist.
    """
    if data_root is not None and os.fspath(data_root) != "":
        return _absolute(data_root)
    env = os.environ.get("METABENCH_DATA")
    return _absolute(env) if env else _absolute(_user_cache_dir())


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder for derived files (decoded-image caches), which must be writable.

    The data root may be read-only (a shared copy), so caches never go there.

    Args:
        cache_dir: explicit folder; wins over the environment.

    Returns:
        An absolute path: ``cache_dir`` if given, else ``$METABENCH_CACHE`` if set and non-empty,
        else ``$XDG_CACHE_HOME/metabench`` or ``~/.cache/metabench``. The folder need not exist.
    """
    if cache_dir is not None and os.fspath(cache_dir) != "":
        return _absolute(cache_dir)
    env = os.environ.get("METABENCH_CACHE")
    return _absolute(env) if env else _absolute(_user_cache_dir())


def _hash_file(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of(path: str | os.PathLike[str]) -> str:
    """Return the MD5 of a file as 32 lowercase hex digits (for matching published checksums).

    Raises:
        OSError: if the file cannot be read.
    """
    return _hash_file(path, "md5")


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file as 64 lowercase hex digits.

    Raises:
        OSError: if the file cannot be read.
    """
    return _hash_file(path, "sha256")


@contextlib.contextmanager
def atomic_writer(dest: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a binary file that appears at ``dest`` only if the ``with`` block succeeds.

    Writes go to a uniquely named hidden temporary file in ``dest``'s folder (same file system,
    so the final :func:`os.replace` is atomic); it is flushed and fsynced, then replaces
    ``dest``. On any exception the temporary file is removed and ``dest`` is left untouched.
    Concurrent writers of the same ``dest`` do not collide; the last one to finish wins.

    Raises:
        OSError: if the folder does not exist or is not writable (the caller decides the message).
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class DownloadError(DataError):
    """A download failed; nothing was left behind.

    Attributes:
        url: what was being downloaded.
        dest: where it was to be saved.
        reason: short one-line cause, e.g. ``"Connection refused"`` or ``"HTTP 404 Not Found"``;
            dataset loaders quote it in their own, more specific message.
    """

    def __init__(self, url: str, dest: Path, reason: str) -> None:
        self.url = url
        self.dest = dest
        self.reason = " ".join(reason.split())  # one line, whatever the cause said
        super().__init__(
            f"download of {url} failed ({self.reason}): check the network connection and rerun, "
            f"or download the file by hand and put it at {dest}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, Path, str]]:
        # Exceptions pickle as cls(*args); ours takes three arguments, not the message.
        return (type(self), (self.url, self.dest, self.reason))


def _reason(exc: BaseException) -> str:
    """A short, human-readable cause for a network or file error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        return _reason(inner) if isinstance(inner, BaseException) else str(inner)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """The response's ``Content-Length`` in bytes, or None if absent or malformed."""
    value = response.headers.get("Content-Length")
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def download(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, verifying length and checksums, atomically.

    The body streams into ``<dest>.part`` (same folder; created if missing) and is renamed to
    ``dest`` with :func:`os.replace` only when (a) as many bytes arrived as the server's
    ``Content-Length`` announced (``urllib`` itself does not notice a connection closed early),
    and (b) ``md5`` / ``sha256``, when given, match. Any failure, including KeyboardInterrupt,
    removes the ``.part`` file; an existing ``dest`` is replaced only on success.

    Args:
        url: ``http(s)://`` (or ``file://``) address; redirects are followed.
        dest: final path of the file.
        md5: expected MD5 as hex digits (case-insensitive), or None to skip the check.
        sha256: expected SHA-256 as hex digits (case-insensitive), or None to skip the check.
        timeout: seconds to wait for the connection and for each read before giving up.
        progress: show a tqdm progress bar (bytes) on stderr when it is a terminal.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: (a :class:`~metabench.errors.DataError`) on connection failure, HTTP
            error, timeout, short transfer, checksum mismatch, or when the folder of ``dest``
            cannot be written; its ``reason`` attribute holds the short cause.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    expected = {name: want.lower() for name, want in (("md5", md5), ("sha256", sha256)) if want}
    digests = {name: hashlib.new(name) for name in expected}
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTPError holds the open error response
            raise DownloadError(url, dest, _reason(exc)) from exc
        with response:
            total = _content_length(response)
            with _open_part(part, url, dest) as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                disable=None if progress else True, leave=False,
            ) as bar:
                received = _stream(response, out, digests, bar, url, dest)
        if total is not None and received != total:
            raise DownloadError(
                url, dest, f"transfer interrupted: got {received} of {total} bytes"
            )
        for name, want in expected.items():
            got = digests[name].hexdigest()
            if got != want:
                raise DownloadError(
                    url, dest, f"{name} of the downloaded file is {got}, expected {want}"
                )
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return dest


def _open_part(part: Path, url: str, dest: Path) -> BinaryIO:
    """Create ``part``'s folder and open ``part`` for writing (truncating a stale one).

    Raises:
        DownloadError: if the folder or file cannot be created.
    """
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        return open(part, "wb")
    except OSError as exc:
        raise DownloadError(url, dest, f"cannot write {part}: {_reason(exc)}") from exc


def _stream(
    response: IO[bytes], out: BinaryIO, digests: dict[str, Any], bar: tqdm, url: str, dest: Path
) -> int:
    """Copy ``response`` to ``out`` chunk by chunk, updating digests and bar; return bytes copied.

    Raises:
        DownloadError: if reading fails (reset, timeout) or writing fails (disk full).
    """
    received = 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                url, dest, f"transfer interrupted after {received} bytes: {_reason(exc)}"
            ) from exc
        if not chunk:
            return received
        try:
            out.write(chunk)
        except OSError as exc:
            raise DownloadError(url, dest, f"cannot write {out.name}: {_reason(exc)}") from exc
        for digest in digests.values():
            digest.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))
