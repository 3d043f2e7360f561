"""``python -m fsclip.results``: the papers' tables and plots (:mod:`fsclip.results.cli`)."""

from .cli import main

raise SystemExit(main())
