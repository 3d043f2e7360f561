"""``python -m fsclip.sweep``: see :mod:`fsclip.sweep.cli`."""

import sys

from fsclip.sweep.cli import main

sys.exit(main())
