"""The one switch between the bundled engine and a real Dassl installation.

``FSCLIP_BACKEND`` selects it: ``bundled`` (our engine), ``dassl`` (require real Dassl) or
``auto`` (default: Dassl when ``import dassl`` works, otherwise bundled). Trainers and datasets
import registries and base classes from here, never from ``dassl`` or ``fsclip.engine``
directly, so they register into whichever engine runs them.

Our LR scheduler builder and checkpoint loader are used in both cases: Dassl's break on
current torch (see docs/dassl.md).
"""

from __future__ import annotations

import importlib.util
import os

from fsclip.errors import ConfigError

_CHOICES = ("auto", "bundled", "dassl")


def choose_backend() -> str:
    """Return ``"dassl"`` or ``"bundled"`` from FSCLIP_BACKEND and what is importable."""
    wanted = os.environ.get("FSCLIP_BACKEND", "auto").strip().lower() or "auto"
    if wanted not in _CHOICES:
        raise ConfigError(
            f"FSCLIP_BACKEND={wanted!r} is not valid; use one of {', '.join(_CHOICES)}"
        )
    has_dassl = importlib.util.find_spec("dassl") is not None
    if wanted == "dassl" and not has_dassl:
        raise ConfigError(
            "FSCLIP_BACKEND=dassl but the 'dassl' package is not importable; install Dassl "
            "(python setup.py develop in a Dassl.pytorch clone) or set FSCLIP_BACKEND=bundled"
        )
    if wanted == "bundled" or not has_dassl:
        return "bundled"
    return "dassl"


BACKEND = choose_backend()

if BACKEND == "dassl":  # pragma: no cover - exercised with a fake dassl in tests
    from dassl.config import get_cfg_default
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
    from dassl.engine import TRAINER_REGISTRY, build_trainer
    from dassl.engine import TrainerX as _DasslTrainerX

    from fsclip.engine.compat import DasslCompatMixin
    from fsclip.engine.data.base import empty_split_message
    from fsclip.errors import DataError

    class TrainerX(DasslCompatMixin, _DasslTrainerX):
        """Dassl's TrainerX with checkpoint loading that works on torch >= 2.6, and an empty
        split named in one DataError instead of Dassl's bare ``assert len(data_loader) > 0``."""

        def build_data_loader(self) -> None:
            try:
                super().build_data_loader()
            except AssertionError:
                from dassl.data.datasets import build_dataset

                dataset = build_dataset(self.cfg)  # which split was empty?
                for split, items in (("train", dataset.train_x), ("test", dataset.test)):
                    if not items:
                        raise DataError(empty_split_message(self.cfg, split)) from None
                raise

else:
    from fsclip.engine.config import get_cfg_default
    from fsclip.engine.data.base import DatasetBase, Datum
    from fsclip.engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer
    from fsclip.engine.trainer import TrainerX

__all__ = [
    "BACKEND", "choose_backend", "get_cfg_default", "DATASET_REGISTRY", "DatasetBase", "Datum",
    "TRAINER_REGISTRY", "TrainerX", "build_trainer",
]
