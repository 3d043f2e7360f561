"""One run of a sweep, wherever it executes (a local worker or a Slurm array task).

The run folder is prepared as the scripts prepare it (an unfinished log is kept as
``log.txt.crashed-<time>``, a forced finished one as ``log.txt.replaced-<time>``), then
``train.py``'s main runs in a child process whose terminal output goes to ``console.txt`` in the
run folder (``log.txt`` holds the same lines once train.py opens it; ``console.txt`` also has what
came before and stderr).
"""

from __future__ import annotations

import os
import os.path as osp
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from fsclip.runs import LOG_FILE, RunInUseError, finished_log, prepare, run_state
from fsclip.sweep.grid import Run

CONSOLE_FILE = "console.txt"


@dataclass
class Outcome:
    """How a run ended: ``ok`` when train.py exited 0 and its log has a final result."""

    run: Run
    ok: bool
    returncode: Optional[int]
    seconds: float
    log: str  # the run's log.txt (or console.txt when train.py never opened a log)
    error: str = ""  # the last "ERROR: ..." line, or what else is known about the failure


def run_path(run: Run) -> str:
    return osp.normpath(osp.join(run.cwd, run.out_dir))


def last_error_line(run_dir: str) -> str:
    """The last ``ERROR: ...`` line of the run's log.txt, else of its console.txt, else the last
    line of console.txt (e.g. a traceback's last line)."""
    tails = []
    for name in (LOG_FILE, CONSOLE_FILE):
        try:
            with open(osp.join(run_dir, name), encoding="utf-8", errors="replace") as f:
                lines = [line.rstrip("\n") for line in f]
        except OSError:
            continue
        errors = [line for line in lines if line.startswith("ERROR:")]
        if errors:
            return errors[-1]
        tails += [line for line in lines if line.strip()][-1:]
    return tails[-1].strip() if tails else ""


def execute(run: Run, env: Optional[Dict[str, str]] = None,
            on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> Outcome:
    """Prepare the run folder, run train.py in a child process, and say how it went.

    ``env``: variables set for the child on top of this process's environment (devices,
    threads). ``on_start(proc)`` is called once the child runs (a pool keeps it to stop it).
    """
    path = run_path(run)
    try:  # new: mkdir; unfinished: crashed-; finished: replaced-
        prepare(run_state(path, run.mode, None))
    except RunInUseError as err:  # another sweep or script runs it now: leave its files alone
        return Outcome(run, False, None, 0.0, osp.join(path, LOG_FILE), f"ERROR: {err}")
    child_env = dict(os.environ, **(env or {}), FSCLIP_SWEEP_PID=str(os.getpid()))
    start = time.time()
    with open(osp.join(path, CONSOLE_FILE), "w", encoding="utf-8") as console:
        proc = subprocess.Popen([sys.executable, "-m", "fsclip.sweep.child", *run.argv], cwd=run.cwd,
                                env=child_env, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT)
        if on_start is not None:
            on_start(proc)
        returncode = proc.wait()
    seconds = time.time() - start
    log = osp.join(path, LOG_FILE)
    if not osp.isfile(log):
        log = osp.join(path, CONSOLE_FILE)
    if returncode == 0 and finished_log(path, run.mode):
        return Outcome(run, True, returncode, seconds, log)
    error = last_error_line(path)
    if returncode == 0:
        error = error or "train.py exited 0 but its log has no final result"
    elif returncode < 0:
        error = f"stopped by signal {-returncode}" + (f"; last line: {error}" if error else "")
    elif not error.startswith("ERROR:"):
        error = f"exit code {returncode}" + (f"; last line: {error}" if error else "")
    return Outcome(run, False, returncode, seconds, log, error)
