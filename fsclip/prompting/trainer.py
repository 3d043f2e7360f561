"""``PromptLearningTrainer``: text prompt learning over CLIP's frozen image encoder (CoOp family).

CoOp, CoCoOp, ProGrad and KgCoOp train text-side parameters only; CLIP's image encoder is
frozen. So instead of encoding freshly augmented images at every step, as the reference loop
does, training reads CLIP's image features of ``TRAINER.FEATURES.TRAIN_VIEWS`` augmented views
per training image: the views are drawn once with fixed seeds (``fsclip.adapt.extract``), the
trunk's output is kept in the shared feature cache, and CLIP's own pooling turns it into image
embeddings once per run (``FrozenFeatureTrainer.global_features``). Each step takes a random
cached view of every image in its batch. Everything after the image embedding (prompts, text
encoder, logits, loss, gradients) is the method's own computation, exactly.

Protocol, as CoOp and Dassl run it: epochs of ``DATALOADER.TRAIN_X.BATCH_SIZE`` images in a
random order (the last incomplete batch dropped when there is at least one full batch), the
optimizer and LR schedule from ``OPTIM`` (stepped once per epoch), checkpoints in Dassl's
layout (``<output>/prompt_learner/model.pth.tar-<epoch>``). ``TEST.FINAL_MODEL``:

* ``last_step`` (CoOp's protocol): the prompts of the last epoch are tested;
* ``best_val``: the initial prompts and those after every ``TRAINER.PROMPTING.EVAL_FREQ`` epochs
  are scored on the few-shot val split; the best are saved (``model-best.pth.tar``) and tested;
  ``TRAINER.PROMPTING.PATIENCE`` evaluations without a gain stop training early.

The test split is read once, at the end (the feature guard of ``FrozenFeatureTrainer`` refuses
it before). A subclass sets ``cfg_name`` (its ``cfg.TRAINER`` node), and may override
``build_prompt_learner``, ``logits`` and ``forward_backward_features``.
"""

from __future__ import annotations

import copy
import datetime
import time
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.linear import accuracy
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.clip.features import is_vit
from fsclip.clip.precision import grad_scaler
from fsclip.engine.checkpoint import load_pretrained_weights
from fsclip.engine.optim import build_lr_scheduler, build_optimizer
from fsclip.engine.utils import AverageMeter, MetricMeter
from fsclip.errors import ConfigError

from .prompt_learner import TextPromptLearner


def add_prompt_learner_cfg(node: CN, n_ctx: int = 16, ctx_init: str = "", layout: bool = True) -> CN:
    """The text prompt learner's keys (CoOp's names) in a trainer's config ``node``; ``layout``
    adds CSC and CLASS_TOKEN_POSITION (for methods that allow other prompt layouts)."""
    # Number of context tokens M (ignored when CTX_INIT is set)
    node.N_CTX = n_ctx
    # Words initialising a generic context, e.g. "a photo of a" ("" = random, N(0, 0.02^2))
    node.CTX_INIT = ctx_init
    if layout:
        # Class-specific contexts, one set per class (ignored with CTX_INIT)
        node.CSC = False
        # Where the class name goes: end, middle or front
        node.CLASS_TOKEN_POSITION = "end"
    return node


def add_prompting_cfg(cfg) -> None:
    """``TRAINER.PROMPTING``: the training protocol shared by the prompt learning trainers."""
    if "PROMPTING" in cfg.TRAINER:
        return
    cfg.TRAINER.PROMPTING = CN()
    p = cfg.TRAINER.PROMPTING
    # With TEST.FINAL_MODEL best_val: score the prompts on val every EVAL_FREQ epochs
    p.EVAL_FREQ = 1
    # With TEST.FINAL_MODEL best_val: stop after PATIENCE val scores without a gain (0: never)
    p.PATIENCE = 0
    # Run the shared SOT + context positions once for all classes where prompts share them
    # (generic context, class token at the end); False runs every whole prompt (same result)
    p.PREFIX_SHARING = True


class PromptLearningTrainer(FrozenFeatureTrainer):
    """Base of CoOp, CoCoOp, ProGrad and KgCoOp: learned prompts, frozen cached image features."""

    cfg_name = ""  # the trainer's node under cfg.TRAINER (COOP, COCOOP, ...)
    backbone_needs = ("text-prompts",)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        add_prompting_cfg(cfg)

    @property
    def method_cfg(self) -> CN:
        return self.cfg.TRAINER[self.cfg_name]

    # ------------------------------------------------------------------ building
    def build_method(self) -> None:
        cfg = self.cfg
        if cfg.TEST.FINAL_MODEL not in ("last_step", "best_val"):
            raise ConfigError(f'TEST.FINAL_MODEL must be "last_step" or "best_val", got "{cfg.TEST.FINAL_MODEL}"')
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on SEED alone
            torch.manual_seed(max(int(cfg.SEED), 0))
            self.prompt_learner = self.build_prompt_learner().to(self.device)
        self.prompt_learner.share_prefix = bool(cfg.TRAINER.PROMPTING.PREFIX_SHARING)
        print(self.prompt_learner.describe())
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.prompt_learner, cfg.MODEL.INIT_WEIGHTS)
        self.optim = build_optimizer(self.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.prompt_learner, self.optim, self.sched)
        self.scaler = grad_scaler(self.prec, self.device)  # amp on CUDA only

    def per_class_state(self) -> bool:
        """Class-specific contexts (CSC) are per class; a generic context fits any classes
        (base-to-new, cross-dataset; ``fsclip.model_dir``)."""
        return bool(self.prompt_learner.csc)

    def build_prompt_learner(self) -> TextPromptLearner:
        c = self.method_cfg
        return TextPromptLearner(self.backbone, self.classnames, n_ctx=int(c.N_CTX), ctx_init=c.CTX_INIT,
                                 csc=bool(c.CSC), position=c.CLASS_TOKEN_POSITION)

    # ------------------------------------------------------------------ the model
    def class_text_features(self) -> Tensor:
        """The learned prompts' text features, L2-normalised, float: ``[K, D]``."""
        return F.normalize(self.prompt_learner.text_features(self.backbone).float(), dim=-1)

    def eval_text_features(self) -> Optional[Tensor]:
        """Text features computed once per evaluation (None when they depend on the image)."""
        return self.class_text_features()

    def logits(self, image_features: Tensor, text: Optional[Tensor] = None) -> Tensor:
        """``logit_scale * normalize(f) @ normalize(w)^T``: ``[B, D] -> [B, K]`` (CLIP's logits)."""
        text = self.class_text_features() if text is None else text
        return self.logit_scale * F.normalize(image_features.float(), dim=-1) @ text.t()

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.logits(self.head_o(dense.float()))

    def image_logits(self, images: Tensor) -> Tensor:
        """The ``image_logits`` hook (fsclip.explain.hooks): gradients through the image path; the
        class text, when it does not depend on the image, is encoded once without them."""
        dense = self.trunk_features(images)
        with torch.no_grad():
            text = self.eval_text_features()
        return self.restrict_logits(self.logits(self.head_o(dense.float()), text))

    def attention_maps(self, images: Tensor, labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """CLIP's own image encoder (the prompts are text-side): its pooling attention, ``cls`` (ViT:
        the class token's row in the last block) or ``attnpool`` (ResNet), ``[B, H, h, w]``."""
        dense = self.trunk_features(images)
        name = "cls" if is_vit(self.visual) else "attnpool"
        return {"logits": self.image_logits(images), **self.pooling_attention(dense, **{name: self.head_o})}

    def scale(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def optimizer_step(self) -> None:
        self.check_gradients(self.prompt_learner.parameters())
        if self.scaler is not None:
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_update()

    def backward_and_update(self, loss: Tensor) -> None:
        self.model_zero_grad()
        self.detect_anomaly(loss)
        self.scale(loss).backward()
        self.optimizer_step()

    def forward_backward_features(self, image_features: Tensor, labels: Tensor) -> Dict[str, float]:
        """One step on a batch of cached image features ``[B, D]``; the loss summary (CoOp: CE)."""
        with self.autocast():
            logits = self.logits(image_features)
            loss = F.cross_entropy(logits, labels)
        self.backward_and_update(loss)
        return {"loss": loss.item(), "acc": accuracy(logits, labels)}

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        cfg = self.cfg
        pc = cfg.TRAINER.PROMPTING
        feats = self.global_features("train")  # [N, V, D] cached views
        labels = self.labels("train")
        n, views = feats.shape[:2]
        bs = int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        self.num_batches = n // bs if n >= bs else 1  # Dassl's drop_last rule
        gen = torch.Generator().manual_seed(max(int(cfg.SEED), 0))
        self.start_epoch = self.resume_model_if_exist(cfg.RESUME) if cfg.RESUME else 0
        self.select_on_val = cfg.TEST.FINAL_MODEL == "best_val"
        if self.select_on_val and not self.split_items("val"):
            raise ConfigError("TEST.FINAL_MODEL best_val needs a val split; this dataset has none "
                              "(use last_step)")
        self.best_val, self.best_epoch, self.best_state = -1.0, -1, None
        if self.select_on_val:
            self.score_on_val(self.start_epoch)
        print(f"Training on {n} images x {views} cached views, {self.num_batches} batches of {min(bs, n)} "
              f"per epoch, epochs {self.start_epoch + 1}-{self.max_epoch}")
        since_best = 0
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.run_cached_epoch(feats, labels, bs, gen)
            self.update_lr()
            done = self.epoch + 1
            last = done == self.max_epoch
            if self.select_on_val and (done % max(int(pc.EVAL_FREQ), 1) == 0 or last):
                since_best = 0 if self.score_on_val(done) else since_best + 1
                if int(pc.PATIENCE) > 0 and since_best >= int(pc.PATIENCE) and not last:
                    print(f"Early stop after epoch {done}: no val gain in {since_best} evaluations")
                    self.save_model(self.epoch, self.output_dir)
                    break
            freq = int(cfg.TRAIN.CHECKPOINT_FREQ)
            if last or (freq > 0 and done % freq == 0):
                self.save_model(self.epoch, self.output_dir)

    def run_cached_epoch(self, feats: Tensor, labels: Tensor, bs: int, gen: torch.Generator) -> None:
        """One epoch over the training images, each in one of its cached views drawn at random."""
        self.set_model_mode("train")
        n, views = feats.shape[:2]
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        losses, batch_time, data_time = MetricMeter(), AverageMeter(), AverageMeter()
        end = time.time()
        for self.batch_idx in range(self.num_batches):
            idx = order[self.batch_idx * bs:(self.batch_idx + 1) * bs]
            x = feats[idx.to(feats.device), view[idx].to(feats.device)]  # [B, D]
            y = labels[idx.to(labels.device)]
            data_time.update(time.time() - end)
            losses.update(self.forward_backward_features(x, y))
            batch_time.update(time.time() - end)
            freq = int(self.cfg.TRAIN.PRINT_FREQ)
            if (self.batch_idx + 1) % freq == 0 or self.num_batches < freq:
                remaining = self.num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
                print(f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                      f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) data {data_time.val:.3f} ({data_time.avg:.3f}) "
                      f"{losses} lr {self.get_current_lr():.4e} eta {eta}")
            end = time.time()

    def score_on_val(self, epochs_done: int) -> bool:
        """Val accuracy of the current prompts; keeps and saves them when they are the best so far."""
        correct = total = 0
        for logits, labels in self.split_logits("val"):
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += labels.numel()
        acc = 100.0 * correct / max(total, 1)
        better = acc > self.best_val
        if better:
            self.best_val, self.best_epoch = acc, epochs_done
            self.best_state = {name: copy.deepcopy(self._models[name].state_dict()) for name in self.get_model_names()}
            self.save_model(epochs_done - 1, self.output_dir, val_result=acc, model_name="model-best.pth.tar")
        print(f"* val accuracy after epoch {epochs_done}: {acc:.2f}% (best {self.best_val:.2f}%, epoch {self.best_epoch})")
        return better

    def after_train(self) -> None:
        print("Finish training")
        if self.select_on_val and self.best_state is not None:
            print(f"Deploy the model with the best val performance (epoch {self.best_epoch}, "
                  f"val accuracy {self.best_val:.2f}%)")
            for name, state in self.best_state.items():
                self._models[name].load_state_dict(state)
        else:
            print("Deploy the last-epoch model")
        if not self.cfg.TEST.NO_TEST:
            self.test()
        print(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - self.time_start))}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def split_logits(self, split: str) -> Iterator[Tuple[Tensor, Tensor]]:
        """``(logits, labels)`` batches over the cached image features of ``split``."""
        self.set_model_mode("eval")
        feats, labels = self.global_features(split), self.labels(split)
        text = self.eval_text_features()
        bs = max(1, int(self.cfg.DATALOADER.TEST.BATCH_SIZE))
        for i in range(0, feats.shape[0], bs):
            yield self.restrict_logits(self.logits(feats[i:i + bs], text)), labels[i:i + bs]
