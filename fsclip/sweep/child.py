"""``python -m fsclip.sweep.child TRAIN_PY_ARGS``: train.py in a sweep's child process.

On Linux the child asks to be sent SIGTERM when the sweep worker that started it dies, so a
killed sweep (even ``kill -9``) leaves no run going on behind a later resume.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM); exit at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get("FSCLIP_SWEEP_PID", "")
    if parent.isdigit() and os.getppid() != int(parent):
        sys.exit(143)


if __name__ == "__main__":
    die_with_parent()
    from fsclip.cli import main

    sys.exit(main(sys.argv[1:]))
