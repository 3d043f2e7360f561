"""``train.py``: CoOp's command line (same arguments, config merge order and behaviour).

Config merge order: defaults -> every trainer's and dataset's ``extend_cfg`` -> dataset yaml
-> method yaml -> command-line arguments -> trailing ``KEY VALUE`` opts; then freeze.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

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
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            importlib.import_module(plugin)


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
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"{what} {path} is invalid: {err}. Every key must exist in the defaults "
            f"(fsclip/engine/config.py) or in a trainer's extend_cfg; check its spelling."
        ) from None


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


def setup_cfg(args):
    from fsclip.backend import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "Dataset config file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "Method config file")
    reset_cfg(cfg, args)
    if args.opts:
        if len(args.opts) % 2:
            raise ConfigError(f"Trailing options must be KEY VALUE pairs, got {args.opts}")
        try:
            cfg.merge_from_list(args.opts)
        except (KeyError, ValueError, AssertionError) as err:
            raise ConfigError(f"Invalid command-line option: {err}") from None
    resolve_max_epoch(cfg, explicit="OPTIM.MAX_EPOCH" in (args.opts or [])[::2])
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


def run(args) -> Optional[float]:
    from fsclip.backend import BACKEND, build_trainer
    from fsclip.engine.logger import collect_env_info, setup_logger
    from fsclip.engine.utils import set_random_seed
    from fsclip.runs import record_config

    load_plugins(args.plugins)
    cfg = setup_cfg(args)
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

    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        return trainer.test()
    if not args.no_train:
        trainer.train()
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UserFacingError, FileNotFoundError) as err:
        # one actionable line instead of a traceback (it also lands in log.txt when open)
        print(f"ERROR: {err}")
        return 2
    return 0
