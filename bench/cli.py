"""The ``metabench`` command line.

``metabench run``: train and test meta-learners on shared few-shot episodes, write a run directory
and print its summary table. ``metabench time``: time one meta-training step per learner and
implementation (:mod:`metabench.timing`), write a timing directory and print its table.
``metabench report``: tables, paired statistics and figures from run and timing directories
(:mod:`metabench.report`). ``metabench data list|download|verify``: the datasets, where their
files are, fetching and checking them (:mod:`metabench.data`). Errors are printed as one line,
``metabench: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from metabench import __version__, data
from metabench.algorithms import LEARNERS
from metabench.config import BUDGETS, load_toml, parse_sets, resolve
from metabench.datasets import DATASETS
from metabench.errors import ConfigError, MetabenchError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metabench`` command."""
    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark few-shot meta-learners on shared episodes.")
    parser.add_argument("--version", action="version", version=f"metabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="train and test learners on shared episodes and write a run directory",
        description="Train each learner, test all of them on the same episodes, write a run directory, print the summary.",
    )
    run.add_argument("--config", help="TOML file with any of the options below (flags override it)")
    run.add_argument("--dataset", help=f"dataset to meta-train on: {', '.join(DATASETS)} (default omniglot)")
    run.add_argument("--split", help="class split: " + "; ".join(f"{d}: {', '.join(info.splits)}" for d, info in DATASETS.items())
                     + " (default: the first listed)")
    run.add_argument("--test-dataset", help="cross-domain: take the test episodes from this dataset's test split "
                                            "(default: --dataset), e.g. --dataset omniglot --test-dataset digits")
    run.add_argument("--test-split", help="split of --test-dataset (default: its first)")
    run.add_argument("--ways", type=int, help="N classes per test episode (default 5; none for sinusoid regression)")
    run.add_argument("--shots", type=int, help="K support examples per class (default 1; sinusoid: K points, default 10)")
    run.add_argument("--queries", type=int, help="Q query examples per class (default 15; sinusoid: query points, default 100)")
    run.add_argument("--learners", help=f"comma-separated learners: {','.join(LEARNERS)} (default: all defined for the "
                                        "dataset; learners not defined for it are reported, not run)")
    run.add_argument("--budget", choices=list(BUDGETS), help="training budget preset (default quick; converge: train to "
                                                             "convergence on validation, see docs/runs.md)")
    run.add_argument("--iterations", type=int, help="meta-iterations for every learner (overrides the budget; with "
                                                    "converge, the most)")
    run.add_argument("--test-episodes", type=int, help="test episodes shared by all learners (default 600)")
    run.add_argument("--val-episodes", type=int, help="validation episodes per validation")
    run.add_argument("--curve-points", type=int, help="validations during training, evenly spaced")
    run.add_argument("--validate-every", type=int, help="validate every N meta-iterations instead (every learner; "
                                                        "converge sets each learner's own)")
    run.add_argument("--patience", type=int, help="stop after this many validations without improvement (0: never)")
    run.add_argument("--checkpoint-minutes", type=float, help="minutes between training checkpoints (default 2; 0: every "
                                                              "meta-iteration)")
    run.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose working folder is DIR "
                                                     "(DIR.incomplete/ beside the run's --out), with its own settings")
    run.add_argument("--seeds", help="comma-separated training seeds, one run of every learner per seed (default 0)")
    run.add_argument("--episode-seed", type=int, help="seed of the shared test/validation episodes (default 0)")
    run.add_argument("--device", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    run.add_argument("--data-root", help="data root holding omniglot/, miniimagenet/, cifar100/ and splits/ "
                                         "(default $METABENCH_DATA, then the user cache; see `metabench data list`)")
    run.add_argument("--image-size", type=int, help="side of the square images in pixels (default: the dataset's, 28 for Omniglot)")
    run.add_argument("--workers", type=int, help="processes for the test evaluation (default 0: one per CPU thread on CPU, one on CUDA)")
    run.add_argument("--no-download", dest="download", action="store_false", default=None,
                     help="fail instead of downloading missing data")
    run.add_argument("--out", help="run directory to create (default runs/<time>-<dataset>-<split>-<N>w<K>s)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="LEARNER.NAME=VALUE",
                     help="override a hyperparameter, e.g. --set maml.inner_lr=0.1 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_protocol_arguments(run)

    t = sub.add_parser(
        "time", help="time one meta-training step per learner and implementation",
        description="Time one meta-training step (forward, inner loop, meta-gradient, update) for each combination "
                    "of the comma-separated lists; each combination runs in a fresh worker process.",
    )
    t.add_argument("--implementations", default="metabench", help="comma-separated: metabench, learn2learn, higher (peers: nox -s peers)")
    t.add_argument("--learners", default="maml,fomaml,reptile,protonet,matchingnet", help="comma-separated learners (peers: maml only)")
    t.add_argument("--shapes", default="5w1s", help="comma-separated N-way K-shot presets: 5w1s, 5w5s, 20w1s, 20w5s")
    t.add_argument("--queries", type=int, default=15, help="Q query examples per class (default 15)")
    t.add_argument("--meta-batch", default="16", help="comma-separated meta-batch sizes, e.g. 1,4,16,32 (default 16)")
    t.add_argument("--inner-steps", default="1", help="comma-separated inner-step counts, e.g. 1,2,5,10 (default 1)")
    t.add_argument("--inner-lr", type=float, default=0.4, help="MAML's inner learning rate alpha (default 0.4)")
    t.add_argument("--strategies", "--paths", dest="strategies", default="auto",
                   help="comma-separated MAML core strategies: auto, per_task, chunked, batched, recompute, vmap (default "
                        "auto; --paths is the former name)")
    t.add_argument("--layouts", default="auto", help="comma-separated MAML core image layouts: auto, contiguous, channels_last (default auto)")
    t.add_argument("--compile-query", default="off", help="comma-separated off, on: MAML's query pass under torch.compile (default off)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--reps", type=int, default=20, help="timed repetitions per combination (default 20)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    t.add_argument("--rounds", type=int, default=1,
                   help="split each cell's repetitions over this many fresh workers, taken round-robin over the cells, "
                        "so that drift of the machine's speed reaches all cells alike (default 1)")
    t.add_argument("--out", help="directory to create (default runs/<time>-time-<device>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser(
        "evaluate", help="re-test the learners a run kept, on other episodes, without training",
        description="Rebuild each learner from RUN_DIR/weights/ and test it on the episodes the flags describe (by default "
                    "the run's own); write an ordinary run directory that `metabench report` reads.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished `metabench run` directory with weights/")
    e.add_argument("--test-dataset", help="take the test episodes from this dataset's test split (cross-domain)")
    e.add_argument("--test-split", help="split of --test-dataset (default: its first)")
    e.add_argument("--ways", type=int, help="N classes per episode (metric learners: any N; the others: their trained N)")
    e.add_argument("--shots", type=int, help="K support examples per class")
    e.add_argument("--queries", type=int, help="Q query examples per class")
    e.add_argument("--test-episodes", type=int, help="number of test episodes")
    e.add_argument("--episode-seed", type=int, help="seed of the test episodes")
    e.add_argument("--learners", help="comma-separated learners among those the run kept (default: all)")
    e.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    e.add_argument("--data-root", help="data root (default: the run's, else $METABENCH_DATA)")
    e.add_argument("--workers", type=int, help="processes for the evaluation (default 0: one per CPU thread)")
    e.add_argument("--no-download", dest="download", action="store_false", default=None, help="fail instead of downloading")
    e.add_argument("--out", help="directory to create (default RUN_DIR-eval-<dataset>-<N>w<K>s beside RUN_DIR)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="LEARNER.NAME=VALUE",
                   help="change a test-time hyperparameter of the kept learner, e.g. --set fomaml.query_batch=1 "
                        "(repeatable; the learner's TEST_SETTINGS only)")
    add_protocol_arguments(e)

    r = sub.add_parser(
        "report", help="tables, statistics and figures from run and timing directories",
        description="Write a report folder (index.md, Markdown/LaTeX/CSV tables, PNG/PDF figures) from any mix of "
                    "`metabench run` and `metabench time` directories. Runs of the same setting must share their "
                    "test episodes; their learners are compared episode by episode.",
    )
    r.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="run, timing or sweep directory (any number, any mix; "
                                                             "a sweep contributes its done cells and lists the others)")
    r.add_argument("--out", help="report folder to create (default: report)")
    r.add_argument("--force", action="store_true", help="replace --out if it is an existing metabench report")

    add_sweep_arguments(sub)

    d = sub.add_parser(
        "data", help="list, download and verify datasets",
        description="List every dataset and where its files are, download a dataset, or verify its checksums and structure.",
    )
    data.add_arguments(d)
    add_gate_arguments(sub)
    return parser


def add_gate_arguments(sub: Any) -> None:
    """``metabench gate`` (:mod:`metabench.perfgate`)."""
    from metabench import perfgate

    g = sub.add_parser(
        "gate", help="the performance gate: each learner's training step as a ratio to an in-process reference, "
                     "checked against the committed baseline (exit 1 on a regression)",
        description="Time each learner's meta-training step at its training shape, interleaved with a reference "
                    "computation in the same process, and fail (exit 1) when a median ratio is more than the "
                    "threshold above the baseline's. With --record, write a new baseline instead. See docs/timing.md.",
    )
    g.add_argument("--baseline", default=str(perfgate.DEFAULT_BASELINE),
                   help=f"baseline folder (default {perfgate.DEFAULT_BASELINE}, from the repository root)")
    g.add_argument("--workloads", default=",".join(perfgate.WORKLOADS),
                   help=f"comma-separated learners (default all: {','.join(perfgate.WORKLOADS)})")
    g.add_argument("--rounds", type=int, default=perfgate.ROUNDS, help=f"timed rounds per workload (default {perfgate.ROUNDS})")
    g.add_argument("--slow-core", action="store_true",
                   help="run the maml and fomaml workloads on the known-slow configuration of the MAML core "
                        "(recompute, one task per chunk, contiguous images), to see the gate fail")
    g.add_argument("--record", metavar="DIR", help="measure --repeats times in fresh processes and write a new "
                                                   "baseline folder DIR instead of gating")
    g.add_argument("--repeats", type=int, help=f"--record: fresh processes (default {perfgate.REPEATS})")


def add_sweep_arguments(sub: Any) -> None:
    """``metabench sweep plan|run|status`` (:mod:`metabench.sweeps`)."""
    s = sub.add_parser(
        "sweep", help="a grid of runs (learners x settings x seeds) from a sweep file, on this machine, Ray or Slurm",
        description="Expand a sweep file (TOML) into cells, each an ordinary run in its own folder of the sweep "
                    "directory; run those not done with an engine; show where they stand. See docs/sweeps.md.",
    )
    ss = s.add_subparsers(dest="sweep_command", required=True)
    p = ss.add_parser("plan", help="print the cells and their estimated cost, checking every cell",
                      description="Print the cells of FILE with their meta-iterations and, measured on this machine, "
                                  "their estimated time; refuse an invalid cell before anything runs.")
    p.add_argument("file", metavar="FILE", help="sweep file (TOML), e.g. sweeps/smoke.toml")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="do not measure (no data needed): cells and meta-iterations only")
    r = ss.add_parser("run", help="run the cells that are not done (resumes a killed sweep)",
                      description="Run the pending and interrupted cells of FILE (into --out) or of the sweep "
                                  "directory DIR; done cells are skipped, interrupted ones resume from their checkpoints.")
    r.add_argument("target", metavar="FILE|DIR", help="sweep file, or the sweep directory to continue")
    r.add_argument("--out", help="sweep directory (default runs/sweep-<name>; a DIR runs in place)")
    r.add_argument("--engine", default="local", help="local (default), ray or slurm (submitit)")
    r.add_argument("--jobs", type=int, help="local: cells at once (default: CPU cores / [resources] cpus)")
    r.add_argument("--address", help="ray: the cluster's address (host:port, ray://host:port or auto; default: "
                                     "start Ray on this machine)")
    r.add_argument("--cluster", default="slurm", choices=("slurm", "local"),
                   help="slurm: submitit's executor (default slurm; local runs the Slurm engine's code path here)")
    r.add_argument("--retry-failed", action="store_true", help="also rerun the cells whose last attempt failed")
    r.add_argument("--data-root", help="data root for every cell (default: each worker's $METABENCH_DATA)")
    st = ss.add_parser("status", help="counts of done, running, interrupted, failed and pending cells",
                       description="Show how many cells of sweep directory DIR are in each state, and the cells not done.")
    st.add_argument("dir", metavar="DIR", help="a sweep directory")


def _sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` command; returns the exit status (1 when cells are left not done)."""
    from pathlib import Path

    from metabench import sweeps
    from metabench.sweeps import spec, state

    if args.sweep_command == "plan":
        sweep = spec.load(args.file)
        cells = spec.expand(sweep)
        print(sweeps.plan_text(sweep, cells, args.measure, lambda text: print(text, file=sys.stderr)))
        return 0
    if args.sweep_command == "status":
        out = Path(args.dir)
        print(sweeps.status_text(state.statuses(out), out))
        return 0
    result = sweeps.run_sweep(args.target, Path(args.out) if args.out else None, args.engine, args.jobs, args.address,
                              args.cluster, args.retry_failed, args.data_root)
    print(sweeps.status_text(result.cells, result.out))
    return 0 if all(c.state == "done" for c in result.cells) else 1


#: Flags of the evaluation protocols' settings: flag destination -> (protocol, settings field).
PROTOCOL_FLAGS = {
    "pool": ("active", "pool"), "pool_queries": ("active", "queries"), "start_labels": ("active", "start"),
    "round_size": ("active", "round_size"), "label_budget": ("active", "budget"), "strategies": ("active", "strategies"),
    "epsilon": ("active", "epsilon"), "target_accuracy": ("active", "target"), "items": ("interactive", "items"),
    "rounds": ("interactive", "rounds"), "heldout_queries": ("interactive", "queries"),
    "epsilons": ("interactive", "epsilons"), "confirm": ("interactive", "confirm"),
    "stream_steps": ("stream", "steps"), "stay": ("stream", "stay"), "mixing": ("stream", "mixing"),
    "ood_dataset": ("stream", "ood_dataset"), "ood_split": ("stream", "ood_split"), "stream_shots": ("stream", "shots"),
    "memory": ("stream", "memory"), "change_threshold": ("stream", "threshold"), "regimes": ("stream", "regimes"),
    "oracle": ("stream", "oracle"), "fresh_classes": ("stream", "fresh_classes"),
}


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """``--protocol`` and the protocols' settings (see :mod:`metabench.protocols`)."""
    g = parser.add_argument_group("evaluation protocol", "how the trained learners are tested (see docs/protocols.md)")
    g.add_argument("--protocol", help="episodic (image datasets' default), regression (sinusoid's default), active "
                                      "(active selection of support labels from an unlabelled pool), interactive (a "
                                      "simulated person correcting the model round by round) or stream (online task "
                                      "streams with task changes and returning tasks)")
    g.add_argument("--pool", type=int, help="active: P unlabelled pool images per class (default 10)")
    g.add_argument("--pool-queries", type=int, help="active: Q query images per class, scored every round (default 10)")
    g.add_argument("--start-labels", type=int, help="active: labels per class before the first round (default 1)")
    g.add_argument("--round-size", type=int, help="active: labels acquired per round (default N)")
    g.add_argument("--label-budget", type=int, help="active: labels held after the last round, seed set included (default 4N)")
    g.add_argument("--strategies", help="active: comma-separated acquisition strategies (default all: random, balanced, "
                                        "entropy, margin, least_confidence, kcenter)")
    g.add_argument("--epsilon", type=float, help="active: probability that the annotator gives a wrong label (default 0)")
    g.add_argument("--target-accuracy", type=float, help="active: accuracy (%%) for 'labels to reach' (default 95)")
    g.add_argument("--items", type=int, help="interactive: stream items per round (default N)")
    g.add_argument("--rounds", type=int, help="interactive: rounds per stream (default 8)")
    g.add_argument("--heldout-queries", type=int, help="interactive: held-out query images per class (default 5)")
    g.add_argument("--epsilons", help="interactive: comma-separated annotator error rates (default 0,0.1,0.2)")
    g.add_argument("--confirm", action="store_true", default=None,
                   help="interactive: the person also confirms right predictions (default: corrects errors only)")
    g.add_argument("--stream-steps", type=int, help="stream: steps T per stream (default 1000)")
    g.add_argument("--stay", type=float, help="stream: probability p that the task stays the same at a step (default 0.9)")
    g.add_argument("--mixing", help="stream: probabilities of a new in-distribution, a new out-of-distribution and a "
                                    "returning task at a change (default 0.5,0.25,0.25; without an out-of-distribution "
                                    "dataset 0.75,0,0.25)")
    g.add_argument("--ood-dataset", help="stream: the out-of-distribution dataset (default digits for images; none)")
    g.add_argument("--ood-split", help="stream: its split (default: the dataset's first)")
    g.add_argument("--stream-shots", type=int, help="stream: examples per class in each step's batch (default: --shots)")
    g.add_argument("--memory", type=int, help="stream: labelled batches of the current task a learner keeps (default 5)")
    g.add_argument("--change-threshold", type=float, help="stream: loss jump that declares a task change (default 1)")
    g.add_argument("--regimes", help="stream: frozen and/or continual meta-parameters (default frozen)")
    g.add_argument("--oracle", action="store_true", default=None,
                   help="stream: also run with the task boundaries given (reported separately)")
    g.add_argument("--fresh-classes", action="store_true", default=None,
                   help="stream: new tasks never reuse a class the stream has used")


def protocol_values(args: argparse.Namespace, configured: str | None = None) -> dict[str, Any]:
    """``protocol`` and ``protocol_settings`` from the flags (empty when none is given);
    ``configured`` is the protocol a TOML file chose, if any.

    Raises:
        ConfigError: a setting flag given without a protocol that has it.
    """
    values: dict[str, Any] = {}
    if args.protocol is not None:
        values["protocol"] = args.protocol
    protocol = args.protocol or configured
    settings = {}
    for flag, (owner, field) in PROTOCOL_FLAGS.items():
        if getattr(args, flag) is None:
            continue
        if owner != protocol:
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name} is a setting of --protocol {owner} (this run's protocol is "
                              f"{protocol or 'the standard one'}): add --protocol {owner} or drop {name}")
        settings[field] = getattr(args, flag)
    if settings:
        values["protocol_settings"] = settings
    return values


def run_protocol(run_dir: Any) -> str | None:
    """The protocol a finished run directory was tested with (``None`` if it does not say)."""
    import json

    try:
        return json.loads((run_dir / "config.json").read_text()).get("protocol")
    except (OSError, ValueError):
        return None  # evaluate_run reports the unusable directory


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _switches(text: str, flag: str) -> list[bool]:
    values = {"off": False, "on": True}
    try:
        return [values[v.strip()] for v in text.split(",") if v.strip()]
    except KeyError:
        raise ConfigError(f"{flag} takes comma-separated off/on, got {text!r}") from None


def _time(args: argparse.Namespace) -> None:
    """The ``time`` command: measure, write the directory atomically, print the table."""
    from datetime import datetime
    from pathlib import Path

    from metabench import timing
    from metabench.environment import environment
    from metabench.runner import check_writable, resolve_device, write_atomically

    device = resolve_device(args.device)
    cells = timing.cells_for(
        [v.strip() for v in args.implementations.split(",") if v.strip()],
        [v.strip() for v in args.learners.split(",") if v.strip()],
        [v.strip() for v in args.shapes.split(",") if v.strip()],
        _ints(args.meta_batch, "--meta-batch"), _ints(args.inner_steps, "--inner-steps"),
        args.queries, args.inner_lr, device.type, args.reps, args.warmup,
        [v.strip() for v in args.strategies.split(",") if v.strip()], _switches(args.compile_query, "--compile-query"),
        [v.strip() for v in args.layouts.split(",") if v.strip()],
    )
    out = Path(args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-time-{device.type}")
    check_writable(out)
    timing.split_reps(args.reps, args.rounds)  # validates --rounds before anything runs
    table, rate = timing.measure(cells, progress=not args.quiet, rounds=args.rounds)
    env = environment(device)
    write_atomically(out, lambda folder: timing.write_outputs(folder, table, rate, env))
    print((out / "timing.md").read_text())
    print(f"timing directory: {out}")


def _gate(args: argparse.Namespace) -> int:
    """The ``gate`` command; returns 0 when every workload passes (or a baseline was recorded), 1
    when one regressed."""
    from pathlib import Path

    from metabench import perfgate

    workloads = [v.strip() for v in args.workloads.split(",") if v.strip()]
    def say(text: str) -> None:
        print(text, file=sys.stderr)

    if args.record:
        if args.slow_core:
            raise ConfigError("a baseline is recorded on the normal core: leave out --slow-core with --record")
        repeats = perfgate.REPEATS if args.repeats is None else args.repeats
        perfgate.record(Path(args.record), workloads, args.rounds, repeats, progress=say)
        print((Path(args.record) / "baseline.md").read_text())
        print(f"baseline folder: {args.record}")
        return 0
    if args.repeats is not None:
        raise ConfigError("--repeats applies to --record only: leave it out, or record a baseline with --record DIR")
    verdicts, text = perfgate.gate(Path(args.baseline), workloads, args.rounds, args.slow_core, progress=say)
    print(text)
    failed = verdicts.loc[~verdicts["passed"], "workload"].tolist()
    if failed:
        print(f"metabench: performance gate failed for {', '.join(failed)}: a ratio is above its limit (profile "
              f"with `metabench time`, or if the slowdown is intended record a new baseline with "
              f"`metabench gate --record`)", file=sys.stderr)
        return 1
    return 0


#: ``metabench run`` flags that set a configuration key of the same name.
RUN_KEYS = ("dataset", "split", "test_dataset", "test_split", "ways", "shots", "queries", "learners", "budget", "iterations",
            "test_episodes", "val_episodes", "curve_points", "validate_every", "patience", "seeds", "episode_seed",
            "device", "data_root", "download", "out", "image_size", "workers", "checkpoint_minutes")


def resume_values(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of the run to resume (``--resume DIR``): the one its working folder
    recorded, with the flags that change no result (``--data-root``, ``--no-download``,
    ``--checkpoint-minutes``) applied.

    Raises:
        ConfigError: if DIR is not a working folder (or is a finished run), or other flags are given.
    """
    from pathlib import Path

    from metabench import workdir

    work = Path(args.resume)
    if not work.name.endswith(workdir.SUFFIX) and workdir.working_folder(work).is_dir():
        work = workdir.working_folder(work)
    state = workdir.read_state(work)
    given = [k for k in (*RUN_KEYS, "protocol", *PROTOCOL_FLAGS)
             if getattr(args, k) is not None and (k not in workdir.NOT_DEFINING or k == "out")]
    if args.config or args.sets or given:
        flags = ["--config"] * bool(args.config) + ["--set"] * bool(args.sets) + [f"--{k.replace('_', '-')}" for k in given]
        raise ConfigError(f"--resume takes every setting from {work}/state.json: drop {', '.join(flags)}")
    values = {k: v for k, v in state["config"].items() if k not in ("skipped", "device_resolved")}
    values["learners"] = [*values["learners"], *state["config"].get("skipped", {})]  # as asked, so skipped is the same
    values["out"] = str(workdir.run_directory(work))
    for key in workdir.NOT_DEFINING - {"out", "skipped"}:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def run_values(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the TOML file (if any) with the flags given on the command line (flags win)."""
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    for key in RUN_KEYS:
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.sets:
        table = values.get("hparams", {})
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ConfigError(f"hparams in {args.config} must be a table of [hparams.<learner>] tables (e.g. "
                              "[hparams.maml] inner_lr = 0.4), got " + repr(table))
        hparams = {k: dict(v) for k, v in table.items()}
        for learner, items in parse_sets(args.sets).items():
            hparams.setdefault(learner, {}).update(items)
        values["hparams"] = hparams
    flags = protocol_values(args, values.get("protocol"))
    same = flags.get("protocol", values.get("protocol")) == values.get("protocol")
    if "protocol_settings" in flags and isinstance(values.get("protocol_settings"), dict) and same:
        flags["protocol_settings"] = {**values["protocol_settings"], **flags["protocol_settings"]}
    values.update(flags)
    return values


def _interrupt(signum: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt so that a killed run cleans up like Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metabench`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command == "run":
            from metabench.runner import run  # imported here: it loads torch

            config = resolve(resume_values(args) if args.resume else run_values(args))
            out = run(config, progress=not args.quiet)
            print((out / "summary.md").read_text())
            print(f"run directory: {out}")
        elif args.command == "evaluate":
            from pathlib import Path

            from metabench.reevaluate import CHANGEABLE, evaluate_run

            changes = {k: getattr(args, k) for k in CHANGEABLE if getattr(args, k, None) is not None}
            changes.update(protocol_values(args, run_protocol(Path(args.run_dir))))
            out = evaluate_run(Path(args.run_dir), Path(args.out) if args.out else None, progress=not args.quiet,
                               test_settings=parse_sets(args.sets), **changes)
            print((out / "summary.md").read_text())
            print(f"run directory: {out}")
        elif args.command == "time":
            _time(args)
        elif args.command == "report":
            from pathlib import Path

            from metabench.report import report

            out = report(args.dirs, Path(args.out) if args.out else None, force=args.force)
            print(f"report: {out / 'index.md'}")
        elif args.command == "sweep":
            return _sweep(args)
        elif args.command == "gate":
            return _gate(args)
        elif args.command == "data":
            data.main(args)
        return 0
    except MetabenchError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`metabench data list | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit flush cannot fail again
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        work = getattr(exc, "work", None)
        if args.command == "sweep":
            print("metabench: sweep interrupted; its cells keep their checkpoints: rerun the same `metabench sweep run` "
                  "to resume", file=sys.stderr)
        elif work is not None:
            print(f"metabench: interrupted; checkpoints kept in {work}: resume with `metabench run --resume {work}` "
                  f"(or delete it)", file=sys.stderr)
        else:
            print("metabench: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
