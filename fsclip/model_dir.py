"""``--model-dir``: what model an ``--eval-only`` run evaluates, and whether it fits this run.

A training run records, beside ``config.yaml`` (``fsclip.runs.record_config``), the class names it
trains on in ``OUTPUT_DIR/classnames.json`` (written atomically when training starts). An
``--eval-only --model-dir DIR`` run reads both back before loading the checkpoints and:

* always logs ``Model from DIR: trained on <dataset>, <n> classes, <k> shots, seed <s>`` (and a
  note when this run's ``DATASET.NUM_SHOTS`` or ``SEED`` differ: the result is the model's);
* refuses (one ConfigError naming both sides) when the class names differ and the trainer's saved
  state is per class (Tip-Adapter's cache, linear heads, class-specific CoOp contexts, ...): such
  weights score the classes they were trained on, whatever this run calls them;
* allows other classes where the state is class-agnostic (a generic CoOp context, visual prompts,
  DPT's CAVPT, whose K-way classifier serves the training loss only):
  that is the base-to-new and cross-dataset protocol. The same class names from another dataset
  (ImageNet -> ImageNet-V2/Sketch/A/R, the domain-shift protocol) are the same classes;
* goes on with a note when ``DIR`` holds no record (a run of the official CoOp, CoCoOp or DPT code,
  or an fsclip run from before the record): the classes cannot be verified.

A trainer says whether its state is per class with a method ``per_class_state() -> bool`` or a
class attribute ``PER_CLASS_STATE``; one that says neither gets the note, not a refusal.
"""

from __future__ import annotations

import json
import os.path as osp
from typing import Any, List, Optional

from fsclip.errors import ConfigError

CLASSNAMES_FILE = "classnames.json"


def trainer_classnames(trainer: Any) -> List[str]:
    """The class names of this run, in label order."""
    dataset = getattr(getattr(trainer, "dm", None), "dataset", None)
    names = getattr(dataset, "classnames", None)
    if names is None:
        lab2cname = getattr(trainer, "lab2cname", {}) or {}
        names = [lab2cname[k] for k in sorted(lab2cname)]
    return [str(n) for n in names]


def record_classnames(trainer: Any) -> str:
    """Write ``OUTPUT_DIR/classnames.json`` (dataset and class names in label order); the path."""
    from fsclip.engine.fileio import atomic_write_text

    cfg = trainer.cfg
    path = osp.join(cfg.OUTPUT_DIR, CLASSNAMES_FILE)
    record = {"dataset": cfg.DATASET.NAME, "classnames": trainer_classnames(trainer)}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def read_classnames(model_dir: str) -> Optional[List[str]]:
    """The class names a model folder records (None: no readable record)."""
    try:
        with open(osp.join(model_dir, CLASSNAMES_FILE), encoding="utf-8") as f:
            names = json.load(f).get("classnames")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def read_training_config(model_dir: str) -> Optional[dict]:
    """The recorded config of the training run in ``model_dir`` (None: none, or an eval-only one)."""
    from fsclip.runs import read_recorded

    recorded = read_recorded(model_dir)
    if recorded is None or recorded.get("--eval-only"):
        return None
    return recorded


def per_class_state(trainer: Any) -> Optional[bool]:
    """Whether the trainer's saved state is per class (None: the trainer does not say)."""
    decide = getattr(trainer, "per_class_state", None)
    if callable(decide):
        return bool(decide())
    value = getattr(trainer, "PER_CLASS_STATE", None)
    return None if value is None else bool(value)


def _cfg_value(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _first_difference(theirs: List[str], mine: List[str]) -> str:
    for i, (a, b) in enumerate(zip(theirs, mine)):
        if a != b:
            return f'label {i} is "{a}" there and "{b}" here'
    return f"{len(theirs)} classes there, {len(mine)} here"


def describe_model(model_dir: str, recorded: Optional[dict], names: Optional[List[str]]) -> str:
    """The ``Model from DIR: trained on ...`` line."""
    if recorded is None and names is None:
        return (f"Model from {model_dir}: no record of its training run ({CLASSNAMES_FILE}, config.yaml; "
                "e.g. a run of the official CoOp, CoCoOp or DPT code)")
    rec = recorded or {}
    classes = f"{len(names)} classes" if names is not None else "classes not recorded"
    return (f"Model from {model_dir}: trained on {rec.get('DATASET.NAME', '(dataset not recorded)')}, {classes}, "
            f"{rec.get('DATASET.NUM_SHOTS', '?')} shots, seed {rec.get('SEED', '?')}")


def check_model_dir(trainer: Any, model_dir: str, flag: str = "--model-dir") -> None:
    """Log what ``model_dir`` holds; raise a ConfigError when there is no such folder (``flag``: the
    option that named it) or when its per-class state belongs to other classes than this run's
    (see the module docstring)."""
    if not osp.isdir(model_dir):
        raise ConfigError(f"{flag} {model_dir} does not exist: give the output folder of a training run of "
                          f"{type(trainer).__name__} (train it first, with the same dataset, shots, config and seed)")
    cfg = trainer.cfg
    recorded, names = read_training_config(model_dir), read_classnames(model_dir)
    print(describe_model(model_dir, recorded, names))
    if recorded is not None:
        for key, what in (("DATASET.NUM_SHOTS", "shots"), ("SEED", "seed")):
            theirs, mine = recorded.get(key), _cfg_value(cfg, key)
            if theirs is not None and theirs != mine:
                print(f"Note: this run sets {key} {mine} but the model was trained with {what} {theirs}; "
                      f"the result below is that of the model trained with {what} {theirs}")
    if names is None:
        print(f"Note: {model_dir} records no class names ({CLASSNAMES_FILE}), so fsclip cannot verify that "
              "the model was trained on this run's classes; evaluating it as it is")
        return
    mine = trainer_classnames(trainer)
    if names == mine:
        return
    theirs_ds = (recorded or {}).get("DATASET.NAME", "another dataset")
    diff = _first_difference(names, mine)
    per_class = per_class_state(trainer)
    name = type(trainer).__name__
    if per_class:
        raise ConfigError(
            f"The model in {model_dir} was trained on {len(names)} classes of {theirs_ds} but this run evaluates "
            f"{len(mine)} classes of {cfg.DATASET.NAME} ({diff}), and {name}'s saved state is per class: it "
            f"would score its own classes under this run's names. Evaluate it on the classes it was trained on "
            f"(the same dataset, DATASET.SUBSAMPLE_CLASSES and class folders), or train {name} on these classes")
    if per_class is None:
        print(f"Note: the model in {model_dir} was trained on other classes ({diff}) and {name} does not say "
              "whether its saved state is per class; the result is valid only if it is not")
    else:
        print(f"Evaluating a class-agnostic {name} model on other classes than it was trained on ({diff}): "
              f"{len(names)} classes of {theirs_ds} -> {len(mine)} classes of {cfg.DATASET.NAME}")


def prepare_model_dir(args: Any, trainer: Any) -> None:
    """``train.py``'s hook: an ``--eval-only`` run checks ``--model-dir``; a training run records
    its class names (for trainers that save a model)."""
    if not trainer.get_model_names():
        return
    if getattr(args, "eval_only", False):
        if getattr(args, "model_dir", ""):
            check_model_dir(trainer, args.model_dir)
    elif not getattr(args, "no_train", False):
        record_classnames(trainer)
