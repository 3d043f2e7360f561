"""Cross-modal adaptation (Lin et al., CVPR 2023, "Multimodality Helps Unimodality"): a linear
probe on CLIP's frozen image features whose training set also holds the class prompts' text
features, since CLIP embeds both modalities in one space.

  head        logits = s * normalize(x) W^T        W [K, D] starts as W_zs, the zero-shot classifier
  training    each batch: half few-shot images (a random cached view each), half text samples
              (the feature of one (prompt, class) pair), one cross-entropy over both halves
  WiSE-FT     W(alpha) = alpha * W + (1 - alpha) * normalize(W_zs)   (TRAINER.CROSSMODAL.WISE_FT_ALPHA)

s is CLIP's logit scale, fixed (the reference fixes exp(4.60517) = 100, which is CLIP's for
OpenAI's models). Protocol of the reference (linzhiqiu/cross_modal_adaptation, "linear"
hyperparameters): AdamW, linear warmup over 50 steps from 1e-5, cosine over 12,800 steps, val
every 100 steps keeping the best head, sweep lr {1e-3, 1e-4} x weight decay {0, 1e-2, 1e-4} x
batch {8, 32} (a batch whose halves exceed the samples there are is skipped), the run with the
best val accuracy of the fine-tuned head wins.

Where we differ from the reference: its image samples are the centre crop and its horizontal
flip; ours are the cached training views (TRAINER.FEATURES.TRAIN_VIEWS random resized crops and
flips). Its W_zs normalises the mean of raw template features; ours is the project's W_c (mean
of normalised prompt features, normalised; TRAINER.FEATURES.PROMPTS), and the text samples
are the same prompts. Its WiSE-FT flag mixes (1 - r) W + r normalize(W_zs) with r = 0.5; our
alpha weighs the fine-tuned head as WiSE-FT's paper does (0.5 is the same head). WISE_FT_ALPHA
defaults to 1.0 (off), the reference's default and SAFE Table I's "Cross-Modal" row; 0.5 gives
Table III's "Cross-Modal+WiSE-FT". It is read at evaluation time, so
``--eval-only --model-dir RUN TRAINER.CROSSMODAL.WISE_FT_ALPHA 0.5`` needs no retraining.

TRAINER.CROSSMODAL.RULES "code" runs the reference's loop rules instead of ours
(``fsclip.adapt.linear.sweep_linear_head``): every cached view a row of the image set (batches
drop a pass's last incomplete one), val after steps 1, 101, 201, ... (ours: the initial head,
then after 100, 200, ... and the last step), batch sizes kept when each part is strictly below
the rows / text samples (ours: images, <=), none kept an error (ours: the smallest, capped).
"""

from __future__ import annotations

from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.linear import LinearHead, add_linear_head_cfg, sweep_linear_head
from fsclip.adapt.prompts import prompt_features
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError


@TRAINER_REGISTRY.register()
class CrossModal(FrozenFeatureTrainer):
    """Linear head from the zero-shot classifier, trained on image and text samples."""

    PER_CLASS_STATE = True  # the linear head has one row per class (fsclip.model_dir)

    cfg_node = "CROSSMODAL"
    text_samples = True  # cross-modal batches (WiSEFT trains on images only)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "CROSSMODAL" in cfg.TRAINER:
            return
        c = cfg.TRAINER.CROSSMODAL = add_linear_head_cfg(CN())
        # Share of each batch given to text samples (the reference: half)
        c.TEXT_RATIO = 0.5
        # WiSE-FT: W = alpha * W_ft + (1 - alpha) * W_zs at evaluation (1.0: off; 0.5: Cross-Modal+WiSE-FT)
        c.WISE_FT_ALPHA = 1.0

    def build_method(self) -> None:
        self.head = LinearHead(self.text_weights, self.logit_scale).to(self.device)  # W = W_zs
        self.register_model("linear_head", self.head, None, None)

    def eval_alpha(self) -> float:
        alpha = float(self.cfg.TRAINER.CROSSMODAL.WISE_FT_ALPHA)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"TRAINER.CROSSMODAL.WISE_FT_ALPHA must be in [0, 1], got {alpha}")
        return alpha

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.head(self.head_o(dense.float()), alpha=self.eval_alpha())

    def fit(self) -> None:
        node = getattr(self.cfg.TRAINER, self.cfg_node)
        self.eval_alpha()  # a bad value fails before training
        text = None
        if self.text_samples:
            text = prompt_features(self.backbone, self.cfg.TRAINER.FEATURES.PROMPTS, self.cfg.DATASET.NAME,
                                   self.classnames)
            text = (text[0].to(self.device), text[1].to(self.device))
            print(f"Text samples: {text[0].shape[0]} (prompt, class) pairs, {node.TEXT_RATIO:g} of each batch")
        views = self.global_features("train")
        print(f"{type(self).__name__}: {views.shape[0]} images x {views.shape[1]} views; "
              f"{node.ITERS} steps per run, val every {node.EVAL_EVERY}")
        best = sweep_linear_head(self.text_weights, self.logit_scale, views, self.labels("train"),
                                    self.global_features("val"), self.labels("val"), node,
                                    seed=max(self.cfg.SEED, 0), text=text,
                                    text_ratio=float(getattr(node, "TEXT_RATIO", 0.0)),
                                    node_name=f"TRAINER.{self.cfg_node}")
        self.head.load_state_dict(best.state)
        self.log_choice(type(self).__name__, lr=best.params["lr"], weight_decay=best.params["weight_decay"],
                        batch_size=best.params["batch_size"], step=best.step, val_accuracy=best.val_acc)
        self.after_sweep(best.val_acc)
        self.save_model(max(best.step - 1, 0), self.output_dir, val_result=best.val_acc,
                        model_name="model-best.pth.tar")

    def after_sweep(self, val_acc: float) -> None:
        """Hook for choices made after the sweep (WiSEFT's alpha)."""
