"""``FrozenFeatureTrainer``: the template for methods that learn on top of a frozen CLIP trunk.

A subclass implements ``build_method()`` (its modules, registered with ``register_model``),
``fit()`` (training and every hyperparameter choice, on train and val features only) and
``logits_from_dense(dense)`` (gradient-transparent: evaluation calls it under ``no_grad``, the
``image_logits`` hook with gradients). The base class loads CLIP, builds the text classifier W_c, splits
the image encoder into G and the pooling head (``fsclip.adapt.heads``), serves G's features per
split through the shared feature cache, and evaluates.

Protocol guard: ``features("test")`` is refused until the final evaluation (``test()`` on the
test split), so no choice can see the test set; the test split is evaluated once per run.
"""

from __future__ import annotations

import datetime
import os.path as osp
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TrainerX
from fsclip.clip.families import load_backbone_from_cfg
from fsclip.clip.attention import ATTENTION_REMEDY, map_entries, spatial_tokens
from fsclip.clip.precision import PrecisionChecks, autocast, effective_precision
from fsclip.clip.text import text_classifier
from fsclip.engine.data.transforms import build_transform
from fsclip.engine.data.base import empty_split_message
from fsclip.engine.utils import count_num_param
from fsclip.errors import ConfigError, DataError
from fsclip.templates import template_pool

from .cache import cache_from_cfg, fingerprint_tensors
from .extract import describe_transform, extract_views, impaths_of, labels_of
from .heads import pooling_head_attention
from .prompts import MINED, mine_templates, prompt_classifier
from .search import TrainingDivergedError

STORE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class EarlyTestAccessError(RuntimeError):
    """Raised when a method asks for test features before the final evaluation."""


def add_features_cfg(cfg) -> None:
    """The shared ``TRAINER.FEATURES`` node (added once, whichever trainer comes first)."""
    if "FEATURES" in cfg.TRAINER:
        return
    cfg.TRAINER.FEATURES = CN()
    f = cfg.TRAINER.FEATURES
    # Folder of the feature cache ("" -> ~/.cache/fsclip/features; "none" -> no disk cache)
    f.CACHE_DIR = ""
    # Disk budget of the cache in GiB; entries that do not fit are computed per run
    f.MAX_GB = 50.0
    # Augmented views stored per training image (random_resized_crop/flip of INPUT.TRANSFORMS)
    f.TRAIN_VIEWS = 10
    # Seed of the training views (fixed across runs so the cache is shared by every seed)
    f.VIEW_SEED = 0
    # Images per forward pass of the trunk
    f.BATCH_SIZE = 64
    # Storage dtype of cached maps: fp16 or fp32
    f.DTYPE = "fp16"
    # Trunk precision: fp16 (CUDA; fp32 on a CPU unless FSCLIP_CPU_HALF=1), fp32 or amp
    f.PREC = "fp16"
    # Text classifier W_c: classname, single, ensemble, mined (template mining), or a JSON file
    # of prompts per class (CuPL-style)
    f.PROMPTS = "ensemble"
    # Templates kept by PROMPTS mined: the best of the 180-template pool by zero-shot accuracy on
    # the few-shot train and val images (Lin et al. keep 21)
    f.MINED_TEMPLATES = 21


class FrozenFeatureTrainer(PrecisionChecks, TrainerX):
    """Base class of SAFE, SAFE-A, Tip-Adapter(-F) and other frozen-trunk methods.

    The backbone (``fsclip.clip.backbone``) gives G (``trunk``), the pooling head and the text
    classifier; a subclass names what else it needs of the encoder in ``backbone_needs``
    (capabilities), checked once when the model is built.
    """

    backbone_needs: tuple = ()

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        add_features_cfg(cfg)

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg = self.cfg
        fc = cfg.TRAINER.FEATURES
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        self.prec = effective_precision(fc.PREC, self.device)  # fp16, amp or fp32 (fsclip.clip.precision)
        self.backbone = load_backbone_from_cfg(cfg, precision=self.prec, device=self.device)
        self.backbone.require(self.backbone_needs, str(cfg.TRAINER.NAME or type(self).__name__))
        self.clip_model = self.backbone.model
        self.clip_model.requires_grad_(False)
        self.visual = self.backbone.visual
        self.classnames = list(self.dm.dataset.classnames)
        print(f"Text classifier W_c from prompts: {fc.PROMPTS}")
        if fc.PROMPTS != MINED:  # mined templates need the image features (below)
            self.text_weights = prompt_classifier(self.backbone, fc.PROMPTS, cfg.DATASET.NAME,
                                                  self.classnames).to(self.device)  # [K, D] unit rows
        self.logit_scale = self.backbone.logit_scale
        self.logit_bias = self.backbone.logit_bias  # SigLIP; a constant shift of every class's logit
        self.head_o = self.backbone.pooling_head().to(self.device).requires_grad_(False).eval()  # AttnPool_O
        # the transforms the data loaders already use (Dassl's DataManager keeps them only there)
        self.tfm_train = self._loader_transform(self.train_loader_x) or build_transform(cfg, is_train=True)
        self.tfm_test = self._loader_transform(self.test_loader) or build_transform(cfg, is_train=False)
        self.cache = cache_from_cfg(fc)
        self.backbone_id = fingerprint_tensors(self.visual.state_dict())
        self._test_allowed = False
        self._features: dict = {}
        self._global: dict = {}
        self.build_split()
        if fc.PROMPTS == MINED:
            self.text_weights = self.mined_classifier(int(fc.MINED_TEMPLATES))
        self.build_method()
        n = sum(count_num_param(m) for m in self._models.values())
        print(f"# trainable params of {type(self).__name__}: {n:,}")

    def build_split(self) -> None:
        """Where G ends, when a method moves it (``trunk``, ``head_o``, ``backbone_id``); before
        any feature is read. Default: CLIP's own split (the attention pool / last block)."""

    def build_method(self) -> None:
        raise NotImplementedError

    def mined_classifier(self, k: int) -> Tensor:
        """W_c from the ``k`` mined templates (template mining on the few-shot train and val images'
        CLIP features, test-time views; ``fsclip.adapt.prompts.mine_templates``)."""
        feats = torch.cat([self.global_features("train", augmented=False), self.global_features("val")])
        labels = torch.cat([self.labels("train"), self.labels("val")])
        pool = template_pool()
        self.mined_templates, accs = mine_templates(self.backbone, self.classnames, feats, labels, pool, k)
        print(f"Template mining: kept {k} of {len(pool)} templates by zero-shot accuracy on "
              f"{feats.shape[0]} few-shot train + val images ({accs[0]:.1f}% .. {accs[-1]:.1f}%): "
              + " | ".join(self.mined_templates))
        return text_classifier(self.backbone, self.classnames, self.mined_templates).float().to(self.device)

    @staticmethod
    def _loader_transform(loader: Any) -> Any:
        return getattr(getattr(loader, "dataset", None), "transform", None)

    # ------------------------------------------------------------------ features
    def split_items(self, split: str) -> list:
        ds = self.dm.dataset
        return {"train": ds.train_x, "val": ds.val, "test": ds.test}[split] or []

    def labels(self, split: str) -> Tensor:
        return labels_of(self.split_items(split)).to(self.device)

    def features(self, split: str, augmented: Optional[bool] = None) -> Tensor:
        """G's output for every image of ``split``: ``[N, V, ...]`` on the CPU (V = TRAIN_VIEWS
        augmented views for train, 1 test-transform view otherwise). ``augmented=False`` on the
        train split gives its one test-transform view instead (CoOp's linear-probe features)."""
        if split == "test" and not self._test_allowed:
            raise EarlyTestAccessError(
                "test features were requested before the final evaluation; choose everything on "
                "the val split and call test() once at the end")
        train = split == "train" if augmented is None else bool(augmented)
        if train and split != "train":
            raise ValueError(f"augmented views exist for the train split only, not {split}")
        key = split if train == (split == "train") else f"{split}:test-view"
        if key in self._features:
            return self._features[key]
        items = self.split_items(split)
        if not items:
            context = f"{type(self).__name__} chooses its settings on it" if split == "val" else ""
            raise DataError(empty_split_message(self.cfg, split, context))
        fc = self.cfg.TRAINER.FEATURES
        transform = self.tfm_train if train else self.tfm_test
        views = int(fc.TRAIN_VIEWS) if train else 1
        if views < 1:
            raise ConfigError(f"TRAINER.FEATURES.TRAIN_VIEWS must be >= 1, got {views}")
        store_dtype = STORE_DTYPES[fc.DTYPE]
        impaths = impaths_of(items)
        seed = int(fc.VIEW_SEED) if train else 0
        space = {
            "backbone": self.backbone_id, "trunk": self.backbone.trunk_kind, "transform": describe_transform(transform),
            "views": views, "view_seed": seed, "dtype": fc.DTYPE, "prec": self.trunk_precision(),
        }
        root = osp.abspath(osp.expanduser(self.cfg.DATASET.ROOT)) if self.cfg.DATASET.ROOT else ""

        def compute(paths) -> Tensor:
            return extract_views(
                lambda x: self.trunk(x), paths, transform, views, seed,
                int(fc.BATCH_SIZE), self.cfg.DATALOADER.NUM_WORKERS, self.device, store_dtype, root,
                desc=f"G(x) on {split} ({len(paths)} images x {views} views)")

        feats = self.cache.get(space, impaths, compute, label=split)
        self._features[key] = feats
        return feats

    def autocast(self) -> Any:
        """Autocast to fp16 under an effective ``PREC amp`` (a no-op context otherwise)."""
        return autocast(self.prec, self.device)

    def trunk_precision(self) -> str:
        """How G runs (part of the cache key): the weights' dtype, ``+amp`` under autocast."""
        dtype = str(next(self.visual.parameters()).dtype)
        return dtype + "+amp" if self.prec == "amp" else dtype

    def trunk_features(self, images: Tensor) -> Tensor:
        """``G(x)`` in the run's precision, gradients flowing back to ``images`` when they require
        them (``trunk`` is the no-grad form feature extraction uses; the OpenAI backbone's trunk
        lets gradients through, so ``image_logits`` has them there)."""
        with self.autocast():
            return self.backbone.trunk(images.to(self.device))

    @torch.no_grad()
    def trunk(self, images: Tensor) -> Tensor:
        """``G(x)`` in the run's precision."""
        return self.trunk_features(images)

    @torch.no_grad()
    def pooled(self, head: torch.nn.Module, dense: Tensor, batch_size: int = 256) -> Tensor:
        """``head`` over dense features ``[N, ...]`` in batches: ``[N, D]`` float on the device
        (``[S, N, D]`` for S stacked copies, ``fsclip.adapt.stacked``)."""
        head.eval()
        out = [head(dense[i:i + batch_size].to(self.device).float()).float()
               for i in range(0, dense.shape[0], batch_size)]
        return torch.cat(out, dim=-2)

    def global_features(self, split: str, augmented: Optional[bool] = None) -> Tensor:
        """CLIP's own image features ``AttnPool_O(G(x))`` of ``split`` (unnormalised, float32 on the
        device): ``[N, V, D]`` for train (every cached view), ``[N, D]`` otherwise (and for
        ``augmented=False``, see ``features``). Computed once per run from the cached trunk output
        and kept (every method on frozen global features reads them here)."""
        views = split == "train" if augmented is None else bool(augmented)
        key = (split, views)
        if key not in self._global:
            dense = self.features(split, augmented)
            n, v = dense.shape[:2]
            pooled = self.pooled(self.head_o, dense.flatten(0, 1))  # [N * V, D]
            self._global[key] = pooled.reshape(n, v, -1) if views else pooled
        return self._global[key]

    def clip_logits(self, features: Tensor, weights: Optional[Tensor] = None) -> Tensor:
        """``logit_scale * normalize(f) @ W^T`` (``+ logit_bias`` for SigLIP): ``[B, D] -> [B, K]``.

        ``weights``: unit-norm class weights ``[K, D]``, by default ``default_weights()``.
        """
        weights = self.default_weights() if weights is None else weights
        logits = self.logit_scale * F.normalize(features.float(), dim=-1) @ weights.t()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def default_weights(self) -> Tensor:
        """The class weights ``clip_logits`` uses by default: the zero-shot classifier W_c."""
        return self.text_weights

    # ------------------------------------------------------------------ protocol
    def fit(self) -> None:
        raise NotImplementedError

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        raise NotImplementedError

    def train(self) -> None:  # type: ignore[override]
        """fit() on train/val, then one evaluation on the test split (unless TEST.NO_TEST)."""
        self.time_start = time.time()
        try:
            self.fit()
        except TrainingDivergedError as err:
            if self.prec == "fp32":
                raise
            raise TrainingDivergedError(f"{err}; under PREC {self.prec} also try TRAINER.FEATURES.PREC "
                                        f"{'amp or ' if self.prec == 'fp16' else ''}fp32") from None
        self.after_train()

    prec_key = "TRAINER.FEATURES.PREC"  # named in the NaN/inf messages (PrecisionChecks)

    def after_train(self) -> None:
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            print("Deploy the model with the best val performance")
            self.test()
        print(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - self.time_start))}")

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluate on cached features of ``split`` (default TEST.SPLIT)."""
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and not self.split_items("val"):
            split = "test"
        if split == "test":
            self._test_allowed = True
        self.set_model_mode("eval")
        self.evaluator.reset()
        print(f"Evaluate on the *{split}* set")
        for logits, labels in self.split_logits(split):
            self.evaluator.process(logits, labels)
        results = self.evaluator.evaluate()
        return list(results.values())[0]

    def split_logits(self, split: str) -> Iterator[Tuple[Tensor, Tensor]]:
        """(logits, labels) of ``split`` in test-sized batches, from its cached features."""
        dense = self.features(split)[:, 0]
        labels = self.labels(split)
        bs = max(1, self.cfg.DATALOADER.TEST.BATCH_SIZE)
        for i in range(0, dense.shape[0], bs):
            yield self.restrict_logits(self.logits_from_dense(dense[i:i + bs].to(self.device))), labels[i:i + bs]

    @torch.no_grad()
    def model_inference(self, images: Tensor) -> Tensor:
        """The uncached path: logits straight from images (same result as the cached path), with
        classes outside the dataset's label subset masked (real Dassl's test loop calls this bare)."""
        return self.restrict_logits(self.logits_from_dense(self.trunk(images)))

    def saved_class_count(self) -> Optional[int]:
        """How many classes the loaded per-class state scores (None: the method keeps none)."""
        return None

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Dassl's loading, then: per-class state loaded from ``directory`` (it takes the saved size,
        e.g. ImageNet's for ImageNet-V2) must score this run's classes: one ConfigError, not a
        tensor-size error at the first test batch."""
        super().load_model(directory, epoch)
        saved, mine = self.saved_class_count(), len(self.classnames)
        if directory and saved is not None and saved != mine:
            name = type(self).__name__
            raise ConfigError(
                f"The {name} model in {directory} scores {saved} classes but this run evaluates {mine} classes "
                f"of {self.cfg.DATASET.NAME}: evaluate it on the classes it was built on (DATASET.NAME, "
                f"DATASET.SUBSAMPLE_CLASSES, the same class folders), or train {name} on these classes")

    def pooling_attention(self, dense: Tensor, **heads: torch.nn.Module) -> Dict[str, Tensor]:
        """Entries of an ``attention_maps`` hook for named pooling heads over G's output ``dense``:
        each head's pooling-query attention on the spatial grid ``name`` ``[B, H, h, w]`` and its
        weight on the mean / class token ``name/rest`` ``[B, H]`` (``fsclip.explain.hooks``)."""
        self.backbone.require(["clip-internals"], "fsclip-explain attention", ATTENTION_REMEDY)
        out: Dict[str, Tensor] = {}
        for name, head in heads.items():
            out.update(map_entries(name, pooling_head_attention(head, dense), 1, spatial_tokens(self.visual)))
        return out

    def image_logits(self, images: Tensor) -> Tensor:
        """``model_inference`` with gradients: the method's whole forward from preprocessed images
        ``[B, 3, H, W]`` to logits ``[B, K]`` (the ``image_logits`` hook, ``fsclip.explain.hooks``)."""
        return self.restrict_logits(self.logits_from_dense(self.trunk_features(images)))

    def log_choice(self, what: str, **params: Any) -> None:
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        print(f"Chosen on val for {what}: {shown}")
