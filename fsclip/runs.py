"""Run folders and the rerun rule: a finished run is skipped only when it ran the config asked for.

``train.py`` records the merged config of every run, training and ``--eval-only`` alike, as
``OUTPUT_DIR/config.yaml`` (written atomically when the run starts, next to ``log.txt``; it loads
back with ``--config-file``). A first comment line ``# run: {...}`` keeps what is not a config key
but changes the result: ``--eval-only``, ``--model-dir``, ``--load-epoch`` and a fingerprint of the
checkpoints an eval-only run loads (evaluating a model trained again since is another run).

A requested run (``train.py`` arguments for a run folder) is, in that folder:

* ``new``: no ``log.txt``; ``unfinished``: a log without a final result (crashed or killed);
  both are run (an old log is kept as ``log.txt.crashed-<time>``, its config beside it);
* ``same``: finished, and its recorded config equals the requested one: skipped;
* ``changed``: finished with another config: left as it is, with the keys that differ
  (``KEY: old -> new``); ``FORCE=1`` (``--force`` for sweeps) redoes it in place and keeps the old
  log and config as ``log.txt.replaced-<time>`` and ``config.yaml.replaced-<time>``;
* ``unknown``: finished before configs were recorded: skipped with a note (``FORCE=1`` redoes it);
* ``unreadable``: finished, but its ``config.yaml`` is damaged: run again (the old log and config
  are kept as ``<name>.unreadable-<time>``).

``FORCE=all`` (``--force all``) redoes finished runs of the same config too (e.g. after a code fix).

Keys that do not count (where things are stored, what is printed, how work is spread; none of
them changes a result): :data:`IGNORED_KEYS` and every key ending in ``.CACHE_DIR``. A key the
recorded run did not have (an option added to the code later) counts only when the request sets
it to something else than its default; a recorded key the code no longer has is ignored.

Command line (what ``scripts/common.sh`` calls; importing torch only when a log is finished)::

    python -m fsclip.runs start DIR train|test [--force 1|all] [-- TRAIN_PY_ARGS ...]
        exit 0: run it (DIR prepared); 1: skip it (finished); 3: skip it (finished, other config)
    python -m fsclip.runs prepare DIR          # keep DIR's log and config aside (crashed run)
    python -m fsclip.runs config -- TRAIN_PY_ARGS ...   # print the merged config, no training
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from fsclip.errors import UserFacingError

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"
RUN_LINE = "# run: "

# Keys whose value never changes a run's result.
IGNORED_KEYS = frozenset({
    "OUTPUT_DIR",                     # the run folder itself
    "RESUME",                         # a resumed run continues the same run
    "DATASET.ROOT",                   # where the data lives (same data, another disk or machine)
    "DATASET.FEWSHOT_DIR",            # where few-shot split files are kept (picks: dataset, shots, seed)
    "TRAINER.FEATURES.MAX_GB",        # feature-cache disk budget (cached or not, same features)
    "TRAINER.FEATURES.BATCH_SIZE",    # images per frozen-trunk forward pass (inference only)
    "DATALOADER.NUM_WORKERS",         # data-loader processes
    "DATALOADER.TEST.BATCH_SIZE",     # evaluation batch size (inference only)
    "TRAIN.PRINT_FREQ",               # how often the training line is printed
    "TRAIN.CHECKPOINT_FREQ",          # which intermediate checkpoints are saved
    "VERBOSE",
})
IGNORED_SUFFIXES = (".CACHE_DIR",)  # MODEL.BACKBONE.CACHE_DIR, TRAINER.FEATURES.CACHE_DIR, ...

# What the ``# run:`` line records (not config keys), and the names differences are shown with.
# ``model_checkpoints`` identifies the checkpoints an eval-only run loads (see model_checkpoints):
# an evaluation of a model trained again since is not the same run.
RUN_ARGS = {"eval_only": "--eval-only", "model_dir": "--model-dir", "load_epoch": "--load-epoch",
            "model_checkpoints": "--model-dir checkpoints"}

Flat = Dict[str, Any]


def counts(key: str) -> bool:
    """Whether a difference in ``key`` makes a finished run different from the request."""
    return key not in IGNORED_KEYS and not key.endswith(IGNORED_SUFFIXES)


def flatten(tree: Any, prefix: str = "") -> Flat:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Flat = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def model_checkpoints(model_dir: str) -> str:
    """A short fingerprint of the checkpoint files in ``model_dir``'s model folders (names, sizes,
    modification times; "" when there are none): it changes when the model is trained again."""
    entries = []
    if model_dir and osp.isdir(model_dir):
        for sub in sorted(os.listdir(model_dir)):
            folder = osp.join(model_dir, sub)
            if not osp.isdir(folder) or sub.startswith("."):
                continue
            for name in sorted(os.listdir(folder)):
                st = os.stat(osp.join(folder, name))
                entries.append(f"{sub}/{name}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:12] if entries else ""


def _run_args(args: Any) -> Dict[str, Any]:
    model_dir = getattr(args, "model_dir", "") or ""
    eval_only = bool(getattr(args, "eval_only", False))
    return {"eval_only": eval_only,
            "model_dir": osp.abspath(model_dir) if model_dir else "",
            "load_epoch": getattr(args, "load_epoch", None),
            "model_checkpoints": model_checkpoints(model_dir) if eval_only else ""}


def _flat_run_args(run: Dict[str, Any]) -> Flat:
    """The recorded run arguments under their flag names (what a record lacks stays absent)."""
    return {flag: run[key] for key, flag in RUN_ARGS.items() if key in run}


def config_text(cfg: Any, args: Any) -> str:
    """The text of ``config.yaml`` for a run of ``cfg`` (a yacs node) started with ``args``."""
    return ("# The merged config of this run, recorded by train.py when it started\n"
            f"{RUN_LINE}{json.dumps(_run_args(args), sort_keys=True)}\n" + cfg.dump())


def config_path_for_log(log_path: str) -> str:
    """``config.yaml`` beside ``log.txt``; ``config.yaml-<stamp>`` beside ``log.txt-<stamp>``
    (the engine never overwrites a log: a second run into a folder gets a stamped one)."""
    folder, name = osp.split(log_path)
    suffix = name[len(LOG_FILE):] if name.startswith(LOG_FILE) else ""
    return osp.join(folder, CONFIG_FILE + suffix)


def record_config(cfg: Any, args: Any, log_path: Optional[str]) -> str:
    """Write the run's config atomically next to its log; return the path."""
    from fsclip.engine.utils import atomic_write_text

    path = config_path_for_log(log_path or osp.join(cfg.OUTPUT_DIR, LOG_FILE))
    atomic_write_text(path, config_text(cfg, args))
    return path


def parse_config_text(text: str) -> Flat:
    """Flat keys of a recorded config, with ``--eval-only``/``--model-dir``/``--load-epoch``."""
    import yaml

    run: Dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith(RUN_LINE):
            run = json.loads(line[len(RUN_LINE):])
            break
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10x faster
    flat = flatten(yaml.load(text, Loader=loader) or {})
    flat.update(_flat_run_args(run))
    return flat


def read_recorded(run_dir: str) -> Optional[Flat]:
    """The recorded config of the run in ``run_dir`` (None when there is none or it is unreadable)."""
    return read_record(run_dir)[0]


def read_record(run_dir: str) -> Tuple[Optional[Flat], str]:
    """``(flat config, "")``, ``(None, "")`` when ``run_dir`` has no ``config.yaml``, or
    ``(None, why)`` when it has one that cannot be read (damaged, not a recorded config)."""
    path = osp.join(run_dir, CONFIG_FILE)
    if not osp.lexists(path):
        return None, ""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        import yaml

        if not isinstance(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), dict):
            return None, "it holds no config mapping"
        return parse_config_text(text), ""
    except OSError as err:
        return None, f"{type(err).__name__}: {err.strerror or err}"
    except Exception as err:  # UnicodeDecodeError, yaml.YAMLError, a damaged run line
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return None, f"{type(err).__name__}{where}: {' '.join(str(getattr(err, 'problem', None) or err).split())}"


# ------------------------------------------------------------------- the requested config
def requested_config(argv: Sequence[str]) -> Tuple[Any, argparse.Namespace]:
    """The config ``train.py argv`` would run with (merged as train.py merges, nothing trained),
    and its parsed arguments. Loads the built-in trainers and datasets and ``--plugins``."""
    from fsclip.configure import build_parser, load_plugins, setup_cfg

    args = build_parser().parse_args(list(argv))
    load_plugins(args.plugins)
    return setup_cfg(args), args


def _plain(value: Any) -> Any:
    """A config value as its YAML record reads back (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flat_config(cfg: Any, args: Any = None) -> Flat:
    """Flat keys of a config as its record reads back, with the run arguments."""
    flat = flatten(_plain(cfg))
    flat.update(_flat_run_args(_run_args(args)))
    return flat


def default_flat() -> Flat:
    """Flat keys of the defaults (engine + every registered trainer's and dataset's extend_cfg)."""
    from fsclip.backend import get_cfg_default
    from fsclip.configure import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    return flat_config(cfg)


def requested_flat(argv: Sequence[str]) -> Flat:
    cfg, args = requested_config(argv)
    return flat_config(cfg, args)


# ------------------------------------------------------------------------ comparison
_ABSENT = object()


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        old = "(not recorded)" if self.old is _ABSENT else _show(self.old)
        return f"{self.key}: {old} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) or value is None else str(value)


def config_diff(recorded: Flat, requested: Flat, defaults: Optional[Flat] = None) -> List[Change]:
    """The keys that count (:func:`counts`) and differ between a recorded and a requested config.

    A key only in the request (added to the code after the run) differs only when its requested
    value is not its default (``defaults``; without them, such keys are not compared); a key only
    in the record (gone from the code) is not compared.
    """
    changes = []
    for key in sorted(requested):
        if not counts(key):
            continue
        new = requested[key]
        if key in recorded:
            if recorded[key] != new:
                changes.append(Change(key, recorded[key], new))
        elif defaults is not None and key in defaults and defaults[key] != new:
            changes.append(Change(key, _ABSENT, new))
    return changes


# ------------------------------------------------------------------------ run states
@dataclass
class RunState:
    """Where a requested run stands in its folder (see the module docstring)."""

    run_dir: str
    state: str  # new | unfinished | unreadable | same | changed | unknown
    changes: List[Change] = field(default_factory=list)
    reason: str = ""  # why the recorded config is unreadable

    @property
    def finished(self) -> bool:
        return self.state in ("same", "changed", "unknown")


def finished_log(run_dir: str, mode: str) -> bool:
    """True when ``run_dir/log.txt`` has a final result: an ``* accuracy:`` line after
    ``Finish training`` (mode ``train``) or after ``=> result`` (mode ``test``, eval-only runs)."""
    from fsclip.results import parse_log

    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    return parse_log(osp.join(run_dir, LOG_FILE), "accuracy", test_log=(mode == "test")).ok


def run_state(run_dir: str, mode: str, requested: Union[None, Flat, Callable[[], Flat]],
              defaults: Union[None, Flat, Callable[[], Flat]] = None) -> RunState:
    """The state of a requested run in ``run_dir``.

    ``requested`` (a flat config, or a function giving it, called only for a finished run with a
    recorded config; None: do not compare, a finished run counts as ``same``) and ``defaults``
    (for keys the record lacks, see :func:`config_diff`).
    """
    if not osp.isfile(osp.join(run_dir, LOG_FILE)):
        return RunState(run_dir, "new")
    if not finished_log(run_dir, mode):
        return RunState(run_dir, "unfinished")
    recorded, unreadable = read_record(run_dir)
    if unreadable:
        return RunState(run_dir, "unreadable", reason=unreadable)
    if recorded is None:
        return RunState(run_dir, "unknown")
    if requested is None:
        return RunState(run_dir, "same")
    req = requested() if callable(requested) else requested
    dflt = defaults() if callable(defaults) else defaults
    changes = config_diff(recorded, req, dflt)
    return RunState(run_dir, "changed" if changes else "same", changes)


def decide(state: RunState, force: str = "") -> str:
    """``run``, ``skip`` or ``conflict`` (finished with another config, not forced).

    force: "" (the rule), "1" (also redo runs whose config changed or is unknown), "all" (redo
    every finished run).
    """
    if force not in ("", "0", "1", "all"):
        raise ValueError(f"FORCE must be empty, 1 or all, got {force!r}")
    if not state.finished:
        return "run"
    if force == "all":
        return "run"
    if state.state == "same":
        return "skip"
    if force == "1":
        return "run"
    return "skip" if state.state == "unknown" else "conflict"


class RunInUseError(UserFacingError):
    """A run folder the rerun rule would change is held by a running train.py."""


def set_aside(run_dir: str, reason: str) -> Optional[str]:
    """Rename ``log.txt`` (and ``config.yaml``) of ``run_dir`` to ``<name>.<reason>-<time>`` so that
    a rerun writes fresh ones the parsers read; return the new log name (None: nothing to keep).

    A folder whose run is still going (it holds the output-folder lock, :mod:`fsclip.runlock`)
    is left alone: :class:`RunInUseError`."""
    from fsclip.runlock import holder

    pid = holder(run_dir) if osp.isdir(run_dir) else None
    if pid is not None:
        raise RunInUseError(
            f"The run in {run_dir} is still going ({'pid ' + str(pid) if pid > 0 else 'another process'} "
            f"holds {run_dir}/run.lock): its log is left as it is. Wait for that run to end or stop "
            f"it, then rerun")
    os.makedirs(run_dir, exist_ok=True)
    log = osp.join(run_dir, LOG_FILE)
    if not osp.isfile(log):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix, n = f".{reason}-{stamp}", 1
    while osp.exists(log + suffix):
        n += 1
        suffix = f".{reason}-{stamp}-{n}"
    os.replace(log, log + suffix)
    config = osp.join(run_dir, CONFIG_FILE)
    if osp.isfile(config):
        os.replace(config, config + suffix)
    return LOG_FILE + suffix


def prepare(state: RunState) -> str:
    """Make ``state.run_dir`` ready for the run; return the line that says what was done."""
    if state.state == "new":
        os.makedirs(state.run_dir, exist_ok=True)
        return ""
    if state.state == "unfinished":
        kept = set_aside(state.run_dir, "crashed")
        return f"Redoing unfinished run in {state.run_dir} (old log kept as {kept})"
    if state.state == "unreadable":
        kept = set_aside(state.run_dir, "unreadable")
        return (f"Redoing finished run in {state.run_dir}: its recorded {CONFIG_FILE} is unreadable "
                f"({state.reason}), so it cannot be compared with this request (old log and config "
                f"kept as {kept} and {CONFIG_FILE}{kept[len(LOG_FILE):] if kept else ''})")
    kept = set_aside(state.run_dir, "replaced")
    return f"Redoing finished run in {state.run_dir} as forced (old log kept as {kept})"


SCRIPT_HINT = ("rerun it into a new folder with CFG_TAG=<name> (<cfg>_<name>_<N>shots), or in "
               "place with FORCE=1 (the old log is kept as log.txt.replaced-<time>)")


def describe(state: RunState, action: str, hint: str = SCRIPT_HINT) -> str:
    """What a skip means, for the user (empty for runs that are run)."""
    if action == "run":
        return ""
    if state.state == "same":
        return f"Results are available in {state.run_dir}; skipping"
    if state.state == "unknown":
        return (f"Results are available in {state.run_dir}; skipping (finished before runs recorded "
                f"their config, so it cannot be compared with this request; FORCE=1 redoes it)")
    lines = [f"Results in {state.run_dir} come from another config; skipping it (nothing rerun):"]
    lines += [f"  {c}" for c in state.changes]
    lines.append(f"  To use the new config: {hint}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ command line
def _start(run_dir: str, mode: str, force: str, train_args: Sequence[str]) -> int:
    has_args = bool(train_args)

    def requested() -> Flat:
        return requested_flat(train_args)

    try:  # the request is computed only for a finished run
        state = run_state(run_dir, mode, requested if has_args else None,
                          default_flat if has_args else None)
    except UserFacingError as err:  # an invalid request never replaces a finished run
        print(f"ERROR: {err}")
        return 2
    action = decide(state, force)
    if action == "run":
        try:
            line = prepare(state)
        except RunInUseError as err:
            print(f"ERROR: {err}")
            return 2
        if line:
            print(line)
        return 0
    print(describe(state, action))
    return 3 if action == "conflict" else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, train_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="python -m fsclip.runs",
                                     description="Run folders and the rerun rule (see the docstring)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="decide whether to run DIR; prepare it if so (exit 0)")
    p.add_argument("dir")
    p.add_argument("mode", choices=["train", "test"])
    p.add_argument("--force", default="", choices=["", "0", "1", "all"])
    p = sub.add_parser("prepare", help="keep DIR's log and config aside as <name>.crashed-<time>")
    p.add_argument("dir")
    sub.add_parser("config", help="print the merged config of the train.py arguments after --")
    args = parser.parse_args(argv)
    if args.command == "start":
        return _start(args.dir, args.mode, args.force, train_args)
    if args.command == "prepare":
        try:
            kept = set_aside(args.dir, "crashed")
        except RunInUseError as err:
            print(f"ERROR: {err}")
            return 2
        if kept:
            print(f"Redoing unfinished run in {args.dir} (old log kept as {kept})")
        return 0
    try:
        cfg, run_args = requested_config(train_args)
    except UserFacingError as err:
        print(f"ERROR: {err}")
        return 2
    print(config_text(cfg, run_args), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
