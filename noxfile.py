"""nox sessions for metabench: ``tests`` (default), ``lint``, ``demo``.

Every session installs ``torch==2.13.0`` first and the project with ``-c constraints.txt``, so no
dependency can replace it with another (CUDA) build. Data: sessions pass ``METABENCH_DATA``
through, defaulting to ``../shared/data`` beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
DATA = os.environ.get("METABENCH_DATA", str(ROOT.parent / "shared" / "data"))


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("torch==2.13.0")
    session.install("-c", "constraints.txt", "-e", f".{extras}")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (the README's test command)."""
    _install(session, "[test]")
    session.run("python", "-m", "pytest", *session.posargs, env={"METABENCH_DATA": DATA})


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "bench", "algorithms", "datasets", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main command: all five learners, ``quick`` budget, into ``runs/``."""
    _install(session)
    session.run("metabench", "run", "--budget", "quick", *session.posargs, env={"METABENCH_DATA": DATA})
