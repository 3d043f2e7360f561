"""Lazy re-exports for package ``__init__`` modules (keeps ``import fsclip.x`` cheap)."""

from importlib import import_module
from typing import Any, Callable, Dict


def lazy_getattr(package: str, exports: Dict[str, str], namespace: Dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``name`` from ``package.<exports[name]>`` on first use
    and caching it in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    return __getattr__
