"""``python -m fsclip.explain``: the same as the ``fsclip-explain`` console script."""

import sys

from fsclip.explain.cli import main

sys.exit(main())
