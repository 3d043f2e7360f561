"""Local workers: each takes the next run and runs it in a child process, one GPU per worker
(``CUDA_VISIBLE_DEVICES``) when GPUs are visible, CPU threads shared out otherwise."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Dict, List, Optional, Sequence

from fsclip.sweep.execute import Outcome, execute, run_path
from fsclip.sweep.grid import Run
from fsclip.sweep.progress import Progress


class Interrupted(Exception):
    """The sweep was stopped (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def visible_gpus() -> List[str]:
    """The GPU ids runs may use: ``CUDA_VISIBLE_DEVICES`` when set (empty: none), else every
    GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_envs(workers: int, gpus: Sequence[str], threads: Optional[int] = None) -> List[Dict[str, str]]:
    """Each worker's environment: its GPU (round-robin when there are more workers than GPUs)
    and its CPU threads (``threads``, or the cores shared evenly, at least 1)."""
    threads = threads or max(1, cpu_count() // max(1, workers))
    envs = []
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        envs.append(env)
    return envs


class LocalPool:
    """Runs a list of runs on local workers; a failed run never stops the others."""

    def __init__(self, envs: Sequence[Dict[str, str]], progress: Progress) -> None:
        self.envs = list(envs)
        self.progress = progress
        self.outcomes: List[Outcome] = []
        self._procs: Dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _worker(self, index: int, todo: "queue.Queue[Run]") -> None:
        while not self._stop.is_set():
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            self.progress.start(run)

            def keep(proc: subprocess.Popen) -> None:
                with self._lock:
                    self._procs[index] = proc
                if self._stop.is_set():  # stopped while this child was starting
                    proc.terminate()

            try:
                outcome = execute(run, self.envs[index], on_start=keep)
            except Exception as err:  # e.g. the run folder cannot be written: report, go on
                outcome = Outcome(run, False, None, 0.0, run_path(run), f"ERROR: {type(err).__name__}: {err}")
            with self._lock:
                self._procs.pop(index, None)
            if self._stop.is_set():
                return  # interrupted: neither done nor failed, a resume reruns it
            self.outcomes.append(outcome)
            self.progress.finish(outcome)

    def run(self, runs: Sequence[Run]) -> List[Outcome]:
        """Run everything; on SIGINT/SIGTERM stop the children and raise :class:`Interrupted`."""
        todo: "queue.Queue[Run]" = queue.Queue()
        for r in runs:
            todo.put(r)
        threads = [threading.Thread(target=self._worker, args=(i, todo), daemon=True)
                   for i in range(min(len(self.envs), len(runs)))]

        def on_signal(signum, _frame):
            raise Interrupted(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except Interrupted:
            self.stop()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.outcomes

    def stop(self, grace: float = 10.0) -> None:
        """Take no new run; terminate the running children (kill them after ``grace`` seconds)."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
