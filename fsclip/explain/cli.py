"""``fsclip-explain`` (also ``python -m fsclip.explain``): one subcommand per analysis technique.

::

    fsclip-explain attention|gradcam|correspondence|shapley [COMMON OPTIONS] [TECHNIQUE OPTIONS]

Common options (:func:`common_parser`, shared by every subcommand):

* ``--run DIR`` (repeatable): a run's output folder, loaded as ``train.py --eval-only --model-dir
  DIR`` loads it (its recorded ``config.yaml``, trainer and checkpoint); none: zero-shot CLIP;
* ``--zero-shot``: zero-shot CLIP beside the runs; ``--backbone NAME``: its backbone when no run
  is given (default: the first run's, else RN50);
* the images: ``--images PATH ...`` (``--classes NAME ...``: the class of each image, or one for
  all; names of the dataset) or ``--dataset NAME --split test --num N`` (N images of a split,
  drawn with ``--seed``; ``--root``: DATASET.ROOT, the kit's datasets are generated there);
* ``--device cpu|cuda``, ``--seed S`` (everything is deterministic for a seed), ``--out DIR``
  (the figures, ``.npz`` maps, JSON summary and ``log.txt``).

Each technique is a module ``fsclip.explain.<name>`` with ``add_parser(subparsers, parents) ->
argparse.ArgumentParser`` (which sets ``func=run``) and ``run(args) -> int``. Those modules keep
heavy imports (torch, matplotlib, captum, ...) inside their functions, so ``--help`` is quick; a
module missing from the installation leaves its subcommand with a note instead of breaking the
others.

Exit codes as ``train.py``: 0; 2 for bad input (one ``ERROR:`` line saying what, which path or
key, and what to do, also in ``OUT/log.txt``); 1 for an unexpected exception (``FSCLIP_DEBUG=1``
prints its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from fsclip.errors import ConfigError, UserFacingError

TECHNIQUES = {
    "attention": "attention maps of the methods that have them (VT-CLIP, DPT, SAFE, CLIP)",
    "gradcam": "Smooth Grad-CAM++ of a class through the method's whole model",
    "correspondence": "dense correspondence of a source point on image A over image B (SAFE Figs. 3, 6)",
    "shapley": "Shapley values of image parts for the true class probability (SAFE Fig. 1)",
}
SPLITS = ("train", "val", "test")


def common_parser() -> argparse.ArgumentParser:
    """The options every subcommand shares (a parent parser, ``add_help=False``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("what to explain")
    g.add_argument("--run", action="append", default=[], metavar="DIR",
                   help="a run's output folder (repeatable); none: zero-shot CLIP")
    g.add_argument("--zero-shot", action="store_true", help="add zero-shot CLIP beside the runs")
    g.add_argument("--backbone", default="",
                   help="zero-shot CLIP's backbone when no run is given (default: the first run's, else RN50)")
    g = p.add_argument_group("images")
    g.add_argument("--images", nargs="+", default=[], metavar="PATH", help="image files")
    g.add_argument("--classes", nargs="+", default=[], metavar="NAME",
                   help="the class of each --images file (or one for all); names of the dataset")
    g.add_argument("--dataset", default="",
                   help="dataset (registered name, e.g. SynthShapes); default: the first run's")
    g.add_argument("--split", default="test", choices=SPLITS, help="the split --num images come from")
    g.add_argument("--num", type=int, default=4, help="how many images of --split (drawn with --seed)")
    g.add_argument("--root", default="", help="DATASET.ROOT (default: the run's)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    g.add_argument("--out", required=True, metavar="DIR", help="folder for the figures, maps and summary")
    return p


def _unavailable(name: str, why: str):
    def run(args) -> int:
        raise ConfigError(f"fsclip-explain {name} is not available in this installation ({why}); "
                          f"reinstall fsclip with its explain extra: pip install -e .[explain]")
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsclip-explain", description="The papers' analysis figures from a run folder or zero-shot CLIP")
    sub = parser.add_subparsers(dest="technique", metavar="TECHNIQUE")
    sub.required = True
    parents = [common_parser()]
    for name, summary in TECHNIQUES.items():
        module_name = f"fsclip.explain.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            p = sub.add_parser(name, parents=parents, help=f"{summary} (not available)")
            p.set_defaults(func=_unavailable(name, f"no module {module_name}"))
            continue
        p = module.add_parser(sub, parents)
        if p.get_default("func") is None:
            p.set_defaults(func=module.run)
    return parser


def check_common(args) -> None:
    """The common options fit together (else one ConfigError naming the option)."""
    if args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    if args.classes and not args.images:
        raise ConfigError("--classes names the class of each --images file; pass --images PATH ... too "
                          "(images of --dataset carry their own class)")
    if args.classes and len(args.classes) not in (1, len(args.images)):
        raise ConfigError(f"--classes gives {len(args.classes)} names for {len(args.images)} --images files: "
                          f"give one name per image, or one for all")
    if not args.images and not args.dataset and not args.run:
        raise ConfigError("nothing to explain: pass --images PATH ... or --dataset NAME (with --split and "
                          "--num), and --run DIR for a trained model (none: zero-shot CLIP)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but torch sees no CUDA device here; pass --device cpu")


def main(argv: Optional[List[str]] = None) -> int:
    """Run one subcommand; exit code 0, 2 (bad input: one ERROR line) or 1 (a bug)."""
    from fsclip.cli import _one_line, debug_enabled, report_error
    from fsclip.engine.logger import Logger, setup_logger, start_buffered_log

    args = build_parser().parse_args(argv)
    console = sys.stdout
    start_buffered_log()
    try:
        from fsclip.engine.utils import require_writable_folder, set_random_seed

        require_writable_folder(args.out, "The output folder (--out)", "pass a folder for the figures")
        setup_logger(args.out)
        check_common(args)
        set_random_seed(args.seed)
        return int(args.func(args) or 0)
    except (UserFacingError, FileNotFoundError) as err:
        report_error(err, _one_line(err), args.out)
        return 2
    except Exception as err:  # a bug, or a failure nobody foresaw: one line naming it
        hint = "" if debug_enabled() else " (rerun with FSCLIP_DEBUG=1 for the traceback)"
        report_error(err, _one_line(f"unexpected {type(err).__name__}: {err}") + hint, args.out)
        return 1
    finally:
        out = sys.stdout
        if out is not console:
            try:
                out.flush()
            except OSError:
                pass
            if isinstance(out, Logger):
                out.close()
            sys.stdout = console


if __name__ == "__main__":
    sys.exit(main())
