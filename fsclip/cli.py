"""``train.py``: CoOp's command line (same arguments, config merge order and behaviour).

Config merge order: defaults -> every trainer's and dataset's ``extend_cfg`` -> dataset yaml
-> method yaml -> command-line arguments -> trailing ``KEY VALUE`` opts; then freeze.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import os.path as osp
import re
import sys
import traceback
from typing import Any, List, Optional, Sequence

import torch

from fsclip.errors import ConfigError, UserFacingError
from fsclip.protocol import add_protocol_cfg, resolve_max_epoch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train or evaluate a few-shot CLIP method")
    p.add_argument("--root", type=str, default="", help="path to dataset (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    p.add_argument("--seed", type=int, default=-1, help="only positive value enables a fixed seed")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to the method config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("--plugins", type=str, nargs="+", default=[],
                   help="extra Python files or modules that register trainers/datasets")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                   help="modify config options using the command-line (KEY VALUE pairs)")
    return p


def load_plugins(plugins: Sequence[str]) -> None:
    """Import the built-in trainers and datasets, then each plugin file or module.

    ``FSCLIP_PLUGINS`` (paths or modules separated by ``os.pathsep``) adds more.
    """
    from fsclip.checks import plugin_failure
    importlib.import_module("fsclip.datasets")
    importlib.import_module("fsclip.trainers")
    extra = [p for p in os.environ.get("FSCLIP_PLUGINS", "").split(os.pathsep) if p]
    for plugin in list(plugins) + extra:
        if plugin.endswith(".py") or osp.sep in plugin:
            if not osp.isfile(plugin):
                raise ConfigError(f"Plugin file {plugin} does not exist (from --plugins or FSCLIP_PLUGINS)")
            name = "fsclip_plugin_" + osp.splitext(osp.basename(plugin))[0]
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, plugin)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except UserFacingError:
                sys.modules.pop(name, None)
                raise
            except Exception as err:  # a syntax error, or the plugin raised while importing
                sys.modules.pop(name, None)
                raise ConfigError(plugin_failure(f"Plugin file {plugin}", plugin, err)) from None
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as err:
                if err.name and plugin.split(".")[0] == err.name.split(".")[0]:
                    raise ConfigError(
                        f"Plugin {plugin} (from --plugins or FSCLIP_PLUGINS) cannot be imported: {err}. "
                        f"Pass a .py file or an importable module, and install what it needs") from None
                raise ConfigError(plugin_failure(f"Plugin {plugin}", None, err)) from None
            except UserFacingError:
                raise
            except Exception as err:
                raise ConfigError(plugin_failure(f"Plugin {plugin}", None, err)) from None


def extend_cfg(cfg) -> None:
    """Let every registered trainer (and the datasets package) add its own config node."""
    from fsclip.backend import TRAINER_REGISTRY

    # keys our engine has and Dassl's defaults lack (CoOp adds the first in its train.py)
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    if "CACHE_DIR" not in cfg.MODEL.BACKBONE:
        cfg.MODEL.BACKBONE.CACHE_DIR = ""
    add_protocol_cfg(cfg)
    datasets_pkg = importlib.import_module("fsclip.datasets")
    if hasattr(datasets_pkg, "extend_cfg"):
        datasets_pkg.extend_cfg(cfg)
    for name in TRAINER_REGISTRY.registered_names():
        hook = getattr(TRAINER_REGISTRY.get(name), "extend_cfg", None)
        if callable(hook):
            hook(cfg)


def _merge_file(cfg, path: str, what: str) -> None:
    if not osp.isfile(path):
        raise ConfigError(f"{what} {path} does not exist")
    import yaml

    from fsclip.checks import yaml_message

    try:
        cfg.merge_from_file(path)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_message(f"{what} {path}", err)) from None
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"{what} {path} is invalid: {err}.{_key_hint(cfg, err)} Every key must exist in the "
            f"defaults (fsclip/engine/config.py) or in a trainer's extend_cfg; check its spelling."
        ) from None


def _config_keys(node, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        keys += _config_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _key_hint(cfg, err: Exception) -> str:
    """' Do you mean "OPTIM.LR"?' for yacs' unknown-key errors, when a key is close."""
    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", str(err))
    close = difflib.get_close_matches(match.group(1), _config_keys(cfg), n=1, cutoff=0.6) if match else []
    return f' Do you mean "{close[0]}"?' if close else ""


def reset_cfg(cfg, args) -> None:
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def _flag_names() -> set:
    """train.py's flags (``--eval-only``, ``--model-dir``, ...)."""
    return {o for a in build_parser()._actions for o in a.option_strings}


def setup_cfg(args):
    from fsclip.backend import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    defaults = cfg.clone()  # named in the message of a value that cannot train
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "Dataset config file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "Method config file")
    reset_cfg(cfg, args)
    if args.opts:
        flags = [o for o in args.opts if str(o) in _flag_names()]
        if flags:
            raise ConfigError(
                f"{' '.join(flags)} came after the KEY VALUE options, where "
                f"{'they are' if len(flags) > 1 else 'it is'} read as options ({' '.join(args.opts)}): "
                f"flags go before the KEY VALUE options; move {'them' if len(flags) > 1 else 'it'} "
                f"before the first KEY")
        if len(args.opts) % 2:
            raise ConfigError(f"Trailing options must be KEY VALUE pairs, got {args.opts} (flags go "
                              f"before the KEY VALUE options)")
        try:
            cfg.merge_from_list(args.opts)
        except (KeyError, ValueError, AssertionError) as err:
            raise ConfigError(f"Invalid command-line option: {err}.{_key_hint(cfg, err)} Options "
                              "are KEY VALUE pairs of existing config keys") from None
    resolve_max_epoch(cfg, explicit="OPTIM.MAX_EPOCH" in (args.opts or [])[::2])
    from fsclip.checks import check_values

    check_values(cfg, defaults)  # a learning rate, count, batch size or interval that cannot train
    cfg.freeze()
    return cfg


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
