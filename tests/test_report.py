"""`metabench report`: tables, statistics, figures and index.md from run and timing directories.

Synthetic run and timing directories are built in tmp_path with the files `metabench run` and
`metabench time` write; the committed results are reported too. Figures are rendered headless and
checked as PNG (Pillow: size, not blank) and PDF files; two renders must be byte-identical.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metabench import cli, figures, report, style
from metabench.errors import ReportError
from metabench.published import label, load_published, matching
from metabench.results import kind_of
from metabench.statistics import Z95
from metabench.tables import Cell, Table, latex_escape, to_latex, to_markdown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "results" / "omniglot-vinyals-5w1s-quick"
TIMING = REPO / "results" / "time-cpu-maml-vs-peers-6"
COMMITTED_REPORT = REPO / "results" / "report"
NAMES = {"maml": "MAML", "fomaml": "First-order MAML", "reptile": "Reptile", "protonet": "Prototypical Networks",
         "matchingnet": "Matching Networks"}


# ---------------------------------------------------------------------------------------------
# synthetic inputs


def make_run(folder: Path, *, ways: int = 5, shots: int = 1, split: str = "vinyals", queries: int = 15,
             learners: Sequence[str] = ("maml", "protonet", "reptile"), seeds: Sequence[int] = (0,),
             episodes: int = 40, fingerprint: str = "ab" * 32, means: dict[str, float] | None = None,
             curve_points: int = 3, seed: int = 0) -> Path:
    """A run directory as `metabench run` writes it, with per-episode accuracies that are
    multiples of 100 / (ways * queries) around ``means``."""
    rng = np.random.default_rng(seed)
    means = means or {"maml": 88.0, "protonet": 95.0, "reptile": 85.0, "fomaml": 87.0, "matchingnet": 92.0}
    step = 100 / (ways * queries)
    folder.mkdir(parents=True)
    config = {"dataset": "omniglot", "split": split, "ways": ways, "shots": shots, "queries": queries,
              "learners": list(learners), "budget": "quick", "seeds": list(seeds), "test_episodes": episodes}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "wall_seconds": 1.0}))
    (folder / "environment.json").write_text(json.dumps({"device": "cpu", "cpu": "Test CPU", "torch_threads": 2,
                                                         "torch": "2.13.0+cpu", "gpu": None, "commit": "0" * 40}))
    rows, summary, curves = [], [], []
    difficulty = rng.normal(0, 4, episodes)
    for s in seeds:
        for i, name in enumerate(learners):
            acc = np.clip(means[name] + difficulty + rng.normal(0, 3, episodes) + s, 0, 100)
            acc = np.round(acc / step) * step
            rows += [{"seed": s, "learner": name, "episode": e, "accuracy": a, "loss": 0.5} for e, a in enumerate(acc)]
            for k in range(1, curve_points + 1):
                curves.append({"seed": s, "learner": name, "iteration": 100 * k, "train_seconds": 10.0 * k * (i + 1),
                               "train_loss": 1.0 / k, "train_accuracy": 60 + 10 * k, "val_accuracy": 60 + 10 * k + i,
                               "val_ci95": 5.0})
                curves.append({"seed": s, "learner": name, "iteration": 100 * k - 50, "train_seconds": 5.0 * k,
                               "train_loss": 1.0, "train_accuracy": 50.0, "val_accuracy": math.nan, "val_ci95": math.nan})
    for i, name in enumerate(learners):
        summary.append({"learner": name, "name": NAMES[name], "accuracy_pct": 0.0, "ci95_pct": 0.0,
                        "episodes": episodes, "seeds": len(seeds), "seed_std_pct": math.nan,
                        "meta_iterations": 300, "meta_train_s": 50.0 * (i + 1), "test_ms_per_episode": 20.0})
    pd.DataFrame(rows).to_csv(folder / "episodes.csv", index=False)
    pd.DataFrame(summary).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame(curves).to_csv(folder / "curves.csv", index=False)
    return folder


def make_timing(folder: Path, *, devices: Sequence[str] = ("cpu", "cuda"), inner_steps: Sequence[int] = (1, 2, 5),
                meta_batches: Sequence[int] = (1, 4, 16), peers: bool = True) -> Path:
    """A timing directory as `metabench time` writes it."""
    folder.mkdir(parents=True)
    rows = []
    impls = [("metabench", "metabench", "auto"), ("metabench[per_task]", "metabench", "per_task")]
    if peers:
        impls.append(("learn2learn", "learn2learn", "auto"))
    for device in devices:
        speed = 1.0 if device == "cpu" else 0.1
        for label_, impl, path in impls:
            for mb in meta_batches:
                for k in inner_steps:
                    base = speed * mb * (1 + k) * (1.3 if impl != "metabench" else 1.0) * (1.5 if path == "per_task" else 1)
                    rows.append({"label": label_, "implementation": impl, "learner": "maml", "ways": 5, "shots": 1,
                                 "queries": 15, "meta_batch": mb, "inner_steps": k, "inner_lr": 0.4, "device": device,
                                 "reps": 20, "warmup": 2, "seed": 0, "check_gradient": True, "path": path,
                                 "median_ms": 10 * base, "iqr_ms": base, "peak_memory_mib": 20.0 * mb * k,
                                 "gflop_per_step": 1.0, "achieved_gflop_s": 1.0, "pct_of_matmul": 1.0,
                                 "grad_rel_diff_float32": None, "grad_rel_diff_float64": None,
                                 "time_vs_metabench": 1.0, "memory_vs_metabench": 1.0})
        rows.append({"label": "metabench", "implementation": "metabench", "learner": "protonet", "ways": 5, "shots": 1,
                     "queries": 15, "meta_batch": meta_batches[0], "inner_steps": inner_steps[0], "inner_lr": 0.4,
                     "device": device, "reps": 20, "warmup": 2, "seed": 0, "check_gradient": True, "path": "auto",
                     "median_ms": 5 * speed, "iqr_ms": 0.5, "peak_memory_mib": 10.0, "gflop_per_step": 1.0,
                     "achieved_gflop_s": 1.0, "pct_of_matmul": 1.0, "grad_rel_diff_float32": None,
                     "grad_rel_diff_float64": None, "time_vs_metabench": 1.0, "memory_vs_metabench": 1.0})
    pd.DataFrame(rows).to_csv(folder / "timing.csv", index=False)
    (folder / "environment.json").write_text(json.dumps({"device": devices[0], "cpu": "Test CPU", "gpu": None,
                                                         "torch": "2.13.0"}))
    return folder


def png_ok(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size, (path, im.size, size)
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5, f"{path} looks blank"


def pdf_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 5000, path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two settings (5-way 1-shot from two runs with the same episodes, 20-way 5-shot with three
    seeds) and a timing directory with CPU and CUDA, peers, several inner steps and meta-batches,
    reported twice into two folders."""
    root = tmp_path_factory.mktemp("synthetic")
    a = make_run(root / "run-a", learners=("maml", "protonet"), seed=1)
    b = make_run(root / "run-b", learners=("reptile",), seed=2)
    c = make_run(root / "run-c", ways=20, shots=5, learners=("maml", "fomaml", "protonet", "matchingnet"),
                 seeds=(0, 1, 2), fingerprint="cd" * 32, seed=3)
    t = make_timing(root / "timing")
    inputs = [a, b, c, t]
    report.report(inputs, root / "report1")
    report.report(inputs, root / "report2")
    return {"root": root, "a": a, "b": b, "c": c, "timing": t, "out": root / "report1", "again": root / "report2"}


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed runs that `nox -s report` reports (``REPORT_INPUTS`` of noxfile.py), reported
    into a temporary folder."""
    out = tmp_path_factory.mktemp("committed") / "report"
    tree = ast.parse((REPO / "noxfile.py").read_text())
    inputs = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "REPORT_INPUTS" for t in node.targets))
    assert str(QUICK.relative_to(REPO)) in inputs and str(TIMING.relative_to(REPO)) in inputs
    cwd = os.getcwd()
    os.chdir(REPO)  # the inputs as `nox -s report` names them (index.md lists them)
    try:
        report.report(inputs, out)
    finally:
        os.chdir(cwd)
    return out


# ---------------------------------------------------------------------------------------------
# synthetic report


def test_synthetic_report_draws_every_figure(synthetic: dict[str, Path]) -> None:
    out = synthetic["out"]
    meta = json.loads((out / "report.json").read_text())
    assert set(meta["figures"]) == set(report.FIGURES) and meta["skipped_figures"] == {}
    # panel rows: one per setting for the accuracy figures; the timing scaling figures have one
    # panel per (device, other variable) with two per row; the others one row
    expected_rows = {"accuracy": 2, "episodes": 2, "curves": 2, "pareto": 2,
                     "time_vs_inner_steps": 3, "time_vs_meta_batch": 3, "memory_vs_inner_steps": 3,
                     "cpu_vs_gpu": 1, "peers": 1}
    assert meta["figure_rows"] == expected_rows
    for name, rows in expected_rows.items():
        png_ok(out / "figures" / f"{name}.png", (1400, round((rows * 2.4 + 0.9) * 200)))
        assert style.pixel_size(rows) == (1400, round((rows * 2.4 + 0.9) * 200))
        pdf_ok(out / "figures" / f"{name}.pdf")
    index = (out / "index.md").read_text()
    for name in report.FIGURES:
        assert f"](figures/{name}.png)" in index and f"(figures/{name}.pdf)" in index
    assert "Figures not drawn" not in index


def test_two_renders_are_byte_identical(synthetic: dict[str, Path]) -> None:
    first, second = files_of(synthetic["out"]), files_of(synthetic["again"])
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert any(k.endswith(".png") for k in first) and any(k.endswith(".pdf") for k in first)


def test_figure_bytes_do_not_depend_on_time_or_version_metadata(synthetic: dict[str, Path]) -> None:
    pdf = (synthetic["out"] / "figures" / "accuracy.pdf").read_bytes()
    for field in (b"/CreationDate", b"/Producer", b"/Creator", b"Matplotlib"):
        assert field not in pdf
    with Image.open(synthetic["out"] / "figures" / "accuracy.png") as im:
        assert "Software" not in im.info


def test_synthetic_accuracy_table_numbers(synthetic: dict[str, Path]) -> None:
    out = synthetic["out"]
    long = pd.read_csv(out / "tables" / "accuracy_long.csv")
    ours = long[long["source"] == "metabench"]
    assert list(dict.fromkeys(ours["setting"])) == ["Omniglot (vinyals) 5-way 1-shot", "Omniglot (vinyals) 20-way 5-shot"]
    # 5-way 1-shot: maml and protonet from run-a, reptile from run-b (same fingerprint)
    assert ours[ours["ways"] == 5]["learner"].tolist() == ["maml", "protonet", "reptile"]
    ep = pd.read_csv(synthetic["c"] / "episodes.csv")
    for learner in ("maml", "fomaml", "protonet", "matchingnet"):
        mine = ep[ep["learner"] == learner]
        per_episode = mine.groupby("episode")["accuracy"].mean().to_numpy()
        per_seed = mine.groupby("seed")["accuracy"].mean().to_numpy()
        n = per_episode.size
        row = ours[(ours["ways"] == 20) & (ours["learner"] == learner)].iloc[0]
        assert row["accuracy_pct"] == pytest.approx(per_episode.mean(), rel=1e-9)
        assert row["ci95_pct"] == pytest.approx(Z95 * per_episode.std(ddof=1) / math.sqrt(n), rel=1e-8)
        assert row["seed_std_pct"] == pytest.approx(per_seed.std(ddof=1), rel=1e-8)
        assert (row["episodes"], row["seeds"]) == (40, 3)
    md = (out / "tables" / "accuracy.md").read_text()
    best = ours[ours["ways"] == 20].sort_values("accuracy_pct").iloc[-1]
    assert f"**{best['accuracy_pct']:.2f} ± {best['ci95_pct']:.2f} (s {best['seed_std_pct']:.2f})**" in md
    assert "standard deviation across seeds" in md and "n = 40" in md
    # published numbers exist for both settings (Omniglot, vinyals split, 5-way 1-shot and 20-way 5-shot)
    pub = long[long["source"] == "published"]
    assert set(pub["learner"]) <= {"maml", "protonet", "reptile", "fomaml", "matchingnet"}
    assert 98.9 in pub[(pub["ways"] == 20) & (pub["learner"] == "protonet")]["accuracy_pct"].tolist()


def test_best_and_not_significantly_different_marks(tmp_path: Path) -> None:
    # a and b are nearly equal (not significantly different), c is far below
    run = make_run(tmp_path / "run", learners=("maml", "fomaml", "reptile"), episodes=60,
                   means={"maml": 90.0, "fomaml": 89.9, "reptile": 70.0})
    out = report.report([run], tmp_path / "rep")
    long = pd.read_csv(out / "tables" / "accuracy_long.csv").query("source == 'metabench'").set_index("learner")
    comp = pd.read_csv(out / "tables" / "comparisons.csv")
    best = long.loc[["maml", "fomaml", "reptile"], "accuracy_pct"].idxmax()
    other = "fomaml" if best == "maml" else "maml"
    pair = comp[comp[["a", "b"]].apply(set, axis=1) == {best, other}].iloc[0]
    assert not pair["significant"] and pair["p_t_holm"] > 0.05
    assert bool(long.loc[best, "best"]) and bool(long.loc[other, "not_significantly_worse_than_best"])
    assert not bool(long.loc["reptile", "not_significantly_worse_than_best"])
    md = (out / "tables" / "accuracy.md").read_text()
    assert f"{long.loc[other, 'accuracy_pct']:.2f} ± {long.loc[other, 'ci95_pct']:.2f} †" in md
    tex = (out / "tables" / "accuracy.tex").read_text()
    assert r"$^{\dagger}$" in tex and r"\textbf{" in tex


def test_comparisons_csv_matches_scipy_directly(synthetic: dict[str, Path]) -> None:
    from scipy import stats

    comp = pd.read_csv(synthetic["out"] / "tables" / "comparisons.csv")
    a = pd.read_csv(synthetic["a"] / "episodes.csv")
    b = pd.read_csv(synthetic["b"] / "episodes.csv")
    ep = pd.concat([a, b]).pivot(index="episode", columns="learner", values="accuracy")
    five = comp[comp["setting"] == "Omniglot (vinyals) 5-way 1-shot"]
    assert len(five) == 3  # pairs across the two runs too
    for r in five.itertuples():
        d = ep[r.a] - ep[r.b]
        assert r.mean_diff == pytest.approx(d.mean()) and r.mean_diff >= 0
        assert r.ci95 == pytest.approx(1.959963984540054 * d.std(ddof=1) / math.sqrt(len(d)))
        assert r.p_t == pytest.approx(stats.ttest_rel(ep[r.a], ep[r.b]).pvalue)
    assert len(comp[comp["setting"] == "Omniglot (vinyals) 20-way 5-shot"]) == 6


def test_skipped_figures_are_explained(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", curve_points=0)
    timing = make_timing(tmp_path / "timing", devices=("cpu",), inner_steps=(1,), meta_batches=(16,), peers=False)
    out = report.report([timing, run], tmp_path / "rep")
    meta = json.loads((out / "report.json").read_text())
    assert set(meta["figures"]) == {"accuracy", "episodes", "pareto"}
    skipped = meta["skipped_figures"]
    assert set(skipped) == {"curves", "time_vs_inner_steps", "time_vs_meta_batch", "memory_vs_inner_steps",
                            "cpu_vs_gpu", "peers"}
    assert "from one device (cpu (Test CPU))" in skipped["cpu_vs_gpu"] and "nox -s peers" in skipped["peers"]
    assert "--meta-batch" in skipped["time_vs_meta_batch"] and "no validation points" in skipped["curves"]
    index = (out / "index.md").read_text()
    assert "## Figures not drawn" in index and "`cpu_vs_gpu`: all timing rows are from one device" in index
    assert not (out / "figures" / "cpu_vs_gpu.png").exists()


def test_timing_only_and_accuracy_only_reports(tmp_path: Path) -> None:
    timing = make_timing(tmp_path / "timing", devices=("cpu",))
    out = report.report([timing], tmp_path / "t")
    meta = json.loads((out / "report.json").read_text())
    assert "accuracy" not in meta["figures"] and "time_vs_meta_batch" in meta["figures"]
    assert meta["skipped_figures"]["accuracy"].startswith("no accuracy run directories")
    assert not (out / "tables" / "accuracy.md").exists() and (out / "tables" / "timing.tex").exists()
    run = make_run(tmp_path / "run", split="lake")
    out = report.report([run], tmp_path / "a")
    assert not (out / "tables" / "timing.md").exists()
    assert "No published number matches" in (out / "index.md").read_text()  # lake split: none


def test_learner_with_one_setting_only_and_single_learner(tmp_path: Path) -> None:
    run = make_run(tmp_path / "one", learners=("protonet",))
    out = report.report([run], tmp_path / "rep")
    assert not (out / "tables" / "comparisons.md").exists()
    assert "**" in (out / "tables" / "accuracy.md").read_text()


# ---------------------------------------------------------------------------------------------
# the committed results


def test_committed_report_numbers_match_the_run_summary(committed: Path) -> None:
    summary = pd.read_csv(QUICK / "summary.csv").set_index("learner")
    long = pd.read_csv(committed / "tables" / "accuracy_long.csv")
    ours = long[long["source"] == "metabench"].set_index("learner")
    assert list(ours.index) == list(summary.index)
    for learner in summary.index:  # the runner's summary and the report agree
        assert ours.loc[learner, "accuracy_pct"] == pytest.approx(summary.loc[learner, "accuracy_pct"], rel=1e-9)
        assert ours.loc[learner, "ci95_pct"] == pytest.approx(summary.loc[learner, "ci95_pct"], rel=1e-9)
        assert ours.loc[learner, "meta_train_s"] == pytest.approx(summary.loc[learner, "meta_train_s"], rel=1e-9)
    md = (committed / "tables" / "accuracy.md").read_text()
    assert "| Prototypical Networks | **96.98 ± 0.33** |" in md
    assert "| MAML (Finn et al. 2017, Table 1, top) | 98.7 ± 0.4 |" in md
    assert "| Reptile, transductive (Nichol et al. 2018, Table 2) | 97.68 ± 0.04 |" in md
    assert "| Prototypical Networks (Snell et al. 2017, Table 1) | 98.8 |" in md
    pub = long[long["source"] == "published"]
    assert set(pub["key"]) == {"finn2017", "nichol2018", "snell2017", "vinyals2016"}


STREAM_RUNS = ("omniglot-vinyals-5w1s-quick-stream-p0.9", "omniglot-vinyals-5w1s-quick-stream-p0.98",
               "sinusoid-k10-quick-stream")


def test_committed_report_figures(committed: Path) -> None:
    meta = json.loads((committed / "report.json").read_text())
    assert set(meta["figures"]) == {"accuracy", "episodes", "curves", "pareto", "time_vs_inner_steps",
                                    "memory_vs_inner_steps", "peers", "active-omniglot-vinyals-5w1s-quick-active",
                                    "interactive-omniglot-vinyals-5w1s-quick-interactive",
                                    "interactive-omniglot-vinyals-5w1s-quick-interactive-latency",
                                    *(f"stream-{run}-{figure}" for run in STREAM_RUNS
                                      for figure in ("rolling", "recovery", "returns"))}
    assert [r["protocol"] for r in meta["protocol_runs"]] == ["active", "interactive", "stream", "stream", "stream"]
    two_rows = {"active-omniglot-vinyals-5w1s-quick-active", "interactive-omniglot-vinyals-5w1s-quick-interactive",
                *(f"stream-{run}-rolling" for run in STREAM_RUNS)}  # stream: one panel per regime
    assert set(meta["skipped_figures"]) == {"time_vs_meta_batch", "cpu_vs_gpu"}
    for name, rows in meta["figure_rows"].items():
        assert rows == (2 if name in two_rows else 1)  # active: 5 learners in 2 rows; interactive: accuracy, effort
        png_ok(committed / "figures" / f"{name}.png", style.pixel_size(rows))
        pdf_ok(committed / "figures" / f"{name}.pdf")


def test_committed_results_report_is_current(committed: Path) -> None:
    """results/report is what `nox -s report` regenerates from the committed runs: its tables,
    index and figure list match a fresh report (figures: same files and pixel sizes; their bytes
    depend on the matplotlib / FreeType build)."""
    assert COMMITTED_REPORT.is_dir(), "results/report is missing: run `nox -s report`"
    fresh, kept = files_of(committed), files_of(COMMITTED_REPORT)
    assert fresh.keys() == kept.keys()
    for name in fresh:
        if name.endswith((".md", ".tex", ".json")):
            assert fresh[name] == kept[name], f"results/report/{name} is stale: run `nox -s report`"
        elif name.endswith(".csv"):
            a, b = pd.read_csv(committed / name), pd.read_csv(COMMITTED_REPORT / name)
            pd.testing.assert_frame_equal(a, b, rtol=1e-9)
        elif name.endswith(".png"):
            with Image.open(committed / name) as x, Image.open(COMMITTED_REPORT / name) as y:
                assert x.size == y.size


# ---------------------------------------------------------------------------------------------
# LaTeX


def test_latex_tables_and_pdf_figures_compile(committed: Path, synthetic: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended); "
                    "CI does not install a LaTeX toolchain")
    for i, folder in enumerate((committed / "tables", synthetic["out"] / "tables")):
        (tmp_path / str(i)).mkdir()
        doc = tmp_path / str(i) / "doc.tex"
        body = "\n".join((folder / f).read_text() for f in ("accuracy.tex", "comparisons.tex", "timing.tex"))
        # the vector figures must be readable PDF too: include them
        pdfs = sorted((folder.parent / "figures").glob("*.pdf"))
        body += "".join(f"\n\\clearpage\\includegraphics[width=\\linewidth]{{{p}}}" for p in pdfs)
        doc.write_text("\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
                       "\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n" + body
                       + "\n\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], check=False, cwd=doc.parent,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        warnings = [line for line in proc.stdout.splitlines()
                    if "Warning" in line and "Label(s) may have changed" not in line]  # first run: no .aux yet
        if i == 1:  # the synthetic timing table has 56 rows: taller than a page, still compiles
            warnings = [w for w in warnings if "Float too large" not in w]
        assert warnings == []
        assert (doc.parent / "doc.pdf").read_bytes().startswith(b"%PDF")
        pages = re.search(r"Output written on doc\.pdf \((\d+) pages", proc.stdout.replace("\n", ""))
        assert len(pdfs) >= 7 and pages and int(pages.group(1)) > len(pdfs)  # one page per figure after the tables


def test_latex_escape_and_rendering() -> None:
    assert latex_escape("95% & a_b #1 {x} ~ ^ \\ <>") == (
        r"95\% \& a\_b \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \textless{}\textgreater{}")
    assert latex_escape("88.70 ± 0.92 †") == r"88.70 $\pm$ 0.92 $^{\dagger}$"
    with pytest.raises(ValueError):
        latex_escape("ü")
    table = Table(header=("Learner", "5-way 1-shot", "20-way 5-shot"),
                  rows=((Cell("A"), Cell("1.00 ± 0.10", bold=True), Cell("—")),
                        (Cell("B|C"), Cell("2"), Cell("3"))),
                  align="lrr", caption="Cap *x* 50%", label="tab:t", groups=(("Omniglot (vinyals)", 2),),
                  sections=((1, "Published"),))
    md = to_markdown(table)
    assert md.splitlines()[0] == "| Learner | Omniglot (vinyals) 5-way 1-shot | Omniglot (vinyals) 20-way 5-shot |"
    assert "| A | **1.00 ± 0.10** | — |" in md and "| *Published* |  |  |" in md and "B\\|C" in md
    assert md.endswith("Cap *x* 50%")
    tex = to_latex(table)
    assert r"\multicolumn{2}{c}{Omniglot (vinyals)}" in tex and r"\cmidrule(lr){2-3}" in tex
    assert r"\textbf{1.00 $\pm$ 0.10}" in tex and r"\caption{Cap x 50\%}" in tex and "---" in tex
    assert r"\multicolumn{3}{l}{\emph{Published}}" in tex and tex.count(r"\midrule") == 2
    with pytest.raises(ValueError):
        Table(header=("a", "b"), rows=((Cell("x"),),), align="lr", caption="", label="t")
    with pytest.raises(ValueError):
        Table(header=("a", "b"), rows=(), align="lx", caption="", label="t")


# ---------------------------------------------------------------------------------------------
# published numbers


def test_published_table_loads_from_the_package() -> None:
    table = load_published()
    assert len(table) == 38 and table["verified"].isin(["yes", "no"]).all()
    assert set(table["learner"]) == {"maml", "fomaml", "reptile", "protonet", "matchingnet"}
    assert set(table["key"]) == {"finn2017", "nichol2018", "snell2017", "vinyals2016", "ravi2017"}
    assert table["transductive"].isin(["yes", "no", "unknown"]).all()
    maml = matching(table, "omniglot", "vinyals", 20, 1, ["maml"]).iloc[0]
    assert (maml["accuracy_pct"], maml["ci95_pct"], maml["table"]) == (95.8, 0.3, "Table 1, top")
    reptile = matching(table, "omniglot", "vinyals", 5, 1, ["reptile"])
    assert sorted(reptile["accuracy_text"]) == ["95.39", "97.68"]
    assert matching(table, "omniglot", "lake", 5, 1).empty
    proto = matching(table, "miniimagenet", "ravi", 5, 5, ["protonet"]).iloc[0]
    assert (proto["accuracy_text"], proto["ci95_text"]) == ("68.20", "0.66")
    assert math.isnan(matching(table, "omniglot", "vinyals", 5, 1, ["protonet"]).iloc[0]["ci95_pct"])
    unverified = table[table["verified"] == "no"]
    assert len(unverified) == 2 and all(label(r).endswith("*") for _, r in unverified.iterrows())
    assert "NOT VERIFIED" in " ".join(unverified["note"])


def test_pyproject_ships_the_published_table() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "published.csv" in config["tool"]["setuptools"]["package-data"]["metabench"]
    deps = " ".join(config["project"]["dependencies"])
    for name in ("scipy", "statsmodels", "matplotlib", "seaborn"):
        assert name in deps


def test_torch_free_mirrors_of_the_learner_facts_agree_with_the_learners() -> None:
    """The report's modules do not import torch, so they keep two copies of learner facts: the
    learners with an inner loop (their ``INNER_LOOP``) and the colour order (the benchmarked
    learners). Both must equal what the learner classes say."""
    from metabench import style, timing
    from metabench.algorithms import LEARNERS, META_LEARNERS

    assert tuple(figures.INNER_LOOP) == tuple(timing.INNER_LOOP) == tuple(n for n in META_LEARNERS if LEARNERS[n].INNER_LOOP)
    assert tuple(style.KNOWN_LEARNERS) == META_LEARNERS


# ---------------------------------------------------------------------------------------------
# bad input


def test_cli_writes_report_and_prints_its_index(tmp_path: Path, capsys, one_line_error) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "rep"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    assert f"report: {out / 'index.md'}" in capsys.readouterr().out
    assert cli.main(["report", str(run), "--out", str(out)]) == 2
    one_line_error("already exists", "--force")
    (out / "index.md").write_text("old")
    assert cli.main(["report", str(run), "--out", str(out), "--force"]) == 0
    assert (out / "index.md").read_text().startswith("# metabench report")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_default_out_is_report_in_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "run"]) == 0
    assert (tmp_path / "report" / "index.md").is_file()


@pytest.mark.parametrize("setup, fragments", [
    (lambda p: p / "missing", ["does not exist"]),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", ["is a file"]),
    (lambda p: (p / "empty").mkdir() or p / "empty", ["neither a run directory", "timing directory", "--out"]),
    (lambda p: (p / "half").mkdir() or (p / "half" / "episodes.csv").write_text("a\n1\n") and p / "half",
     ["incomplete run directory", "run.json, config.json"]),
])
def test_unusable_folders_fail_with_one_line(tmp_path: Path, one_line_error, setup, fragments) -> None:
    path = setup(tmp_path)
    assert cli.main(["report", str(path), "--out", str(tmp_path / "rep")]) == 2
    one_line_error(*fragments)
    assert not (tmp_path / "rep").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_report_given_as_input_is_named(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = report.report([run], tmp_path / "rep")
    assert kind_of(run) == "run"
    with pytest.raises(ReportError, match="is a report, not a run"):
        report.report([out], tmp_path / "rep2")


def test_runs_of_one_setting_with_different_episodes_are_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", learners=("maml",))
    b = make_run(tmp_path / "b", learners=("protonet",), fingerprint="ef" * 32)
    with pytest.raises(ReportError, match="tested on different episodes .*fingerprints abababab"):
        report.report([a, b], tmp_path / "rep")
    c = make_run(tmp_path / "c", learners=("maml",))
    with pytest.raises(ReportError, match="learner maml seed 0 is in both"):
        report.report([a, c], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def test_a_learners_seeds_trained_differently_are_not_pooled(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", learners=("maml",), seeds=(0,))
    b = make_run(tmp_path / "b", learners=("maml",), seeds=(1,))
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**config, "budget": "paper"}))
    with pytest.raises(ReportError, match=r"learner maml was trained differently in .*a and .*b \(budget: quick -> "
                                          r"paper\), so its seeds cannot be pooled"):
        report.report([a, b], tmp_path / "rep")
    (b / "config.json").write_text(json.dumps({**config, "hparams": {"maml": {"inner_lr": 0.1}}}))
    with pytest.raises(ReportError, match=r"hparams.maml: None -> \{'inner_lr': 0.1\}"):
        report.report([a, b], tmp_path / "rep")
    (b / "config.json").write_text(json.dumps({**config, "hparams": {"protonet": {"train_ways": 20}}}))
    report.report([a, b], tmp_path / "rep")  # another learner's override is not maml's
    assert not list(tmp_path.glob(".rep*"))


def test_a_learners_seeds_from_several_runs_are_aggregated_as_one_run_of_them(tmp_path: Path) -> None:
    """Seeds of a learner kept in separate runs of one setting (as a sweep keeps them, one cell per
    learner x seed) give the numbers of one run holding every seed: seeds averaged per episode."""
    both = make_run(tmp_path / "both", learners=("maml", "protonet"), seeds=(0, 1))
    ep = pd.read_csv(both / "episodes.csv")
    parts = []
    for seed in (0, 1):
        part = make_run(tmp_path / f"s{seed}", learners=("maml", "protonet"), seeds=(seed,))
        ep[ep["seed"] == seed].to_csv(part / "episodes.csv", index=False)
        parts.append(part)
    report.report([both], tmp_path / "one")
    report.report(parts, tmp_path / "two")
    one = pd.read_csv(tmp_path / "one" / "tables" / "accuracy_long.csv").drop(columns=["run"])
    two = pd.read_csv(tmp_path / "two" / "tables" / "accuracy_long.csv").drop(columns=["run"])
    pd.testing.assert_frame_equal(one, two)
    assert set(one.loc[one["source"] == "metabench", "seeds"]) == {2}
    assert (tmp_path / "one" / "tables" / "comparisons.csv").read_text() == \
        (tmp_path / "two" / "tables" / "comparisons.csv").read_text()


def test_malformed_files_are_named(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    ep = pd.read_csv(run / "episodes.csv")
    ep.drop(columns=["accuracy"]).to_csv(run / "episodes.csv", index=False)
    with pytest.raises(ReportError, match=r"episodes.csv lacks the column\(s\) accuracy"):
        report.report([run], tmp_path / "rep")
    ep.assign(accuracy="high").to_csv(run / "episodes.csv", index=False)
    with pytest.raises(ReportError, match="not numbers"):
        report.report([run], tmp_path / "rep")
    ep[~((ep["learner"] == "maml") & (ep["episode"] == 3))].to_csv(run / "episodes.csv", index=False)
    with pytest.raises(ReportError, match="not all tested on the same episodes"):
        report.report([run], tmp_path / "rep")
    ep.to_csv(run / "episodes.csv", index=False)
    (run / "run.json").write_text("{not json")
    with pytest.raises(ReportError, match="cannot read .*run.json"):
        report.report([run], tmp_path / "rep")
    (run / "run.json").write_text("{}")
    with pytest.raises(ReportError, match="lacks the episode fingerprint"):
        report.report([run], tmp_path / "rep")


def test_same_timing_cell_in_two_directories_is_refused(tmp_path: Path) -> None:
    a = make_timing(tmp_path / "a", devices=("cpu",))
    b = make_timing(tmp_path / "b", devices=("cpu",))
    with pytest.raises(ReportError, match="timed in several directories"):
        report.report([a, b], tmp_path / "rep")
    c = make_timing(tmp_path / "c", devices=("cuda",))  # the same cells on another device: fine
    out = report.report([a, c], tmp_path / "rep")
    assert "cpu_vs_gpu" in json.loads((out / "report.json").read_text())["figures"]


def test_force_only_replaces_a_report_and_never_an_input(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(ReportError, match="not a metabench report"):
        report.report([run], other, force=True)
    assert (other / "keep.txt").read_text() == "keep"
    with pytest.raises(ReportError, match="no run directories given"):
        report.report([], tmp_path / "rep")
    with pytest.raises(ReportError, match="given twice"):
        report.report([run, tmp_path / "run"], tmp_path / "rep")
    out = report.report([run], tmp_path / "rep")
    with pytest.raises(ReportError, match="would replace the input"):
        report.report([run, make_run(out / "inner", ways=20)], out, force=True)


def test_failure_while_drawing_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    run = make_run(tmp_path / "run")

    def boom(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(figures, "pareto_figure", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        report.report([run], tmp_path / "out" / "rep")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    out = report.report([run], tmp_path / "rep")
    monkeypatch.setattr(figures, "pareto_figure", boom)
    with pytest.raises(RuntimeError):
        report.report([run], out, force=True)
    assert (out / "index.md").is_file() and (out / "figures" / "pareto.png").is_file()  # old report intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "run"]


def test_nox_report_session_regenerates_the_committed_report() -> None:
    text = (REPO / "noxfile.py").read_text()
    assert "def report(" in text
    for arg in ("results/omniglot-vinyals-5w1s-quick", "results/time-cpu-maml-vs-peers-6", "results/report", "--force"):
        assert arg in text
