"""The engines that run a sweep's cells: ``local`` (this machine), ``ray`` and ``slurm`` (submitit).

Every engine runs each cell the same way, as its own process (:func:`metabench.sweeps.cell.launch`),
with the sweep's ``[resources] cpus`` torch threads, and only schedules: which cell runs where and
when. The cell's folder records its state (:mod:`metabench.sweeps.state`), so an engine returns
nothing but the cells' exit statuses.

- ``local``: a pool of ``jobs`` cells at a time (default: the CPU cores divided by ``cpus``; one
  at a time when the cells use GPUs).
- ``ray``: each cell a Ray task with ``num_cpus``/``num_gpus`` from ``[resources]``
  (Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI Applications", OSDI), on a
  Ray started for the sweep (``ray.init``) or the cluster at ``--address``.
- ``slurm``: one Slurm job array through submitit (``AutoExecutor.map_array``), parameters from
  ``[slurm]``; a job that reaches its time limit is requeued (submitit's ``Checkpointable``) and
  its cell resumes from its checkpoints.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metabench.errors import ConfigError

from .cell import launch, start, stop

#: Engine names for ``--engine``.
ENGINES = ("local", "ray", "slurm")
#: The optional extra that installs each engine's library.
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}

#: ``done(name, exit_status)`` is called as each cell ends (progress, notes).
Done = Callable[[str, int], None]


def require(engine: str) -> Any:
    """Import the library of ``engine`` (``ray`` or ``submitit``).

    Raises:
        ConfigError: it is not installed (naming the extra that installs it).
    """
    module, extra = EXTRAS[engine]
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--engine {engine} needs {module}, which is not installed: pip install -c constraints.txt "
                          f"'metabench[{extra}]' (or pip install {module})") from None


def preflight(engine: str, address: str | None = None, cluster: str = "slurm") -> None:
    """Check, before anything is created, that ``engine`` can run here: its library is installed,
    the Ray cluster at ``address`` answers, Slurm's ``sbatch`` is on the PATH (``cluster`` slurm).

    Raises:
        ConfigError: naming what to install, start or pass.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "local":
        return
    require(engine)
    if engine == "ray" and address:
        check_address(address)
    if engine == "slurm" and cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--engine slurm found no Slurm here (no sbatch on PATH): run it on the cluster's login node, "
                          "or pass --cluster local to run the Slurm engine's code path on this machine")


def local_jobs(cpus: int, gpus: int, jobs: int | None = None) -> int:
    """Cells the local engine runs at once: ``jobs`` if given, else 1 when cells use GPUs, else
    the usable CPU cores divided by ``cpus`` (at least 1).

    Raises:
        ConfigError: ``jobs`` below 1.
    """
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
        return jobs
    if gpus:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // cpus)


def run_local(folders: Sequence[Path], cpus: int, jobs: int, data_root: str | None, done: Done,
              poll_s: float = 0.2) -> dict[str, int]:
    """Run the cells in ``folders`` in order, ``jobs`` at a time, each a process with ``cpus``
    threads. If this process is interrupted (Ctrl-C, SIGTERM), the running cells are stopped
    cleanly (they keep their checkpoints) and the rest stay pending."""
    statuses: dict[str, int] = {}
    queue = list(folders)
    running: dict[Path, subprocess.Popen] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                folder = queue.pop(0)
                running[folder] = start(folder, cpus, data_root, "local")
            for folder, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[folder]
                    statuses[folder.name] = proc.returncode
                    done(folder.name, proc.returncode)
            time.sleep(poll_s)
    except BaseException:
        stop(list(running.values()))
        for folder, proc in running.items():  # stopped: say so, then stop the sweep
            statuses[folder.name] = proc.returncode
            done(folder.name, proc.returncode)
        raise
    return statuses


#: Exit status recorded for a cell whose worker the engine lost (its error appended to the cell's log).
LOST = -1


def _lost(folder: Path, exc: BaseException) -> int:
    """Append the engine's error about ``folder``'s cell to its ``log.txt``; returns :data:`LOST`."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    with open(folder / "log.txt", "a") as log:
        log.write(f"== the engine lost this cell's worker: {type(exc).__name__}: {first}\n{exc}\n")
    return LOST


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when a Ray address ``host:port`` (or ``ray://host:port``) does not answer.

    Raises:
        ConfigError: the address is malformed or nothing listens there within ``timeout_s`` seconds.
    """
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not host:port (e.g. 10.0.0.1:6379, ray://head:10001 or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"the Ray cluster at {address} does not answer ({exc.strerror or exc}): start it with "
                          "`ray start --head`, or check --address") from None


def ray_connect(address: str | None = None) -> bool:
    """Connect this process to the Ray cluster at ``address``, or start Ray here (``None``),
    unless it is connected already; returns whether this call connected (the caller then shuts
    Ray down with ``ray.shutdown()``).

    Raises:
        ConfigError: Ray is not installed, or no cluster answers at ``address`` (``auto``: none
            runs on this machine), or it runs another Ray version.
    """
    ray = require("ray")
    preflight("ray", address)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:  # no cluster there, or another Ray version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot connect to the Ray cluster at {address or 'auto'} ({first}): start it with "
                          "`ray start --head` (the same Ray version as here), or check --address") from None
    return True


def _ray_cell(folder: str, cpus: int, data_root: str | None) -> int:
    return launch(Path(folder), cpus, data_root, "ray")


def run_ray(folders: Sequence[Path], cpus: int, gpus: int, data_root: str | None, done: Done,
            address: str | None = None) -> dict[str, int]:
    """Run each cell as a Ray task needing ``cpus`` CPUs and ``gpus`` GPUs, on a Ray started
    here (``address`` ``None``) or the cluster at ``address``.

    Raises:
        ConfigError: Ray is not installed, or the cluster does not answer.
    """
    ray = require("ray")
    started = ray_connect(address)
    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_cell)
        refs = {task.remote(str(f), cpus, data_root): f.name for f in folders}
        folders_by_name = {f.name: f for f in folders}
        statuses: dict[str, int] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name = refs[ready[0]]
            try:
                statuses[name] = int(ray.get(ready[0]))
            except ray.exceptions.RayError as exc:  # the worker died: the cell stays interrupted, resumable
                statuses[name] = _lost(folders_by_name[name], exc)
            done(name, statuses[name])
        return statuses
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=False)
        raise
    finally:
        if started:
            ray.shutdown()


class SlurmCell:
    """The callable submitit runs for one cell in a Slurm job (or a local one).

    It follows ``submitit.helpers.Checkpointable``'s protocol without importing submitit at module
    import: at the time limit (or a preemption) submitit's signal handler looks for a
    ``checkpoint`` method and requeues the submission it returns, the same cell, which then
    resumes from its checkpoints.
    """

    def __call__(self, folder: str, cpus: int, data_root: str | None) -> int:
        """Run the cell in ``folder``; returns its exit status."""
        return launch(Path(folder), cpus, data_root, "slurm")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same cell (submitit calls this before the job's time limit)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(slurm: Mapping[str, Any], cpus: int, gpus: int, name: str) -> dict[str, Any]:
    """``[slurm]`` and ``[resources]`` as submitit's ``update_parameters`` keywords."""
    params: dict[str, Any] = {"name": f"metabench-{name}", "timeout_min": slurm["timeout_min"], "cpus_per_task": cpus,
                              "mem_gb": slurm["mem_gb"], "slurm_array_parallelism": slurm["array_parallelism"]}
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "constraint", "account", "qos"):
        if slurm[key]:
            params[f"slurm_{key}"] = slurm[key]
    return params


def run_slurm(folders: Sequence[Path], sweep: Path, slurm: Mapping[str, Any], cpus: int, gpus: int, name: str,
              data_root: str | None, done: Done, cluster: str = "slurm",
              note: Callable[[str], None] = print) -> dict[str, int]:
    """Submit the cells as one Slurm job array through submitit and wait for them; submitit's
    job files and logs go to ``sweep/slurm/``. ``cluster="local"`` runs the same code path with
    submitit's local executor (on this machine, as the tests do). If this process is interrupted,
    local jobs are cancelled; Slurm's go on (``note`` says how to cancel them).

    Raises:
        ConfigError: submitit is not installed, or ``cluster`` is ``slurm`` and there is no Slurm here.
    """
    submitit = require("slurm")
    preflight("slurm", cluster=cluster)
    executor = submitit.AutoExecutor(folder=sweep / "slurm" / "%j", cluster=cluster,
                                     slurm_max_num_timeout=slurm["max_num_timeout"])
    executor.update_parameters(**slurm_parameters(slurm, cpus, gpus, name))
    try:
        jobs = executor.map_array(SlurmCell(), [str(f) for f in folders], [cpus] * len(folders),
                                  [data_root] * len(folders))
    except Exception as exc:  # noqa: BLE001 - sbatch refused the array (partition, limits, account)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConfigError(f"the {cluster} executor refused the job array ({first}): check [slurm] in the sweep file "
                          "(partition, timeout_min, account, qos)") from None
    note(f"submitted {len(jobs)} job(s) to {cluster}: {', '.join(dict.fromkeys(str(j.job_id).split('_')[0] for j in jobs))}")
    statuses: dict[str, int] = {}
    try:
        for job, folder in zip(jobs, folders):
            try:
                statuses[folder.name] = int(job.result())
            except submitit.core.utils.UncompletedJobError as exc:  # killed, cancelled, out of time: resumable
                statuses[folder.name] = _lost(folder, exc)
            done(folder.name, statuses[folder.name])
    except BaseException:
        if cluster == "local":
            for job in jobs:
                job.cancel(check=False)
        else:  # the cluster's jobs go on without this process; a rerun sees them running
            ids = " ".join(dict.fromkeys(str(j.job_id).split("_")[0] for j in jobs))
            note(f"the Slurm jobs keep running (stop them with `scancel {ids}`); rerun the sweep to wait for them")
        raise
    return statuses
