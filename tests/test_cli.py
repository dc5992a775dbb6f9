"""The command line's configuration precedence, the budget presets, and quiet ends of pipes.

Precedence (``metabench.cli.run_values`` then ``metabench.config.resolve``): defaults, then the
TOML file, then the flags; ``--set`` adds to the TOML's ``[hparams]``; ``--iterations`` overrides
the budget's counts. None of these tests trains anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metabench import cli
from metabench.algorithms import LEARNERS
from metabench.config import BUDGETS, REGRESSION_BUDGETS, resolve


def configured(tmp_path: Path, toml: str, *flags: str):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    args = cli.build_parser().parse_args(["run", "--config", str(path), *flags])
    return resolve(cli.run_values(args))


def test_a_flag_overrides_the_same_key_in_the_toml(tmp_path: Path) -> None:
    config = configured(tmp_path, "ways = 20\nshots = 5\nlearners = ['protonet']\n", "--ways", "10")
    assert (config.ways, config.shots, config.learners) == (10, 5, ("protonet",))
    assert configured(tmp_path, "ways = 20\n").ways == 20  # the TOML over the default


def test_set_adds_to_the_tomls_hparams_and_wins_on_the_same_name(tmp_path: Path) -> None:
    config = configured(tmp_path, "[hparams.maml]\ninner_lr = 0.3\nmeta_batch = 4\n[hparams.protonet]\ntrain_ways = 30\n",
                        "--set", "maml.inner_lr=0.1", "--set", "reptile.meta_batch=2")
    assert config.hparams == {"maml": {"inner_lr": "0.1", "meta_batch": 4}, "protonet": {"train_ways": 30},
                              "reptile": {"test_inner_steps": 10, "meta_batch": "2"}}  # the quick budget's setting too


@pytest.mark.parametrize("toml", ["hparams = 3\n", "[hparams]\nmaml = 3\n"])
def test_hparams_that_are_not_tables_give_one_line_with_set_too(toml: str, tmp_path: Path, one_line_error) -> None:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    for extra in ([], ["--set", "maml.inner_lr=0.1"]):
        assert cli.main(["run", "--config", str(path), *extra, "--out", str(tmp_path / "out")]) == 2
        one_line_error("hparams", "[hparams.maml]")
    assert not (tmp_path / "out").exists()


def test_iterations_override_the_budget_for_every_learner_or_one(tmp_path: Path) -> None:
    assert configured(tmp_path, "budget = 'quick'\n", "--iterations", "7").iterations == \
        {name: 7 for name in ("maml", "fomaml", "reptile", "protonet", "matchingnet")}
    config = configured(tmp_path, "budget = 'quick'\n[iterations]\nmaml = 9\n")
    assert config.iterations["maml"] == 9 and config.iterations["protonet"] == LEARNERS["protonet"].ITERATIONS["quick"]


#: The presets as the README and docs/runs.md state them (meta-iterations per learner; test
#: episodes, validation episodes, validation points or spacing). A change here is a change of
#: every published number: update the docs and the committed runs with it.
PINNED = {
    "quick": {"maml": 220, "fomaml": 300, "reptile": 1000, "protonet": 450, "matchingnet": 600},
    "paper": {"maml": 60000, "fomaml": 60000, "reptile": 100000, "protonet": 20000, "matchingnet": 20000},
}
PINNED_REGRESSION = {"quick": {"maml": 6000, "fomaml": 6000, "reptile": 15000, "pretrained": 6000},
                     "paper": {"maml": 70000, "fomaml": 70000, "reptile": 30000, "pretrained": 70000}}
PINNED_VALIDATE_EVERY = {"maml": 1000, "fomaml": 2000, "reptile": 5000, "protonet": 500, "matchingnet": 1000}


def test_the_budget_presets_are_pinned() -> None:
    for budget, counts in PINNED.items():
        assert {n: BUDGETS[budget].iterations(n, "classification") for n in counts} == counts
    for budget, counts in PINNED_REGRESSION.items():
        assert {n: REGRESSION_BUDGETS[budget].iterations(n, "regression") for n in counts} == counts
    assert {n: LEARNERS[n].VALIDATE_EVERY for n in PINNED_VALIDATE_EVERY} == PINNED_VALIDATE_EVERY
    sizes = {name: (b.test_episodes, b.val_episodes, b.curve_points, b.converge, b.patience) for name, b in BUDGETS.items()}
    assert sizes == {"smoke": (10, 2, 1, False, 0), "quick": (600, 10, 3, False, 0), "paper": (600, 100, 20, False, 0),
                     "converge": (600, 1000, 5, True, 10)}
    assert BUDGETS["smoke"].iterations("maml", "classification") == 2
    # the presets' hyperparameters (docs/runs.md): only quick sets one, Reptile's test-time steps
    assert {(b, n): BUDGETS[b].settings(n, "classification") for b in BUDGETS for n in LEARNERS
            if BUDGETS[b].settings(n, "classification")} == {("quick", "reptile"): {"test_inner_steps": 10}}


def test_a_budgets_settings_go_under_the_users_and_into_the_config(tmp_path: Path) -> None:
    """The quick budget's Reptile tests with 10 inner steps; ``--set`` overrides that; converging
    (the paper's preset), regression and other learners get no preset settings."""
    assert configured(tmp_path, "budget = 'quick'\n").hparams == {"reptile": {"test_inner_steps": 10}}
    config = configured(tmp_path, "budget = 'quick'\n", "--set", "reptile.test_inner_steps=50", "--set", "maml.inner_lr=0.2")
    assert config.hparams == {"reptile": {"test_inner_steps": "50"}, "maml": {"inner_lr": "0.2"}}
    assert configured(tmp_path, "budget = 'converge'\n").hparams == {}
    assert configured(tmp_path, "budget = 'quick'\ndataset = 'sinusoid'\n").hparams == {}
    assert configured(tmp_path, "budget = 'quick'\nlearners = ['protonet']\n").hparams == {}
    assert resolve({"budget": "converge"}).validate_every == PINNED_VALIDATE_EVERY


def test_piping_into_head_ends_quietly() -> None:
    """A reader that stops early (``| head``) ends the command without a BrokenPipe traceback."""
    proc = subprocess.run(f"'{sys.executable}' -m metabench.cli data list | head -c 20", shell=True, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.stdout and proc.stderr == "", proc.stderr
    proc = subprocess.run(f"'{sys.executable}' -m metabench.cli run --help | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.startswith("usage: metabench run") and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("value, ci", [("true", True), ("True", True), ("1", True), ("yes", True), (" ON ", True),
                                       ("", False), ("0", False), ("false", False), ("no", False)])
def test_ci_is_read_case_insensitively(value: str, ci: bool, monkeypatch) -> None:
    from conftest import in_ci

    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_in_ci_only_the_expected_skips_are_allowed() -> None:
    from conftest import unexpected_skip

    assert not unexpected_skip("Skipped: pdflatex is not installed (apt-get install texlive-latex-base)")
    assert unexpected_skip("peers not installed (learn2learn: nox -s peers or python .ci/install_peers.py)")  # CI installs them
    assert unexpected_skip("Skipped: Omniglot not found under /data/omniglot: set METABENCH_DATA")
    assert unexpected_skip("could not import 'ray': No module named 'ray'")


def test_an_unexpected_skip_fails_a_ci_run_and_an_expected_one_does_not(tmp_path: Path) -> None:
    """The policy in a real pytest session (a subprocess with CI=1 and this conftest)."""
    import os
    import shutil

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_latex():\n    pytest.skip('pdflatex is not installed')\n")
    env = {**os.environ, "CI": "1"}
    run = lambda: subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    expected = run()
    assert expected.returncode == 0, expected.stdout
    (tmp_path / "test_y.py").write_text("import pytest\ndef test_gone():\n    pytest.importorskip('no_such_module_here')\n")
    unexpected = run()
    assert unexpected.returncode == 1 and "UNEXPECTED SKIP IN CI" in unexpected.stdout, unexpected.stdout
