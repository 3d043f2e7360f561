"""What ``fsclip-explain`` explains: the models (subjects) and the images.

:func:`load_subjects` builds one :class:`Subject` per ``--run DIR`` (as ``train.py --eval-only
--model-dir DIR`` does: the run's recorded ``config.yaml``, its trainer, its checkpoint; the class
names it was trained on are checked by :func:`fsclip.model_dir.check_model_dir`) and, with
``--zero-shot`` or without runs, one for zero-shot CLIP (``ZeroshotCLIP``, with the first run's
backbone, input settings and prompts; without runs: ``--backbone`` at its own input resolution
and the dataset's template ensemble). Zero-shot CLIP comes first (the leftmost column).

:func:`load_images` reads ``--images`` files (``--classes``: their classes) or ``--num`` images of
a dataset split (a seeded draw), for one subject's test transform. Panels draw
``Images.display``, the model's input before normalisation (resize + centre crop), so that maps
overlay the pixels the model saw; :meth:`Images.align` brings a label map (a part mask) of an
original image onto the same grid.

Every problem is a UserFacingError (one ERROR line, exit code 2) naming the option and the path.
"""

from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fsclip.errors import ConfigError, DataError

ZERO_SHOT = "ZeroshotCLIP"
ZERO_SHOT_LABEL = "CLIP"
DEFAULT_BACKBONE = "RN50"


@dataclass
class Subject:
    """One model to explain: a run's trainer (eval mode, checkpoint loaded) or zero-shot CLIP.

    ``label``: its panel title ("CLIP", "SAFE", ...); ``trainer``: the built trainer;
    ``clip_model``: its CLIP (frozen backbone); ``classnames``: in label order; ``cfg``: the
    frozen config it was built with; ``run_dir``: the run folder ("" for zero-shot CLIP).
    """

    label: str
    trainer: Any
    clip_model: Any
    classnames: List[str]
    cfg: Any
    device: torch.device
    run_dir: str = ""

    @property
    def is_zero_shot(self) -> bool:
        return not self.run_dir

    def logits(self, images: Tensor) -> Tensor:
        """``[N, K]`` logits of preprocessed ``images`` ``[N, 3, H, W]``: the trainer's
        ``image_logits`` hook (the whole forward, gradient-enabled) when it has one, else its
        ``model_inference`` (the eval path, no gradient)."""
        hook = getattr(self.trainer, "image_logits", None)
        if callable(hook):
            return hook(images.to(self.device))
        return self.trainer.model_inference(images.to(self.device))

    @property
    def visual(self) -> Any:
        """CLIP's image encoder (``clip_model.visual``)."""
        return self.clip_model.visual

    def test_transform(self) -> Any:
        """The trainer's test transform (PIL image -> normalised tensor ``[3, H, W]``)."""
        dm = getattr(self.trainer, "dm", None)
        tfm = getattr(dm, "tfm_test", None)
        if tfm is None:
            from fsclip.engine.data.transforms import build_transform

            tfm = build_transform(self.cfg, is_train=False)
        return tfm


@dataclass
class Images:
    """Images prepared for one subject.

    ``paths``; ``pil``: the original RGB images; ``display``: ``[N, H, W, 3]`` float in [0, 1],
    the model's input before normalisation; ``tensor``: ``[N, 3, H, W]`` the normalised input on
    the subject's device; ``labels``: the true class of each image (None: unknown);
    ``classnames``: the subject's class names.
    """

    paths: List[str]
    pil: List[Any]
    display: np.ndarray
    tensor: Tensor
    labels: Optional[List[int]]
    classnames: List[str]
    size: tuple = field(default=(224, 224))
    interpolation: str = "bicubic"

    def __len__(self) -> int:
        return len(self.paths)

    def names(self) -> List[str]:
        """Row labels: the file name and, when known, the true class."""
        out = []
        for i, path in enumerate(self.paths):
            name = osp.basename(path)
            if self.labels is not None:
                name += f"\n({self.classnames[self.labels[i]]})"
            out.append(name)
        return out

    def align(self, label_map: np.ndarray) -> np.ndarray:
        """A label map ``[h, w]`` of an original image (same size as it) on the model's input grid
        ``[H, W]``: the test transform's resize + centre crop with nearest-neighbour sampling."""
        from PIL import Image
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        img = Image.fromarray(np.asarray(label_map, dtype=np.int32))
        img = CenterCrop(self.size)(Resize(max(self.size), interpolation=InterpolationMode.NEAREST)(img))
        return np.asarray(img, dtype=np.int64)


# ----------------------------------------------------------------------------- subjects
def _run_config(run_dir: str, args: Any, trainer: str = "", extra: Sequence[str] = ()) -> Any:
    """The merged config of the run in ``run_dir`` for this command (output, device, root)."""
    from fsclip.configure import build_parser, setup_cfg

    argv = ["--config-file", osp.join(run_dir, "config.yaml"), "--output-dir", args.out, "--seed", str(args.seed)]
    if args.root:
        argv += ["--root", args.root]
    if trainer:
        argv += ["--trainer", trainer]
    argv += ["USE_CUDA", str(args.device == "cuda"), *extra]
    return setup_cfg(build_parser().parse_args(argv))


def check_run_dir(run_dir: str) -> None:
    """``run_dir`` is the folder of a finished-or-running training run (else one DataError)."""
    from fsclip.model_dir import read_training_config
    from fsclip.runs import read_record

    if not osp.isdir(run_dir):
        raise DataError(f"Run folder {run_dir} does not exist (--run): pass the output folder of a "
                        f"training run (e.g. output/<dataset>/<trainer>/<cfg>_<N>shots/seed1)")
    recorded, why = read_record(run_dir)
    if recorded is None:
        problem = f"its config.yaml cannot be read ({why})" if why else "it has no config.yaml"
        raise DataError(f"Run folder {run_dir} (--run) is not an fsclip run: {problem}; pass the output "
                        f"folder of a train.py run (it records config.yaml when it starts)")
    if read_training_config(run_dir) is None:
        model_dir = recorded.get("--model-dir") or "its --model-dir"
        raise DataError(f"Run folder {run_dir} (--run) holds an --eval-only run; pass the folder of the "
                        f"training run it evaluated ({model_dir})")


def _build(cfg: Any) -> Any:
    from fsclip.backend import build_trainer
    from fsclip.cli import check_names

    check_names(cfg)
    return build_trainer(cfg)


def _load_checkpoint(trainer: Any, run_dir: str) -> None:
    from fsclip.model_dir import check_model_dir

    if not trainer.get_model_names():
        return  # a training-free method: nothing to load
    check_model_dir(trainer, run_dir, "--run")
    try:
        trainer.load_model(run_dir)
    except FileNotFoundError as err:
        raise DataError(f"Run folder {run_dir} (--run) has no checkpoint to load ({err}). Pass the folder "
                        f"of a finished training run, or train it first") from None


def _subject(label: str, trainer: Any, cfg: Any, run_dir: str) -> Subject:
    from fsclip.model_dir import trainer_classnames

    trainer.set_model_mode("eval")
    return Subject(label=label, trainer=trainer, clip_model=trainer.clip_model,
                   classnames=trainer_classnames(trainer), cfg=cfg, device=trainer.device, run_dir=run_dir)


def _zero_shot_cfg(args: Any, first_run: Optional[str]) -> Any:
    """Zero-shot CLIP's config: the first run's (trainer, prompts switched), else built here."""
    from fsclip.configure import build_parser, setup_cfg

    if first_run:
        from fsclip.runs import read_recorded

        rec = read_recorded(first_run) or {}
        prompts = rec.get("TRAINER.FEATURES.PROMPTS") or rec.get("TRAINER.ZSCLIP.TEMPLATES") or "ensemble"
        return _run_config(first_run, args, ZERO_SHOT, ["TRAINER.ZSCLIP.TEMPLATES", str(prompts)])
    from fsclip.clip.loader import input_resolution, load_clip

    backbone = args.backbone or DEFAULT_BACKBONE
    size = input_resolution(load_clip(backbone))  # the trainer loads it again; cheap next to the rest
    argv = ["--trainer", ZERO_SHOT, "--output-dir", args.out, "--seed", str(args.seed), "--backbone", backbone]
    if args.root:
        argv += ["--root", args.root]
    argv += ["DATASET.NAME", args.dataset, "INPUT.SIZE", f"({size}, {size})", "INPUT.INTERPOLATION", "bicubic",
             "INPUT.PIXEL_MEAN", "[0.48145466, 0.4578275, 0.40821073]",
             "INPUT.PIXEL_STD", "[0.26862954, 0.26130258, 0.27577711]", "INPUT.TRANSFORMS", "['normalize']",
             "DATALOADER.NUM_WORKERS", "0", "TRAINER.ZSCLIP.TEMPLATES", "ensemble", "TRAINER.ZSCLIP.PREC", "fp32",
             "USE_CUDA", str(args.device == "cuda")]
    return setup_cfg(build_parser().parse_args(argv))


def load_subjects(args: Any, zero_shot: Optional[bool] = None) -> List["Subject"]:
    """The subjects of ``args`` (see the module docstring). ``zero_shot``: add zero-shot CLIP
    (None: when ``--zero-shot`` is given or there is no ``--run``)."""
    from fsclip.configure import load_plugins

    load_plugins([])
    runs = list(args.run or [])
    for run_dir in runs:
        check_run_dir(run_dir)
    if not runs and not args.dataset:
        raise ConfigError("zero-shot CLIP needs the classes to score: pass --dataset NAME (e.g. SynthShapes), "
                          "or --run DIR of a trained model")
    subjects: List[Subject] = []
    if zero_shot or (zero_shot is None and (args.zero_shot or not runs)):
        cfg = _zero_shot_cfg(args, runs[0] if runs else None)
        _check_dataset(args, cfg)
        subjects.append(_subject(ZERO_SHOT_LABEL, _build(cfg), cfg, ""))
    for run_dir in runs:
        cfg = _run_config(run_dir, args)
        _check_dataset(args, cfg, run_dir)
        trainer = _build(cfg)
        _load_checkpoint(trainer, run_dir)
        subjects.append(_subject(cfg.TRAINER.NAME, trainer, cfg, run_dir))
    _unique_labels(subjects)
    return subjects


def _check_dataset(args: Any, cfg: Any, run_dir: str = "") -> None:
    if args.dataset and run_dir and args.dataset != cfg.DATASET.NAME:
        raise ConfigError(f"--dataset {args.dataset} but the run in {run_dir} was trained on {cfg.DATASET.NAME}: "
                          f"explain a run on its own dataset (omit --dataset, or pass --dataset {cfg.DATASET.NAME})")


def _unique_labels(subjects: List[Subject]) -> None:
    """Two runs of one trainer get their folder names after the trainer name."""
    for s in subjects:
        if sum(t.label == s.label for t in subjects) > 1 and s.run_dir:
            s.label = f"{s.label} ({osp.basename(osp.normpath(s.run_dir))})"


# ------------------------------------------------------------------------------- images
def _class_labels(names: Sequence[str], classnames: List[str], n: int) -> List[int]:
    from fsclip.engine.registry import did_you_mean

    labels = []
    for name in names:
        if name not in classnames:
            raise ConfigError(f'Class "{name}" (--classes) is not a class of this dataset'
                              + did_you_mean(name, classnames) + " Quote names with spaces: --classes \"red circle\"")
        labels.append(classnames.index(name))
    return labels * n if len(labels) == 1 else labels


def _split_items(subject: Subject, split: str) -> list:
    dataset = subject.trainer.dm.dataset
    items = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}[split]
    if not items:
        raise DataError(f"Split {split} (--split) of {subject.cfg.DATASET.NAME} is empty; pass another --split")
    return list(items)


def dataset_picks(subject: Subject, split: str, num: int, seed: int) -> List[Any]:
    """``num`` items (Datum: impath, label, classname) of ``split`` drawn with ``seed``, in split order."""
    items = _split_items(subject, split)
    order = np.random.default_rng(seed).permutation(len(items))[: min(num, len(items))]
    return [items[i] for i in sorted(order)]


def read_image(path: str, what: str = "--images") -> Any:
    """The RGB PIL image at ``path`` (a DataError naming it when missing or unreadable)."""
    from PIL import Image, UnidentifiedImageError

    if not osp.isfile(path):
        raise DataError(f"Image {path} ({what}) does not exist; check the path")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"Image {path} ({what}) cannot be read as an image ({err}); pass a PNG or JPEG file") from None


def load_images(args: Any, subject: Subject) -> Images:
    """The images of ``args`` prepared for ``subject`` (see the module docstring)."""
    if args.images:
        paths = list(args.images)
        labels = _class_labels(args.classes, subject.classnames, len(paths)) if args.classes else None
    else:
        picks = dataset_picks(subject, args.split, args.num, args.seed)
        paths, labels = [d.impath for d in picks], [int(d.label) for d in picks]
    pil = [read_image(p) for p in paths]
    return prepare(paths, pil, labels, subject)


def prepare(paths: List[str], pil: List[Any], labels: Optional[List[int]], subject: Subject) -> Images:
    """:class:`Images` from PIL images for ``subject``'s test transform."""
    from torchvision.transforms import CenterCrop, Resize
    from torchvision.transforms.functional import InterpolationMode

    cfg = subject.cfg
    size = tuple(int(s) for s in cfg.INPUT.SIZE)
    interp = InterpolationMode(cfg.INPUT.INTERPOLATION)
    geometry = [CenterCrop(size), Resize(max(size), interpolation=interp)][::-1]
    tfm = subject.test_transform()
    tensor = torch.stack([tfm(img) for img in pil]).to(subject.device)  # [N, 3, H, W]
    display = []
    for img in pil:
        for step in geometry:
            img = step(img)
        display.append(np.asarray(img, dtype=np.float32) / 255.0)  # [H, W, 3]
    return Images(paths=paths, pil=pil, display=np.stack(display), tensor=tensor, labels=labels,
                  classnames=list(subject.classnames), size=size, interpolation=str(cfg.INPUT.INTERPOLATION))
