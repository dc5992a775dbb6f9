"""Output folders written all or nothing: run, timing and report directories.

:func:`check_writable` fails before any work when the folder could not be written;
:func:`write_atomically` writes the files into a temporary folder beside the target and renames it
into place only when every file is written, so an error or an interruption leaves nothing
half-written (and, with ``replace=True``, leaves the previous folder untouched).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from metabench.errors import ConfigError


def check_writable(out: Path, what: str = "run directory", replace: bool = False) -> None:
    """Fail early, creating nothing, if the folder ``out`` could not be written.

    Args:
        out: the folder to create.
        what: how messages name it (``run directory``, ``report folder``, ...).
        replace: an existing ``out`` is allowed (it will be replaced).

    Raises:
        ConfigError: if ``out`` exists (unless ``replace``), or its nearest existing ancestor is
            not a writable folder.
    """
    try:
        if out.exists() and not replace:
            raise ConfigError(f"{what} {out} already exists: choose another --out or delete it")
        ancestor = out.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:
        raise ConfigError(f"cannot write the {what} {out} ({exc.strerror or exc}): choose a writable --out") from None
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write the {what} {out} ({ancestor} is not a folder): choose a writable --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the {what} {out} ({ancestor} is not writable): choose a writable --out")


def write_atomically(out: Path, write: Callable[[Path], None], what: str = "run directory",
                     replace: bool = False) -> None:
    """Create ``out`` with the files ``write(folder)`` puts in a folder, all or nothing.

    The files are written into a temporary folder beside ``out`` (``.<name>.partial-*``) that is
    renamed to ``out`` only when ``write`` has returned; on any failure the temporary folder and
    the parent folders created for it are removed. With ``replace``, an existing ``out`` is moved
    aside (``.<name>.old-*``) just before the rename and deleted after it; if the rename fails it
    is moved back.

    Args:
        out: the folder to create.
        write: called with the temporary folder; writes the files into it.
        what: how messages name the folder.
        replace: replace an existing ``out`` instead of failing.

    Raises:
        ConfigError: if the folder cannot be created, written or renamed (disk full, ``out``
            created meanwhile by someone else, ...).
    """
    created: list[Path] = []
    partial: Path | None = None
    try:
        missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700)
        write(partial)
        if out.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            try:
                partial.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
        if out.exists():
            raise FileExistsError(17, f"it was created while the {what} was being written")
        partial.rename(out)
    except BaseException as exc:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty: another run may be writing there
        if isinstance(exc, OSError):
            raise ConfigError(f"could not write the {what} {out} ({exc.strerror or exc}): free space or choose another --out") from None
        raise
