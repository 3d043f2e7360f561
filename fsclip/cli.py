"""``train.py``: CoOp's command line (same arguments, config merge order and behaviour).

The config set-up (merge order, checks) is ``fsclip.configure``; this module runs the trainer,
writes the run's log and turns failures into one ERROR line.
"""

from __future__ import annotations

import os
import os.path as osp
import sys
import traceback
from typing import Any, List, Optional

import torch

# the config set-up lives one floor down (fsclip.runs needs it too); re-exported for train.py's users
from fsclip.configure import build_parser, extend_cfg, load_plugins, reset_cfg, setup_cfg  # noqa: F401
from fsclip.errors import ConfigError, UserFacingError


def print_args(args, cfg) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def engine_description(backend: str) -> str:
    """The log line that says which engine runs the trainers (FSCLIP_BACKEND)."""
    if backend == "dassl":
        import dassl

        return f"Dassl ({osp.dirname(osp.abspath(dassl.__file__))}; FSCLIP_BACKEND=dassl or auto)"
    return "fsclip's bundled Dassl-compatible engine (fsclip.engine)"


def check_names(cfg) -> None:
    """The trainer and dataset names are registered (else one ConfigError naming the closest)."""
    from fsclip.backend import DATASET_REGISTRY, TRAINER_REGISTRY
    from fsclip.engine.registry import did_you_mean

    if not cfg.TRAINER.NAME:
        raise ConfigError("No trainer given: pass --trainer NAME (e.g. SAFE, TipAdapter, ZeroshotCLIP)")
    trainers = TRAINER_REGISTRY.registered_names()
    if cfg.TRAINER.NAME not in trainers:
        raise ConfigError(
            f'Unknown trainer "{cfg.TRAINER.NAME}" (--trainer)' + did_you_mean(cfg.TRAINER.NAME, trainers)
            + " A trainer of your own must be registered by a file given with --plugins FILE.py.")
    datasets = DATASET_REGISTRY.registered_names()
    if cfg.DATASET.NAME not in datasets:
        raise ConfigError(
            f'Unknown dataset "{cfg.DATASET.NAME}" (DATASET.NAME, from --dataset-config-file)'
            + did_you_mean(cfg.DATASET.NAME, datasets)
            + " The dataset configs are configs/datasets/<name>.yaml; a dataset of your own must "
              "be registered by a file given with --plugins FILE.py.")


def check_eval_only(args, trainer) -> None:
    """``--eval-only`` needs ``--model-dir`` when the trainer has learned or chosen state, i.e.
    registered a model (``register_model``); zero-shot trainers register none."""
    names = trainer.get_model_names()
    if args.eval_only and not args.model_dir and names:
        raise ConfigError(
            f"--eval-only needs --model-dir: {trainer.cfg.TRAINER.NAME} has trained parts "
            f"({', '.join(names)}) that would be evaluated untrained. Pass --model-dir RUN_DIR, the "
            f"output folder of its training run (e.g. output/<dataset>/{trainer.cfg.TRAINER.NAME}/"
            f"<cfg>_<N>shots/seed1); add --load-epoch N to load model.pth.tar-N instead of "
            f"model-best.pth.tar")


def run(args) -> Optional[float]:
    from fsclip.backend import BACKEND, build_trainer
    from fsclip.engine.logger import collect_env_info, setup_logger
    from fsclip.engine.utils import require_writable_folder, set_random_seed
    from fsclip.model_dir import prepare_model_dir
    from fsclip.runlock import lock_output_dir
    from fsclip.runs import record_config

    load_plugins(args.plugins)
    cfg = setup_cfg(args)
    require_writable_folder(cfg.OUTPUT_DIR, "The output folder (--output-dir, OUTPUT_DIR)",
                            "pass a folder (the run writes log.txt and checkpoints there)")
    lock_output_dir(cfg.OUTPUT_DIR)  # one run per folder; main releases it (or the exit does)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    log_path = setup_logger(cfg.OUTPUT_DIR)
    record_config(cfg, args, log_path)  # the rerun rule compares it with later requests
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")
    print(f"Engine: {engine_description(BACKEND)}")

    check_names(cfg)
    trainer = build_trainer(cfg)
    check_eval_only(args, trainer)
    prepare_model_dir(args, trainer)  # eval-only: does --model-dir fit? training: record the classes
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        return trainer.test()
    if not args.no_train:
        trainer.train()
    return None


def _fallback_output_dir(args) -> str:
    """The output folder named on the command line (used when the config did not merge)."""
    opts = list(args.opts or [])
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "OUTPUT_DIR":
            return str(value)
    return args.output_dir or ""


def debug_enabled() -> bool:
    return os.environ.get("FSCLIP_DEBUG", "").strip() not in ("", "0")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def report_error(err: BaseException, message: str, output_dir: str) -> None:
    """Print ``ERROR: message`` (after the traceback with FSCLIP_DEBUG=1) to the terminal and
    log.txt; when the run failed before its log opened, open it in ``output_dir`` first."""
    from fsclip.engine.logger import log_file, setup_logger

    # not into a folder another run holds (RunLockedError), nor again after the log failed
    into_folder = getattr(err, "log_in_output_dir", True) and not getattr(sys.stdout, "broken", False)
    if log_file() is None and output_dir and into_folder:
        try:
            setup_logger(output_dir)
        except OSError:
            pass  # e.g. the output path is a file: only the terminal gets the line
    if debug_enabled():
        print("".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip())
    try:
        print(f"ERROR: {message}")
    except OSError:
        pass  # the log file failed on this very line (a full disk); the terminal has it already


def interrupted_at(tb: Any) -> str:
    """Where a run was when Ctrl-C stopped it, from the trainer found in the traceback ``tb``:
    ``at epoch 2/5, batch 3/8 (MyTrainer)``, ``while evaluating (...)``, ``while setting up``."""
    trainer, in_test = None, False
    for frame, _ in traceback.walk_tb(tb):
        obj = frame.f_locals.get("self")
        if obj is not None and hasattr(type(obj), "get_model_names") and hasattr(obj, "cfg"):
            trainer = obj
            in_test = in_test or frame.f_code.co_name == "test"
    if trainer is None:
        return "while setting up the run (before its trainer was built)"
    name, state = type(trainer).__name__, vars(trainer)
    if "time_start" not in state:
        return f"while building {name} (data and model)"
    epoch = f"epoch {state.get('epoch', 0) + 1}/{state.get('max_epoch', '?')}"
    if in_test:
        return f"while evaluating ({name}, {epoch})" if "batch_idx" in state else f"while evaluating ({name})"
    if "batch_idx" in state and "num_batches" in state:
        return f"at {epoch}, batch {state['batch_idx'] + 1}/{state['num_batches']} ({name})"
    return f"while training ({name})"


def main(argv: Optional[List[str]] = None) -> int:
    """``train.py``: exit code 0, 2 for bad input (a UserFacingError: one ``ERROR:`` line that
    says what to do) or 1 for an unexpected exception (a bug: one ``ERROR:`` line naming it).
    ``FSCLIP_DEBUG=1`` prints the traceback too. Ctrl-C: one line saying where the run was
    stopped (``interrupted at epoch E/M, batch B/N ...; rerun ...``), exit code 130. The output
    folder's run lock (fsclip.runlock) is released in every case."""
    from fsclip.engine.logger import Logger, start_buffered_log
    from fsclip.runlock import release_all

    args = build_parser().parse_args(argv)
    console = sys.stdout
    start_buffered_log()
    try:
        run(args)
        return 0
    except (UserFacingError, FileNotFoundError) as err:
        report_error(err, _one_line(err), _fallback_output_dir(args))
        return 2
    except Exception as err:  # a bug, or a failure nobody foresaw: one line naming it
        hint = "" if debug_enabled() else " (rerun with FSCLIP_DEBUG=1 for the traceback)"
        report_error(err, _one_line(f"unexpected {type(err).__name__}: {err}") + hint,
                     _fallback_output_dir(args))
        return 1
    except KeyboardInterrupt as err:
        report_error(err, f"interrupted {interrupted_at(err.__traceback__)} (Ctrl-C); nothing "
                          f"written is lost: rerun the same command to redo the run", _fallback_output_dir(args))
        return 130
    finally:
        release_all()
        out = sys.stdout
        if out is not console:
            try:
                out.flush()
            except OSError:
                pass  # the log's last lines did not fit on its disk; the terminal has them
            if isinstance(out, Logger):
                out.close()
            sys.stdout = console
