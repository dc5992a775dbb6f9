"""Shared pytest fixtures: the reference data, an isolated cache, loaded Omniglot splits."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metabench.datasets import Split, load_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point METABENCH_CACHE at a per-session temporary folder unless the caller set it, so
    tests never write decoded-image caches into the user's home."""
    if os.environ.get("METABENCH_CACHE"):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METABENCH_CACHE", str(tmp_path_factory.mktemp("metabench-cache")))
        yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The reference data: ``$METABENCH_DATA``, else ``<repo>/../shared/data``.

    Skips the test when ``omniglot/images_background.zip`` is not there, or fails it when the
    environment variable ``CI`` is ``"true"`` (CI must have the data).
    """
    env = os.environ.get("METABENCH_DATA")
    root = (Path(env) if env else REPO.parent / "shared" / "data").resolve()
    if not (root / "omniglot" / "images_background.zip").is_file():
        message = (f"Omniglot not found under {root / 'omniglot'}: set METABENCH_DATA to a folder "
                   "with omniglot/images_background.zip and images_evaluation.zip")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def omniglot_vinyals(data_root: Path) -> Split:
    """Omniglot at 28x28 with the Vinyals split (never downloads)."""
    return load_split("omniglot", "vinyals", data_root=data_root, download=False)


@pytest.fixture(scope="session")
def omniglot_lake(data_root: Path) -> Split:
    """Omniglot at 28x28 with Lake et al.'s background/evaluation split (never downloads)."""
    return load_split("omniglot", "lake", data_root=data_root, download=False)


@pytest.fixture
def closed_url() -> str:
    """An http:// base URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def one_line_error(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """A checker: the captured stderr is one line ``metabench: error: ...`` containing every
    given fragment; returns that line."""

    def check(*fragments: str) -> str:
        err = capsys.readouterr().err.strip()
        assert err.startswith("metabench: error: ") and "\n" not in err, err
        for fragment in fragments:
            assert fragment in err, err
        return err

    return check
