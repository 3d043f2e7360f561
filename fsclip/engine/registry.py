"""Name -> class registries, keyed by the class ``__name__`` as in Dassl."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable


class Registry:
    """A mapping from names to objects, filled by the ``register`` decorator.

    ``get`` on an unknown name raises ``KeyError`` (like Dassl) whose message names the
    closest registered entries.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Any:
        if obj is None:
            # used as a decorator
            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise KeyError(
                f'Object name "{name}" does not exist in "{self._name}" registry'
                + did_you_mean(name, self._obj_map)
            )
        return self._obj_map[name]

    def registered_names(self) -> list:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __repr__(self) -> str:
        return f"Registry({self._name}: {sorted(self._obj_map)})"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Do you mean "X"?' suffix when a close match exists, else the full list."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.4)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    if close:
        return f'. Do you mean "{close[0]}"?'
    return f". Available: {sorted(choices)}"


def check_availability(requested: str, available: Iterable[str]) -> None:
    """Raise ValueError naming the closest available entry (Dassl's behaviour)."""
    available = list(available)
    if requested not in available:
        raise ValueError(
            f'The requested one "{requested}" is not available' + did_you_mean(requested, available)
        )


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")
EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_trainer(cfg: Any) -> Any:
    """Instantiate the trainer named ``cfg.TRAINER.NAME``."""
    check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


def build_dataset(cfg: Any) -> Any:
    """Instantiate the dataset named ``cfg.DATASET.NAME``."""
    check_availability(cfg.DATASET.NAME, DATASET_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def build_evaluator(cfg: Any, **kwargs: Any) -> Any:
    check_availability(cfg.TEST.EVALUATOR, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading evaluator: {cfg.TEST.EVALUATOR}")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)


