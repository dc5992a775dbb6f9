"""MkDocs hook: lay out the package as ``import metabench`` sees it, for the API reference.

The package's folders are ``bench/`` (``metabench``), ``algorithms/`` and ``datasets/``
(pyproject's ``package-dir``), which mkdocstrings' static analysis cannot map. At start-up
this hook makes ``build/api-src/metabench/`` out of symbolic links to them, which ``mkdocs.yml``
gives mkdocstrings as its search path (at start-up: mkdocstrings keeps only search paths that exist
when it reads its configuration).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "api-src" / "metabench"


def on_startup(command, **kwargs) -> None:
    """Rebuild ``build/api-src/metabench`` (links to ``bench/*``, ``algorithms/``, ``datasets/``)."""
    shutil.rmtree(TREE.parent, ignore_errors=True)
    TREE.mkdir(parents=True)
    for entry in (ROOT / "bench").iterdir():
        if entry.name != "__pycache__":
            (TREE / entry.name).symlink_to(entry)
    for sub in ("algorithms", "datasets"):
        (TREE / sub).symlink_to(ROOT / sub)
