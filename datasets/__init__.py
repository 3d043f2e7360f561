"""Registered datasets (installed as ``fsclip.datasets``).

Importing this package imports every module of this folder, so a dataset defined in a new file
here registers itself without any edit to this file. The modules only define classes: no data
is read at import.

``extend_cfg(cfg)`` adds the config keys datasets declare through a classmethod
``extend_cfg(cfg)`` (e.g. ``Custom``: DATASET.CUSTOM_DIR, DATASET.CUSTOM_SPLIT); call it on the
default config before merging dataset yaml files.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")


def extend_cfg(cfg) -> None:
    """Let every registered dataset class with an ``extend_cfg`` classmethod add its keys."""
    from fsclip.backend import DATASET_REGISTRY

    for name in DATASET_REGISTRY.registered_names():
        hook = getattr(DATASET_REGISTRY.get(name), "extend_cfg", None)
        if callable(hook):
            hook(cfg)
