"""Shared fixtures: a toy image dataset on disk registered as ``ToyImages``."""

from __future__ import annotations

import json
import os
import os.path as osp
import subprocess

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsclip.backend import BACKEND, DATASET_REGISTRY, DatasetBase, Datum
from fsclip.clip.text import text_classifier
from fsclip.engine.data.base import load_or_create_fewshot

TOY_CLASSES = ["red square", "green circle", "blue bar"]
TOY_COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def make_toy_tree(root: str, n_train: int = 6, n_val: int = 3, n_test: int = 4, size: int = 16) -> str:
    """Write ``root/toy/images/<class>/<i>.png`` and ``root/toy/split.json``; return the dir."""
    base = osp.join(root, "toy")
    split = {"train": [], "val": [], "test": []}
    for label, (cname, color) in enumerate(zip(TOY_CLASSES, TOY_COLORS)):
        folder = osp.join(base, "images", cname.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        counts = {"train": n_train, "val": n_val, "test": n_test}
        i = 0
        for part, n in counts.items():
            for _ in range(n):
                shade = tuple(min(255, c + 3 * i) for c in color)
                rel = f"{cname.replace(' ', '_')}/{i:03d}.png"
                Image.new("RGB", (size, size), shade).save(osp.join(base, "images", rel))
                split[part].append([rel, label, cname])
                i += 1
    with open(osp.join(base, "split.json"), "w") as f:
        json.dump(split, f)
    return base


if "ToyImages" not in DATASET_REGISTRY.registered_names():

    @DATASET_REGISTRY.register()
    class ToyImages(DatasetBase):
        """Three solid-colour classes in the CoOp split layout (tests only)."""

        dataset_dir = "toy"
        template = "a photo of a {}."
        templates = ["a photo of a {}.", "a drawing of a {}."]

        def __init__(self, cfg):
            base = osp.join(osp.abspath(osp.expanduser(cfg.DATASET.ROOT)), self.dataset_dir)
            image_dir = osp.join(base, "images")
            with open(osp.join(base, "split.json")) as f:
                split = json.load(f)

            def read(part):
                return [Datum(impath=osp.join(image_dir, r), label=y, classname=c) for r, y, c in split[part]]

            train, val, test = read("train"), read("val"), read("test")
            if cfg.DATASET.NUM_SHOTS >= 1:
                train, val = load_or_create_fewshot(
                    train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED,
                    osp.join(base, "split_fewshot"), image_dir)
            super().__init__(train_x=train, val=val, test=test)


REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_script(env: dict, script: str, *args: str, timeout: int = 600) -> str:
    """``bash scripts/<script> args...`` from the repository root; its stdout (fails on exit != 0)."""
    proc = subprocess.run(["bash", osp.join("scripts", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def set_opts(cfg, **opts):
    """``set_opts(cfg, **{"OPTIM.LR": 0.1})``: set dotted config keys (tests only)."""
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def method_cfg(toy_root: str, tmp_path, weights: str, trainer: str, train_views: int, prompts: str):
    """A method's config on ToyImages (2 shots, seed 1, 64 px, augmented views, a feature cache
    under ``tmp_path``) with the tiny CLIP ``weights``; test files add their method's budgets."""
    from fsclip.cli import extend_cfg
    from fsclip.engine.config import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "ToyImages"
    cfg.DATASET.ROOT = toy_root
    cfg.DATASET.NUM_SHOTS = 2
    cfg.SEED = 1
    cfg.OUTPUT_DIR = str(tmp_path / "out" / trainer)
    cfg.TRAINER.NAME = trainer
    cfg.MODEL.BACKBONE.NAME = weights
    cfg.INPUT.SIZE = (64, 64)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.USE_CUDA = False
    cfg.TRAINER.FEATURES.CACHE_DIR = str(tmp_path / "cache")
    cfg.TRAINER.FEATURES.TRAIN_VIEWS = train_views
    cfg.TRAINER.FEATURES.PROMPTS = prompts
    return cfg


def trainer_configs(*trainers: str) -> dict:
    """Every ``configs/trainers/<T>/*.yaml`` of ``trainers`` merged onto the defaults (a key the
    defaults lack fails the merge), keyed ``"<T>/<file>.yaml"``."""
    import glob

    from fsclip.cli import extend_cfg
    from fsclip.engine.config import get_cfg_default

    loaded = {}
    for trainer in trainers:
        for path in sorted(glob.glob(osp.join(REPO, "configs", "trainers", trainer, "*.yaml"))):
            cfg = get_cfg_default()
            extend_cfg(cfg)
            cfg.merge_from_file(path)
            loaded[f"{trainer}/{osp.basename(path)}"] = cfg
    return loaded


def zero_shot_logits(trainer, images, prompts: str = "single"):
    """Zero-shot CLIP's logits of ``images``, computed from the trainer's frozen CLIP directly (the
    reference of the identity-case parity tests). ``prompts="single"``: the template "a photo of a
    {}."; ``"ensemble"``: the toy dataset's template ensemble (what the frozen-feature trainers use
    with TRAINER.FEATURES.PROMPTS ensemble)."""
    from fsclip.adapt.prompts import prompt_classifier

    model = trainer.clip_model
    with torch.no_grad():
        if prompts == "single":
            w = text_classifier(model, trainer.classnames, ["a photo of a {}."]).float()
        else:
            w = prompt_classifier(model, prompts, "ToyImages", trainer.classnames)
        f = F.normalize(model.encode_image(images).float(), dim=-1)
        return model.logit_scale.exp() * f @ w.t()


@pytest.fixture
def toy_root(tmp_path):
    make_toy_tree(str(tmp_path))
    return str(tmp_path)


@pytest.fixture
def toy_cfg(toy_root, tmp_path):
    """A frozen-able config for ToyImages with small, fast settings."""
    from fsclip.engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.NAME = "ToyImages"
    cfg.DATASET.ROOT = toy_root
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.INPUT.SIZE = (16, 16)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 5
    cfg.INPUT.TRANSFORMS = ("normalize",)
    cfg.USE_CUDA = False
    cfg.SEED = 1
    return cfg


@pytest.fixture(scope="session")
def kit_root(tmp_path_factory):
    """DATASET.ROOT of the offline kit's synthetic benchmark, generated once per test session."""
    return str(tmp_path_factory.mktemp("kit_data"))


@pytest.fixture(scope="session")
def kit_cache(tmp_path_factory):
    """A feature cache shared by every kit run of the test session."""
    return str(tmp_path_factory.mktemp("kit_features"))


@pytest.fixture(autouse=True)
def _restore_stdout():
    """setup_logger replaces sys.stdout; put the original back after each test."""
    import sys

    saved = sys.stdout
    yield
    if sys.stdout is not saved:
        close = getattr(sys.stdout, "close", None)
        if callable(close):
            close()
        sys.stdout = saved


def pytest_report_header(config):
    return f"fsclip backend: {BACKEND}; torch {torch.__version__}; threads {torch.get_num_threads()}"

