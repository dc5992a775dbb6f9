"""Shared pytest fixtures: the reference data, an isolated cache, loaded Omniglot splits."""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


def in_ci() -> bool:
    """Whether the tests run in CI: the environment variable ``CI`` is ``1``, ``true``, ``yes`` or
    ``on`` in any case (CI services set ``true``; people type ``CI=1`` or ``CI=True``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


#: Skips CI expects, by the start of their reason: CI installs no LaTeX toolchain. In CI any other
#: skip fails the run (the peers' exactness test included: CI installs learn2learn and higher), so
#: that a missing dependency or data folder cannot turn real tests into silent skips.
CI_EXPECTED_SKIPS = ("pdflatex is not installed",)


def unexpected_skip(reason: str) -> bool:
    """Whether a skip with this reason is one CI must not have (see :data:`CI_EXPECTED_SKIPS`)."""
    return not reason.removeprefix("Skipped: ").startswith(CI_EXPECTED_SKIPS)


class _SkipPolicy:
    """In CI, collects unexpected skips and fails the session when there are any."""

    def __init__(self) -> None:
        self.unexpected: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if unexpected_skip(reason):
                self.unexpected.append(f"{report.nodeid}: {reason}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for line in self.unexpected:
            terminalreporter.write_line(f"UNEXPECTED SKIP IN CI (fails the run): {line}", red=True)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--perf-gate``: run the performance gate's tests (tests/perf/test_gate.py), which time
    the learners and so are left out of the ordinary run (deselected, not skipped)."""
    parser.addoption("--perf-gate", action="store_true",
                     help="run the performance gate (tests marked perf_gate); nox -s perf and CI pass it")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``perf_gate`` marker, and the CI skip policy (:class:`_SkipPolicy`) when
    running in CI."""
    config.addinivalue_line("markers", "perf_gate: times the learners against the committed baseline (--perf-gate)")
    if in_ci():
        config.pluginmanager.register(_SkipPolicy(), "metabench-ci-skip-policy")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--perf-gate``, deselect the gate's tests; with it, run only them."""
    gate = config.getoption("--perf-gate")
    keep = [i for i in items if (i.get_closest_marker("perf_gate") is not None) == gate]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The reference data: ``$METABENCH_DATA``, else ``<repo>/../shared/data``.

    Skips the test when ``omniglot/images_background.zip`` is not there, or fails it in CI
    (:func:`in_ci`: CI must have the data).
    """
    env = os.environ.get("METABENCH_DATA")
    root = (Path(env) if env else REPO.parent / "shared" / "data").resolve()
    if not (root / "omniglot" / "images_background.zip").is_file():
        message = (f"Omniglot not found under {root / 'omniglot'}: set METABENCH_DATA to a folder "
                   "with omniglot/images_background.zip and images_evaluation.zip")
        if in_ci():
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


@dataclass
class FileServer:
    """A threaded HTTP server on 127.0.0.1 (see :func:`file_server`).

    Attributes:
        url: base URL, ending in ``/``.
        files: name -> bytes served at ``url + name``; ``url + "short/" + name`` announces the
            full ``Content-Length`` but sends only the first half and closes (an interrupted
            transfer); any other path answers 404. Tests add their own entries.
    """

    url: str
    files: dict[str, bytes] = field(default_factory=dict)


class _FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        short = name.startswith("short/")
        body = self.server.files.get(name.removeprefix("short/"))  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if short else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up mid-transfer, as some tests make it do
        super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def file_server() -> Iterator[FileServer]:
    """A local HTTP server on loopback for download tests (never the network)."""
    httpd = _QuietServer(("127.0.0.1", 0), _FileHandler)
    server = FileServer(f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.files = server.files  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join()


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
