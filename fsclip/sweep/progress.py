"""A sweep's progress: done / running / failed / remaining and an ETA.

On a terminal the status line is redrawn in place (once a second) under the lines of finished
runs; otherwise (a log file, Slurm output, CI) every finished run prints one plain line that
ends with the status, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Dict, List, Optional, TextIO

from fsclip.sweep.execute import Outcome
from fsclip.sweep.grid import Run


def fmt_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts and ETA of ``total`` runs spread over ``workers`` (thread-safe)."""

    def __init__(self, total: int, workers: int, output: str = "", stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, running_word: str = "running") -> None:
        self.total = total
        self.workers = max(1, workers)
        self.output = output
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.running_word = running_word
        self.started: Dict[Run, float] = {}
        self.durations: List[float] = []
        self.done = 0
        self.failed = 0
        self.t0 = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    # -------------------------------------------------------------- counts
    @property
    def running(self) -> int:
        return len(self.started)

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed - self.running

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left: the mean run time so far for every remaining run and the rest of each
        running one, shared by the workers; None before a run has finished."""
        if not self.durations:
            return None
        now = time.time() if now is None else now
        mean = sum(self.durations) / len(self.durations)
        left = self.remaining * mean + sum(max(mean - (now - t), 0.0) for t in self.started.values())
        return left / self.workers

    def status(self) -> str:
        eta = self.eta()
        return (f"done {self.done}  {self.running_word} {self.running}  failed {self.failed}  "
                f"remaining {self.remaining}  elapsed {fmt_duration(time.time() - self.t0)}  "
                f"ETA {'?' if eta is None else fmt_duration(eta)}")

    # -------------------------------------------------------------- events
    def start(self, run: Run, when: Optional[float] = None) -> None:
        with self._lock:
            self.started[run] = time.time() if when is None else when
        if self.tty:
            self._redraw()

    def finish(self, outcome: Outcome) -> None:
        with self._lock:
            self.started.pop(outcome.run, None)
            self.durations.append(outcome.seconds)
            if outcome.ok:
                self.done += 1
            else:
                self.failed += 1
            n = self.done + self.failed
            label = outcome.run.label(self.output)
            if outcome.ok:
                text = f"[{n}/{self.total}] done    {label} ({fmt_duration(outcome.seconds)})"
            else:
                text = (f"[{n}/{self.total}] FAILED  {label} ({fmt_duration(outcome.seconds)})\n"
                        f"    log: {outcome.log}\n    {outcome.error or '(no error line)'}")
            if self.tty:
                self.stream.write("\r\033[K" + text + "\n")
                self.stream.write(self.status())
            else:
                self.stream.write(f"{text}  | {self.status()}\n")
            self.stream.flush()

    def _redraw(self) -> None:
        with self._lock:
            self.stream.write("\r\033[K" + self.status())
            self.stream.flush()

    # -------------------------------------------------------------- ticker
    def __enter__(self) -> "Progress":
        if self.tty:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._redraw()
