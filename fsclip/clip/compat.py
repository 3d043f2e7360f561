"""The one place that makes ``import clip`` (clip-anytorch) work on current setuptools.

clip-anytorch's ``clip/clip.py`` starts with ``from pkg_resources import packaging`` and only
uses it for ``packaging.version.parse``. setuptools >= 82 no longer ships ``pkg_resources``, so
``import clip`` fails there with ``ModuleNotFoundError: No module named 'pkg_resources'``.

:func:`import_clip` imports clip normally. Only when that import fails on ``pkg_resources``
does it register a minimal stand-in module named ``pkg_resources`` that exposes ``packaging``
(the real ``packaging`` distribution when installed, otherwise a tiny version parser), import
clip, and then put ``sys.modules`` back as it was, so nothing else ever sees the stand-in.
Where ``pkg_resources`` works, nothing is touched. Every module of this project that needs
clip gets it through :func:`import_clip`.
"""

from __future__ import annotations

import re
import sys
import types
from typing import Any

_STANDIN_NAME = "pkg_resources"


class _Version:
    """A comparable release version for the stand-in parser (``"2.7.1+cu121"`` -> (2, 7, 1))."""

    def __init__(self, text: str) -> None:
        self.text = str(text)
        match = re.match(r"\s*v?(\d+(?:\.\d+)*)", self.text)
        self.release = tuple(int(p) for p in match.group(1).split(".")) if match else ()

    def _key(self, other: Any) -> tuple:
        if not isinstance(other, _Version):
            other = _Version(other)
        width = max(len(self.release), len(other.release))
        pad = lambda r: r + (0,) * (width - len(r))  # noqa: E731
        return pad(self.release), pad(other.release)

    def __lt__(self, other: Any) -> bool:
        a, b = self._key(other)
        return a < b

    def __le__(self, other: Any) -> bool:
        a, b = self._key(other)
        return a <= b

    def __gt__(self, other: Any) -> bool:
        a, b = self._key(other)
        return a > b

    def __ge__(self, other: Any) -> bool:
        a, b = self._key(other)
        return a >= b

    def __eq__(self, other: Any) -> bool:
        a, b = self._key(other)
        return a == b

    def __hash__(self) -> int:
        return hash(self.release)

    def __repr__(self) -> str:
        return f"<Version({self.text!r})>"


def _packaging_module() -> types.ModuleType:
    """``packaging`` with ``packaging.version`` loaded; a minimal stand-in if it is not installed."""
    try:
        import packaging.version  # noqa: F401  (loads the submodule onto the package)
        import packaging

        return packaging
    except ImportError:
        version = types.ModuleType("packaging.version")
        version.parse = _Version  # type: ignore[attr-defined]
        version.Version = _Version  # type: ignore[attr-defined]
        standin = types.ModuleType("packaging")
        standin.version = version  # type: ignore[attr-defined]
        return standin


def _is_pkg_resources_failure(exc: ImportError) -> bool:
    return exc.name == _STANDIN_NAME or _STANDIN_NAME in str(exc)


def import_clip() -> types.ModuleType:
    """Return the ``clip`` module (clip-anytorch), importing it if needed.

    Idempotent and cheap once clip is loaded. If ``pkg_resources`` is missing (setuptools >= 82)
    or lacks ``packaging``, a stand-in is registered only for the duration of the import.
    A missing clip raises ImportError saying to install clip-anytorch; any other import error
    propagates unchanged.
    """
    module = sys.modules.get("clip")
    if module is not None and hasattr(module, "tokenize") and hasattr(module, "model"):
        return module
    try:
        import clip

        return clip
    except ImportError as exc:
        if exc.name == "clip":
            raise ImportError(
                "the 'clip' package is missing; install clip-anytorch (pip install clip-anytorch)"
            ) from exc
        if not _is_pkg_resources_failure(exc):
            raise

    sentinel = object()
    previous = sys.modules.get(_STANDIN_NAME, sentinel)
    standin = types.ModuleType(_STANDIN_NAME)
    standin.__doc__ = "fsclip stand-in for pkg_resources, used only while importing clip"
    standin.packaging = _packaging_module()  # type: ignore[attr-defined]
    # A failed import can leave half-initialised clip modules behind; start clean.
    for name in [n for n in sys.modules if n == "clip" or n.startswith("clip.")]:
        del sys.modules[name]
    sys.modules[_STANDIN_NAME] = standin
    try:
        import clip
    finally:
        if sys.modules.get(_STANDIN_NAME) is standin:
            if previous is sentinel:
                del sys.modules[_STANDIN_NAME]
            else:
                sys.modules[_STANDIN_NAME] = previous  # type: ignore[assignment]
    return clip
