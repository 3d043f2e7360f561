"""Runs on a Slurm cluster through submitit (``pip install fsclip[slurm]``): one job array, one
task per run, each task running :func:`fsclip.sweep.execute.execute` on its node.

Scheduling is Slurm's; the sweep only submits and, unless told not to wait, follows the array
and reports each task as it ends (its log path and ERROR line when it failed).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

from fsclip.errors import ConfigError
from fsclip.sweep.execute import Outcome, execute, run_path
from fsclip.sweep.grid import Run
from fsclip.sweep.progress import Progress


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("Slurm sweeps need submitit: pip install 'fsclip[slurm]' (or pip install "
                          "submitit)") from None
    return submitit


def executor_parameters(partition: str = "", time_min: int = 60, gpus: int = 1, mem_gb: float = 0,
                        cpus: int = 0, array_parallelism: int = 0, name: str = "fsclip-sweep",
                        extra: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments for one run per array task."""
    params: Dict[str, Any] = {"name": name, "timeout_min": int(time_min), "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": int(gpus)}
    if partition:
        params["slurm_partition"] = partition
    if mem_gb:
        params["mem_gb"] = mem_gb
    if cpus:
        params["cpus_per_task"] = int(cpus)
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    if extra:
        params["slurm_additional_parameters"] = dict(extra)
    return params


def run_env(cpus: int) -> Dict[str, str]:
    """Threads of a task's run: its CPUs (Slurm sets the GPUs)."""
    return {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)} if cpus else {}


def submit(runs: Sequence[Run], folder: str, params: Dict[str, Any], cluster: str = "slurm",
           env: Optional[Dict[str, str]] = None) -> List[Any]:
    """Submit ``runs`` as one job array; returns submitit's jobs (in the order of ``runs``).

    cluster: ``slurm``, or submitit's ``local`` / ``debug`` executors (same code path on one
    machine, for trying a sweep out and for tests).
    """
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**params)
    return executor.map_array(execute, list(runs), [dict(env or {})] * len(runs))


def follow(jobs: Sequence[Any], runs: Sequence[Run], progress: Progress, poll: float = 10.0) -> List[Outcome]:
    """Wait for every job; report each as it ends. A task that died without an outcome (time
    limit, node failure, preemption) is a failed run with Slurm's log as its log."""
    pending = dict(zip(range(len(jobs)), zip(jobs, runs)))
    start = time.time()
    for _, run in pending.values():
        progress.start(run, start)  # queued or running: Slurm decides
    outcomes: List[Outcome] = []
    while pending:
        for key, (job, run) in list(pending.items()):
            if not job.done():
                continue
            del pending[key]
            try:
                outcome = job.result()
            except Exception as err:  # the task itself failed
                lines = [line for line in str(err).strip().splitlines() if line.strip()]
                outcome = Outcome(run, False, None, time.time() - start, str(job.paths.stderr),
                                  f"Slurm task {job.job_id} failed: {lines[-1] if lines else type(err).__name__}"
                                  f" (run folder {run_path(run)})")
            outcomes.append(outcome)
            progress.finish(outcome)
        if pending:
            time.sleep(poll)
    return outcomes
