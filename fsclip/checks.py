"""Bad input train.py refuses: config values that cannot train (checked once after the merge in
``fsclip.configure.setup_cfg``), and the messages for config files and plugins that fail to load.

A learning rate, an epoch or iteration count, a batch size or an evaluation interval that is
<= 0 would not fail cleanly: SAFE with ``ITERS 0`` logs zero-shot CLIP's accuracy as its own, a
negative learning rate trains uphill, ``BATCH_SIZE 0`` and ``EVAL_EVERY 0`` crash deep inside
with ZeroDivisionError or a reshape error. The keys are found by name, so a trainer of a plugin
gets the same checks for its own ``TRAINER.<NODE>.<KEY>``. Keys where 0 has a meaning are left
alone: ``PATIENCE`` (0: off), ``WARMUP_*`` epochs/iterations (0: no warmup), ``GUIDANCE_EPOCHS``,
``SEARCH_STEPS`` (0: no refinement), ``EVAL_FREQ`` (0 acts as 1), ``CHECKPOINT_FREQ`` (0: off).
"""

from __future__ import annotations

import os.path as osp
import traceback
from typing import Any, Iterator, List, Optional, Tuple

from fsclip.errors import ConfigError

# last key part -> what it is (values must be > 0; a list holds a grid: every value is checked)
POSITIVE = {
    "LR": "a learning rate",
    "LRS": "a learning-rate grid",
    "MAX_EPOCH": "an epoch count",
    "EPOCHS": "an epoch count",
    "ITERS": "an iteration count",
    "MAX_ITER": "an iteration limit",
    "BATCH_SIZE": "a batch size",
    "BATCH_SIZES": "a batch-size grid",
    "EVAL_EVERY": "an evaluation interval",
    "ALPHA_EVERY": "a step interval",
    "SEARCH_STEP": "the number of search steps",
    "PRINT_FREQ": "a print interval",
}
# last key part -> what it is (values must be >= 0)
NON_NEGATIVE = {
    "WARMUP_LR": "a warmup learning rate",
    "WARMUP_CONS_LR": "a warmup learning rate",
    "WARMUP_MIN_LR": "a warmup learning rate",
}
# the sections walked (INPUT, MODEL, ... hold no such counts; DATASET.NUM_SHOTS is checked apart)
SECTIONS = ("OPTIM", "TRAIN", "TRAINER", "DATALOADER")


def _leaves(node: Any, prefix: str) -> Iterator[Tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _bad_value(key: str, value: Any, minimum_excluded: bool) -> Optional[str]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        x = _number(v)
        if x is None:
            continue
        if (x <= 0) if minimum_excluded else (x < 0):
            return f"{key} {v}" if len(values) == 1 else f"{key} {list(values)} (holds {v})"
    return None


def value_problems(cfg: Any) -> List[Tuple[str, str]]:
    """``(key, sentence)`` for every key whose value cannot train (empty when all are fine)."""
    problems = []
    for section in SECTIONS:
        if section not in cfg:
            continue
        for key, value in _leaves(cfg[section], f"{section}."):
            name = key.rsplit(".", 1)[-1]
            if name in POSITIVE:
                bad = _bad_value(key, value, True)
                if bad:
                    problems.append((key, f"{bad}: {POSITIVE[name]} must be > 0"))
            elif name in NON_NEGATIVE:
                bad = _bad_value(key, value, False)
                if bad:
                    problems.append((key, f"{bad}: {NON_NEGATIVE[name]} must be >= 0"))
    shots = cfg.DATASET.NUM_SHOTS if "DATASET" in cfg and "NUM_SHOTS" in cfg.DATASET else 0
    if _number(shots) is not None and shots < -1:  # -1: the default, not a few-shot run
        problems.append(("DATASET.NUM_SHOTS", f"DATASET.NUM_SHOTS {shots}: shots per class must be "
                                              f">= 1 (or 0: every training image)"))
    return problems


def _default(defaults: Any, key: str) -> str:
    """`` (default 12800)`` for a key of ``defaults`` with a value that trains ("" otherwise)."""
    node = defaults
    try:
        for part in key.split("."):
            node = node[part]
    except (KeyError, TypeError):
        return ""
    values = list(node) if isinstance(node, (list, tuple)) else [node]
    ok = values and all(_number(v) is not None and float(v) > 0 for v in values)
    return f" (default {node})" if ok else ""


def check_values(cfg: Any, defaults: Any = None) -> None:
    """Raise one :class:`ConfigError` naming every key whose value cannot train (and its default,
    from ``defaults``: the config before any file or option was merged)."""
    problems = value_problems(cfg)
    if not problems:
        return
    parts = [text + (_default(defaults, key) if defaults is not None else "") for key, text in problems]
    raise ConfigError(f"Invalid config value{'s' if len(parts) > 1 else ''}: " + "; ".join(parts)
                      + f". Set {'them' if len(parts) > 1 else 'it'} in the config file or as KEY "
                        f"VALUE on the command line")


def yaml_message(what: str, err: Exception) -> str:
    """'<file> is not valid YAML at line 3, column 1: found a tab ...' from yaml's error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or ' '.join(str(err).split())
    context = getattr(err, "context", None)
    tab = "\t" in str(problem) or "\\t" in str(problem)
    return (f"{what} is not valid YAML{where}: {problem}" + (f" ({context})" if context else "")
            + (". YAML indents with spaces, not tabs: replace the tab" if tab else
               ". Fix that line (KEY: VALUE, nested keys indented with spaces)"))


def plugin_failure(what: str, path: Optional[str], err: Exception) -> str:
    """'Plugin file x.py failed to import (line 3: SyntaxError: invalid syntax). ...': the line in
    the plugin itself when the traceback passes through it, else the innermost file and line."""
    if isinstance(err, SyntaxError):
        filename, lineno, detail = err.filename, err.lineno, f"SyntaxError: {err.msg}"
    else:
        frames = traceback.extract_tb(err.__traceback__)
        own = [f for f in frames if path and osp.abspath(f.filename) == osp.abspath(path)]
        frame = (own or frames[-1:] or [None])[-1]
        filename, lineno = (frame.filename, frame.lineno) if frame is not None else (None, None)
        detail = f"{type(err).__name__}: {' '.join(str(err).split())}"
    same = path and filename and osp.abspath(filename) == osp.abspath(path)
    where = f"line {lineno}" if same else f"{filename} line {lineno}" if filename else "import"
    return (f"{what} failed to import ({where}: {detail}). Fix "
            "the plugin or leave it out of --plugins and FSCLIP_PLUGINS")
