"""The methods: each module registers one or more trainers (installed as ``fsclip.trainers``)."""

import importlib
import pkgutil
from typing import List


def _import_all() -> List[str]:
    names = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
            names.append(info.name)
    return names


MODULES = _import_all()
