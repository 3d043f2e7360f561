"""``fsclip-sweep`` / ``python -m fsclip.sweep``: a grid of runs, locally or on Slurm.

    fsclip-sweep --methods SAFE:micro_rn TipAdapter:micro_rn --datasets synth_shapes \\
        --shots 1 2 4 --seeds 1 2 3 --workers 2
    fsclip-sweep grid.yaml --slurm --partition gpu --time 120 --gpus 1 --mem 32

The grid expands into the runs ``scripts/<method>/main.sh`` makes (same train.py arguments,
same folders), the rerun rule of :mod:`fsclip.runs` sorts them (finished with the same config:
skipped; unfinished: rerun; finished with another config: left as they are, listed, unless
``--force``), and the rest run. Exit status: 0 when every run of the grid has its result with
the requested config, 1 otherwise, 2 for a bad grid, 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

from fsclip.errors import ConfigError, UserFacingError
from fsclip.sweep.grid import Grid, Run, expand, registered_trainers
from fsclip.sweep.local import Interrupted

GRID_EXAMPLE = """\
grid file (YAML; flags given on the command line win):
  methods:                      # TRAINER[:CFG] or a mapping
    - SAFE:micro_rn
    - {trainer: TipAdapterF, cfg: micro_rn, tag: lr1e-3, opts: [TRAINER.TIP.LR, 0.001]}
    - {trainer: ZeroshotCLIP2, cfg: micro_rn, shots: [0]}   # shots 0: zero-shot (eval-only)
  datasets: [synth_shapes, synth_textures]
  shots: [1, 2, 4]
  seeds: [1, 2, 3]
  opts: [TRAINER.FEATURES.CACHE_DIR, ./features]   # KEY VALUE pairs for every run
  data: ./data
  output: ./output
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsclip-sweep", description="Run a grid of methods x datasets x shots x seeds as "
        "the method scripts would, on local workers or a Slurm cluster; resumable.",
        epilog=GRID_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", nargs="?", help="a YAML file describing the grid (see below)")
    g = p.add_argument_group("grid")
    g.add_argument("--methods", nargs="+", metavar="TRAINER[:CFG]",
                   help="trainers with their config name in configs/trainers/<Trainer>/ (default "
                        "rn50) or a path to a .yaml file")
    g.add_argument("--datasets", nargs="+", metavar="NAME", help="names in configs/datasets/")
    g.add_argument("--shots", nargs="+", type=int, help="shots per class (default 1 2 4 8 16; 0: zero-shot)")
    g.add_argument("--seeds", nargs="+", type=int, help="seeds (default 1 2 3)")
    g.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE", help="options for every run")
    g.add_argument("--tag", default="", help="folder tag for methods without one: <cfg>_<tag>_<N>shots "
                                             "(the scripts' CFG_TAG)")
    g.add_argument("--data", default=None, help="dataset root (default: $DATA or ./data)")
    g.add_argument("--output", default=None, help="output root (default: $OUTPUT or ./output)")
    g.add_argument("--configs", default=None, help="config folder (default: configs)")
    g.add_argument("--plugins", nargs="+", default=None, help="trainer/dataset files or modules to load")
    r = p.add_argument_group("what to run")
    r.add_argument("--force", nargs="?", const="1", default="", choices=["1", "all"],
                   help="redo finished runs whose config changed or was not recorded (keeping their "
                        "old logs); 'all': redo every finished run")
    r.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    loc = p.add_argument_group("local workers")
    loc.add_argument("--workers", type=int, default=0,
                     help="parallel runs (default: one per visible GPU, else 1); each gets one GPU "
                          "(CUDA_VISIBLE_DEVICES, round-robin) when GPUs are visible")
    loc.add_argument("--threads", type=int, default=0, help="CPU threads per run (default: cores / workers)")
    s = p.add_argument_group("Slurm (through submitit: pip install 'fsclip[slurm]')")
    s.add_argument("--slurm", action="store_true", help="submit the runs as one Slurm job array")
    s.add_argument("--partition", default="", help="Slurm partition")
    s.add_argument("--time", type=int, default=60, help="time limit per run, minutes (default 60)")
    s.add_argument("--gpus", type=int, default=1, help="GPUs per run (default 1)")
    s.add_argument("--mem", type=float, default=0, help="memory per run, GB")
    s.add_argument("--cpus", type=int, default=0, help="CPUs per run (also its threads)")
    s.add_argument("--array-parallelism", type=int, default=0, help="most array tasks running at once")
    s.add_argument("--slurm-param", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more sbatch parameters, e.g. account=myacct qos=high constraint=a100")
    s.add_argument("--slurm-folder", default="", help="submitit's folder (default: <output>/.sweep/slurm)")
    s.add_argument("--no-wait", action="store_true", help="submit and exit (rerun the command later "
                                                          "to see what is finished)")
    s.add_argument("--submitit-cluster", default="slurm", choices=["slurm", "local", "debug"],
                   help="submitit executor: slurm, or local/debug to try the Slurm path on this machine")
    return p


def load_grid(args: argparse.Namespace) -> Grid:
    """The grid of the YAML file (if any) with the command-line flags on top."""
    spec: Dict = {}
    if args.grid:
        import yaml

        if not os.path.isfile(args.grid):
            raise ConfigError(f"Grid file {args.grid} does not exist")
        with open(args.grid, encoding="utf-8") as f:
            try:
                spec = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"Grid file {args.grid} is not valid YAML: {err}") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"Grid file {args.grid} must hold a mapping (methods, datasets, ...)")
    for key in ("methods", "datasets", "shots", "seeds", "opts", "data", "output", "configs", "plugins"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    spec.setdefault("data", os.environ.get("DATA") or "./data")
    spec.setdefault("output", os.environ.get("OUTPUT") or "./output")
    if not spec.get("methods") or not spec.get("datasets"):
        raise ConfigError("A sweep needs methods and datasets: --methods TRAINER[:CFG] ... --datasets "
                          "NAME ... (or a grid file); see fsclip-sweep -h")
    grid = Grid.from_mapping(spec, where=args.grid or "the command line")
    if args.tag:
        grid.methods = [m if m.tag else replace(m, tag=args.tag) for m in grid.methods]
    return grid


def check_counts(args: argparse.Namespace) -> None:
    """Refuse negative worker/thread/CPU counts and a time limit or GPU count below what runs."""
    for flag, value, rule in (("--workers", args.workers, "0 or left out: one per visible GPU, else 1"),
                              ("--threads", args.threads, "0 or left out: cores / workers"),
                              ("--cpus", args.cpus, "0 or left out: Slurm's default"),
                              ("--array-parallelism", args.array_parallelism, "0 or left out: no limit"),
                              ("--gpus", args.gpus, "0: CPU-only runs"),
                              ("--mem", args.mem, "0 or left out: Slurm's default")):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 ({rule}), got {value:g}")
    if args.time <= 0:
        raise ConfigError(f"--time must be > 0 minutes per run, got {args.time}")


# ------------------------------------------------------------------------ the rerun rule
def plan(runs: Sequence[Run], force: str) -> Tuple[List[Run], List[Run], Dict, List[Run]]:
    """``(to_run, skipped, conflicts, unknown)``: conflicts maps the changes (``KEY: old -> new``
    lines) to the runs that have them.

    The requested config of a finished run is computed in this process (as train.py merges it);
    one config per method, dataset and options is computed up front so that a bad option stops
    the sweep before anything runs.
    """
    from fsclip.runs import decide, default_flat, flat_config, requested_config, run_state
    from fsclip.sweep.execute import run_path

    checked = set()
    for run in runs:
        key = (run.trainer, run.dataset, _without(run.argv, ("--seed", "--output-dir", "DATASET.NUM_SHOTS")))
        if key not in checked:
            checked.add(key)
            requested_config(run.argv)  # raises ConfigError for a bad grid
    defaults: Dict = {}

    def get_defaults():
        if not defaults:
            defaults.update(default_flat())
        return defaults

    to_run, skipped, unknown = [], [], []
    conflicts: Dict[Tuple, List[Run]] = defaultdict(list)
    for run in runs:
        state = run_state(run_path(run), run.mode, lambda r=run: flat_config(*requested_config(r.argv)),
                          get_defaults)
        action = decide(state, force)
        if action == "run":
            to_run.append(run)
        elif action == "conflict":
            conflicts[tuple(str(c) for c in state.changes)].append(run)
        else:
            (unknown if state.state == "unknown" else skipped).append(run)
    return to_run, skipped, dict(conflicts), unknown


def _without(argv: Sequence[str], flags: Sequence[str]) -> Tuple[str, ...]:
    """argv without the given flags (or config keys) and their values."""
    out: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        out.append(a)
    return tuple(out)


def report_conflicts(conflicts: Dict, output: str, out=print) -> None:
    n = sum(len(v) for v in conflicts.values())
    out(f"{n} finished run(s) come from another config and are left as they are (--force redoes "
        f"them in place, keeping the old logs; --tag NAME runs the grid into new folders):")
    for changes, runs in conflicts.items():
        names = ", ".join(r.label(output) for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
        out(f"  {len(runs)} run(s) ({names}):")
        for c in changes:
            out(f"    {c}")


def report_unreadable(to_run: Sequence[Run], output: str, out=print) -> None:
    """Name the finished runs that are redone because their recorded config.yaml is unreadable."""
    from fsclip.runs import CONFIG_FILE, read_record
    from fsclip.sweep.execute import run_path

    bad = [(r, why) for r in to_run for why in [read_record(run_path(r))[1]] if why]
    if bad:
        run, why = bad[0]
        out(f"{len(bad)} finished run(s) have an unreadable {CONFIG_FILE} and are redone (old log and "
            f"config kept as <name>.unreadable-<time>), e.g. {run.label(output)}: {why}")


# ------------------------------------------------------------------------ main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_counts(args)
        grid = load_grid(args)
        trainers = registered_trainers(grid.plugins)
        runs = expand(grid, trainers)
        to_run, skipped, conflicts, unknown = plan(runs, args.force)
    except UserFacingError as err:
        print(f"ERROR: {err}")
        return 2
    output = grid.output
    n_conflicts = sum(len(v) for v in conflicts.values())
    print(f"Sweep: {len(runs)} run(s); {len(skipped)} finished with the same config (skipped), "
          f"{len(to_run)} to run" + (f", {len(unknown)} finished without a recorded config (skipped; "
                                     f"--force redoes them)" if unknown else "")
          + (f", {n_conflicts} finished with another config" if conflicts else ""))
    if conflicts:
        report_conflicts(conflicts, output)
    report_unreadable(to_run, output)
    if args.dry_run:
        for run in to_run:
            print(f"  would run {run.label(output)}")
        return 0
    if grid.plugins:  # the runs load them through the environment, like the scripts' users do
        os.environ["FSCLIP_PLUGINS"] = os.pathsep.join(
            [p for p in os.environ.get("FSCLIP_PLUGINS", "").split(os.pathsep) if p] + list(grid.plugins))
    outcomes: Optional[List] = []
    if to_run:
        try:
            outcomes = run_slurm(args, to_run, output) if args.slurm else run_local(args, to_run, output)
        except UserFacingError as err:
            print(f"ERROR: {err}")
            return 2
        except Interrupted as err:
            print(f"\nSweep interrupted ({err}); the running runs were stopped. Run the same command "
                  "again to resume: finished runs are skipped, unfinished ones redone.")
            return 128 + err.signum
        except KeyboardInterrupt:  # while following a Slurm array
            print("\nStopped following the jobs; they keep running on the cluster (scancel stops "
                  "them). Rerun the same command once they have ended to see what is left.")
            return 130
    if outcomes is None:  # submitted without waiting
        return 0
    failed = [o for o in outcomes if not o.ok]
    print(f"Sweep finished: {len(outcomes) - len(failed)} run(s) done, {len(failed)} failed, "
          f"{len(skipped)} skipped (finished)"
          + (f", {n_conflicts} left with another config" if conflicts else ""))
    for o in failed:
        print(f"  FAILED {o.run.label(output)}\n    log: {o.log}\n    {o.error or '(no error line)'}")
    return 1 if failed or conflicts else 0


def run_local(args: argparse.Namespace, runs: List[Run], output: str) -> List:
    from fsclip.sweep.local import LocalPool, visible_gpus, worker_envs
    from fsclip.sweep.progress import Progress

    gpus = visible_gpus()
    workers = args.workers or max(1, len(gpus))
    envs = worker_envs(workers, gpus, args.threads or None)
    where = (f"GPUs {','.join(gpus)}" if gpus else "CPU") + f", {envs[0]['OMP_NUM_THREADS']} thread(s) per run"
    print(f"Running {len(runs)} run(s) on {min(workers, len(runs))} local worker(s) ({where})")
    with Progress(len(runs), min(workers, len(runs)), output) as progress:
        return LocalPool(envs, progress).run(runs)


def run_slurm(args: argparse.Namespace, runs: List[Run], output: str) -> Optional[List]:
    from fsclip.sweep import slurm
    from fsclip.sweep.progress import Progress

    extra = {}
    for item in args.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-param takes KEY=VALUE (e.g. account=myacct), got {item!r}")
        extra[key] = value
    params = slurm.executor_parameters(args.partition, args.time, args.gpus, args.mem, args.cpus,
                                       args.array_parallelism, extra=extra)
    folder = args.slurm_folder or os.path.join(output, ".sweep", "slurm")
    jobs = slurm.submit(runs, folder, params, cluster=args.submitit_cluster, env=slurm.run_env(args.cpus))
    first = str(jobs[0].job_id).split("_")[0] if jobs else "?"
    print(f"Submitted {len(jobs)} run(s) as job {first} ({args.submitit_cluster}; submitit folder {folder})")
    if args.no_wait:
        print("Not waiting: rerun this command after the jobs end (finished runs are skipped); do not "
              "rerun it while they are queued or running, or runs would start twice")
        return None
    with Progress(len(runs), len(runs), output, running_word="queued/running") as progress:
        return slurm.follow(jobs, runs, progress, poll=2.0 if args.submitit_cluster != "slurm" else 15.0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
