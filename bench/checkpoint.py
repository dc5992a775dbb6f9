"""Tensor files without pickles: checkpoints of a training and kept weights.

Every file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: a JSON header that
names each tensor's dtype, shape and byte range, then the raw little-endian bytes. Loading it runs
no code (unlike ``torch.load`` of a pickle). metabench puts its own JSON document (the
iteration, optimizer hyperparameters, random-generator states, the curve so far; or, for kept
weights, the learner and its configuration) in the header's metadata under the key
``metabench``, so one file is one consistent state.

Files are written atomically: into a temporary file in the same folder, flushed to disk, then
renamed over the target, so a reader (or a resumed run after a SIGKILL) sees either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from metabench.errors import MetabenchError

#: The metadata key of metabench's JSON document in a safetensors header.
META_KEY = "metabench"


class CheckpointError(MetabenchError):
    """A checkpoint or weights file that cannot be read (missing, truncated, corrupt, foreign)."""


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: temporary file, ``fsync``, rename.

    Raises:
        OSError: if the folder is not writable or the disk is full (nothing is left behind).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private (0600); a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Save ``tensors`` (moved to CPU, made contiguous) and the JSON document ``meta`` to
    ``path`` atomically (:func:`write_bytes_atomically`).

    Args:
        path: the ``.safetensors`` file to write.
        tensors: name -> tensor (no two may share memory; they are copied).
        meta: JSON-serialisable values (Python ints of any size, floats, strings, lists, dicts).

    Raises:
        OSError: if it cannot be written.
    """
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save_bytes(plain, metadata={META_KEY: json.dumps(meta, allow_nan=True)})
    write_bytes_atomically(path, data)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save`.

    Returns:
        ``(tensors on CPU, meta)``.

    Raises:
        CheckpointError: naming the file and why: missing, unreadable, truncated or not a
            safetensors file, or without metabench's metadata.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror})") from None
    try:
        tensors = load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {})[META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        size = len(data)
        raise CheckpointError(f"{path} is truncated or corrupt ({size} bytes; {type(exc).__name__}: {exc})") from None
    return tensors, meta


def metadata(path: Path) -> dict[str, Any]:
    """metabench's JSON document of a file written by :func:`save`, without reading its tensors.

    Raises:
        CheckpointError: as :func:`load`.
    """
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        return json.loads(header["__metadata__"][META_KEY])
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a metabench safetensors file ({type(exc).__name__}: {exc})") from None
