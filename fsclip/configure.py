"""The run's configuration from train.py's command line (shared by ``fsclip.cli`` and ``fsclip.runs``).

Config merge order: defaults -> every trainer's and dataset's ``extend_cfg`` -> dataset yaml
-> method yaml -> command-line arguments -> trailing ``KEY VALUE`` opts; then freeze. Nothing
here imports ``fsclip.cli`` or ``fsclip.runs``: both import it (no import cycle).
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
from typing import List, Sequence

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
