"""A sweep's grid and its expansion into the exact ``train.py`` runs of the method scripts.

``scripts/<method>/main.sh DATASET SHOTS CFG [opts]`` (``fewshot_main`` in ``scripts/common.sh``)
runs, for each seed, ``train.py`` with the arguments :func:`train_argv` gives, into
``<output>/<dataset>/<Trainer>/<cfg>_<shots>shots/seed<S>``; ``scripts/zsclip/zeroshot.sh`` runs a
zero-shot trainer eval-only into ``<output>/<dataset>/<Trainer>/<cfg>``. The expansion here gives
the same arguments and folders (``tests/test_sweep.py`` checks it against the scripts). Shots 0
means the zero-shot layout. No method is named here: a trainer is anything registered, and its
config is ``<configs>/trainers/<Trainer>/<cfg>.yaml`` (a trainer without its own folder uses the
folder of the trainer class it derives from, e.g. ZeroshotCLIP2 uses ZeroshotCLIP's) or a path.
"""

from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from fsclip.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """A trainer with a config (``SAFE:micro_rn``), an optional folder tag and its own options."""

    trainer: str
    cfg: str = "rn50"  # a name in <configs>/trainers/<Trainer>/ or a path to a .yaml file
    tag: str = ""  # folder <cfg>_<tag>_<N>shots (the scripts' CFG_TAG)
    opts: Tuple[str, ...] = ()  # KEY VALUE options after the grid's own
    shots: Optional[Tuple[int, ...]] = None  # this method's shots instead of the grid's

    @property
    def cfg_stem(self) -> str:
        return osp.splitext(osp.basename(self.cfg))[0] if self.cfg.endswith((".yaml", ".yml")) else self.cfg

    @property
    def folder(self) -> str:
        """The config part of the run folders: ``cfg`` or ``cfg_tag``."""
        return f"{self.cfg_stem}_{self.tag}" if self.tag else self.cfg_stem

    @classmethod
    def parse(cls, spec: Any) -> "Method":
        """``"SAFE"``, ``"SAFE:micro_rn"`` or a mapping with trainer, cfg, tag, opts, shots."""
        if isinstance(spec, str):
            trainer, _, cfg = spec.partition(":")
            if not trainer:
                raise ConfigError(f"Method {spec!r}: expected TRAINER or TRAINER:CFG (e.g. SAFE:rn50)")
            return cls(trainer, cfg or "rn50")
        if isinstance(spec, dict):
            unknown = set(spec) - {"trainer", "cfg", "tag", "opts", "shots"}
            if unknown or "trainer" not in spec:
                raise ConfigError(f"Method {spec!r}: a method takes the keys trainer (required), cfg, "
                                  f"tag, opts and shots; got {sorted(spec)}")
            shots = spec.get("shots")
            return cls(str(spec["trainer"]), str(spec.get("cfg", "rn50")), str(spec.get("tag", "") or ""),
                       _opts(spec.get("opts"), f"opts of method {spec['trainer']}"),
                       tuple(_ints(shots, f"shots of method {spec['trainer']}")) if shots is not None else None)
        raise ConfigError(f"Method {spec!r}: expected a string TRAINER[:CFG] or a mapping")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _ints(value: Any, what: str) -> List[int]:
    """The whole numbers of a grid list (``shots: [1, 2]``); ConfigError naming ``what`` else."""
    out = []
    for x in _as_list(value):
        if isinstance(x, bool) or not (isinstance(x, int) or (isinstance(x, str) and x.strip().lstrip("-").isdigit())):
            raise ConfigError(f"The {what} must be whole numbers, got {x!r} in {_as_list(value)} "
                              f"(e.g. {what.split()[0]}: [1, 2, 4])")
        out.append(int(x))
    return out


def _opts(value: Any, what: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        items = [x for kv in value.items() for x in kv]
    else:
        items = _as_list(value)
    if len(items) % 2:
        raise ConfigError(f"The {what} must be KEY VALUE pairs, got {items}")
    return tuple(str(x) for x in items)


@dataclass
class Grid:
    """Methods x datasets x shots x seeds, with the scripts' DATA, OUTPUT and options."""

    methods: List[Method]
    datasets: List[str]
    shots: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    opts: Tuple[str, ...] = ()
    data: str = "./data"
    output: str = "./output"
    configs: str = "configs"
    plugins: Tuple[str, ...] = ()  # trainer/dataset files or modules (FSCLIP_PLUGINS of the runs)

    @classmethod
    def from_mapping(cls, spec: Dict[str, Any], where: str = "the grid") -> "Grid":
        """A grid from a YAML mapping (keys as the command-line flags)."""
        known = {"methods", "datasets", "shots", "seeds", "opts", "data", "output", "configs", "plugins"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"Unknown key(s) {sorted(unknown)} in {where}; known: {sorted(known)}")
        for key in ("methods", "datasets"):
            if not spec.get(key):
                raise ConfigError(f"{where} needs '{key}' (a list)")
        grid = cls(methods=[Method.parse(m) for m in _as_list(spec["methods"])],
                   datasets=[str(d) for d in _as_list(spec["datasets"])],
                   opts=_opts(spec.get("opts"), f"opts of {where}"),
                   plugins=tuple(str(p) for p in _as_list(spec.get("plugins") or [])))
        for key in ("shots", "seeds"):
            if spec.get(key) is not None:
                setattr(grid, key, _ints(spec[key], f"{key} of {where}"))
        for key in ("data", "output", "configs"):
            if spec.get(key):
                setattr(grid, key, str(spec[key]))
        return grid


@dataclass(frozen=True)
class Run:
    """One ``train.py`` call: its arguments and run folder, as the scripts make them."""

    trainer: str
    dataset: str
    shots: int  # 0: zero-shot (eval-only, no seed)
    seed: Optional[int]
    out_dir: str
    argv: Tuple[str, ...]  # train.py's arguments
    cwd: str  # the folder relative paths in argv are relative to

    @property
    def mode(self) -> str:
        """What makes the run finished: a result after ``Finish training`` (train) or after
        ``=> result`` (test: eval-only)."""
        return "test" if "--eval-only" in self.argv else "train"

    def label(self, output: str) -> str:
        return osp.relpath(self.out_dir, output) if output else self.out_dir


def train_argv(trainer: str, dataset_cfg: str, method_cfg: str, out_dir: str, data: str,
               seed: Optional[int], opts: Sequence[str], eval_only: bool = False) -> Tuple[str, ...]:
    """train.py's arguments in the order of ``train_argv`` in scripts/common.sh (few-shot runs)
    and of scripts/zsclip/zeroshot.sh (zero-shot runs: no seed, ``--eval-only``)."""
    argv = ["--root", data]
    if seed is not None:
        argv += ["--seed", str(seed)]
    argv += ["--trainer", trainer, "--dataset-config-file", dataset_cfg, "--config-file", method_cfg,
             "--output-dir", out_dir]
    if eval_only:
        argv.append("--eval-only")
    return tuple(argv) + tuple(opts)


def config_file(configs: str, method: Method, trainers: Dict[str, Any], cwd: str = "") -> str:
    """``<configs>/trainers/<Trainer>/<cfg>.yaml``, else that of the nearest registered base class
    (paths relative to ``cwd``, the folder the runs start in)."""
    if method.cfg.endswith((".yaml", ".yml")) or os.sep in method.cfg:
        if not osp.isfile(osp.join(cwd, method.cfg)):
            raise ConfigError(f"Method config file {method.cfg} (of {method.trainer}) does not exist")
        return method.cfg
    names = [method.trainer]
    cls = trainers.get(method.trainer)
    if cls is not None:
        names += [base.__name__ for base in cls.__mro__[1:] if base.__name__ in trainers]
    for name in names:
        path = osp.join(configs, "trainers", name, f"{method.cfg}.yaml")
        if osp.isfile(osp.join(cwd, path)):
            return path
    folder = osp.join(cwd, configs, "trainers", method.trainer)
    have = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if osp.isdir(folder) else []
    raise ConfigError(f"No config {method.cfg}.yaml for {method.trainer} under {configs}/trainers/"
                      + (f"{method.trainer}/ (it has: {', '.join(have)})" if have else
                         f"{'/, '.join(names)}/; pass TRAINER:CFG with an existing CFG or a path to a .yaml file"))


def expand(grid: Grid, trainers: Dict[str, Any], cwd: Optional[str] = None) -> List[Run]:
    """Every run of ``grid`` in order (methods, datasets, shots, seeds), duplicates removed.

    ``trainers``: the registered trainer classes by name (checks names; finds base classes'
    configs). Raises :class:`ConfigError` for an unknown trainer, dataset or config.
    """
    from fsclip.engine.registry import did_you_mean

    cwd = osp.abspath(cwd or os.getcwd())
    if not osp.isdir(osp.join(cwd, grid.configs, "datasets")):
        raise ConfigError(f"No config folder {osp.join(cwd, grid.configs)} with datasets/ and trainers/: "
                          f"run the sweep from the repository root (as the scripts run) or pass --configs")
    runs: List[Run] = []
    seen = set()
    for method in grid.methods:
        if method.trainer not in trainers:
            raise ConfigError(f"Unknown trainer {method.trainer!r} in the sweep's methods"
                              + did_you_mean(method.trainer, trainers))
        method_cfg = config_file(grid.configs, method, trainers, cwd)
        for dataset in grid.datasets:
            dataset_cfg = osp.join(grid.configs, "datasets", f"{dataset}.yaml")
            if not osp.isfile(osp.join(cwd, dataset_cfg)):
                have = sorted(f[:-5] for f in os.listdir(osp.join(cwd, grid.configs, "datasets"))
                              if f.endswith(".yaml"))
                raise ConfigError(f"Unknown dataset {dataset!r}: {dataset_cfg} does not exist."
                                  + did_you_mean(dataset, have))
            base = osp.join(grid.output, dataset, method.trainer)
            for shots in (method.shots if method.shots is not None else grid.shots):
                if shots < 0:
                    raise ConfigError(f"Shots must be >= 0 (0: zero-shot), got {shots}")
                opts = tuple(grid.opts) + tuple(method.opts)
                if shots == 0:  # zero-shot: one eval-only run, no seed (scripts/zsclip/zeroshot.sh)
                    cells = [(None, osp.join(base, method.folder), opts, True)]
                else:
                    cells = [(seed, osp.join(base, f"{method.folder}_{shots}shots", f"seed{seed}"),
                              ("DATASET.NUM_SHOTS", str(shots)) + opts, False) for seed in grid.seeds]
                for seed, out_dir, run_opts, eval_only in cells:
                    if out_dir in seen:
                        continue
                    seen.add(out_dir)
                    argv = train_argv(method.trainer, dataset_cfg, method_cfg, out_dir, grid.data, seed,
                                      run_opts, eval_only)
                    runs.append(Run(method.trainer, dataset, shots, seed, out_dir, argv, cwd))
    return runs


def registered_trainers(plugins: Iterable[str] = ()) -> Dict[str, Any]:
    """The registered trainer classes by name (built-in trainers and ``plugins`` loaded)."""
    from fsclip.backend import TRAINER_REGISTRY
    from fsclip.configure import load_plugins

    load_plugins(list(plugins))
    return {name: TRAINER_REGISTRY.get(name) for name in TRAINER_REGISTRY.registered_names()}
