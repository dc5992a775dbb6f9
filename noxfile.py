"""nox sessions for metabench: ``tests`` (default), ``lint``, ``docs``, ``demo``, ``reproduce``, ``perf`` (the
performance gate), ``benchmarks``, ``peers``, ``report``.

Every session installs ``torch==2.13.0`` first and the project with ``-c constraints.txt``, so no
dependency can replace it with another (CUDA) build. Data: sessions pass ``METABENCH_DATA``
through, defaulting to ``../shared/data`` beside the checkout.
"""

from __future__ import annotations

import itertools
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
    """Run the test suite (the README's test command), with the sweep engines' extras as in CI."""
    _install(session, "[test,ray,slurm]")
    session.run("python", "-m", "pytest", *session.posargs, env={"METABENCH_DATA": DATA})


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "bench", "algorithms", "datasets", "tests", "noxfile.py", "docs/hooks.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (docs/, with the API reference from the docstrings) into
    site/ with ``mkdocs build --strict``: a broken page, reference or docstring fails it."""
    _install(session, "[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main command: all five learners, ``quick`` budget, into ``runs/``."""
    _install(session)
    session.run("metabench", "run", "--budget", "quick", *session.posargs, env={"METABENCH_DATA": DATA})


#: The reproduction of the papers' Omniglot 5-way 1-shot table (issue 13): all five learners
#: trained to convergence on validation, in two runs on the same test episodes, each resumed with
#: the code it started with (docs/runs.md): three learners on the shared Conv4 (code of 7f9b058),
#: and MAML, first-order MAML and Reptile on the papers' Omniglot networks and settings. The fastest
#: learners first, so that finished learners accumulate while the long ones train; rerunning the
#: session resumes each run where it stopped.
REPRODUCTIONS = [
    # the metric learners on their papers' network, and MAML on the same (the shared Conv4)
    ["--budget", "converge", "--learners", "matchingnet,protonet,maml", "--out", "results/omniglot-vinyals-5w1s-converge"],
    # first-order MAML and Reptile on their papers' strided Omniglot networks, first-order MAML
    # with the paper's inner learning rate, Reptile with its authors' transductive Omniglot command
    ["--budget", "converge", "--learners", "fomaml,reptile", "--out", "results/omniglot-vinyals-5w1s-converge-strided",
     "--set", "fomaml.network=conv4-stride-mean", "--set", "fomaml.inner_lr=0.4",
     "--set", "reptile.network=conv4-stride-flat", "--set", "reptile.inner_batch=25", "--set", "reptile.train_inner_steps=3",
     "--set", "reptile.meta_batch=10", "--set", "reptile.train_shots=15", "--set", "reptile.test_inner_batch=25",
     "--set", "reptile.test_inner_steps=5"],
]


#: The reproduction's trained learners re-tested without training (``metabench evaluate``): MAML,
#: first-order MAML and Reptile on the same test episodes in transductive batches of one query per
#: class, as their papers' released codes test Omniglot (``query_batch``, docs/learners.md); on the
#: digits (cross-domain, every learner) and at 20-way 1-shot (the metric learners, whose heads do
#: not fix N). Each: (run directory, its output, the flags).
REPRODUCTION_EVALUATIONS = [
    ("results/omniglot-vinyals-5w1s-converge", "results/omniglot-vinyals-5w1s-converge-query-batch-1",
     ["--set", "maml.query_batch=1"]),
    ("results/omniglot-vinyals-5w1s-converge-strided", "results/omniglot-vinyals-5w1s-converge-strided-query-batch-1",
     ["--set", "fomaml.query_batch=1", "--set", "reptile.query_batch=1"]),
    ("results/omniglot-vinyals-5w1s-converge", "results/omniglot-to-digits-5w1s-converge",
     ["--test-dataset", "digits"]),
    ("results/omniglot-vinyals-5w1s-converge-strided", "results/omniglot-to-digits-5w1s-converge-strided",
     ["--test-dataset", "digits"]),
    ("results/omniglot-vinyals-5w1s-converge", "results/omniglot-vinyals-20w1s-converge",
     ["--ways", "20", "--learners", "protonet,matchingnet"]),
]
#: The reproduction's reports, each over runs that share no learner of one setting: the papers'
#: table as tested in their batches of one query per class (the re-tests with ``query_batch=1``;
#: the metric learners unchanged), and both runs as trained and tested (learning curves, one batch
#: of all queries) with the digits and 20-way re-tests. Output -> inputs.
REPRODUCTION_REPORTS = {
    "results/report-converge": ["results/omniglot-vinyals-5w1s-converge-query-batch-1",
                                "results/omniglot-vinyals-5w1s-converge-strided-query-batch-1"],
    "results/report-converge-runs": ["results/omniglot-vinyals-5w1s-converge", "results/omniglot-vinyals-5w1s-converge-strided",
                                     "results/omniglot-to-digits-5w1s-converge",
                                     "results/omniglot-to-digits-5w1s-converge-strided",
                                     "results/omniglot-vinyals-20w1s-converge"],
}


def _out(args: list[str]) -> str:
    """The ``--out`` of a ``metabench run`` command line (the last one, as argparse takes it)."""
    return [value for flag, value in itertools.pairwise(args) if flag == "--out"][-1]


@nox.session
def reproduce(session: nox.Session) -> None:
    """Train (or resume) the converged Omniglot reproduction into results/ (hours on 2 CPU
    cores; stop it with Ctrl-C or SIGTERM and run the session again to continue; a published
    run is skipped); once both runs are finished, re-test their learners
    (``REPRODUCTION_EVALUATIONS``, each skipped when its output exists) and write the reports
    ``REPRODUCTION_REPORTS``. Posargs go to ``metabench run`` only."""
    _install(session)
    runs = [_out(args) for args in REPRODUCTIONS]
    for args, out in zip(REPRODUCTIONS, runs):
        if not (ROOT / out).exists():  # a published run is finished (a re-run would refuse its --out)
            session.run("metabench", "run", *args, *session.posargs, env={"METABENCH_DATA": DATA})
    for run_dir, out, flags in REPRODUCTION_EVALUATIONS:
        if not (ROOT / out).exists():
            session.run("metabench", "evaluate", run_dir, *flags, "--out", out, env={"METABENCH_DATA": DATA})
    for out, inputs in REPRODUCTION_REPORTS.items():
        session.run("metabench", "report", *inputs, "--out", out, "--force")


# The committed report: regenerated from the committed runs (no training, no data needed).
REPORT_INPUTS = ["results/omniglot-vinyals-5w1s-quick", "results/time-cpu-maml-vs-peers-6",
                 "results/omniglot-vinyals-5w1s-quick-active", "results/omniglot-vinyals-5w1s-quick-interactive",
                 "results/omniglot-vinyals-5w1s-quick-stream-p0.9", "results/omniglot-vinyals-5w1s-quick-stream-p0.98",
                 "results/sinusoid-k10-quick-stream"]


@nox.session
def report(session: nox.Session) -> None:
    """Regenerate results/report (tables, statistics, figures, index.md) from the committed run
    and timing directories with ``metabench report --force``; other arguments replace the inputs
    and output (e.g. ``-- runs/my-run --out runs/my-report``)."""
    _install(session)
    args = session.posargs or [*REPORT_INPUTS, "--out", "results/report", "--force"]
    session.run("metabench", "report", *args)


@nox.session
def perf(session: nox.Session) -> None:
    """The performance gate (CI runs it too): each learner's training step timed as a ratio to an
    in-process reference against the committed baseline results/perf-gate-cpu (``metabench gate``,
    threshold and spread in docs/timing.md), and the proof that it fails on a slowed core."""
    _install(session, "[test]")
    session.run("python", "-m", "pytest", "tests/perf/test_gate.py", "--perf-gate", "-s", *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark's absolute timings of the core's strategies and the learners' steps
    (tests/perf/test_core_benchmarks.py), saved under .benchmarks/ and compared with the last
    saved run on this machine (no gate: absolute seconds do not travel between machines)."""
    _install(session, "[test]")
    saved = list(Path(".benchmarks").glob("*/*.json"))
    compare = ["--benchmark-compare"] if saved else []
    session.run("python", "-m", "pytest", "tests/perf/test_core_benchmarks.py", "--benchmark-enable",
                "--benchmark-autosave", "--benchmark-min-rounds=10", *compare, *session.posargs)


@nox.session
def peers(session: nox.Session) -> None:
    """Install learn2learn 0.2.0 and higher next to the CPU torch (.ci/install_peers.py, as CI
    does: why it regenerates learn2learn's C files is explained there) and time MAML against them:
    ``metabench time --implementations metabench,learn2learn,higher`` (extra arguments are
    passed on, e.g. ``-- --inner-steps 1,5 --out results/...``)."""
    _install(session)
    session.run("python", ".ci/install_peers.py")
    args = session.posargs or ["--inner-steps", "1,5", "--meta-batch", "16", "--rounds", "3"]
    session.run("metabench", "time", "--implementations", "metabench,learn2learn,higher", "--learners", "maml", *args)
